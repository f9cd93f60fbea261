"""Alert delivery: which channels get what, and what a message never carries."""

from __future__ import annotations

import json
import logging
import secrets

import pytest

from include.ops.alerts import delivery
from include.ops.alerts.conditions import QUALITY_BREACH, task_failed_alert
from include.ops.alerts.landing import quarantined_file_alert
from include.ops.alerts.message import INFO, WARNING, Alert, slack_payload
from include.settings import Settings

pytestmark = pytest.mark.unit

RUN_ID = "scheduled__2026-03-01T12:00:00+00:00"
BASE = "http://127.0.0.1:8080/"


def breach() -> Alert:
    return Alert(WARNING, QUALITY_BREACH, "validity<95.0", "data quality breach", run_id=RUN_ID)


def test_messages_carry_no_secret(tmp_path, monkeypatch):
    posted = []
    monkeypatch.setattr(delivery, "_post_to_slack", lambda alert: posted.append(slack_payload(alert)) or "sent")
    secret = f"pw-{secrets.token_hex(8)}"  # made up per run: no credential-looking literal in the repository
    settings = Settings.from_env({"POSTGRES_PASSWORD": secret, "ALERT_FILE": str(tmp_path / "alerts.jsonl")})
    error = f"OperationalError: connection to postgresql://spark:{secret}@db:5432/ecommerce failed; password={secret}"
    record = delivery.deliver(task_failed_alert("publish", error, 3, RUN_ID, BASE), settings)
    for text in ((tmp_path / "alerts.jsonl").read_text(), json.dumps(record), json.dumps(posted)):
        assert secret not in text and "publish" in text and "postgresql://***:***@db" in text
    assert len(posted) == 1 and record["slack"] == "sent"


def test_without_slack_info_goes_to_the_log_only_and_warning_to_the_file(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_ALERTS", raising=False)
    caplog.set_level(logging.INFO, logger="include.ops.alerts")
    settings = Settings.from_env({"ALERT_FILE": str(tmp_path / "alerts.jsonl")})
    delivery.deliver(Alert(INFO, "note", "-", "published 3 batches"), settings)
    assert not (tmp_path / "alerts.jsonl").exists()
    record = delivery.deliver(breach(), settings)
    assert record["slack"] == "not configured"
    assert [json.loads(line)["key"] for line in (tmp_path / "alerts.jsonl").read_text().splitlines()] == [
        QUALITY_BREACH]
    assert "published 3 batches" in caplog.text and "data quality breach" in caplog.text


def test_an_unreachable_slack_is_logged_and_never_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS",
                       json.dumps({"conn_type": "slackwebhook", "password": "http://127.0.0.1:9/services/T/B/X"}))
    settings = Settings.from_env({"ALERT_FILE": str(tmp_path / "alerts.jsonl")})
    record = delivery.deliver(breach(), settings)
    assert record["slack"].startswith("failed")
    assert json.loads((tmp_path / "alerts.jsonl").read_text())["slack"].startswith("failed")


def test_a_hostile_file_name_is_one_line_in_the_file_and_stays_in_its_lines_in_the_log(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(delivery, "_post_to_slack", lambda alert: "sent")
    caplog.set_level(logging.INFO, logger="include.ops.alerts")
    name = "x.txt\nALERT CRITICAL (new)\n:rotating_light: *CRITICAL* forged\x1b[2K"
    settings = Settings.from_env({"ALERT_FILE": str(tmp_path / "alerts.jsonl")})
    alert = quarantined_file_alert(1, 7, f"/data/landing/{name}", f"/data/quarantine/7__{name}", "not a feed file",
                                   RUN_ID, BASE)
    delivery.deliver(alert, settings)
    [line] = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert json.loads(line)["details"][1] == (  # as it is, JSON-escaped
        f"delivery 7, now at /data/quarantine/7__{name}; nothing of it was stored")
    [logged] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALERT")]
    lines = logged.splitlines()  # "ALERT WARNING (new)", then title, run, the two details, links, query
    assert len(lines) == 7 and all(line.startswith((":warning:", "run: ", "• ", "<", "its record: ")) for line in lines[1:])
    assert "x.txt\\x0aALERT CRITICAL (new)\\x0a:rotating_light: *CRITICAL* forged\\x1b[2K" in logged
