"""`make` on a machine that lacks a prerequisite stops at once with one line saying what to install, instead of
failing deep inside pip (a Python older than 3.11) or minutes later inside Spark or initdb."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make")
# what the Makefile and scripts/preflight.sh call besides the checked tools (SHELL is /bin/bash, by path)
TOOLS = ("cat", "sha256sum", "cut", "sed", "sort", "tail")


def bin_dir(tmp_path: Path, **scripts: str) -> Path:
    """A PATH directory holding the everyday tools and the given fake commands, and nothing else."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for tool in TOOLS:
        (directory / tool).symlink_to(shutil.which(tool))
    for name, body in scripts.items():
        script = directory / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    return directory


JAVA_17 = "echo 'openjdk version \"17.0.15\" 2025-04-15' >&2"  # what `java -version` says, on stderr


def make(tmp_path: Path, *args: str, path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {key: value for key, value in os.environ.items()
               if key not in ("JAVA_HOME", "PG_BIN_DIR", "MAKEFLAGS", "MAKELEVEL")}
    environ.update(PATH=str(path), **env)
    # a virtualenv path of its own: were a check to pass, nothing would touch the checkout's .venv
    return subprocess.run([MAKE, "-C", str(ROOT), f"VENV={tmp_path / 'venv'}", *args], env=environ,
                          capture_output=True, text=True, timeout=60)


def test_a_python_older_than_3_11_stops_before_the_virtualenv_with_the_version_and_the_way_out(tmp_path):
    path = bin_dir(tmp_path, **{"python3.10": 'echo "3.10"'})
    done = make(tmp_path, "PYTHON=python3.10", "venv", path=path)
    assert done.returncode != 0
    assert "`python3.10` is Python 3.10; the project needs 3.11 or newer" in done.stderr
    assert "make PYTHON=python3.12 run" in done.stderr
    assert not (tmp_path / "venv").exists()


def test_a_missing_python_is_named(tmp_path):
    done = make(tmp_path, "PYTHON=python3.99", "venv", path=bin_dir(tmp_path))
    assert done.returncode != 0 and "no `python3.99` on PATH" in done.stderr


def test_missing_java_stops_run_before_anything_is_installed(tmp_path):
    done = make(tmp_path, "run", path=bin_dir(tmp_path))
    assert done.returncode != 0
    assert "no `java` on PATH (Spark needs Java 17)" in done.stderr
    assert "apt-get install openjdk-17-jre-headless" in done.stderr
    assert "installing pinned requirements" not in done.stdout and not (tmp_path / "venv").exists()


def test_missing_postgresql_server_binaries_are_named(tmp_path):
    path = bin_dir(tmp_path, java=JAVA_17)
    empty = tmp_path / "no-postgres"
    empty.mkdir()
    done = make(tmp_path, "preflight", path=path, PG_BIN_DIR=str(empty))
    assert done.returncode != 0
    assert f"PG_BIN_DIR={empty} holds no initdb and pg_ctl" in done.stderr


def test_present_prerequisites_pass(tmp_path):
    pg = tmp_path / "pg"
    pg.mkdir()
    for binary in ("initdb", "pg_ctl"):
        (pg / binary).write_text("#!/bin/sh\n")
        (pg / binary).chmod(0o755)
    done = make(tmp_path, "preflight", path=bin_dir(tmp_path, java=JAVA_17), PG_BIN_DIR=str(pg))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def dry_run(target: str, **env: str) -> list[str]:
    """The commands `make -n target` would run, with ``env`` on top of this environment."""
    # run from `make test` too: a make inside make would announce its directory first (MAKELEVEL)
    environ = {key: value for key, value in os.environ.items()
               if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "PYTEST_WORKERS")}
    dry = subprocess.run([MAKE, "--no-print-directory", "-n", target], cwd=ROOT, env={**environ, **env},
                         capture_output=True, text=True, timeout=60)
    return dry.stdout.splitlines()


@pytest.mark.parametrize("target", ["run", "cluster", "once", "migrate", "test", "test-fast", "test-unit",
                                    "test-integration", "bench"])
def test_every_target_that_starts_spark_or_postgresql_checks_first(target):
    commands = dry_run(target)
    assert commands[0].endswith("scripts/preflight.sh java postgres"), (target, commands[:3])
    if target == "cluster":  # and Redis, the Celery broker
        assert commands[1].endswith("scripts/preflight.sh redis"), commands[:3]


def test_pg_bin_dir_in_the_env_file_counts_as_it_does_for_the_pipeline(tmp_path):
    """`make` does not read .env, the pipeline does: preflight looks for PG_BIN_DIR there too."""
    (tmp_path / ".env").write_text("POSTGRES_DB=x\nexport PG_BIN_DIR='/nowhere/bin'  # a comment\n")
    environ = {key: value for key, value in os.environ.items() if key != "PG_BIN_DIR"}
    done = subprocess.run(["/bin/sh", str(ROOT / "scripts" / "preflight.sh"), "postgres"], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "PG_BIN_DIR=/nowhere/bin holds no initdb" in done.stderr


def test_make_test_runs_whole_files_on_two_workers_longest_first_and_workers_0_runs_in_process():
    from tests.conftest import LONGEST_FIRST

    def pytest_command(**env: str) -> str:
        return dry_run("test", **env)[-1]

    assert pytest_command().endswith("-m pytest -n 2 --dist loadfile --no-loadscope-reorder")
    assert pytest_command(PYTEST_WORKERS="3").endswith("-m pytest -n 3 --dist loadfile --no-loadscope-reorder")
    assert pytest_command(PYTEST_WORKERS="0").rstrip().endswith("-m pytest")
    # the order that balances the workers names files that exist (a renamed file would silently lose its place)
    assert [path for path in LONGEST_FIRST if not (ROOT / path).is_file()] == []


def test_make_run_feed_off_starts_no_generator():
    """Your own feed (README "Use your own feed"): one plain switch, for `make run` and `make cluster`."""
    for target in ("run", "cluster"):
        assert dry_run(target, FEED="off")[-1].endswith(f"scripts.pipeline {target} --env-file .env --no-generator")
        assert "--no-generator" not in dry_run(target)[-1]


def test_make_test_checks_chromium_redis_and_the_jdbc_driver_before_the_suite():
    commands = dry_run("test")
    assert commands[0].endswith("scripts/preflight.sh java postgres")
    assert commands[-2].endswith("scripts/preflight.sh chromium redis jdbc") and "pytest" in commands[-1]


def fake_java(tmp_path, version: str) -> dict[str, str]:
    home = tmp_path / f"java-{version}"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f'#!/bin/sh\necho \'openjdk version "{version}" 2020-01-01\' >&2\n')
    java.chmod(0o755)
    return {**os.environ, "JAVA_HOME": str(home)}


@pytest.mark.parametrize(("version", "ok"), [("17.0.15", True), ("21", True), ("11.0.2", False), ("1.8.0_402", False)])
def test_preflight_wants_java_17_or_newer(tmp_path, version, ok):
    done = subprocess.run(["/bin/sh", str(ROOT / "scripts" / "preflight.sh"), "java"], env=fake_java(tmp_path, version),
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode == 0) == ok, done.stderr
    if not ok:
        assert f"is Java {version}; Spark 4 needs Java 17 or newer" in done.stderr
        assert "apt-get install openjdk-17-jre-headless" in done.stderr and len(done.stderr.splitlines()) == 1


def test_preflight_names_chromium_its_driver_and_the_jdbc_driver_with_an_install_hint(tmp_path):
    empty = {**os.environ, "PATH": str(tmp_path)}  # nothing on PATH
    sh = "/bin/sh"
    done = subprocess.run([sh, str(ROOT / "scripts" / "preflight.sh"), "chromium"], env=empty, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1 and "apt-get install chromium chromium-driver" in done.stderr
    done = subprocess.run([sh, str(ROOT / "scripts" / "preflight.sh"), "jdbc"],
                          env={**os.environ, "JDBC_JAR": str(tmp_path / "none.jar")}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "apt-get install libpostgresql-jdbc-java" in done.stderr
