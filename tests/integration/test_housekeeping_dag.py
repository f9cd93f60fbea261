"""`ecommerce_housekeeping` end to end: one real `airflow dags test` run prunes an old Airflow run, an old task
log, an old quality row and rotates an oversized component log, each in its own task, with the connections
`make run` defines (the metadata database reaches `airflow db clean` through `airflow_metadata`)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from include.names import HOUSEKEEPING_DAG_ID

pytestmark = pytest.mark.integration


def test_one_run_prunes_each_kind_in_its_own_task(pipeline, tmp_path):
    pipeline.airflow_ready()
    pipeline.reset()
    now = datetime.now(UTC)
    old = now - timedelta(days=200)
    airflow_db = psycopg.conninfo.make_conninfo(pipeline.settings.postgres_conninfo, dbname="airflow")
    with psycopg.connect(airflow_db) as conn:
        conn.execute("DELETE FROM dag_run WHERE dag_id = 'hk_dag_probe'")
        for run_id, started in (("old_1", old), ("old_2", old + timedelta(hours=1)), ("recent", now)):
            conn.execute("INSERT INTO dag_run (dag_id, run_id, run_type, state, start_date, run_after, clear_number,"
                         " span_status) VALUES ('hk_dag_probe', %s, 'scheduled', 'success', %s, %s, 0, 'ended')",
                         (run_id, started, started))
    with psycopg.connect(pipeline.settings.postgres_conninfo) as conn:
        for batch, at in (("old", old), ("recent", now)):
            conn.execute("INSERT INTO data_quality_metrics (batch_id, total_records, valid_records, recorded_at) "
                         "VALUES (%s, 1, 1, %s)", (batch, at))
    task_log = Path(pipeline.env["AIRFLOW__LOGGING__BASE_LOG_FOLDER"]) / "dag_id=hk_dag_probe" / "run_id=old_1" / "a.log"
    task_log.parent.mkdir(parents=True, exist_ok=True)
    task_log.write_text("old\n")
    os.utime(task_log, (old.timestamp(), old.timestamp()))
    component_log = tmp_path / "logs" / "scheduler.log"
    component_log.parent.mkdir()
    component_log.write_bytes(b"x" * 3000)

    done = pipeline.dags_test(HOUSEKEEPING_DAG_ID, PIPELINE_LOG_DIR=str(component_log.parent),
                              COMPONENT_LOG_MAX_BYTES="1k")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    with psycopg.connect(airflow_db) as conn:
        states = dict(conn.execute(
            "SELECT task_id, state FROM task_instance WHERE dag_id = %s AND run_id = "
            "(SELECT run_id FROM dag_run WHERE dag_id = %s ORDER BY id DESC LIMIT 1)",
            (HOUSEKEEPING_DAG_ID, HOUSEKEEPING_DAG_ID)).fetchall())
        runs = {r[0] for r in conn.execute("SELECT run_id FROM dag_run WHERE dag_id = 'hk_dag_probe'").fetchall()}
    assert states == {"prune_airflow_metadata": "success", "prune_logs": "success",
                      "prune_pipeline_tables": "success"}
    assert runs == {"recent"}
    assert [r[0] for r in pipeline.query("SELECT batch_id FROM data_quality_metrics")] == ["recent"]
    assert not task_log.exists()
    assert component_log.stat().st_size == 0 and (component_log.parent / "scheduler.log.1").stat().st_size == 3000
