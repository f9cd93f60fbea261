"""`make cluster` as a user runs it: the same DAG, unchanged, on CeleryExecutor with two workers and a Spark
standalone cluster with two workers, all started by `python -m scripts.pipeline cluster` (the code behind
`make cluster`) and all stopped by one Ctrl+C.

Known files are landed beside the generator's; the scheduler's every-minute runs must store each of their
event ids exactly once, with no dead letter, tasks run by the Celery workers and the ingest run as an
application of the Spark master with an executor on each Spark worker.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from include.names import DAG_ID
from scripts.cluster import Cluster
from scripts.generator import EventGenerator
from scripts.pipeline import SCHEDULED_DAG_IDS
from tests.fixtures.pipeline import PROJECT_ROOT, free_port
from tests.fixtures.ui import answers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

APP_NAME = "ecommerce_events_ingest"  # SparkSubmitOperator(name=...) in dags/ecommerce_events.py


def land_known_files(landing: Path, staging: Path) -> set[str]:
    """Four files (v1..v3) with duplicates and late rows, no broken row; the distinct event ids in them."""
    generator = EventGenerator(41, invalid_ratio=0.0, duplicate_ratio=0.03, late_ratio=0.03)
    ids: set[str] = set()
    for index in range(4):
        version = ("v1", "v2", "v3", "v3")[index]
        batch = generator.generate_batch(300, version)
        ids |= {row["event_id"] for row in batch}
        staged = generator.write_batch(batch, version, staging)
        staged.rename(landing / f"cluster-test-{index}.csv")  # atomically, under a name the test knows
    return ids


def test_the_dag_runs_on_celery_workers_and_a_spark_cluster_and_ctrl_c_stops_everything(pipeline, tmp_path):
    pipeline.reset()
    pipeline.airflow_ready()
    api_port = free_port()
    base = f"http://127.0.0.1:{api_port}"
    cluster = Cluster(root=tmp_path / "cluster", redis_port=free_port(), spark_master_port=free_port(),
                      spark_master_ui_port=free_port())
    logs = tmp_path / "logs"
    env = {
        **pipeline.env,
        "AIRFLOW_API_PORT": str(api_port), "AIRFLOW__API__PORT": str(api_port), "AIRFLOW__API__BASE_URL": base,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base}/execution/",
        "CLUSTER_DIR": str(cluster.root), "REDIS_PORT": str(cluster.redis_port),
        "SPARK_MASTER_PORT": str(cluster.spark_master_port), "SPARK_MASTER_UI_PORT": str(cluster.spark_master_ui_port),
        "PIPELINE_LOG_DIR": str(logs), "GENERATOR_RATE_SECONDS": "20", "GENERATOR_BATCH_SIZE": "50",
        "MAX_FILES_PER_TRIGGER": "100",
    }
    airflow_db = psycopg.conninfo.make_conninfo(pipeline.settings.postgres_conninfo, dbname="airflow")
    with psycopg.connect(airflow_db) as conn:  # runs that earlier tests killed on purpose would hold the schedule
        conn.execute("UPDATE dag_run SET state = 'failed' WHERE dag_id = %s AND state IN ('running', 'queued')",
                     (DAG_ID,))
    (tmp_path / "staging").mkdir()
    expected = land_known_files(pipeline.landing_dir, tmp_path / "staging")
    output = tmp_path / "cluster.log"
    with open(output, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "scripts.pipeline", "cluster"], env=env, cwd=PROJECT_ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
    started: dict[psutil.Process, str] = {}

    def note_processes() -> None:  # the tree changes (tasks, spark-submit): note every process and its command
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(process.pid).children(recursive=True):
                if child not in started:
                    with contextlib.suppress(psutil.Error):
                        started[child] = " ".join(child.cmdline())
    try:
        deadline = time.monotonic() + 900
        stored: set[str] = set()
        while stored != expected or list(pipeline.landing_dir.glob("cluster-test-*")):
            assert process.poll() is None, output.read_text()[-4000:]
            assert time.monotonic() < deadline, (len(stored), len(expected), output.read_text()[-3000:])
            note_processes()
            time.sleep(5)
            stored = {row[0] for row in pipeline.query(
                "SELECT event_id::text FROM ecommerce_events WHERE source_file LIKE %s", ("%/cluster-test-%",))}
        assert answers(f"{base}/api/v2/monitor/health")

        # exactly once: every known id stored once, none dead-lettered, every file archived
        assert pipeline.scalar("SELECT count(*) FROM ecommerce_events WHERE source_file LIKE %s",
                               ("%/cluster-test-%",)) == len(expected)
        assert pipeline.scalar("SELECT count(*) FROM dead_letter_events WHERE source_file LIKE %s",
                               ("%/cluster-test-%",)) == 0
        assert len(list(pipeline.settings.archive_dir.rglob("cluster-test-*.csv"))) == 4

        # the tasks of the run that stored them ran in the Celery workers
        [[run_id]] = pipeline.query("SELECT DISTINCT airflow_run_id FROM ecommerce_events WHERE source_file LIKE %s",
                                    ("%/cluster-test-%",))
        executed = {}
        for worker in range(1, cluster.celery_workers + 1):
            text = (logs / f"celery-worker-{worker}.log").read_text(errors="replace")
            for task in ("detect_work", "ingest", "audit", "publish"):
                if f"run_id={run_id}/task_id={task}/" in text:
                    executed.setdefault(task, []).append(worker)
        assert {task: len(workers) for task, workers in executed.items()} == dict.fromkeys(
            ("detect_work", "ingest", "audit", "publish"), 1), executed

        # ... and the ingest as an application of the Spark master, with an executor on each Spark worker
        status = cluster.spark_status()
        assert status["aliveworkers"] == 2 and status["cores"] == 2
        apps = [app for app in status["completedapps"] if app["name"] == APP_NAME and app["state"] == "FINISHED"]
        assert apps, status["completedapps"]
        for worker in (1, 2):
            ran = {path.name for path in cluster.spark_work_dir(worker).iterdir()}
            assert ran & {app["id"] for app in apps}, f"no executor on spark-worker-{worker}"
    finally:
        note_processes()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # Ctrl+C
        code = process.wait(timeout=120)
        with psycopg.connect(airflow_db) as conn:  # the session's other tests expect new DAGs paused
            conn.execute("UPDATE dag SET is_paused = true WHERE dag_id = ANY(%s)", (list(SCHEDULED_DAG_IDS),))
    assert code == 0, output.read_text()[-3000:]
    assert "all processes stopped" in output.read_text()
    commands = list(started.values())
    for component in ("redis-server", "deploy.master.Master", "celery worker --celery-hostname worker1@",
                      "celery worker --celery-hostname worker2@", "api-server", "scheduler"):
        assert any(component in command for command in commands), (component, commands)
    workers = {command.split("--work-dir ")[1].split()[0] for command in commands
               if "deploy.worker.Worker" in command and "--work-dir " in command}
    assert workers == {str(cluster.spark_work_dir(1)), str(cluster.spark_work_dir(2))}
    survivors = [(proc.pid, command) for proc, command in started.items()
                 if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE]
    assert survivors == []
