"""The conditions the pipeline alerts on: what each message says, and the DAG's wiring of the checks."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from include.ops.alerts.conditions import (
    QUALITY_BREACH,
    breaker_open_alert,
    dead_letter_growth_alert,
    new_column_alert,
    quality_breach_alert,
    task_failed_alert,
)
from include.ops.alerts.landing import landing_waiting_alert, quarantined_file_alert
from include.ops.alerts.message import HIDDEN, WARNING, Alert, Markup, as_record, links, render_text
from include.ops.alerts.state import AlertState, recovery_alert
from include.results import PublishSummary

pytestmark = pytest.mark.unit

RUN_ID = "scheduled__2026-03-01T12:00:00+00:00"
BASE = "http://127.0.0.1:8080/"


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
    alert = quality_breach_alert(summary(), ["validity rate 75.76% is below MIN_VALIDITY_RATE 95.0%"], 95.0,
                                 RUN_ID, BASE)
    text = render_text(alert)
    assert alert.level == WARNING and alert.key == QUALITY_BREACH and alert.fingerprint == "validity<95.0"
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
    assert links("https://airflow.shop.example/", None) == {
        "Data Docs": "https://airflow.shop.example/ecommerce/data-docs/index.html"}
    assert f"WHERE airflow_run_id = '{RUN_ID}'" in text


def test_a_breach_with_other_counts_and_rules_is_the_same_condition():
    """A per-minute DAG over steadily bad input must not alert every minute: the fingerprint is the broken
    threshold (and failed table checks), not the counts or which rows failed."""
    problem = ["validity rate below MIN_VALIDITY_RATE"]
    other = dict(total=900, valid=700, invalid=200, validity_rate=77.78,
                 failing_rules=summary_fields()["failing_rules"][::-1])
    first, second = (quality_breach_alert(s, problem, 95.0, RUN_ID, BASE) for s in (summary(), summary(**other)))
    assert first.key == second.key and first.fingerprint == second.fingerprint == "validity<95.0"
    failed_check = summary(**other, table_checks={"row_count": {"success": False, "observed_value": 0}})
    assert quality_breach_alert(failed_check, problem, 95.0, RUN_ID, BASE).fingerprint == \
        "validity<95.0;table_check:row_count"


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


# what the feed can put into an alert: a file or column name, a sample value, an event id, an error's text
HOSTILE = "<!channel> <@U123> <mailto:boss@evil.example|click> & ```x``` `y`\nforged\x1b[31m\u202e *b*"
WHERE_THE_FEED_REACHES = {
    "quality breach (sample event ids)": lambda: quality_breach_alert(summary(failing_rules=[
        {"rule": "price_within_range", "rows": 3, "description": "", "sample_event_ids": [HOSTILE, "e-2"]}]),
        ["validity rate 75.76% is below MIN_VALIDITY_RATE 95.0%"], 95.0, RUN_ID, BASE),
    "task failed (its error, which quotes the feed)": lambda: task_failed_alert(
        "ingest", f"ValueError: bad header {HOSTILE}", 3, RUN_ID, BASE, "circuit breaker: 1 consecutive failed run(s)"),
    "task failed (a task id, in a code span)": lambda: task_failed_alert(HOSTILE, "error", None, RUN_ID, BASE),
    "breaker open (the last error)": lambda: breaker_open_alert(5, f"ingest: {HOSTILE}", 300, RUN_ID, BASE),
    "quarantined file (its name, path and reason)": lambda: quarantined_file_alert(
        3, 7, f"/data/landing/{HOSTILE}", f"/data/quarantine/7__{HOSTILE}", f"not a feed file: {HOSTILE}", RUN_ID,
        BASE),
    "files waiting in the landing directory (their names and why)": lambda: landing_waiting_alert(
        [(HOSTILE, f"still changing: {HOSTILE}", datetime.now(UTC))], 15, RUN_ID, BASE),
    "new column (its name, first file and sample)": lambda: new_column_alert(
        {"name": HOSTILE, "source_file": HOSTILE, "sample": HOSTILE}, RUN_ID, BASE),
    "dead letters growing (a run id from a trigger)": lambda: dead_letter_growth_alert(900, 5, 100.0, HOSTILE, BASE),
    "recovery (a condition's key and fingerprint)": lambda: recovery_alert(
        [AlertState(f"new_column:{HOSTILE}", WARNING, HOSTILE, True, datetime.now(UTC))], HOSTILE, RUN_ID, BASE),
}


def own_backticks(alert: Alert) -> int:
    """The backticks the renderer and the alert's own templates write: its code spans and blocks."""
    templates = [t.template for t in (alert.title, *alert.details) if isinstance(t, Markup)]
    return 2 + 2 * bool(alert.run_id) + sum(t.count("`") for t in templates) + 6 * len(alert.queries)


@pytest.mark.parametrize("build", WHERE_THE_FEED_REACHES.values(), ids=WHERE_THE_FEED_REACHES.keys())
def test_whatever_the_feed_puts_into_an_alert_is_text_in_slack(build):
    alert = build()
    text = render_text(alert)
    record = as_record(alert)
    assert any("<!channel>" in str(record[part]) for part in ("title", "details", "run_id"))  # it did get in
    # no mention and no link but the alert's own; every & starts an entity
    assert re.findall(r"<[^>]*>", text) == [f"<{url}|{name}>" for name, url in alert.links.items()]
    assert re.findall(r"&(?!amp;|lt;|gt;)", text) == []
    # no code span or block opened or closed by the feed, no line of its own, nothing invisible
    assert text.count("`") == own_backticks(alert)
    assert len(text.splitlines()) == 1 + bool(alert.run_id) + len(alert.details) + bool(alert.links) + len(alert.queries)
    assert not HIDDEN.search(text.replace("\n", ""))
