"""Backfills and dead-letter replay as an operator runs them, against real PostgreSQL, Spark and Airflow.

Files land across three minutes (their landing times, i.e. mtimes, are set so the windows are known) and go
through the every-minute path (`make once`) under two MAX_PRICE values. Then the real CLI: an api-server and
a scheduler are started and `airflow backfill create` re-reads one minute under a third MAX_PRICE: exactly
that minute's files are re-read, rows move both ways between the dead-letter table and the events table,
each move is recorded, nothing else changes, and a second identical backfill changes no row. Finally the
replay DAG through the REST API: a dry run changes nothing; a real one waits at its approval step, where a
rejection changes nothing and an approval publishes exactly the dead letters that pass the current rule,
recording the approver.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from include.names import REPLAY_DAG_ID
from scripts import pipeline as supervised
from scripts.airflow_env import ADMIN_USER, admin_password
from scripts.generator import EventGenerator
from tests.fixtures.pipeline import PROJECT_ROOT
from tests.fixtures.ui import OUTPUT_DIR, api_token, graph_screenshot, leave_the_ui, log_in, rest

pytestmark = pytest.mark.integration

AIRFLOW = str(PROJECT_ROOT / ".venv" / "bin" / "airflow") if (PROJECT_ROOT / ".venv").exists() else "airflow"
PASSWORD = "backfill-test-Passw0rd"
QUALITY_OFF = {"MIN_VALIDITY_RATE": "0"}  # thresholds are changed on purpose here; the gate is tested elsewhere


def land(pipeline, generator: EventGenerator, landed_at: datetime) -> str:
    """Write one generated file into the landing dir; ``claimed_at`` sets its landing time once it is claimed."""
    path = generator.write_batch(generator.generate_batch(120, "v3"), "v3", pipeline.landing_dir)
    LANDED[str(path)] = landed_at
    return str(path)


LANDED: dict[str, datetime] = {}


def claimed_at_landing_times(pipeline) -> None:
    """Give the deliveries the landing times ``land`` was told (a delivery's landing time is when it was claimed:
    the test places them in minutes two hours ago, as if they had been claimed then)."""
    with psycopg.connect(pipeline.settings.postgres_conninfo, autocommit=True) as conn:
        for path, landed_at in LANDED.items():
            conn.execute("UPDATE deliveries SET claimed_at = %s WHERE source_file = %s", (landed_at, path))


def airflow(pipeline, env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`airflow <args>` with ``env``, in the session's Airflow CLI process (tests/fixtures/dag_runner.py)."""
    done = pipeline.runner.run(list(args), env, timeout)
    assert done.returncode == 0, f"airflow {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def tables(pipeline) -> dict[str, list[tuple]]:
    """Everything a backfill may change, row by row (processed_at and status times included)."""
    return {
        "events": pipeline.query("SELECT * FROM ecommerce_events ORDER BY event_id"),
        "dead_letters": pipeline.query(
            "SELECT id, event_id, source_file, source_line, status, error_kind, failed_rules, validation_errors, "
            "replay_attempts, status_changed_at, airflow_run_id FROM dead_letter_events ORDER BY id"),
        "moves": pipeline.query("SELECT * FROM dead_letter_moves ORDER BY id"),
    }


def files_under(directory) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


def backfill(pipeline, env: dict, logical_date: datetime) -> tuple[str, float]:
    """`airflow backfill create` for one schedule slot; wait for its run; return (its run id, seconds)."""
    airflow_db = psycopg.conninfo.make_conninfo(pipeline.settings.postgres_conninfo, dbname="airflow")
    stamp = logical_date.isoformat()
    started = time.monotonic()
    airflow(pipeline, env, "backfill", "create", "--dag-id", "ecommerce_events", "--from-date", stamp, "--to-date", stamp,
            "--reprocess-behavior", "completed", "--max-active-runs", "1")
    with psycopg.connect(airflow_db, autocommit=True) as conn:
        backfill_id = conn.execute("SELECT max(id) FROM backfill WHERE dag_id = 'ecommerce_events'").fetchone()[0]
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            runs = conn.execute(
                "SELECT run_type, state, data_interval_start, data_interval_end, run_id FROM dag_run "
                "WHERE backfill_id = %s", (backfill_id,)).fetchall()
            completed = conn.execute("SELECT completed_at FROM backfill WHERE id = %s", (backfill_id,)).fetchone()[0]
            if runs and all(state in ("success", "failed") for _, state, _, _, _ in runs) and completed:
                break  # the scheduler marks the backfill complete; only then may another one be created
            time.sleep(2)
    assert len(runs) == 1, runs
    run_type, state, interval_start, interval_end, run_id = runs[0]
    assert (run_type, state) == ("backfill", "success"), runs
    assert (interval_start, interval_end) == (logical_date - timedelta(minutes=1), logical_date)
    # the run took the backfill path; the every-minute path is there, skipped
    assert pipeline.task_states(run_id) == {
        **dict.fromkeys(("detect_work", "package_code", "choose_path", "backfill_ingest", "rederive", "quality_gate"),
                        "success"),
        **dict.fromkeys(("ingest", "audit", "publish"), "skipped")}
    return run_id, time.monotonic() - started


def run_path(run_id: str) -> str:
    return f"/api/v2/dags/{REPLAY_DAG_ID}/dagRuns/{quote(run_id, safe='')}"


def trigger_replay(pipeline, base: str, token: str, *, dry_run: bool, wait_for: str = "finished") -> str:
    """POST a run of the replay DAG (rule price_in_range); wait until it finished (or its approval waits)."""
    run_id = rest(base, token, "POST", f"/api/v2/dags/{REPLAY_DAG_ID}/dagRuns",
                  {"logical_date": None, "conf": {"rule": "price_in_range", "dry_run": dry_run}})["dag_run_id"]
    if wait_for == "finished":
        assert wait_for_replay(pipeline, run_id) == "success", pipeline.task_states(run_id, REPLAY_DAG_ID)
    else:
        deadline = time.monotonic() + 300
        while pipeline.task_states(run_id, REPLAY_DAG_ID).get("approve") != wait_for:
            assert time.monotonic() < deadline, pipeline.task_states(run_id, REPLAY_DAG_ID)
            time.sleep(2)
        wait_until_scheduler_saw_the_park(run_id)
    return run_id


def wait_until_scheduler_saw_the_park(run_id: str, timeout: float = 120) -> None:
    """Wait until the scheduler has handled the exit of the worker that parked ``approve``.

    Airflow 3.3.2 races when the answer comes first: the answer moves the task back to ``scheduled``, the scheduler
    starts it again under the same key, and the parked worker's late "finished" event then takes that key out of
    the executor, so the resumed task counts as killed externally. Its retry asks again, with the answer cleared,
    and the run waits for ever (seen once in CI). A person reads the form first; the test waits for the one log
    line that says the scheduler is past that point (``scheduler_job_runner.process_executor_events``)."""
    marker = f"TaskInstance Finished: dag_id={REPLAY_DAG_ID}, task_id=approve, run_id={run_id},"
    log = supervised.LOG_DIR / "scheduler.log"  # read now: load_env may have moved it since import
    deadline = time.monotonic() + timeout
    while not any(marker in line and "state=awaiting_input" in line
                  for line in log.read_text(errors="replace").splitlines()):
        assert time.monotonic() < deadline, f"the scheduler never handled the parked worker of {run_id} ({log})"
        time.sleep(1)


def answer(base: str, token: str, run_id: str, option: str) -> None:
    """Answer the approval step through the REST API (what the UI's form sends)."""
    done = rest(base, token, "PATCH", f"{run_path(run_id)}/taskInstances/approve/-1/hitlDetails",
                {"chosen_options": [option], "params_input": {}})
    assert done["chosen_options"] == [option]


def wait_for_replay(pipeline, run_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        [(state,)] = pipeline.airflow_query("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s",
                                            (REPLAY_DAG_ID, run_id))
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    raise AssertionError(f"{run_id} did not finish: {pipeline.task_states(run_id, REPLAY_DAG_ID)}")


def test_backfill_rereads_one_window_moves_rows_both_ways_and_replay_publishes_what_passes(pipeline, tmp_path,
                                                                                          browser):
    pipeline.reset()
    timings: dict[str, float] = {}
    # three landing minutes, two hours ago; the backfilled window is the middle one
    minute = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    window_end = minute + timedelta(minutes=2)
    generator = EventGenerator(61, invalid_ratio=0.05, max_price=10000)

    # Every-minute path, first under MAX_PRICE=40 (many rows dead-lettered), then under the default 10000.
    before_a = land(pipeline, generator, minute + timedelta(seconds=10))
    window_low = land(pipeline, generator, minute + timedelta(minutes=1, seconds=5))
    started = time.monotonic()
    assert pipeline.once(MAX_PRICE="40", **QUALITY_OFF).returncode == 0
    window_high = land(pipeline, generator, minute + timedelta(minutes=1, seconds=40))
    after_c = land(pipeline, generator, minute + timedelta(minutes=2, seconds=1))
    assert pipeline.once(**QUALITY_OFF).returncode == 0
    claimed_at_landing_times(pipeline)
    timings["two every-minute runs"] = time.monotonic() - started
    window_files = [window_low, window_high]
    outside = [before_a, after_c]
    stored_lines = pipeline.scalar(
        "SELECT (SELECT count(*) FROM ecommerce_events WHERE source_file = ANY(%s)) "
        "+ (SELECT count(*) FROM dead_letter_events WHERE source_file = ANY(%s))", (window_files, window_files))
    # what MAX_PRICE=150 must change in the window, computed from the rows as stored
    expected_in = pipeline.scalar(
        "SELECT count(*) FROM dead_letter_events WHERE source_file = %s AND failed_rules = '{price_in_range}' "
        "AND (typed_row->>'price')::numeric > 0 AND (typed_row->>'price')::numeric <= 150", (window_low,))
    expected_out = pipeline.scalar(
        "SELECT count(*) FROM ecommerce_events WHERE source_file = %s AND price > 150", (window_high,))
    assert expected_in > 0 and expected_out > 0
    outside_before = {k: [r for r in v if any(f in map(str, r) for f in outside)] for k, v in tables(pipeline).items()}
    archive_before = files_under(pipeline.archive_dir)
    checkpoint_before = files_under(pipeline.settings.checkpoint_dir)

    # The real CLI path: api-server + scheduler, `airflow backfill create`, under MAX_PRICE=150.
    base, env = pipeline.api_server_env(**QUALITY_OFF, MAX_PRICE="150", AIRFLOW_ADMIN_PASSWORD=PASSWORD)
    admin_password(Path(env["AIRFLOW_HOME"]), env)  # the login's password file, as `make run` writes it
    airflow(pipeline, env, "dags", "reserialize")
    airflow(pipeline, env, "dags", "unpause", "ecommerce_events")
    supervisor = supervised.Supervisor(env)
    try:
        supervisor.start("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", env["AIRFLOW_API_PORT"]])
        supervisor.start("scheduler", [AIRFLOW, "scheduler"])
        supervised._wait_for_http(f"{base}/api/v2/monitor/health", 180, supervisor)
        first_id, timings["backfill 1"] = backfill(pipeline, env, window_end)
        after_first = tables(pipeline)
        log_in(browser, base, PASSWORD)
        graph_screenshot(browser, base, first_id, "graph_backfill_run.png",
                         ("choose_path", "backfill_ingest", "rederive", "ingest", "quality_gate"))
        second_id, timings["backfill 2 (identical)"] = backfill(pipeline, env, window_end)
        after_second = tables(pipeline)

        ledger = pipeline.query(
            "SELECT input_files, input_rows, source_files, summary FROM pipeline_backfill_ledger ORDER BY staged_at")
        assert len(ledger) == 2
        for files, rows, sources, _ in ledger:  # exactly the window's files, every line of them
            assert (files, sorted(sources), rows) == (2, sorted(window_files), stored_lines)
        first, second = ledger[0][3], ledger[1][3]
        assert (first["moved_to_events"], first["moved_to_dead_letter"]) == (expected_in, expected_out)
        moves = pipeline.query("SELECT direction, cause, source_file, count(*) FROM dead_letter_moves GROUP BY 1, 2, 3")
        assert sorted(moves) == sorted([("to_events", "backfill", window_low, expected_in),
                                        ("to_dead_letter", "backfill", window_high, expected_out)])
        assert pipeline.scalar("SELECT count(*) FROM ecommerce_events WHERE source_file = %s AND price > 150",
                               (window_high,)) == 0
        assert pipeline.scalar(
            "SELECT count(*) FROM dead_letter_events WHERE source_file = %s AND status = 'resolved'", (window_low,)
        ) == expected_in
        # never both: no line is stored and an open dead letter at once; no event stored twice
        assert pipeline.scalar(
            "SELECT count(*) FROM ecommerce_events e JOIN dead_letter_events d USING (source_file, source_line) "
            "WHERE d.status = 'open'") == 0
        assert pipeline.scalar(
            "SELECT count(*) FROM (SELECT source_file, source_line FROM dead_letter_events "
            "GROUP BY 1, 2 HAVING count(*) > 1) t") == 0
        # the other minutes were not re-read: their rows are exactly as before (some would move under 150)
        assert {k: [r for r in v if any(f in map(str, r) for f in outside)] for k, v in after_first.items()
                if k != "moves"} == {k: v for k, v in outside_before.items() if k != "moves"}
        # batch mode: no file moved, the streaming checkpoint untouched
        assert files_under(pipeline.archive_dir) == archive_before
        assert files_under(pipeline.settings.checkpoint_dir) == checkpoint_before
        assert list(pipeline.landing_dir.glob("*.csv")) == []
        # the identical second backfill changed no row
        assert after_second == after_first
        assert (second["moved_to_events"], second["moved_to_dead_letter"], second["events_added"],
                second["dead_letters_added"], second["dead_letters_updated"]) == (0, 0, 0, 0, 0)

        airflow(pipeline, env, "dags", "pause", "ecommerce_events")  # no scheduled run competes with the replays below
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        # Dead-letter replay under the default MAX_PRICE (10000; the Variable overrides this stack's 150), through
        # the REST API as an operator would: a dry run changes nothing; a real one waits for an approval, a
        # rejected one changes nothing, an approved one publishes exactly the dead letters that pass now.
        token = api_token(base, PASSWORD)
        rest(base, token, "POST", "/api/v2/variables", {"key": "ecommerce_max_price", "value": "10000"})
        airflow(pipeline, env, "dags", "unpause", REPLAY_DAG_ID)
        passing_now = pipeline.scalar(
            "SELECT count(*) FROM dead_letter_events WHERE status = 'open' AND failed_rules = '{price_in_range}' "
            "AND (typed_row->>'price')::numeric > 0 AND (typed_row->>'price')::numeric <= 10000")
        selected = [i for (i,) in pipeline.query(
            "SELECT id FROM dead_letter_events WHERE status = 'open' AND 'price_in_range' = ANY(failed_rules)")]
        still_failing = len(selected) - passing_now
        assert passing_now > 0 and still_failing > 0
        before = tables(pipeline)

        started = time.monotonic()
        dry = trigger_replay(pipeline, base, token, dry_run=True)
        timings["replay dry run"] = time.monotonic() - started
        assert pipeline.task_states(dry, REPLAY_DAG_ID) == {"dry_run": "success", "wants_changes": "success",
                                                            "approve": "skipped", "apply": "skipped"}
        counted = rest(base, token, "GET", f"{run_path(dry)}/taskInstances/dry_run/xcomEntries/return_value")["value"]
        assert (counted["published"], counted["still_failing"]) == (passing_now, still_failing)
        assert tables(pipeline) == before

        rejected = trigger_replay(pipeline, base, token, dry_run=False, wait_for="awaiting_input")
        form = rest(base, token, "GET", f"{run_path(rejected)}/taskInstances/approve/-1/hitlDetails")
        assert form["options"] == ["Approve", "Reject"]
        assert f"| pass now: stored in `ecommerce_events` | **{passing_now}** |" in form["body"]
        assert form["subject"].startswith(f"Replay dead letters: {passing_now} would be stored, {still_failing} would")
        browser.get(f"{base}/dags/{REPLAY_DAG_ID}/runs/{quote(rejected, safe='')}/tasks/approve/required_actions")
        WebDriverWait(browser, 60).until(lambda d: "would be stored" in d.find_element(By.TAG_NAME, "body").text)
        time.sleep(1)
        browser.save_screenshot(str(OUTPUT_DIR / "replay_approval_form.png"))
        leave_the_ui(browser)
        answer(base, token, rejected, "Reject")
        assert wait_for_replay(pipeline, rejected) == "success"
        assert pipeline.task_states(rejected, REPLAY_DAG_ID)["apply"] == "skipped"
        assert tables(pipeline) == before  # rejected: nothing changed

        events_before = pipeline.scalar("SELECT count(*) FROM ecommerce_events")
        started = time.monotonic()
        approved = trigger_replay(pipeline, base, token, dry_run=False, wait_for="awaiting_input")
        answer(base, token, approved, "Approve")
        assert wait_for_replay(pipeline, approved) == "success"
        timings["replay (dry run, approval, apply)"] = time.monotonic() - started
        assert pipeline.scalar("SELECT count(*) FROM ecommerce_events") == events_before + passing_now
        assert pipeline.query("SELECT status, replay_attempts, count(*) FROM dead_letter_events WHERE id = ANY(%s) "
                              "GROUP BY 1, 2 ORDER BY 1", (selected,)) == [("open", 1, still_failing),
                                                                          ("replayed", 1, passing_now)]
        # every replayed row names its approver (the REST API's user)
        assert pipeline.query("SELECT approved_by, airflow_run_id, count(*) FROM dead_letter_moves "
                              "WHERE cause = 'replay' AND direction = 'to_events' GROUP BY 1, 2"
                              ) == [(ADMIN_USER, approved, passing_now)]
        assert pipeline.scalar("SELECT count(*) FROM dead_letter_events WHERE NOT id = ANY(%s) AND replay_attempts > 0",
                               (selected,)) == 0  # dead letters outside the selection were not touched
        assert pipeline.scalar(
            "SELECT count(*) FROM ecommerce_events e JOIN dead_letter_events d USING (source_file, source_line) "
            "WHERE d.status = 'open'") == 0
    finally:
        for command in (("dags", "pause", "ecommerce_events"), ("dags", "pause", REPLAY_DAG_ID),
                        ("variables", "delete", "ecommerce_max_price")):  # later tests set MAX_PRICE themselves
            pipeline.runner.run(list(command), env, timeout=300)
        supervisor.stop()

    report = {"window_files": len(window_files), "rows_reread": stored_lines, "moved_to_events": expected_in,
              "moved_to_dead_letter": expected_out, "replay_published": passing_now,
              "replay_still_failing": still_failing, "seconds": {k: round(v, 1) for k, v in timings.items()}}
    print(f"\nBACKFILL/REPLAY MEASURED: {json.dumps(report)}", file=sys.stderr)


def test_archive_retention_deletes_only_expired_hour_folders_and_waits_for_backfills(pipeline):
    from dataclasses import replace

    from include.ops.retention import delete_expired_archive
    from include.storage.deliveries import Delivery, archive_path
    from include.storage.locks import revalidation_lock

    pipeline.reset()
    settings = replace(pipeline.settings, archive_retention_days=2)
    now = datetime.now(UTC)

    def archived(name: str, claimed: datetime):
        with psycopg.connect(settings.postgres_conninfo, autocommit=True) as conn:
            delivery_id = conn.execute(
                "INSERT INTO deliveries (file_name, source_file, size_bytes, claimed_at, completed_by, status, path) "
                "VALUES (%s, %s, 10, %s, 'settled', 'archived', '') RETURNING delivery_id",
                (name, str(settings.landing_dir / name), claimed)).fetchone()[0]
        path = archive_path(settings, Delivery(delivery_id, name, "", 10, claimed, "archived", ""))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("event_id\n")
        return path

    old, fresh = archived("old.csv", now - timedelta(days=3)), archived("fresh.csv", now - timedelta(days=1))
    stray = settings.archive_dir / "notes" / "keep.csv"  # not the archive layout: never touched
    stray.parent.mkdir(parents=True)
    stray.write_text("x")

    with revalidation_lock(settings):  # a backfill is running: retention skips rather than pull its files
        skipped = delete_expired_archive(settings, now, lock_wait_seconds=1)
    assert skipped["deleted_files"] == 0 and old.exists()

    done = delete_expired_archive(settings, now)
    assert (done["deleted_files"], old.exists(), fresh.exists(), stray.exists()) == (1, False, True, True)
    assert not old.parent.parent.exists()  # the emptied day folder is gone too
    assert done["expired_deliveries"] == 1  # no backfill looks for the deleted file any more
    assert pipeline.query("SELECT file_name, status FROM deliveries ORDER BY file_name") == [
        ("fresh.csv", "archived"), ("old.csv", "expired")]
    assert delete_expired_archive(replace(settings, archive_retention_days=0), now)["deleted_files"] == 0
