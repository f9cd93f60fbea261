"""`make run` as a user sees it: Airflow comes up, the scheduler runs the DAG on its every-minute schedule,
rows arrive, and Ctrl+C stops every process that was started (no orphans)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import psycopg
import pytest

from tests.fixtures.pipeline import PROJECT_ROOT, free_port

pytestmark = pytest.mark.integration


def scheduled_successes(pipeline) -> int:
    airflow_db = psycopg.conninfo.make_conninfo(pipeline.settings.postgres_conninfo, dbname="airflow")
    with psycopg.connect(airflow_db) as conn:
        return conn.execute(
            "SELECT count(*) FROM dag_run WHERE dag_id = 'ecommerce_events' "
            "AND run_type = 'scheduled' AND state = 'success'"
        ).fetchone()[0]


def test_make_run_schedules_the_dag_and_ctrl_c_leaves_nothing_behind(pipeline, tmp_path):
    pipeline.reset()
    pipeline.airflow_ready()
    api_port = free_port()
    env = {
        **pipeline.env,
        "AIRFLOW_API_PORT": str(api_port),
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "PIPELINE_LOG_DIR": str(tmp_path / "logs"),
        "GENERATOR_RATE_SECONDS": "2",
        "GENERATOR_BATCH_SIZE": "50",
    }
    # Runs of `airflow dags test` that earlier tests killed on purpose stay "running" in the metadata until
    # the scheduler's zombie detection fails them (minutes); with max_active_runs=1 they would hold back the
    # schedule. An operator marks them failed in the UI; here the same is done in the metadata database.
    airflow_db = psycopg.conninfo.make_conninfo(pipeline.settings.postgres_conninfo, dbname="airflow")
    with psycopg.connect(airflow_db) as conn:
        conn.execute("UPDATE dag_run SET state = 'failed' WHERE dag_id = 'ecommerce_events' AND state IN ('running', 'queued')")
    before = scheduled_successes(pipeline)
    with open(tmp_path / "run.log", "w") as log:
        run = subprocess.Popen(
            [sys.executable, "-m", "scripts.pipeline", "run"], env=env, cwd=PROJECT_ROOT,
            stdout=log, stderr=subprocess.STDOUT,
        )
    descendants: set[psutil.Process] = set()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            descendants |= set(psutil.Process(run.pid).children(recursive=True))
            if scheduled_successes(pipeline) > before:
                break
            time.sleep(2)
        output = (tmp_path / "run.log").read_text()
        assert run.poll() is None, output
        assert scheduled_successes(pipeline) > before, output
        assert f"Airflow UI: http://127.0.0.1:{api_port}" in output and "login: admin" in output
        assert pipeline.scalar("SELECT count(*) FROM ecommerce_events WHERE airflow_run_id LIKE 'scheduled__%%'") > 0
        assert len(descendants) >= 5  # api-server, scheduler, dag-processor, triggerer, generator (and children)
    finally:
        descendants |= set(psutil.Process(run.pid).children(recursive=True)) if run.poll() is None else set()
        run.send_signal(signal.SIGINT)
        code = run.wait(timeout=90)
    assert code == 0, (tmp_path / "run.log").read_text()
    _, alive = psutil.wait_procs(list(descendants), timeout=5)
    assert alive == [], [p.info if hasattr(p, "info") else p for p in alive]
    assert "all processes stopped" in (tmp_path / "run.log").read_text()
