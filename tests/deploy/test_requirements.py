"""Runtime and development requirements stay apart: the image gets what the pipeline runs on and nothing that
only tests, lint or the benchmark use; both files are pinned to the tested set in constraints.txt, and the
virtualenv `make` builds has both."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEV_ONLY = {"pytest", "pytest-timeout", "pytest-xdist", "selenium", "ruff", "duckdb"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(file_name: str) -> list[str]:
    lines = (ROOT / file_name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def pins(file_name: str) -> dict[str, str]:
    """package (canonical name, extras dropped) -> pinned version; every requirement must be pinned with =="""
    found = {}
    for line in requirement_lines(file_name):
        if line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]+\])?==(\S+)", line)
        assert match, f"{file_name}: `{line}` is not pinned as name==version"
        found[canonical(match.group(1))] = match.group(3)
    return found


def test_runtime_requirements_hold_no_test_lint_or_benchmark_package():
    runtime = pins("requirements.txt")
    assert not DEV_ONLY & set(runtime), DEV_ONLY & set(runtime)
    for needed in ("apache-airflow", "pyspark", "great-expectations", "psycopg", "python-dotenv"):
        assert needed in runtime, needed
    assert not [line for line in requirement_lines("requirements.txt") if line.startswith("-")]


def test_development_requirements_add_the_test_tools_to_the_runtime_ones():
    lines = requirement_lines("requirements-dev.txt")
    assert lines[0] == "-r requirements.txt"
    assert set(pins("requirements-dev.txt")) == DEV_ONLY


def test_every_pin_is_the_version_constraints_txt_resolved():
    resolved = pins("constraints.txt")
    for file_name in ("requirements.txt", "requirements-dev.txt"):
        for package, version in pins(file_name).items():
            assert resolved.get(package) == version, f"{file_name}: {package}=={version}, constraints.txt: {resolved.get(package)}"


def test_the_image_installs_the_runtime_requirements_only():
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if re.search(r"\bpip install\b", line)]
    assert installs == ["RUN pip install --no-cache-dir -r /tmp/requirements.txt -c /tmp/constraints.txt"]
    copied = [line for line in dockerfile.splitlines() if line.startswith("COPY")]
    assert copied == ["COPY requirements.txt constraints.txt /tmp/"]


def test_the_virtualenv_of_make_installs_the_development_requirements_and_rebuilds_when_they_change():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^STAMP := .*cat requirements.txt requirements-dev.txt constraints.txt", makefile, re.M)
    assert re.search(r"^\$\(STAMP\): requirements.txt requirements-dev.txt constraints.txt$", makefile, re.M)
    assert "pip install -q -r requirements-dev.txt -c constraints.txt" in makefile
