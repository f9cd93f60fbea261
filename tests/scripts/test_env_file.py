"""The checkout's .env for `make run` / `make once`: its values are used, the environment wins, a missing file is
fine, comments and quotes mean what they mean to a shell, and a line that is not NAME=value stops with its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from include.settings import PROJECT_ROOT, Settings
from scripts.env_file import EnvFileError, load_env_file, read_env_file

pytestmark = pytest.mark.unit


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".env"
    path.write_text(textwrap.dedent(text))
    return path


def test_values_of_the_file_become_settings(tmp_path):
    path = env_file(tmp_path, """\
        POSTGRES_PORT=6543
        MAX_PRICE=25000
        """)
    environ: dict[str, str] = {}
    assert load_env_file(path, environ) == {"POSTGRES_PORT": "6543", "MAX_PRICE": "25000"}
    settings = Settings.from_env(environ)
    assert settings.postgres_port == 6543 and settings.max_price == 25000.0


def test_the_environment_wins_over_the_file(tmp_path):
    path = env_file(tmp_path, "POSTGRES_PORT=6543\nPOSTGRES_DB=from_file\n")
    environ = {"POSTGRES_PORT": "7000"}
    assert load_env_file(path, environ) == {"POSTGRES_DB": "from_file"}
    assert environ == {"POSTGRES_PORT": "7000", "POSTGRES_DB": "from_file"}


def test_a_missing_file_is_no_error(tmp_path):
    environ = {"KEEP": "1"}
    assert load_env_file(tmp_path / ".env", environ) == {}
    assert environ == {"KEEP": "1"}


def test_a_relative_path_is_the_checkouts(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a command started elsewhere still reads the checkout's file, not the cwd's
    (tmp_path / "elsewhere.env").write_text("POSTGRES_DB=from_cwd\n")
    assert not (PROJECT_ROOT / "elsewhere.env").exists()
    assert load_env_file("elsewhere.env", {}) == {}


def test_comments_quotes_and_export_mean_what_they_mean_to_a_shell(tmp_path):
    path = env_file(tmp_path, """\
        # a comment line

        export POSTGRES_USER=analyst
        POSTGRES_PASSWORD='p#ss word'   # single quotes: taken literally, # and spaces included
        ALERT_FILE="data/logs/my alerts.jsonl"
        RULE_SEVERITY='{"category_known": "drop"}'
        MAX_PRICE=500 # an inline comment after a space
        SPARK_MASTER='local[*]'
        """)
    assert read_env_file(path) == {
        "POSTGRES_USER": "analyst",
        "POSTGRES_PASSWORD": "p#ss word",
        "ALERT_FILE": "data/logs/my alerts.jsonl",
        "RULE_SEVERITY": '{"category_known": "drop"}',
        "MAX_PRICE": "500",
        "SPARK_MASTER": "local[*]",
    }
    settings = Settings.from_env(read_env_file(path))
    assert settings.rule_severity == '{"category_known": "drop"}'
    assert settings.alert_file == PROJECT_ROOT / "data" / "logs" / "my alerts.jsonl"


def test_a_reference_to_another_variable_prefers_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_TEST_BASE", "/srv/feed")
    path = env_file(tmp_path, "LANDING_DIR=${PIPELINE_TEST_BASE}/landing\nARCHIVE_DIR=${LANDING_DIR}/../archive\n")
    assert read_env_file(path) == {"LANDING_DIR": "/srv/feed/landing", "ARCHIVE_DIR": "/srv/feed/landing/../archive"}


def test_an_empty_value_leaves_the_default_to_the_command(tmp_path):
    """`FEED_EXPECTED=` (as in .env.example) must not turn off what `make run` defaults to true."""
    path = env_file(tmp_path, "FEED_EXPECTED=\nPOSTGRES_PASSWORD=\nPOSTGRES_DB=x\n")
    environ: dict[str, str] = {}
    assert load_env_file(path, environ) == {"POSTGRES_DB": "x"}
    assert "FEED_EXPECTED" not in environ and Settings.from_env(environ).postgres_password == "spark123"


@pytest.mark.parametrize(
    ("text", "line", "shown"),
    [
        ("POSTGRES_DB=ok\n\n# fine\nMAX PRICE=500\n", 4, "MAX PRICE=500"),
        ("POSTGRES_DB=ok\nRULE_SEVERITY='{\"a\": 1}' trailing\n", 2, "RULE_SEVERITY="),
        ("POSTGRES_DB=ok\nPOSTGRES_PORT\n", 2, "has no `=`"),
    ],
)
def test_a_line_that_is_not_an_assignment_stops_with_the_file_and_line(tmp_path, text, line, shown):
    path = env_file(tmp_path, text)
    environ: dict[str, str] = {}
    with pytest.raises(EnvFileError) as raised:
        load_env_file(path, environ)
    assert f"{path}, line {line}:" in str(raised.value) and shown in str(raised.value)
    assert environ == {}  # nothing half-loaded


def test_make_passes_the_env_file_to_run_once_and_env():
    import subprocess

    for target, command in (("run", "scripts.pipeline run"), ("once", "scripts.pipeline once"),
                            ("env", "scripts.airflow_env")):
        dry = subprocess.run(["make", "-n", target], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
        assert f"-m {command} --env-file .env" in dry.stdout, (target, dry.stdout, dry.stderr)


def test_the_command_line_loads_the_file_and_names_a_bad_line(tmp_path, monkeypatch, capsys):
    """`python -m scripts.pipeline … --env-file`: a broken .env ends the command before anything starts."""
    from scripts import airflow_env, pipeline

    bad = env_file(tmp_path, "POSTGRES_DB=ok\nnot an assignment\n")
    with pytest.raises(SystemExit) as raised:
        pipeline.main(["once", "--env-file", str(bad)])
    assert f"{bad}, line 2:" in str(raised.value.code)

    monkeypatch.setenv("POSTGRES_DB", "")
    monkeypatch.delenv("POSTGRES_DB")  # recorded, so the value the file loads is undone after the test
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    good = env_file(tmp_path, "POSTGRES_DB=from_env_file\n")
    assert airflow_env.main(["--env-file", str(good)]) == 0
    printed = capsys.readouterr().out
    assert "export POSTGRES_DB=from_env_file" in printed
    # the connections live in Airflow (start-up creates the missing ones): an export would shadow the UI's
    assert "AIRFLOW_CONN_ECOMMERCE_POSTGRES" not in printed and "AIRFLOW_CONN_SPARK_DEFAULT" not in printed


def test_pipeline_log_dir_from_the_env_file_is_where_the_supervisor_writes(tmp_path, monkeypatch):
    """`make run` with PIPELINE_LOG_DIR only in .env: the component logs go there (where housekeeping rotates
    them), not to the default resolved before the file was read."""
    import scripts.pipeline

    monkeypatch.setattr(scripts.pipeline, "LOG_DIR", scripts.pipeline.LOG_DIR)  # restored after the test
    monkeypatch.setenv("PIPELINE_LOG_DIR", "")
    monkeypatch.delenv("PIPELINE_LOG_DIR")
    env_file = tmp_path / "test.env"
    env_file.write_text(f"PIPELINE_LOG_DIR={tmp_path / 'component-logs'}\n")
    scripts.pipeline.load_env(str(env_file))
    assert tmp_path / "component-logs" == scripts.pipeline.LOG_DIR
    supervisor = scripts.pipeline.Supervisor({})
    try:
        supervisor.start("probe", ["true"])
        supervisor.processes["probe"].wait(timeout=30)
    finally:
        supervisor.stop(grace_seconds=5)
    assert (tmp_path / "component-logs" / "probe.log").exists()
