""".env.example is read three ways: by a shell (`set -a; . ./.env`), by Docker Compose and by `make run` /
`make once` (python-dotenv's rules, which are essentially Compose's). Each must get the value the file means,
the commented examples included, and every variable in it must be documented in the configuration reference,
docs/configuration.md (the README links it)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from include.settings import Settings
from scripts.env_file import read_env_file

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / ".env.example"
# what bash itself puts into the environment of `env`
SHELL_OWN = {"PWD", "SHLVL", "_", "OLDPWD"}


def sourced(path: Path) -> dict[str, str]:
    """The environment a shell ends up with after `set -a; . path` (`set -u`: no reference to an unset name)."""
    done = subprocess.run(["env", "-i", "/bin/bash", "-c", f"set -a -u; . {path}; env -0"], cwd=path.parent,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and not done.stderr, done.stderr
    pairs = (entry.split("=", 1) for entry in done.stdout.split("\0") if entry)
    return {name: value for name, value in pairs if name not in SHELL_OWN}


def commented_examples(text: str) -> list[str]:
    """`# NAME=value` comment lines: assignments the reader is invited to uncomment."""
    return [line[1:].strip() for line in text.splitlines() if re.match(r"#\s*[A-Z][A-Z0-9_]*=", line)]


def test_a_shell_and_the_pipelines_loader_read_the_same_values():
    by_shell, by_loader = sourced(EXAMPLE), read_env_file(EXAMPLE)
    assert by_shell == by_loader
    names = re.findall(r"^([A-Z][A-Z0-9_]*)=", EXAMPLE.read_text(), re.M)
    assert sorted(by_loader) == sorted(names)
    # the values that are easiest to get wrong
    assert by_loader["SPARK_MASTER"] == "local[*]"
    assert by_loader["POSTGRES_PASSWORD"] == "" and by_loader["RULE_SEVERITY"] == ""


def test_the_commented_examples_work_once_uncommented(tmp_path):
    examples = commented_examples(EXAMPLE.read_text())
    assert {line.split("=", 1)[0] for line in examples} >= {"RULE_SEVERITY", "AIRFLOW_CONN_SLACK_ALERTS"}
    uncommented = tmp_path / ".env"
    uncommented.write_text("\n".join(examples) + "\n")
    values = read_env_file(uncommented)
    assert sourced(uncommented) == values
    assert json.loads(values["RULE_SEVERITY"]) == {"category_known": "drop"}
    assert Settings.from_env({"RULE_SEVERITY": values["RULE_SEVERITY"]}).rule_severity == values["RULE_SEVERITY"]
    assert json.loads(values["AIRFLOW_CONN_SLACK_ALERTS"])["conn_type"] == "slackwebhook"


def test_a_value_with_spaces_or_shell_syntax_is_quoted():
    for line in EXAMPLE.read_text().splitlines() + commented_examples(EXAMPLE.read_text()):
        match = re.match(r"([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match and re.search(r"[\s\"'#$\[\]{}*?;&|<>()`\\]", match.group(2)):
            value = match.group(2)
            assert value[0] == "'" and value[-1] == "'" and value.count("'") == 2, line


def test_the_values_shown_are_the_defaults():
    assert Settings.from_env(read_env_file(EXAMPLE)) == Settings()


def test_every_variable_is_documented_in_the_configuration_reference():
    """Every variable of .env.example is named in a table row of docs/configuration.md."""
    reference = (ROOT / "docs" / "configuration.md").read_text()
    documented = set()
    for row in re.findall(r"^\| (.+?) \|", reference, re.M):
        documented |= set(re.findall(r"`([A-Z][A-Z0-9_]*)`", row))
    in_file = set(read_env_file(EXAMPLE))
    assert in_file <= documented, sorted(in_file - documented)
