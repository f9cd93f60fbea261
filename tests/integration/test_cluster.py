"""`make cluster` as a user runs it: the same DAG, unchanged, on CeleryExecutor with two workers and a Spark
standalone cluster with two workers, all started by `python -m scripts.pipeline cluster` (the code behind
`make cluster`), one cluster for the whole module; its last test stops it with one Ctrl+C.

The cluster runs without the generator (`--no-generator`): each test lands its own files, known valid rows
and one file of rows that must be dead-lettered, so every run that reads files is one a test started, and no
run of the generator's files competes with a fault for the two cores. The happy path waits for the
scheduler's every-minute run; the fault tests trigger a run through the REST API as soon as their files have
landed, and kill a node while it ingests. Every known event id must be stored exactly once, every bad row
dead-lettered once, and the pipeline must recover by itself. The happy path also shows where the work ran
(Celery workers, an executor on each Spark worker).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from include.names import DAG_ID
from scripts.cluster import Cluster
from scripts.generator import EventGenerator
from scripts.pipeline import SCHEDULED_DAG_IDS
from tests.fixtures.pipeline import PROJECT_ROOT, free_port
from tests.fixtures.ui import answers, trigger_run

pytestmark = [pytest.mark.integration, pytest.mark.cluster, pytest.mark.timeout(1200)]

APP_NAME = "ecommerce_events_ingest"  # SparkSubmitOperator(name=...) in dags/ecommerce_events.py
TASKS = ("detect_work", "ingest", "audit", "publish")
# A Celery worker killed with its task leaves the task instance "running" until the scheduler misses its
# heartbeats: Airflow's default waits 300 s; a deployment that wants faster recovery sets this lower.
HEARTBEAT_TIMEOUT_SECONDS = 45
PASSWORD = "cluster-test-Passw0rd"


@dataclass
class RunningCluster:
    cluster: Cluster
    process: subprocess.Popen
    base: str
    logs: Path
    output: Path
    staging: Path
    started: dict[psutil.Process, str] = field(default_factory=dict)

    def note_processes(self) -> None:
        """Note every process of the tree and its command (tasks and spark-submit come and go)."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                if child not in self.started:
                    with contextlib.suppress(psutil.Error):
                        self.started[child] = " ".join(child.cmdline())

    def assert_alive(self) -> None:
        assert self.process.poll() is None, self.output.read_text()[-4000:]

    def worker_log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def running(pipeline, tmp_path_factory):
    pipeline.reset()
    pipeline.airflow_ready()
    root = tmp_path_factory.mktemp("cluster")
    cluster = Cluster(root=root / "cluster", redis_port=free_port(), spark_master_port=free_port(),
                      spark_master_ui_port=free_port())
    logs = root / "logs"
    base, env = pipeline.api_server_env(**{
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_SECONDS),
        "TASK_RETRY_DELAY_SECONDS": "5",
        "CLUSTER_DIR": str(cluster.root), "REDIS_PORT": str(cluster.redis_port),
        "SPARK_MASTER_PORT": str(cluster.spark_master_port), "SPARK_MASTER_UI_PORT": str(cluster.spark_master_ui_port),
        "PIPELINE_LOG_DIR": str(logs), "AIRFLOW_ADMIN_PASSWORD": PASSWORD, "MAX_FILES_PER_TRIGGER": "100",
    })
    pipeline.fail_unfinished_runs(DAG_ID)
    (root / "staging").mkdir()
    output = root / "cluster.log"
    with open(output, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "scripts.pipeline", "cluster", "--no-generator"], env=env,
                                   cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT)
    running = RunningCluster(cluster, process, base, logs, output, root / "staging")
    try:
        yield running
    finally:
        if process.poll() is None:  # the last test stops it; this is for a module that ended before it
            process.send_signal(signal.SIGINT)
            process.wait(timeout=120)
        pipeline.pause(SCHEDULED_DAG_IDS)


def land_known_files(pipeline, running: RunningCluster, prefix: str, seed: int) -> set[str]:
    """Four files (v1..v3) with duplicates and late rows, no broken row, and ``bad-<prefix>.csv``, a file of the
    generator's mix in which one row in five is broken; the distinct event ids of the four."""
    generator = EventGenerator(seed, invalid_ratio=0.0, duplicate_ratio=0.03, late_ratio=0.03)
    ids: set[str] = set()
    for index in range(4):
        version = ("v1", "v2", "v3", "v3")[index]
        batch = generator.generate_batch(300, version)
        ids |= {row["event_id"] for row in batch}
        staged = generator.write_batch(batch, version, running.staging)
        staged.rename(pipeline.landing_dir / f"{prefix}-{index}.csv")  # atomically, under a name the test knows
    noisy = EventGenerator(seed + 1000, invalid_ratio=0.2)  # ids of its own
    staged = noisy.write_batch(noisy.generate_batch(100, "v3"), "v3", running.staging)
    staged.rename(pipeline.landing_dir / f"bad-{prefix}.csv")
    return ids


def land_and_trigger(pipeline, running: RunningCluster, prefix: str, seed: int) -> tuple[set[str], float]:
    """Land the known files and trigger a run through the REST API at once, as an operator who does not want
    to wait for the next minute; (the known ids, when they landed). The run queues behind an active one
    (one active run at a time), and a scheduled run that starts first takes the files instead."""
    landed_at = time.time()
    expected = land_known_files(pipeline, running, prefix, seed)
    trigger_run(running.base, PASSWORD, DAG_ID)
    return expected, landed_at


def stored_ids(pipeline, prefix: str) -> list[str]:
    return [row[0] for row in pipeline.query(
        "SELECT event_id::text FROM ecommerce_events WHERE source_file LIKE %s", (f"%/{prefix}-%",))]


def wait_until_stored(pipeline, running: RunningCluster, prefix: str, expected: set[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while set(stored_ids(pipeline, prefix)) != expected or list(pipeline.landing_dir.glob(f"*{prefix}*")) \
            or list(pipeline.landing_dir.glob(f".claimed/*{prefix}*")):
        running.assert_alive()
        assert time.monotonic() < deadline, (len(stored_ids(pipeline, prefix)), len(expected),
                                             running.output.read_text()[-3000:])
        running.note_processes()
        time.sleep(3)


def assert_exactly_once(pipeline, prefix: str, expected: set[str]) -> None:
    """Every known id stored once, none dead-lettered, every file archived once, the bad file's broken rows
    dead-lettered; and over everything published so far: the metrics count what the tables hold, and no
    source line is dead-lettered twice."""
    assert sorted(stored_ids(pipeline, prefix)) == sorted(expected)
    assert pipeline.scalar("SELECT count(*) FROM dead_letter_events WHERE source_file LIKE %s", (f"%/{prefix}-%",)) == 0
    assert pipeline.scalar("SELECT count(*) FROM dead_letter_events WHERE source_file LIKE %s",
                           (f"%/bad-{prefix}.csv",)) > 0
    assert len(list(pipeline.settings.archive_dir.rglob(f"*__{prefix}-*.csv"))) == 4  # <delivery id>__<name>
    assert len(list(pipeline.settings.archive_dir.rglob(f"*__bad-{prefix}.csv"))) == 1
    # one statement, one snapshot: a publish commits its events, dead letters and metrics together
    [(valid, events, invalid, dead, twice)] = pipeline.query(
        "SELECT (SELECT sum(valid_records) FROM data_quality_metrics), (SELECT count(*) FROM ecommerce_events), "
        "(SELECT sum(invalid_records) FROM data_quality_metrics), (SELECT count(*) FROM dead_letter_events), "
        "(SELECT count(*) FROM (SELECT FROM dead_letter_events WHERE source_line IS NOT NULL "
        "GROUP BY source_file, source_line "
        "HAVING count(*) > 1) t)")
    assert (valid, invalid, twice) == (events, dead, 0)


def kill_node(running: RunningCluster, marker: str) -> list[str]:
    """SIGKILL the cluster process whose command holds ``marker`` and everything under it, as when its machine
    dies; the commands of what was killed."""
    node = next(proc for proc in psutil.Process(running.process.pid).children() if marker in " ".join(proc.cmdline()))
    tree = [node, *node.children(recursive=True)]
    commands = []
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            commands.append(" ".join(proc.cmdline()))
            proc.kill()
    return commands


def ingest_running(pipeline, running: RunningCluster, landed_at: float,
                   on_worker: int | None = None) -> str:
    """The run id of the first `ingest` that started after ``landed_at``, once its Spark application runs
    (with an executor on Spark worker ``on_worker``, when given)."""
    deadline = time.monotonic() + 600
    while True:
        running.assert_alive()
        assert time.monotonic() < deadline, running.output.read_text()[-3000:]
        rows = pipeline.airflow_query(
            "SELECT run_id FROM task_instance WHERE dag_id = %s AND task_id = 'ingest' AND state = 'running' "
            "AND start_date >= to_timestamp(%s)", (DAG_ID, landed_at))
        active = running.cluster.spark_status()["activeapps"]
        if on_worker is not None:
            active = [app for app in active if (running.cluster.spark_work_dir(on_worker) / app["id"]).exists()]
        if rows and active:
            return rows[0][0]
        time.sleep(0.5)


def task_attempts(pipeline, run_id: str, settled: tuple[str, ...] = (),
                  timeout: float = 180) -> dict[str, list[tuple[int, str]]]:
    """Every attempt of every task of the run: (try number, state), earlier attempts first.

    Waits (up to ``timeout``) until each task of ``settled`` has ended: a publish's rows are visible when its
    transaction commits, a moment before its task reports success (longer on a loaded machine)."""
    from airflow.utils.state import State

    deadline = time.monotonic() + timeout
    while True:
        attempts: dict[str, list[tuple[int, str]]] = {}
        for table in ("task_instance_history", "task_instance"):
            for task_id, try_number, state in pipeline.airflow_query(
                    f"SELECT task_id, try_number, state FROM {table} WHERE dag_id = %s AND run_id = %s "  # noqa: S608
                    "ORDER BY try_number", (DAG_ID, run_id)):
                attempts.setdefault(task_id, []).append((try_number, state))
        if all(attempts.get(task) and attempts[task][-1][1] in State.finished for task in settled) \
                or time.monotonic() > deadline:
            return attempts
        time.sleep(1)


def test_the_dag_runs_on_the_celery_workers_and_the_spark_cluster(pipeline, running):
    expected = land_known_files(pipeline, running, "cluster-test", 41)
    wait_until_stored(pipeline, running, "cluster-test", expected, 900)
    assert answers(f"{running.base}/api/v2/monitor/health")
    assert_exactly_once(pipeline, "cluster-test", expected)

    # the tasks of the run that stored them ran in the Celery workers, each task in one of them
    [[run_id]] = pipeline.query("SELECT DISTINCT airflow_run_id FROM ecommerce_events WHERE source_file LIKE %s",
                                ("%/cluster-test-%",))
    executed: dict[str, list[int]] = {}
    for worker in range(1, running.cluster.celery_workers + 1):
        text = running.worker_log(f"celery-worker-{worker}")
        for task in TASKS:
            if f"run_id={run_id}/task_id={task}/" in text:
                executed.setdefault(task, []).append(worker)
    assert {task: len(workers) for task, workers in executed.items()} == dict.fromkeys(TASKS, 1), executed
    # none failed first: no task ran before the api-server answered
    attempts = task_attempts(pipeline, run_id, settled=TASKS)
    assert {task: attempts[task] for task in TASKS} == dict.fromkeys(TASKS, [(1, "success")]), attempts

    # ... and the ingest as an application of the Spark master, with an executor on each Spark worker
    status = running.cluster.spark_status()
    assert status["aliveworkers"] == 2 and status["cores"] == 2
    apps = {app["id"] for app in status["completedapps"] if app["name"] == APP_NAME and app["state"] == "FINISHED"}
    assert apps, status["completedapps"]
    for worker in (1, 2):
        ran = {path.name for path in running.cluster.spark_work_dir(worker).iterdir()}
        assert ran & apps, f"no executor on spark-worker-{worker}"


def test_a_celery_worker_killed_while_it_runs_ingest_costs_no_row_and_no_duplicate(pipeline, running):
    """The node running `ingest` dies (SIGKILL to the worker and everything under it: the task, spark-submit,
    the Spark driver). The scheduler misses the task's heartbeats, fails the attempt and retries it on the
    other worker; the Supervisor starts the dead worker again. Nothing is lost, nothing is stored twice."""
    expected, landed_at = land_and_trigger(pipeline, running, "cluster-kill", 43)
    run_id = ingest_running(pipeline, running, landed_at)
    victim = next((worker for worker in range(1, running.cluster.celery_workers + 1)
                   if f"run_id={run_id}/task_id=ingest/" in running.worker_log(f"celery-worker-{worker}")), None)
    assert victim, "no Celery worker's log names the running ingest"
    killed = kill_node(running, f"worker{victim}@")
    assert any("SparkSubmit" in command for command in killed)  # the driver dies with the node
    killed_at = time.monotonic()

    wait_until_stored(pipeline, running, "cluster-kill", expected, 900)
    recovery = time.monotonic() - killed_at
    assert_exactly_once(pipeline, "cluster-kill", expected)
    assert f"celery-worker-{victim} exited (code -9); starting it again" in running.output.read_text()
    attempts = task_attempts(pipeline, run_id)
    assert attempts["ingest"][0][1] == "failed" and attempts["ingest"][-1][1] == "success", attempts
    print(f"\nCelery worker {victim} SIGKILLed during ingest of {run_id}: {len(expected)} known ids stored once, "
          f"0 dead letters, recovered in {recovery:.0f} s (heartbeat timeout {HEARTBEAT_TIMEOUT_SECONDS} s); "
          f"attempts: {attempts}")


def test_a_spark_worker_killed_while_the_ingest_runs_costs_no_row_and_no_duplicate(pipeline, running):
    """A Spark worker node dies (SIGKILL to the Worker and its executor) while the ingest's application runs:
    the application goes on with the executor on the other worker (Spark reruns what the lost one had), the
    Supervisor starts the worker again, and every row is stored once."""
    expected, landed_at = land_and_trigger(pipeline, running, "cluster-spark-kill", 47)
    run_id = ingest_running(pipeline, running, landed_at, on_worker=1)
    kill_node(running, str(running.cluster.spark_work_dir(1)))
    killed_at = time.monotonic()

    wait_until_stored(pipeline, running, "cluster-spark-kill", expected, 900)
    recovery = time.monotonic() - killed_at
    assert_exactly_once(pipeline, "cluster-spark-kill", expected)
    assert "spark-worker-1 exited (code -9); starting it again" in running.output.read_text()
    deadline = time.monotonic() + 120
    while running.cluster.spark_status()["aliveworkers"] != 2:  # the replacement registers with the master
        assert time.monotonic() < deadline, running.cluster.spark_status()
        time.sleep(2)
    attempts = task_attempts(pipeline, run_id)
    print(f"\nSpark worker 1 SIGKILLed during the ingest of {run_id}: {len(expected)} known ids stored once, "
          f"0 dead letters, stored {recovery:.0f} s after the kill; attempts: {attempts}")


# (the Supervisor's name for it, what its command line holds, the seed of its known files)
RESTARTED = {"redis": ("redis-server", 53), "scheduler": ("airflow scheduler", 59)}


@pytest.mark.parametrize("component", list(RESTARTED))
def test_redis_or_the_scheduler_restarted_while_the_ingest_runs_costs_no_row_and_no_duplicate(pipeline, running,
                                                                                             component):
    """The broker or the scheduler dies (SIGKILL) while `ingest` runs on a Celery worker and is started again
    by the Supervisor, as Compose's ``restart: unless-stopped`` does. The running task needs neither: it
    reports to the api-server. After Redis's restart the Celery workers reconnect and the run's next tasks
    are queued through it (its append-only file kept what was queued); after the scheduler's, the new one
    takes over the running DAG run and queues them. Nothing is retried, lost or stored twice."""
    marker, seed = RESTARTED[component]
    prefix = f"cluster-{component}"
    expected, landed_at = land_and_trigger(pipeline, running, prefix, seed)
    run_id = ingest_running(pipeline, running, landed_at)
    assert len(kill_node(running, marker)) >= 1
    killed_at = time.monotonic()

    wait_until_stored(pipeline, running, prefix, expected, 900)
    recovery = time.monotonic() - killed_at
    assert_exactly_once(pipeline, prefix, expected)
    assert f"{component} exited (code -9); starting it again" in running.output.read_text()
    attempts = task_attempts(pipeline, run_id)
    assert attempts["ingest"] == [(1, "success")], attempts
    print(f"\n{component} SIGKILLed and restarted during the ingest of {run_id}: {len(expected)} known ids stored "
          f"once, 0 dead letters, stored {recovery:.0f} s after the kill; attempts: {attempts}")


def test_ctrl_c_stops_every_process_of_the_cluster(running):
    running.note_processes()
    running.process.send_signal(signal.SIGINT)  # Ctrl+C
    assert running.process.wait(timeout=120) == 0, running.output.read_text()[-3000:]
    assert "all processes stopped" in running.output.read_text()
    commands = list(running.started.values())
    # a component by any of its titles: the api-server retitles itself ("airflow api_server -- host:… port:…")
    # seconds after it starts, so which title was noted depends on when the first note was taken
    for titles in (("redis-server",), ("deploy.master.Master",), ("celery worker --celery-hostname worker1@",),
                   ("celery worker --celery-hostname worker2@",), ("api-server", "api_server -- "), ("scheduler",)):
        assert any(title in command for command in commands for title in titles), (titles, commands)
    workers = {command.split("--work-dir ")[1].split()[0] for command in commands
               if "deploy.worker.Worker" in command and "--work-dir " in command}
    assert workers == {str(running.cluster.spark_work_dir(1)), str(running.cluster.spark_work_dir(2))}
    survivors = [(proc.pid, command) for proc, command in running.started.items()
                 if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE]
    assert survivors == []
