"""Backfills, a window reprocessed from the Trigger form, and dead-letter replay, as an operator runs them,
against real PostgreSQL, Spark and Airflow (an api-server and a scheduler; `airflow backfill create`).

Thirty-six files land, one a minute two hours ago (their claim times are set so the windows are known), and go
through the every-minute path. Then:

- a backfill of thirty minutes under a lower MAX_PRICE: two runs re-derive its two chunks of fifteen minutes,
  one Spark job each, and close the other twenty-eight runs without starting a task, each with a note naming
  its covering run; every stored row above the new limit moves to the dead letters, once, with the backfill as
  its reason; nothing outside the window changes; the backfill is judged once, on its totals;
- a backfill under a still lower limit, cancelled once its first chunk is published, then created again for
  the runs the cancel failed: it finishes exactly the minutes not yet done, and no row moves twice;
- a window named on the Trigger form (REST API, and once in the UI's Trigger dialog), re-derived in one run
  with its reason on every move;
- the replay DAG: a dry run changes nothing; a real one waits at its approval step, where a rejection changes
  nothing and an approval publishes exactly the dead letters that pass the current rule, recording the approver.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, unquote

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


def land_minutes(pipeline, generator: EventGenerator, first: datetime, minutes: int) -> list[int]:
    """One generated file a minute for ``minutes`` minutes from ``first``, ingested by the every-minute path;
    their claim times are then set to those minutes (a delivery's landing time is when it was claimed), as if
    they had been claimed then. Returns the delivery ids, oldest first."""
    for _ in range(minutes):
        generator.write_batch(generator.generate_batch(120, "v3"), "v3", pipeline.landing_dir)
    assert pipeline.once(**QUALITY_OFF).returncode == 0
    ids = [i for (i,) in pipeline.query("SELECT delivery_id FROM deliveries ORDER BY delivery_id")]
    assert len(ids) == minutes
    with psycopg.connect(pipeline.settings.postgres_conninfo, autocommit=True) as conn:
        for index, delivery_id in enumerate(ids):
            conn.execute("UPDATE deliveries SET claimed_at = %s WHERE delivery_id = %s",
                         (first + timedelta(minutes=index, seconds=10), delivery_id))
    return ids


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


def rows_of(pipeline, deliveries: list[int]) -> dict[str, list[tuple]]:
    """Every stored row, dead letter and move of ``deliveries``, whole."""
    return {table: pipeline.query(f"SELECT * FROM {table} WHERE delivery_id = ANY(%s) ORDER BY 1", (deliveries,))
            for table in ("ecommerce_events", "dead_letter_events", "dead_letter_moves")}


def files_under(directory) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*") if p.is_file()}


def create_backfill(pipeline, env: dict, first: datetime, last: datetime, reprocess: str = "completed") -> int:
    """`airflow backfill create` for the schedule slots [first, last]; the backfill's id."""
    airflow(pipeline, env, "backfill", "create", "--dag-id", "ecommerce_events", "--from-date", first.isoformat(),
            "--to-date", last.isoformat(), "--reprocess-behavior", reprocess, "--max-active-runs", "1")
    return pipeline.airflow_query("SELECT max(id) FROM backfill WHERE dag_id = 'ecommerce_events'")[0][0]


def wait_for_backfill(pipeline, backfill_id: int, timeout: float = 600) -> dict[str, tuple]:
    """Wait until the scheduler marks the backfill complete; its runs: run id -> (state, started tasks)."""
    deadline = time.monotonic() + timeout
    while pipeline.airflow_query("SELECT completed_at FROM backfill WHERE id = %s", (backfill_id,))[0][0] is None:
        assert time.monotonic() < deadline, runs_of(pipeline, backfill_id)
        time.sleep(2)
    return runs_of(pipeline, backfill_id)


def runs_of(pipeline, backfill_id: int) -> dict[str, tuple]:
    """run id -> (state, how many of its tasks started, whether its backfill_ingest ran) of a backfill's runs."""
    return {run_id: (state, started, spark) for run_id, state, started, spark in pipeline.airflow_query(
        "SELECT r.run_id, r.state, count(*) FILTER (WHERE coalesce(t.hostname, '') <> ''), "
        "coalesce(bool_or(t.task_id = 'backfill_ingest' AND coalesce(t.hostname, '') <> ''), false) FROM dag_run r JOIN backfill_dag_run b ON b.dag_run_id = r.id LEFT JOIN task_instance t "
        "ON t.dag_id = r.dag_id AND t.run_id = r.run_id WHERE b.backfill_id = %s GROUP BY 1, 2", (backfill_id,))}


def set_variable(base: str, token: str, key: str, value: str) -> None:
    """Set an Airflow Variable through the REST API, as an operator would (a live threshold)."""
    exists = key in {v["key"] for v in rest(base, token, "GET", "/api/v2/variables?limit=100")["variables"]}
    if exists:
        rest(base, token, "PATCH", f"/api/v2/variables/{key}", {"key": key, "value": value})
    else:
        rest(base, token, "POST", "/api/v2/variables", {"key": key, "value": value})


def notes(base: str, token: str, run_ids) -> dict[str, str]:
    return {run_id: rest(base, token, "GET", f"/api/v2/dags/ecommerce_events/dagRuns/{quote(run_id, safe='')}")["note"]
            for run_id in run_ids}


def prices(pipeline, table: str, deliveries: list[int], above: float) -> set[tuple[int, int]]:
    """(delivery, line) of the rows of ``table`` from ``deliveries`` whose price is above ``above``."""
    price = "price" if table == "ecommerce_events" else "(typed_row->>'price')::numeric"
    status = "" if table == "ecommerce_events" else " AND status = 'open'"
    return set(pipeline.query(f"SELECT delivery_id, source_line FROM {table} WHERE delivery_id = ANY(%s) AND "
                              f"{price} > %s{status}", (deliveries, above)))


def reprocess_in_the_ui(browser, base: str, start: datetime, end: datetime, reason: str) -> str:
    """Trigger ecommerce_events from the UI's Trigger dialog with a window and a reason in its Run Parameters
    (the date-time pickers take a date and a time, in UTC); saves the filled form; returns the new run's id."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.get(f"{base}/dags/ecommerce_events")
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))).click()
    dialog = wait.until(EC.visibility_of_element_located(
        (By.XPATH, "//*[@role='dialog'][.//h2[starts-with(normalize-space(.), 'Trigger Dag')]]")))
    _, since, until = dialog.find_elements(By.CSS_SELECTOR, "[data-testid=datetime-input]")  # logical date first
    for picker, moment in ((since, start), (until, end)):
        picker.click()
        popover = wait.until(lambda d: next((p for p in d.find_elements(
            By.CSS_SELECTOR, "[data-scope=popover][data-part=content]") if p.is_displayed()), None))
        day, clock = popover.find_elements(By.TAG_NAME, "input")
        day.send_keys(f"{moment:%Y/%m/%d}")  # a complete date is taken at once, and the time set to 00:00
        clock.send_keys(Keys.CONTROL, "a")
        clock.send_keys(f"{moment:%H:%M}")
        dialog.find_element(By.TAG_NAME, "h2").click()  # closes the picker, not the dialog
        wait.until(lambda _, p=picker, m=moment: f"{m:%H:%M}" in p.text)
    dialog.find_element(By.ID, "element_reason").send_keys(reason)
    time.sleep(0.5)
    browser.save_screenshot(str(OUTPUT_DIR / "reprocess_trigger_form.png"))
    [button] = [b for b in dialog.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"]
    button.click()
    wait.until(lambda d: "/dags/ecommerce_events/runs/" in d.current_url)
    run_id = unquote(browser.current_url.split("/runs/", 1)[1].split("?")[0].split("/")[0])
    leave_the_ui(browser)
    return run_id


def wait_for_run(pipeline, run_id: str, timeout: float = 480) -> str:
    """The run's end state; on timeout, what it waits behind (every queued or running run)."""
    deadline = time.monotonic() + timeout
    while (state := pipeline.airflow_query("SELECT state FROM dag_run WHERE run_id = %s", (run_id,))[0][0]) \
            not in ("success", "failed"):
        assert time.monotonic() < deadline, (state, pipeline.task_states(run_id), pipeline.airflow_query(
            "SELECT run_id, run_type, state, start_date FROM dag_run WHERE state IN ('queued', 'running')"))
        time.sleep(2)
    return state


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


def test_backfills_rederive_in_chunks_close_their_runs_and_replay_publishes_what_passes(pipeline, tmp_path, browser):
    pipeline.reset()
    timings: dict[str, float] = {}
    first = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    generator = EventGenerator(61, invalid_ratio=0.05, max_price=10000)
    started = time.monotonic()
    deliveries = land_minutes(pipeline, generator, first, 36)
    timings["36 files through the every-minute path"] = time.monotonic() - started
    window, outside = deliveries[:30], deliveries[30:]   # the backfills re-derive the first thirty minutes
    stored_above_150 = prices(pipeline, "ecommerce_events", window, 150)
    assert stored_above_150
    outside_before = rows_of(pipeline, outside)
    archive_before = files_under(pipeline.archive_dir)
    checkpoint_before = files_under(pipeline.settings.checkpoint_dir)

    base, env = pipeline.api_server_env(BACKFILL_CHUNK_MINUTES="15", AIRFLOW_ADMIN_PASSWORD=PASSWORD)
    admin_password(Path(env["AIRFLOW_HOME"]), env)  # the login's password file, as `make run` writes it
    airflow(pipeline, env, "dags", "reserialize")
    airflow(pipeline, env, "dags", "unpause", "ecommerce_events")
    supervisor = supervised.Supervisor(env)
    try:
        supervisor.start("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", env["AIRFLOW_API_PORT"]])
        supervisor.start("scheduler", [AIRFLOW, "scheduler"])
        supervised._wait_for_http(f"{base}/api/v2/monitor/health", 180, supervisor)
        token = api_token(base, PASSWORD)

        # 1. thirty minutes under MAX_PRICE=150 (a live Variable), the default quality threshold
        set_variable(base, token, "ecommerce_max_price", "150")
        started = time.monotonic()
        backfill_1 = create_backfill(pipeline, env, first + timedelta(minutes=1), first + timedelta(minutes=30))
        runs = wait_for_backfill(pipeline, backfill_1)
        timings["backfill of 30 minutes"] = time.monotonic() - started
        assert len(runs) == 30
        covering = sorted(run_id for run_id, (_, _, spark) in runs.items() if spark)
        assert len(covering) == 2  # two chunks of fifteen minutes: two Spark jobs for thirty runs
        closed = [run_id for run_id, (state, started_tasks, _) in runs.items() if started_tasks == 0]
        assert len(closed) == 28 and {runs[r][0] for r in closed} == {"success"}  # not one task started
        run_notes = notes(base, token, runs)
        for run_id in covering:
            assert run_notes[run_id].startswith("Re-derived [") and f"backfill {backfill_1}" in run_notes[run_id]
        assert "Progress: 30 of 30 minute(s) in 2 chunk(s)" in run_notes[covering[-1]]
        assert {run_notes[r].split(",")[0] for r in closed} == {f"Covered by run {c}" for c in covering}
        # every stored row of the window above the new limit moved to the dead letters, once; nothing else moved
        moves = pipeline.query("SELECT direction, delivery_id, source_line, reason FROM dead_letter_moves")
        assert {(d, line) for _, d, line, _ in moves} == stored_above_150 and len(moves) == len(stored_above_150)
        assert {(direction, reason) for direction, _, _, reason in moves} == {("to_dead_letter", f"backfill {backfill_1}")}
        assert prices(pipeline, "ecommerce_events", window, 150) == set()
        # judged once, on its totals: the last covering run fails its gate, one alert names the backfill
        assert [r for r, (state, _, _) in runs.items() if state == "failed"] == [covering[-1]]
        alerts = [json.loads(line) for line in pipeline.settings.alert_file.read_text().splitlines()]
        [breach] = [a for a in alerts if a["key"].startswith("backfill_quality_breach:")]
        assert breach["key"] == f"backfill_quality_breach:backfill {backfill_1}"
        assert f"window {first:%Y-%m-%d %H:%M} to {first + timedelta(minutes=30):%Y-%m-%d %H:%M} UTC" in " ".join(
            breach["details"])
        # the other minutes, the archive and the streaming checkpoint are as they were
        assert rows_of(pipeline, outside) == outside_before
        assert files_under(pipeline.archive_dir) == archive_before
        assert files_under(pipeline.settings.checkpoint_dir) == checkpoint_before
        log_in(browser, base, PASSWORD)
        graph_screenshot(browser, base, covering[0], "graph_backfill_run.png",
                         ("choose_path", "backfill_ingest", "rederive", "ingest", "quality_gate"))

        # 2. under MAX_PRICE=100, cancelled once its first chunk is published, then created again for what failed
        set_variable(base, token, "ecommerce_max_price", "100")
        set_variable(base, token, "ecommerce_min_validity_rate", "0")
        between = prices(pipeline, "ecommerce_events", window, 100)
        assert between
        started = time.monotonic()
        backfill_2 = create_backfill(pipeline, env, first + timedelta(minutes=1), first + timedelta(minutes=30))
        deadline = time.monotonic() + 300
        while not pipeline.query("SELECT 1 FROM pipeline_backfill_ledger WHERE request_key = %s "
                                 "AND published_at IS NOT NULL", (f"backfill {backfill_2}",)):
            assert time.monotonic() < deadline, runs_of(pipeline, backfill_2)
            time.sleep(1)
        rest(base, token, "PUT", f"/api/v2/backfills/{backfill_2}/cancel")
        cancelled = wait_for_backfill(pipeline, backfill_2)  # complete at once: its queued runs failed
        while any(state == "running" for state, _, _ in cancelled.values()):  # its covering run ends its gate
            assert time.monotonic() < deadline, cancelled
            time.sleep(1)
            cancelled = runs_of(pipeline, backfill_2)
        assert {state for state, _, _ in cancelled.values()} <= {"success", "failed"}
        half = prices(pipeline, "ecommerce_events", window, 100)
        assert 0 < len(half) < len(between)  # the first chunk's rows moved, the rest wait: nothing half-moved
        backfill_3 = create_backfill(pipeline, env, first + timedelta(minutes=1), first + timedelta(minutes=30),
                                     reprocess="failed")
        again = wait_for_backfill(pipeline, backfill_3)
        timings["backfill cancelled and created again"] = time.monotonic() - started
        assert len(again) == sum(1 for state, _, _ in cancelled.values() if state == "failed")  # only those
        assert sum(1 for _, _, spark in again.values() if spark) == 1
        assert prices(pipeline, "ecommerce_events", window, 100) == set()
        moved = pipeline.query("SELECT delivery_id, source_line, count(*) FROM dead_letter_moves "
                               "WHERE reason IN (%s, %s) GROUP BY 1, 2", (f"backfill {backfill_2}", f"backfill {backfill_3}"))
        assert {(d, line) for d, line, _ in moved} == between and {n for _, _, n in moved} == {1}  # each once

        # 3. a window named on the Trigger form, through the REST API: re-derived in one run, its reason on the moves
        set_variable(base, token, "ecommerce_max_price", "10000")
        reason = "price limit back to 10000 after the supplier fixed its feed"
        moved_out = {(d, line) for d, line in stored_above_150 | between if d in window[:15]}
        started = time.monotonic()
        reprocess = rest(base, token, "POST", "/api/v2/dags/ecommerce_events/dagRuns", {
            "logical_date": None, "conf": {"window_start": first.isoformat(),
                                           "window_end": (first + timedelta(minutes=15)).isoformat(),
                                           "reason": reason}})["dag_run_id"]
        state = wait_for_run(pipeline, reprocess)
        timings["reprocess of a 15-minute window"] = time.monotonic() - started
        assert state == "success", pipeline.task_states(reprocess)
        back = pipeline.query("SELECT direction, reason, count(*) FROM dead_letter_moves WHERE airflow_run_id = %s "
                              "GROUP BY 1, 2", (reprocess,))
        assert back == [("to_events", reason, len(moved_out))]  # every row the limits moved out of it, back
        assert "Re-derived [" in notes(base, token, [reprocess])[reprocess]
        # ... and once from the UI's Trigger form: the last six minutes, which the new limit leaves as they are
        ui_run = reprocess_in_the_ui(browser, base, first + timedelta(minutes=30), first + timedelta(minutes=36),
                                     "checking the last six minutes")
        assert wait_for_run(pipeline, ui_run) == "success", pipeline.task_states(ui_run)
        assert pipeline.task_states(ui_run)["backfill_ingest"] == "success"
        assert notes(base, token, [ui_run])[ui_run].startswith(
            f"Re-derived [{first + timedelta(minutes=30):%Y-%m-%d %H:%M}, {first + timedelta(minutes=36):%Y-%m-%d %H:%M}) "
            f"UTC of reprocess {ui_run} (checking the last six minutes): 6 file(s), 720 row(s); 0 moved")

        airflow(pipeline, env, "dags", "pause", "ecommerce_events")  # no scheduled run competes with the replays below
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        # Dead-letter replay under MAX_PRICE=10000 (the Variable set above), through
        # the REST API as an operator would: a dry run changes nothing; a real one waits for an approval, a
        # rejected one changes nothing, an approved one publishes exactly the dead letters that pass now.
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
                        ("variables", "delete", "ecommerce_max_price"),  # later tests set MAX_PRICE themselves
                        ("variables", "delete", "ecommerce_min_validity_rate")):
            pipeline.runner.run(list(command), env, timeout=300)
        supervisor.stop()

    report = {"deliveries": len(deliveries), "moved_by_backfill_1": len(stored_above_150),
              "moved_by_backfills_2_3": len(between), "moved_back_by_reprocess": len(moved_out),
              "replay_published": passing_now, "replay_still_failing": still_failing,
              "seconds": {k: round(v, 1) for k, v in timings.items()}}
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
