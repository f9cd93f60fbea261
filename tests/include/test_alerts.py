"""Alerts: the dedupe / cool-down / recovery decisions and what a message says (and never says)."""

from __future__ import annotations

import json
import logging
import secrets
from datetime import UTC, datetime, timedelta

import pytest

from include.ops import alerts
from include.results import PublishSummary
from include.settings import Settings

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
COOLDOWN = timedelta(minutes=60)
RUN_ID = "scheduled__2026-03-01T12:00:00+00:00"
BASE = "http://127.0.0.1:8080/"


def breach(fingerprint: str = "validity<95.0", level: str = alerts.WARNING) -> alerts.Alert:
    return alerts.Alert(level, alerts.QUALITY_BREACH, fingerprint, "data quality breach", run_id=RUN_ID)


def test_a_new_condition_is_sent_and_its_repeat_within_the_cooldown_is_not():
    reason, state = alerts.decide_raise(None, breach(), NOW, COOLDOWN)
    assert reason == "new" and state.active and state.last_sent_at == NOW

    for minute in range(1, 4):  # the per-minute DAG hits the same breach again and again
        reason, state = alerts.decide_raise(state, breach(), NOW + timedelta(minutes=minute), COOLDOWN)
        assert reason is None
    assert state.suppressed == 3 and state.last_sent_at == NOW


def test_after_the_cooldown_a_still_active_condition_is_repeated_once():
    _, state = alerts.decide_raise(None, breach(), NOW, COOLDOWN)
    _, state = alerts.decide_raise(state, breach(), NOW + timedelta(minutes=30), COOLDOWN)
    reason, state = alerts.decide_raise(state, breach(), NOW + COOLDOWN, COOLDOWN)
    assert reason and "1 repeat(s) suppressed" in reason
    assert state.suppressed == 0 and state.last_sent_at == NOW + COOLDOWN
    assert alerts.decide_raise(state, breach(), NOW + COOLDOWN + timedelta(minutes=1), COOLDOWN)[0] is None


@pytest.mark.parametrize("changed", [breach("validity<95.0;table_check:row_count"), breach(level=alerts.ERROR)])
def test_a_change_of_fingerprint_or_level_is_sent_at_once(changed):
    _, state = alerts.decide_raise(None, breach(), NOW, COOLDOWN)
    reason, state = alerts.decide_raise(state, changed, NOW + timedelta(minutes=1), COOLDOWN)
    assert reason == "changed" and state.fingerprint == changed.fingerprint and state.level == changed.level


def test_recovery_is_sent_once_and_the_next_breach_is_new_again():
    _, state = alerts.decide_raise(None, breach(), NOW, COOLDOWN)
    due, cleared = alerts.decide_clear(state, NOW + timedelta(minutes=2))
    assert due and not cleared.active
    assert alerts.decide_clear(cleared, NOW + timedelta(minutes=3)) == (False, cleared)  # no second recovery
    assert alerts.decide_clear(None, NOW) == (False, None)  # never alerted: nothing to recover from
    assert alerts.decide_raise(cleared, breach(), NOW + timedelta(minutes=4), COOLDOWN)[0] == "new"


def summary(**changes) -> PublishSummary:
    return PublishSummary.from_xcom({**summary_fields(), **changes})


def summary_fields() -> dict:
    return {"path": "every_minute", "total": 200, "valid": 150, "invalid": 48, "duplicates": 2, "validity_rate": 75.76,
            "failing_rules": [
                {"rule": "price_within_range", "rows": 30, "description": "price in [0, MAX_PRICE]",
                 "sample_event_ids": ["e-1", "e-2", "e-3", "e-4"]},
                {"rule": "purchase_requires_user", "rows": 18, "description": "", "sample_event_ids": ["e-9"]},
            ],
            "table_checks": {"row_count": {"success": True, "observed_value": 200}}}


def test_a_quality_breach_message_says_what_where_and_how_to_look():
    alert = alerts.quality_breach_alert(summary(), ["validity rate 75.76% is below MIN_VALIDITY_RATE 95.0%"], 95.0,
                                        RUN_ID, BASE)
    text = alerts.render_text(alert)
    assert alert.level == alerts.WARNING and alert.fingerprint == "validity<95.0"
    assert "`ecommerce_events`" in text and RUN_ID in text
    assert "validity 75.76% (MIN_VALIDITY_RATE 95.0%)" in text
    assert "200 total, 150 valid, 48 dead-lettered, 2 duplicates" in text
    assert "price_within_range: 30 row(s), e.g. event_id e-1, e-2, e-3" in text and "e-4" not in text
    quoted = "scheduled__2026-03-01T12%3A00%3A00%2B00%3A00"
    run_page = f"http://127.0.0.1:8080/dags/ecommerce_events/runs/{quoted}"
    assert alert.links == {  # the run's page and its two tabs (plugin run views)
        "Airflow run": run_page,
        "Validation of this run": f"{run_page}/plugin/run-validation",
        "Dead letters of this run": f"{run_page}/plugin/run-dead-letters",
    }
    # no run (e.g. the feed went quiet): the Data Docs, at whatever public address is configured
    assert alerts.links("https://airflow.shop.example/", None) == {
        "Data Docs": "https://airflow.shop.example/ecommerce/data-docs/index.html"}
    assert f"WHERE airflow_run_id = '{RUN_ID}'" in text


def test_a_breach_with_other_counts_and_rules_is_the_same_condition():
    """A per-minute DAG over steadily bad input must not alert every minute: the fingerprint is the broken
    threshold (and failed table checks), not the counts or which rows failed."""
    problem = ["validity rate below MIN_VALIDITY_RATE"]
    other = dict(total=900, valid=700, invalid=200, validity_rate=77.78,
                 failing_rules=summary_fields()["failing_rules"][::-1])
    first, second = (alerts.quality_breach_alert(s, problem, 95.0, RUN_ID, BASE) for s in (summary(), summary(**other)))
    assert first.key == second.key and first.fingerprint == second.fingerprint == "validity<95.0"
    failed_check = summary(**other, table_checks={"row_count": {"success": False, "observed_value": 0}})
    assert alerts.quality_breach_alert(failed_check, problem, 95.0, RUN_ID, BASE).fingerprint == \
        "validity<95.0;table_check:row_count"


def test_the_dead_letter_query_cannot_be_broken_out_of_by_a_run_id():
    assert alerts.dead_letter_sql("manual__x'; DROP TABLE t; --").count("'") % 2 == 0
    assert "'manual__x''; DROP TABLE t; --'" in alerts.dead_letter_sql("manual__x'; DROP TABLE t; --")


def test_messages_carry_no_secret(tmp_path, monkeypatch):
    posted = []
    monkeypatch.setattr(alerts, "_post_to_slack", lambda alert: posted.append(alerts.slack_payload(alert)) or "sent")
    secret = f"pw-{secrets.token_hex(8)}"  # made up per run: no credential-looking literal in the repository
    settings = Settings.from_env({"POSTGRES_PASSWORD": secret, "ALERT_FILE": str(tmp_path / "alerts.jsonl")})
    error = f"OperationalError: connection to postgresql://spark:{secret}@db:5432/ecommerce failed; password={secret}"
    record = alerts.deliver(alerts.task_failed_alert("publish", error, 3, RUN_ID, BASE), settings)
    for text in ((tmp_path / "alerts.jsonl").read_text(), json.dumps(record), json.dumps(posted)):
        assert secret not in text and "publish" in text and "postgresql://***:***@db" in text
    assert len(posted) == 1 and record["slack"] == "sent"


def test_without_slack_info_goes_to_the_log_only_and_warning_to_the_file(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_ALERTS", raising=False)
    caplog.set_level(logging.INFO, logger=alerts.log.name)
    settings = Settings.from_env({"ALERT_FILE": str(tmp_path / "alerts.jsonl")})
    alerts.deliver(alerts.Alert(alerts.INFO, "note", "-", "published 3 batches"), settings)
    assert not (tmp_path / "alerts.jsonl").exists()
    record = alerts.deliver(breach(), settings)
    assert record["slack"] == "not configured"
    assert [json.loads(line)["key"] for line in (tmp_path / "alerts.jsonl").read_text().splitlines()] == [
        alerts.QUALITY_BREACH]
    assert "published 3 batches" in caplog.text and "data quality breach" in caplog.text


def test_an_unreachable_slack_is_logged_and_never_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS",
                       json.dumps({"conn_type": "slackwebhook", "password": "http://127.0.0.1:9/services/T/B/X"}))
    settings = Settings.from_env({"ALERT_FILE": str(tmp_path / "alerts.jsonl")})
    record = alerts.deliver(breach(), settings)
    assert record["slack"].startswith("failed")
    assert json.loads((tmp_path / "alerts.jsonl").read_text())["slack"].startswith("failed")


def test_the_dag_raises_alerts_from_its_callbacks():
    """The wiring the integration tests exercise: every task alerts on failure, the tasks the circuit breaker
    counts also record the failure, the run alerts as a safety net, and a finished run checks freshness."""
    from airflow.dag_processing.dagbag import DagBag

    from include.airflow import callbacks as airflow_support
    from tests.fixtures.pipeline import PROJECT_ROOT

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags["ecommerce_events"]
    assert dag.on_failure_callback == airflow_support.alert_run_failure
    assert dag.on_success_callback == airflow_support.check_feed_freshness
    callbacks = {task.task_id: task.on_failure_callback for task in dag.tasks}
    counted = ("ingest", "audit", "publish", "backfill_ingest", "rederive")
    assert all(callbacks[t] == [airflow_support.record_pipeline_failure] for t in counted)
    assert all(callbacks[t] == [airflow_support.alert_task_failure]
               for t in ("detect_work", "package_code", "choose_path", "quality_gate"))
