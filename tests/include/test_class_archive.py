"""Spark's class-data archive (``include.airflow.packaging``): written once by a training run, used by the
driver of every spark-submit, and never used when it does not belong to this JVM and these jars."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from include.airflow import packaging
from include.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration


def one_jar(tmp_path: Path, monkeypatch) -> Path:
    """Spark's jars as a directory of one jar (the archive's name hashes the jar list); that directory."""
    jars = tmp_path / "jars"
    jars.mkdir()
    (jars / "spark-core.jar").write_bytes(b"one")
    monkeypatch.setattr(packaging, "_spark_jars_dir", lambda: jars)
    return jars


def fake_training_runs(monkeypatch) -> list[list[str]]:
    """Replace the training spark-submit with one that writes a tiny archive; the commands it was given."""
    runs: list[list[str]] = []

    def fake_spark_submit(command, **kwargs):
        runs.append(command)
        partial = next(arg.split("=", 2)[-1] for arg in command if "ArchiveClassesAtExit" in arg)
        Path(partial).write_bytes(b"archive")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_spark_submit)
    return runs


def test_the_archive_is_written_once_and_a_spark_submit_maps_it(tmp_path):
    archive = packaging.build_class_archive(wait=True)  # another test worker may be writing it
    assert archive is not None and archive.exists() and archive.stat().st_size > 50_000_000
    assert packaging.build_class_archive() == archive, "a second call reuses the archive"
    options = packaging.driver_java_options()
    assert options == f"-XX:SharedArchiveFile={archive}"

    job = tmp_path / "count.py"
    job.write_text("from pyspark.sql import SparkSession\n"
                   "print('rows', SparkSession.builder.getOrCreate().range(10).count())\n")
    # -Xshare:on: the JVM refuses to start unless it maps the archive (default is to fall back silently)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[1]",
         "--conf", f"spark.driver.extraJavaOptions={options} -Xshare:on", str(job)],
        env={**os.environ, "PYSPARK_PYTHON": sys.executable}, cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rows 10" in done.stdout


def test_a_caller_does_not_wait_while_another_process_writes_the_archive(tmp_path, monkeypatch):
    """A DAG run (or `make run`) that starts while another process writes the archive starts Spark without it at
    once, rather than wait the ~40 s of the training run; a caller that asks to wait gets the archive."""
    import fcntl
    import threading

    one_jar(tmp_path, monkeypatch)
    target = packaging.class_archive_path(tmp_path)
    trained = fake_training_runs(monkeypatch)
    with open(tmp_path / ".class_archive.lock", "w") as writer:  # another process is writing it
        fcntl.flock(writer, fcntl.LOCK_EX)
        started = time.monotonic()
        assert packaging.build_class_archive(tmp_path) is None
        assert time.monotonic() - started < 1 and trained == []
        assert packaging.driver_java_options(tmp_path) == "-Xshare:auto"  # its JVM starts as before
        waited = []
        waiter = threading.Thread(target=lambda: waited.append(packaging.build_class_archive(tmp_path, wait=True)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive()  # ``wait=True`` waits for the writer
    waiter.join(timeout=10)
    assert waited == [target] and target.exists() and len(trained) == 1


def test_other_jars_name_another_archive_and_without_one_spark_starts_as_before(tmp_path, monkeypatch):
    jars = one_jar(tmp_path, monkeypatch)
    first = packaging.class_archive_path(tmp_path)
    (jars / "spark-sql.jar").write_bytes(b"two")
    second = packaging.class_archive_path(tmp_path)
    assert first != second and first.parent == second.parent == tmp_path
    assert packaging.driver_java_options(tmp_path) == "-Xshare:auto"  # nothing written there: no archive flag


def test_an_archive_in_use_elsewhere_is_kept_and_one_unused_for_weeks_is_deleted(tmp_path, monkeypatch):
    """Two checkouts with their own virtualenvs each have an archive; building one must not evict the other."""
    one_jar(tmp_path, monkeypatch)
    other, old = tmp_path / "spark_classes_other.jsa", tmp_path / "spark_classes_old.jsa"
    other.write_bytes(b"in use by another checkout")
    old.write_bytes(b"unused")
    weeks_ago = time.time() - (packaging.CLASS_ARCHIVE_UNUSED_DAYS + 1) * 86400
    os.utime(old, (weeks_ago, weeks_ago))
    target = packaging.class_archive_path(tmp_path)
    fake_training_runs(monkeypatch)
    assert packaging.build_class_archive(tmp_path) == target and target.exists()
    assert other.exists() and not old.exists()
    os.utime(target, (weeks_ago, weeks_ago))
    assert packaging.driver_java_options(tmp_path) == f"-XX:SharedArchiveFile={target}"
    assert target.stat().st_mtime > weeks_ago + 86400  # using it marks it as in use
