"""Alerts end to end: real DAG runs (`make once`) post to a local HTTP server playing the Slack webhook
through the provider's notifier and the `slack_alerts` connection. Each condition is said once, its repeat
is not said, and its recovery is said once."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import psycopg
import pytest

from include.contract.versions import V3
from include.ops import alerts
from include.storage import deliveries
from scripts.generator import EventGenerator

pytestmark = pytest.mark.integration

WEBHOOK_TOKEN = "T0000/B0000/not-a-real-token"


class SlackReceiver:
    """A webhook endpoint answering like Slack (200, body `ok`) that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        received = self.received = []
        self.every = []  # every payload of the test, kept for its output dir

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"path": self.path, "body": json.loads(body)})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        host, port = self.server.server_address
        # host with a scheme is used as the base URL; the password is the webhook's token path
        self.connection = json.dumps({"conn_type": "slackwebhook", "host": f"http://{host}:{port}/services",
                                      "password": WEBHOOK_TOKEN})

    def take(self) -> list[dict]:
        """The payloads received since the last take()."""
        taken = [r["body"] for r in self.received]
        assert all(r["path"] == f"/services/{WEBHOOK_TOKEN}" for r in self.received)
        self.every += taken
        self.received.clear()
        return taken


@pytest.fixture
def slack(tmp_path):
    receiver = SlackReceiver()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    (tmp_path / "slack-payloads.json").write_text(json.dumps(receiver.every, indent=2))


def land(pipeline, seed: int, files: int = 2, rows: int = 100, **ratios: float) -> None:
    generator = EventGenerator(seed, **ratios)
    for index in range(files):
        version = ("v2", "v3")[index % 2]
        generator.write_batch(generator.generate_batch(rows, version), version, pipeline.landing_dir)


def texts(payloads: list[dict]) -> list[str]:
    return [p["text"] for p in payloads]


def assert_safe(pipeline, payloads: list[dict]) -> None:
    dumped = json.dumps(payloads)
    assert pipeline.settings.postgres_password not in dumped and WEBHOOK_TOKEN not in dumped


def run(pipeline, slack, tmp_path, **env: str):
    done = pipeline.once(AIRFLOW_CONN_SLACK_ALERTS=slack.connection, ALERT_FILE=str(tmp_path / "alerts.jsonl"), **env)
    return done, done.stdout + done.stderr


def test_quality_breach_is_said_once_and_its_recovery_once(pipeline, slack, tmp_path):
    pipeline.reset()
    land(pipeline, seed=31, invalid_ratio=0.3)
    done, output = run(pipeline, slack, tmp_path)
    assert done.returncode == 1 and "Data quality breach" in output, output[-4000:]
    [breach] = slack.take()
    text = breach["text"]
    run_id = pipeline.scalar("SELECT DISTINCT airflow_run_id FROM dead_letter_events")
    assert text.startswith(":warning: *WARNING* `ecommerce_events`: data quality breach") and run_id in text
    total, valid, invalid = pipeline.query(
        "SELECT sum(total_records), sum(valid_records), sum(invalid_records) FROM data_quality_metrics")[0]
    assert f"{total} total, {valid} valid, {invalid} dead-lettered" in text
    assert "is below MIN_VALIDITY_RATE 95.0%" in text
    top_rule, sample_id = pipeline.query(
        "SELECT rule, min(event_id) FROM dead_letter_events, unnest(failed_rules) AS rule "
        "WHERE event_id IS NOT NULL GROUP BY rule ORDER BY count(*) DESC, rule LIMIT 1")[0]
    assert f"top failing rule {top_rule}:" in text
    assert any(event_id in text for (event_id,) in pipeline.query(
        "SELECT event_id FROM dead_letter_events WHERE %s = ANY(failed_rules)", (top_rule,)))
    base = pipeline.env["AIRFLOW__API__BASE_URL"]
    run_page = f"{base}/dags/ecommerce_events/runs/{quote(run_id, safe='')}"
    assert f"<{run_page}/plugin/run-validation|Validation of this run>" in text
    assert f"<{run_page}/plugin/run-dead-letters|Dead letters of this run>" in text
    # the query in the message lists exactly this run's dead letters
    query = text.split("```")[1]
    assert len(pipeline.query(query)) == invalid
    assert breach["blocks"][0]["text"]["text"] == text
    assert_safe(pipeline, [breach])
    [line] = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert json.loads(line)["level"] == "WARNING" and json.loads(line)["slack"] == "sent"

    # (a repeat of a condition is said not at all: the failure test below runs one for real; the unit tests
    # show a breach's fingerprint does not depend on its counts)
    land(pipeline, seed=33)
    done, output = run(pipeline, slack, tmp_path)
    assert done.returncode == 0, output[-4000:]
    [recovery] = slack.take()
    assert recovery["text"].startswith(":white_check_mark: *RECOVERED* `ecommerce_events`: recovered: validity ")
    assert "cleared: quality_breach (WARNING, validity&lt;95.0)" in recovery["text"]  # Slack shows &lt; as <
    assert len((tmp_path / "alerts.jsonl").read_text().splitlines()) == 2

    # dead letters growing faster than the threshold: CRITICAL once, then its recovery
    settings = replace(pipeline.settings, alert_file=tmp_path / "alerts.jsonl", alert_dead_letters_per_minute=1)
    with psycopg.connect(settings.postgres_conninfo, autocommit=True) as conn:
        for _ in range(2):
            _with_slack(slack, lambda: alerts.check_dead_letter_growth(settings, conn, "manual__check", base))
        [growth] = slack.take()
        assert growth["text"].startswith(":rotating_light: *CRITICAL* `ecommerce_events`: dead letters growing at ")
        assert "threshold ALERT_DEAD_LETTERS_PER_MINUTE 1" in growth["text"]
        calm = replace(settings, alert_dead_letters_per_minute=10_000)
        _with_slack(slack, lambda: alerts.check_dead_letter_growth(calm, conn, "manual__check", base))
        assert "cleared: dead_letter_growth" in slack.take()[0]["text"]


def test_a_failing_ingest_opens_the_breaker_skips_spark_is_said_once_and_one_trial_closes_it(pipeline, slack,
                                                                                             tmp_path):
    """The circuit breaker and its alerts in one story: a run fails after its retries (ERROR + CRITICAL,
    breaker open), the next run skips Spark and leaves the files waiting, a trial that fails the same way says
    nothing new, and a good trial publishes every event exactly once, closes the breaker and says RECOVERED."""
    from tests.integration.test_fault_tolerance import FILES, assert_exactly_once
    from tests.integration.test_fault_tolerance import land as land_known

    pipeline.reset()
    expected = land_known(pipeline, seed=11)
    # a cool-down far longer than a loaded machine needs between two runs; the test moves the breaker's
    # opening time back instead of waiting the cool-down out
    cooldown = {"CIRCUIT_BREAKER_COOLDOWN_SECONDS": "600"}
    breaking = {"PYSPARK_PYTHON": "/nonexistent/python", "CIRCUIT_BREAKER_THRESHOLD": "1", **cooldown}
    done, output = run(pipeline, slack, tmp_path, **breaking)
    assert done.returncode == 1, output[-4000:]
    assert pipeline.query("SELECT state, consecutive_failures FROM pipeline_circuit_breaker") == [("open", 1)]
    failure, breaker = slack.take()
    [run_id] = [line.split("`")[1] for line in failure["text"].splitlines() if line.startswith("run: `")]
    assert run_id.startswith("manual__")
    assert failure["text"].startswith(":x: *ERROR* `ecommerce_events`: task `ingest` failed after 3 tries")
    assert "• error: " in failure["text"] and "spark-submit" in failure["text"]
    assert "circuit breaker: 1 consecutive failed run(s)" in failure["text"]
    assert breaker["text"].startswith(
        ":rotating_light: *CRITICAL* `ecommerce_events`: circuit breaker OPENED after 1 consecutive failed run(s)")
    assert "last error: ingest:" in breaker["text"] and "CIRCUIT_BREAKER_COOLDOWN_SECONDS" in breaker["text"]
    for message in (failure, breaker):
        assert f"run: `{run_id}`" in message["text"] and "/dags/ecommerce_events/runs/" in message["text"]
    assert_safe(pipeline, [failure, breaker])
    assert [json.loads(line)["level"] for line in (tmp_path / "alerts.jsonl").read_text().splitlines()] == [
        "ERROR", "CRITICAL"]

    # while the breaker is open, runs skip the ingest: no Spark job, the files wait, claimed, for the ingest
    done, output = run(pipeline, slack, tmp_path, **cooldown)
    assert done.returncode == 0, output[-4000:]
    assert "circuit breaker OPEN since" in output and "skipping the ingest" in output
    assert "Spark-Submit cmd" not in output and len(list(pipeline.landing_dir.glob(".claimed/*.csv"))) == FILES
    assert slack.take() == []

    # the trial run fails the same way and opens the breaker again: the same two conditions, no message
    reopen = "UPDATE pipeline_circuit_breaker SET opened_at = opened_at - interval '601 seconds' RETURNING 1"
    pipeline.query(reopen)
    done, output = run(pipeline, slack, tmp_path, **breaking)
    assert done.returncode == 1 and "this run is the trial" in output, output[-4000:]
    assert slack.take() == []

    # a good trial: everything published once, the breaker closes, one RECOVERED clears both conditions
    pipeline.query(reopen)
    done, output = run(pipeline, slack, tmp_path, **cooldown)
    assert done.returncode == 0, output[-4000:]
    assert "this run is the trial" in output
    [recovery] = slack.take()
    assert recovery["text"].startswith(":white_check_mark: *RECOVERED* `ecommerce_events`: recovered: a run got "
                                       "through ingest, audit and publish again")
    assert "circuit_breaker_open (CRITICAL, open)" in recovery["text"]
    assert "task_failed (ERROR, ingest)" in recovery["text"]
    assert pipeline.query("SELECT state, consecutive_failures FROM pipeline_circuit_breaker") == [("closed", 0)]
    assert_exactly_once(pipeline, expected)


def test_no_fresh_data_while_the_feed_is_expected_is_critical_then_recovers(pipeline, slack, tmp_path):
    """The freshness check runs in the DAG's success callback of a real (empty) run."""
    pipeline.reset()
    with psycopg.connect(pipeline.settings.postgres_conninfo, autocommit=True) as conn:
        conn.execute("INSERT INTO deliveries (file_name, source_file, size_bytes, claimed_at, completed_by, status,"
                     " path) VALUES ('a.csv', '/l/a.csv', 1, now() - interval '15 minutes', 'settled', 'archived', '/a')")
    done, output = run(pipeline, slack, tmp_path, FEED_EXPECTED="true", ALERT_NO_DATA_MINUTES="10")
    assert done.returncode == 0, output[-4000:]
    [silent] = slack.take()
    quiet = re.match(r":rotating_light: \*CRITICAL\* `ecommerce_events`: no new data for (\d+) minutes", silent["text"])
    assert quiet and 15 <= int(quiet[1]) <= 30  # 15 minutes before the run started, plus the run's own time
    assert "the feed is expected (FEED_EXPECTED) and ALERT_NO_DATA_MINUTES is 10" in silent["text"]
    assert_safe(pipeline, [silent])

    settings = replace(pipeline.settings, alert_file=tmp_path / "alerts.jsonl", feed_expected=True,
                       alert_no_data_minutes=10)
    _with_slack(slack, lambda: alerts.check_freshness(settings, "scheduled__again"))  # still silent: no repeat
    assert slack.take() == []
    land(pipeline, seed=51, files=1)  # a file arrives, and the next run's detect_work claims it
    with psycopg.connect(settings.postgres_conninfo) as conn:
        deliveries.claim(settings, conn)
    _with_slack(slack, lambda: alerts.check_freshness(settings, "scheduled__flowing"))
    [recovery] = slack.take()
    assert "recovered: data is arriving again" in recovery["text"]
    assert "cleared: no_fresh_data (CRITICAL, &gt;10min)" in recovery["text"]
    # not expected (the default): never checked
    later = datetime.now(UTC) + timedelta(hours=1)
    _with_slack(slack, lambda: alerts.check_freshness(replace(settings, feed_expected=False), "s", now=later))
    assert slack.take() == []


def test_hostile_file_and_column_names_reach_slack_as_text_with_sql_that_finds_them(pipeline, slack, tmp_path):
    """A stray file and a new column named to do harm: in Slack they ping nobody and link nowhere, and the query
    each alert comes with, pasted into psql as Slack shows it, is one SELECT that finds its row."""
    from tests.integration.test_alert_queries_in_psql import pasted, psql

    pipeline.reset()
    column = "<!channel> a'b\"c `x`"
    generator = EventGenerator(7, invalid_ratio=0.0, duplicate_ratio=0.0, late_ratio=0.0, structural_ratio=0.0)
    export = io.StringIO()
    writer = csv.writer(export, lineterminator="\n")
    writer.writerow([*V3.columns, column])
    writer.writerows([*(row[c] for c in V3.columns), "<@U123> & more"] for row in generator.generate_batch(5, "v3"))
    (pipeline.landing_dir / "events.csv").write_text(export.getvalue())
    stray = pipeline.landing_dir / "<!channel> x'; DROP TABLE ecommerce_events; --.txt"
    stray.write_text("not events\n")
    os.utime(stray, (time.time() - 120, time.time() - 120))  # older than the grace period for writers

    done, output = run(pipeline, slack, tmp_path)
    assert done.returncode == 0, output[-4000:]
    said = texts(slack.take())
    [foreign] = [text for text in said if "from the landing directory quarantined" in text]
    [new_column] = [text for text in said if "new column" in text]
    assert "&lt;!channel&gt; x'; DROP TABLE" in foreign and "new column '&lt;!channel&gt; a" in new_column
    assert "ˋxˋ" in new_column.splitlines()[0]  # a backtick of the name cannot end a code span
    assert "sample value '&lt;@U123&gt; &amp; more'" in new_column
    for text in (foreign, new_column):  # no mention, no link but the alert's own
        assert [link.split("|")[1] for link in re.findall(r"<([^>]*)>", text)] == [
            "Airflow run", "Validation of this run", "Dead letters of this run"]
    # its record: the one row of quarantined_files, whose source_file is the stray file's landing path
    assert [row[1] for row in psql(pipeline, pasted(foreign, "its record"), tmp_path)] == [str(stray)]
    assert psql(pipeline, pasted(new_column, "its values"), tmp_path) == [["<@U123> & more", "5"]]
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") == 5


def _with_slack(slack, call) -> None:
    import os

    before = os.environ.get("AIRFLOW_CONN_SLACK_ALERTS")
    os.environ["AIRFLOW_CONN_SLACK_ALERTS"] = slack.connection
    try:
        call()
    finally:
        if before is None:
            os.environ.pop("AIRFLOW_CONN_SLACK_ALERTS")
        else:
            os.environ["AIRFLOW_CONN_SLACK_ALERTS"] = before
