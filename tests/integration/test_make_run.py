"""`make run` as a user sees it: Airflow comes up, the scheduler runs the DAG on its every-minute schedule,
rows arrive, a run triggered by hand (REST API, `airflow dags trigger`, the UI's Trigger button; with or
without a logical date) processes what has landed, and Ctrl+C stops every process that was started (no
orphans).

One `python -m scripts.pipeline run` (api-server, scheduler, dag-processor, triggerer, generator) serves
the whole module; its last test stops it.

How a file is made to belong to one manual run, although the generator keeps landing files and the scheduler
starts a run every minute: the DAG allows one active run (`max_active_runs=1`), and while a run is active or
queued the scheduler creates no scheduled run. The test holds the PostgreSQL advisory lock every publish
takes, so the run in front waits in `publish`, after its ingest took the files it found. Then the file is
landed, the run is triggered (it queues behind), and the lock is let go for that one publish: the run in
front ends, and the triggered run is the next to read the landing directory. Every trigger is thereby
followed directly by the run it created, however long the trigger itself takes (the CLI, a browser).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import unquote

import psutil
import psycopg
import pytest

from include.names import DAG_ID, HOURLY_REVENUE_DAG_ID, PUBLISH_LOCK
from scripts.airflow_env import ADMIN_USER
from scripts.generator import EventGenerator
from tests.fixtures.browser import headless_chromium, log_in
from tests.fixtures.pipeline import PROJECT_ROOT
from tests.fixtures.ui import OUTPUT_DIR, answers, leave_the_ui, trigger_run

# the first test's setup pays for the whole chain of runs (a few minutes; on a loaded machine far more)
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

PASSWORD = "make-run-Passw0rd"
ACTIVE = ("queued", "running")
FINISHED = ("success", "failed")


@dataclass
class Stack:
    """The running `make run` (scripts.pipeline run) and what the test knows about it."""

    process: subprocess.Popen
    env: dict[str, str]
    base: str
    log_path: Path
    airflow_db: str
    scheduled_before: int = 0
    descendants: set[psutil.Process] = field(default_factory=set)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def output(self) -> str:
        return self.log_path.read_text()

    def metadata(self, sql: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(self.airflow_db) as conn:
            return conn.execute(sql, params).fetchall()

    def assert_alive(self) -> None:
        assert self.process.poll() is None, self.output()[-4000:]


def scheduled_successes(stack: Stack) -> int:
    return stack.metadata("SELECT count(*) FROM dag_run WHERE dag_id = %s AND run_type = 'scheduled' "
                          "AND state = 'success'", (DAG_ID,))[0][0]


@pytest.fixture(scope="module")
def make_run(pipeline, tmp_path_factory):
    pipeline.reset()
    pipeline.airflow_ready()
    logs = tmp_path_factory.mktemp("make-run")
    base, env = pipeline.api_server_env(
        AIRFLOW_ADMIN_PASSWORD=PASSWORD,
        PIPELINE_LOG_DIR=str(logs / "logs"),
        GENERATOR_RATE_SECONDS="2",
        GENERATOR_BATCH_SIZE="50",
        # the runs here follow each other for minutes, each finding ~30 files per minute: one Spark batch
        # for them, not eight (the session's 4 files per batch is what the contract tests need)
        MAX_FILES_PER_TRIGGER="100",
    )
    airflow_db = pipeline.airflow_conninfo
    pipeline.fail_unfinished_runs(DAG_ID)
    log_path = logs / "run.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "scripts.pipeline", "run"], env=env, cwd=PROJECT_ROOT,
            stdout=log, stderr=subprocess.STDOUT,
        )
    stack = Stack(process, env, base, log_path, airflow_db)
    stack.scheduled_before = scheduled_successes(stack)
    stop_watching = threading.Event()

    def watch_descendants() -> None:  # task processes, spark-submit and its JVM come and go: note each one
        while not stop_watching.is_set() and process.poll() is None:
            with contextlib.suppress(psutil.Error):  # a new set each time: readers may be iterating the old one
                stack.descendants = stack.descendants | set(psutil.Process(process.pid).children(recursive=True))
            stop_watching.wait(1)

    watcher = threading.Thread(target=watch_descendants, daemon=True)
    watcher.start()
    try:
        # up: the api-server answers (it starts first), and the scheduler, started once it did, has queued its
        # first scheduled run (before that, the DAG's next run time in the metadata is not yet the scheduler's)
        started = datetime.now(UTC)
        deadline = time.monotonic() + 240
        while not (answers(f"{base}/api/v2/monitor/health") and stack.metadata(
                "SELECT count(*) FROM dag_run WHERE dag_id = %s AND run_type = 'scheduled' AND queued_at > %s",
                (DAG_ID, started))[0][0]):
            stack.assert_alive()
            assert time.monotonic() < deadline, stack.output()[-4000:]
            time.sleep(1)
        yield stack
    finally:
        stop_watching.set()
        watcher.join(timeout=5)
        if process.poll() is None:  # the last test stops it; this is for a run that ended before it
            process.send_signal(signal.SIGINT)
            process.wait(timeout=90)


# --- the ways a run is triggered by hand ------------------------------------------------------------------------

def trigger_through_rest_api(stack: Stack, logical_date: datetime | None) -> str:
    """POST /api/v2/dags/{dag_id}/dagRuns; Airflow 3 requires the key, and allows null for a manual run."""
    return trigger_run(stack.base, PASSWORD, DAG_ID, logical_date)


def trigger_through_cli(stack: Stack) -> str:
    """`airflow dags trigger ecommerce_events`, no --logical-date, as an operator types it."""
    done = subprocess.run([str(Path(sys.executable).parent / "airflow"), "dags", "trigger", DAG_ID, "-o", "json"],
                          env=stack.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    [created] = json.loads(next(line for line in done.stdout.splitlines()[::-1] if line.startswith("[")))
    return created["dag_run_id"]


class TriggerDialog:
    """The UI's Trigger button on the DAG page and Airflow 3.3's dialog: Single Run, the logical date cleared."""

    def __init__(self, driver, stack: Stack) -> None:
        self.driver, self.stack = driver, stack

    def open(self) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC
        from selenium.webdriver.support.ui import WebDriverWait

        wait = WebDriverWait(self.driver, 60)
        self.driver.get(f"{self.stack.base}/dags/{DAG_ID}")
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))).click()
        self.dialog = wait.until(EC.visibility_of_element_located(
            (By.XPATH, "//*[@role='dialog'][.//h2[starts-with(normalize-space(.), 'Trigger Dag')]]")))
        single = self.dialog.find_element(By.CSS_SELECTOR, "input[type=radio][value=single]")
        assert single.is_selected()  # "Single Run", not "Backfill"
        picker = self.dialog.find_element(By.CSS_SELECTOR, "[data-testid=datetime-input]")
        prefilled = picker.text
        assert str(datetime.now(UTC).year) in prefilled, prefilled  # the dialog offers "now" as logical date
        picker.click()
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "button[aria-label='Clear start date']"))).click()
        self.dialog.find_element(By.TAG_NAME, "h2").click()  # closes the date picker, not the dialog
        wait.until(lambda _: picker.text != prefilled)
        assert str(datetime.now(UTC).year) not in picker.text, picker.text

    def open_and_click_trigger(self) -> str:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        self.open()
        self.driver.save_screenshot(str(OUTPUT_DIR / "trigger_dialog.png"))
        [button] = [b for b in self.dialog.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Trigger"]
        button.click()
        # the UI opens the new run's page
        WebDriverWait(self.driver, 60).until(lambda d: f"/dags/{DAG_ID}/runs/" in d.current_url)
        self.run_url = self.driver.current_url
        leave_the_ui(self.driver)  # back to the run's page once the run ended
        return unquote(self.run_url.split("/runs/", 1)[1].split("?")[0])


# --- the run in front, held in publish ---------------------------------------------------------------------------

class PublishGate:
    """Holds the lock every publish takes (session-level), so the active run waits in `publish`."""

    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (PUBLISH_LOCK,))

    def waiting(self) -> int:
        """Sessions waiting for the lock this gate holds (a publish transaction)."""
        return self.conn.execute(
            "SELECT count(*) FROM pg_locks w JOIN pg_locks h USING (locktype, database, classid, objid, objsubid) "
            "WHERE w.locktype = 'advisory' AND NOT w.granted AND h.granted AND h.pid = pg_backend_pid()"
        ).fetchone()[0]

    def let_one_through(self) -> None:
        """Release and take it again: PostgreSQL queues the new request behind the waiting publish, so that
        publish commits first, then the gate holds the lock again."""
        self.conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (PUBLISH_LOCK,))
        self.conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (PUBLISH_LOCK,))

    def close(self) -> None:
        self.conn.close()  # releases the lock


def wait_for_a_landing_slot(stack: Stack, gate: PublishGate, *, idle_ok: bool, timeout: float = 600) -> str | None:
    """Wait until a file landed now goes to the next triggered run, and no other. Returns the run in front.

    Either one run is active and waits in `publish` for the gate (its ingest is over), or, when the trigger
    takes milliseconds (``idle_ok``), no run is active and the scheduler will create none for a while."""
    deadline = time.monotonic() + timeout
    while True:
        stack.assert_alive()
        active = stack.metadata(
            "SELECT r.run_id, r.state, (SELECT t.state FROM task_instance t WHERE t.dag_id = r.dag_id "
            "AND t.run_id = r.run_id AND t.task_id = 'publish') FROM dag_run r WHERE r.dag_id = %s "
            "AND r.state IN ('queued', 'running')", (DAG_ID,))
        waiting = gate.waiting()
        if len(active) == 1 and active[0][1:] == ("running", "running") and waiting:
            return active[0][0]
        if waiting and len(active) > 1:
            # a run queued behind the one in front would read the file first (a scheduled run created while
            # the DAG looked idle to the scheduler): let the one in front end, and wait for the next
            gate.let_one_through()
            continue
        if not active and idle_ok and stack.metadata(
                "SELECT NOT is_paused AND coalesce(next_dagrun_create_after > now() + interval '10 seconds', true) "
                "FROM dag WHERE dag_id = %s", (DAG_ID,))[0][0]:
            return None
        assert time.monotonic() < deadline, f"no landing slot within {timeout:.0f} s; active runs: {active}"
        time.sleep(0.5)


def land_a_file(pipeline) -> list[str]:
    """A file of valid events; returns their event_ids."""
    generator = EventGenerator()
    rows = generator.generate_batch(25, "v3")
    generator.write_batch(rows, "v3", pipeline.landing_dir)
    return [row["event_id"] for row in rows]


@dataclass
class Triggered:
    run_id: str
    event_ids: list[str]
    logical_date: datetime | None
    triggered_by: str


WAYS = ("rest_api_without_logical_date", "rest_api_with_logical_date", "cli_without_logical_date",
        "ui_trigger_button_without_logical_date")


@pytest.fixture(scope="module")
def manual_runs(make_run, pipeline) -> dict[str, Triggered | BaseException]:
    """Each way of triggering in turn, each run queued directly behind the one before (see the module doc)."""
    stack = make_run
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    # a fresh logical date: not a full minute (those belong to scheduled runs), never used before
    logical_date = (datetime.now(UTC) - timedelta(hours=1)).replace(second=17)
    results: dict[str, Triggered | BaseException] = {}
    with headless_chromium() as driver:
        log_in(driver, stack.base, ADMIN_USER, PASSWORD, f"/dags/{DAG_ID}")
        leave_the_ui(driver)
        dialog = TriggerDialog(driver, stack)
        ways: dict[str, tuple[bool, Callable[[], str], datetime | None, str]] = {
            # name: (the trigger takes milliseconds, trigger, the run's logical date, its triggered_by)
            WAYS[0]: (True, lambda: trigger_through_rest_api(stack, None), None, "REST_API"),
            WAYS[1]: (True, lambda: trigger_through_rest_api(stack, logical_date), logical_date, "REST_API"),
            WAYS[2]: (False, lambda: trigger_through_cli(stack), None, "CLI"),
            WAYS[3]: (False, dialog.open_and_click_trigger, None, "UI"),
        }
        gate = PublishGate(pipeline.settings.postgres_conninfo)
        try:
            for name, (instant, trigger, expected_date, triggered_by) in ways.items():
                try:
                    wait_for_a_landing_slot(stack, gate, idle_ok=instant)
                    event_ids = land_a_file(pipeline)
                    results[name] = Triggered(trigger(), event_ids, expected_date, triggered_by)
                except Exception as error:  # noqa: BLE001 - reported by that way's test; the other ways go on
                    if name == WAYS[3]:
                        driver.save_screenshot(str(OUTPUT_DIR / "trigger_failure.png"))
                        (OUTPUT_DIR / "trigger_failure.html").write_text(driver.page_source)
                    results[name] = error
                finally:
                    gate.let_one_through()  # the run in front publishes and ends; the triggered one is next
        finally:
            gate.close()
        ui_run = results[WAYS[3]]
        if isinstance(ui_run, Triggered):  # the run's page once it ended, for whoever reads test-output/ui
            with contextlib.suppress(Exception):
                wait_for_the_end(stack, ui_run.run_id)
                driver.get(dialog.run_url)
                time.sleep(3)
                driver.save_screenshot(str(OUTPUT_DIR / "manual_run.png"))
    return results


def wait_for_the_end(stack: Stack, run_id: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while True:
        [(state,)] = stack.metadata("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (DAG_ID, run_id))
        if state in FINISHED:
            return state
        stack.assert_alive()
        assert time.monotonic() < deadline, f"{run_id} still {state} after {timeout:.0f} s"
        time.sleep(1)


def task_log(stack: Stack, run_id: str, task_id: str, try_number: int) -> Path:
    return Path(stack.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / \
        f"task_id={task_id}" / f"attempt={try_number}.log"


def why_it_failed(stack: Stack, run_id: str) -> str:
    """The failed tasks and the last error lines of their last try's log."""
    lines = []
    for task_id, try_number in stack.metadata(
            "SELECT task_id, try_number FROM task_instance WHERE dag_id = %s AND run_id = %s AND state = 'failed'",
            (DAG_ID, run_id)):
        log = task_log(stack, run_id, task_id, try_number)
        text = log.read_text(errors="replace") if log.exists() else ""
        errors = [line[:400] for line in text.splitlines() if "Error" in line or "error" in line][-5:]
        lines.append(f"{task_id} failed after {try_number} tries: " + (" | ".join(errors) or f"(no log at {log})"))
    return "\n".join(lines)


def assert_processed_what_had_landed(stack: Stack, pipeline, triggered: Triggered | BaseException) -> None:
    if isinstance(triggered, BaseException):
        raise triggered
    state = wait_for_the_end(stack, triggered.run_id)
    assert state == "success", f"{triggered.run_id} ended {state}:\n{why_it_failed(stack, triggered.run_id)}"
    [(logical_date, triggered_by)] = stack.metadata(
        "SELECT logical_date, triggered_by FROM dag_run WHERE dag_id = %s AND run_id = %s",
        (DAG_ID, triggered.run_id))
    assert (logical_date, str(triggered_by).upper()) == (triggered.logical_date, triggered.triggered_by)
    stored = dict(pipeline.query("SELECT airflow_run_id, count(*) FROM ecommerce_events WHERE event_id = ANY(%s) "
                                 "GROUP BY airflow_run_id", (triggered.event_ids,)))
    assert stored == {triggered.run_id: len(triggered.event_ids)}


def test_a_rest_api_run_without_logical_date_processes_what_has_landed(make_run, manual_runs, pipeline):
    assert_processed_what_had_landed(make_run, pipeline, manual_runs[WAYS[0]])


def test_a_rest_api_run_with_a_logical_date_processes_what_has_landed(make_run, manual_runs, pipeline):
    assert_processed_what_had_landed(make_run, pipeline, manual_runs[WAYS[1]])


def test_an_airflow_dags_trigger_run_without_logical_date_processes_what_has_landed(make_run, manual_runs, pipeline):
    assert_processed_what_had_landed(make_run, pipeline, manual_runs[WAYS[2]])


def test_a_run_from_the_ui_trigger_button_without_logical_date_processes_what_has_landed(
        make_run, manual_runs, pipeline):
    assert_processed_what_had_landed(make_run, pipeline, manual_runs[WAYS[3]])


def test_published_rows_run_the_hourly_revenue_dag_through_the_events_asset(make_run, pipeline):
    """The example downstream DAG is scheduled on the asset `ecommerce_events`: the scheduler runs it because
    publishes stored rows (run type asset_triggered, each run consuming their events), never on a clock, and
    its rollup then equals the hourly purchases in ecommerce_events. Exactly the runs that stored rows
    announced them (that a run storing nothing announces nothing: test_ecommerce_events_dag.py)."""
    stack = make_run
    deadline = time.monotonic() + 420
    while not stack.metadata("SELECT 1 FROM dag_run WHERE dag_id = %s AND state = 'success'", (HOURLY_REVENUE_DAG_ID,)):
        stack.assert_alive()
        assert time.monotonic() < deadline, stack.output()[-3000:]
        time.sleep(3)

    # hold every publish back, then let the downstream DAG catch up with the events already announced
    gate = PublishGate(pipeline.settings.postgres_conninfo)
    try:
        deadline = time.monotonic() + 300
        while stack.metadata(
            "SELECT (SELECT count(*) FROM asset_dag_run_queue WHERE target_dag_id = %s)"
            " + (SELECT count(*) FROM dag_run WHERE dag_id = %s AND state IN ('queued', 'running'))",
            (HOURLY_REVENUE_DAG_ID, HOURLY_REVENUE_DAG_ID))[0][0]:
            stack.assert_alive()
            assert time.monotonic() < deadline, "ecommerce_hourly_revenue did not catch up"
            time.sleep(2)
        rollup = pipeline.query("SELECT hour, purchases, units, revenue FROM hourly_revenue ORDER BY hour")
        expected = pipeline.query(
            "SELECT date_trunc('hour', event_time, 'UTC'), count(*), sum(quantity), sum(total_amount) "
            "FROM ecommerce_events WHERE event_type = 'purchase' GROUP BY 1 ORDER BY 1")
        publishers = {run for (run,) in pipeline.query(
            "SELECT l.published_by_run_id FROM pipeline_batch_ledger l JOIN data_quality_metrics m "
            "USING (spark_query_id, spark_batch_id) GROUP BY 1 HAVING sum(m.valid_records) > 0")}
        runs = stack.metadata("SELECT run_type, state FROM dag_run WHERE dag_id = %s", (HOURLY_REVENUE_DAG_ID,))
        consumed = stack.metadata(
            "SELECT e.source_run_id FROM dagrun_asset_event x JOIN asset_event e ON e.id = x.event_id "
            "JOIN dag_run d ON d.id = x.dag_run_id JOIN asset a ON a.id = e.asset_id "
            "WHERE d.dag_id = %s AND a.name = 'ecommerce_events' AND e.timestamp >= %s",
            (HOURLY_REVENUE_DAG_ID, stack.started))
        announced = stack.metadata(
            "SELECT e.source_run_id, e.source_task_id FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.name = 'ecommerce_events' AND e.source_dag_id = %s AND e.timestamp >= %s",
            (DAG_ID, stack.started))
    finally:
        gate.close()
    assert rollup and rollup == expected
    assert {run_type for run_type, _ in runs} == {"asset_triggered"}
    assert {state for _, state in runs} == {"success"}
    assert {run for run, _ in announced} == publishers
    assert {task for _, task in announced} == {"publish"}
    assert {run for (run,) in consumed} == publishers

    with headless_chromium() as driver:
        log_in(driver, stack.base, ADMIN_USER, PASSWORD, "/assets")
        wait_for_text(driver, "dead_letter_events")
        driver.save_screenshot(str(OUTPUT_DIR / "assets.png"))
        driver.get(f"{stack.base}/dags/{HOURLY_REVENUE_DAG_ID}")
        wait_for_text(driver, "refresh_rollup")
        driver.save_screenshot(str(OUTPUT_DIR / "hourly_revenue_dag.png"))


def wait_for_text(driver, text: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: text in d.find_element("tag name", "body").text)


def test_make_run_schedules_the_dag_and_ctrl_c_leaves_nothing_behind(make_run, pipeline):
    stack = make_run
    deadline = time.monotonic() + 240
    while scheduled_successes(stack) <= stack.scheduled_before and time.monotonic() < deadline:
        stack.assert_alive()
        time.sleep(2)
    output = stack.output()
    stack.assert_alive()
    assert scheduled_successes(stack) > stack.scheduled_before, output
    assert f"Airflow UI: {stack.base}" in output and "login: admin" in output
    assert pipeline.scalar("SELECT count(*) FROM ecommerce_events WHERE airflow_run_id LIKE 'scheduled__%%'") > 0
    # the scheduler imported Great Expectations once, at its start (include/airflow/preload.py); the audit
    # tasks it forked found it loaded
    audits = [task_log(stack, run_id, "audit", try_number).read_text(errors="replace") for run_id, try_number in
              stack.metadata("SELECT run_id, try_number FROM task_instance WHERE dag_id = %s AND task_id = 'audit' "
                             "AND run_id LIKE 'scheduled__%%' AND state = 'success'", (DAG_ID,))]
    audited = [log for log in audits if "audited " in log]
    assert audited, audits
    assert all("Great Expectations preloaded by the process that forked this task" in log for log in audited), \
        audited[-1][-3000:]
    descendants = stack.descendants | set(psutil.Process(stack.process.pid).children(recursive=True))
    assert len(descendants) >= 5  # api-server, scheduler, dag-processor, triggerer, generator (and children)
    stack.process.send_signal(signal.SIGINT)
    code = stack.process.wait(timeout=90)
    assert code == 0, stack.output()
    _, alive = psutil.wait_procs(list(descendants), timeout=5)
    assert alive == [], [p.info if hasattr(p, "info") else p for p in alive]
    assert "all processes stopped" in stack.output()
