"""
### Housekeeping: prune what grows with every run once it is only history

The every-minute DAG makes 1,440 runs a day, and the pipeline writes quality, ledger and alert rows per batch.
Once a day this DAG deletes what is older than its retention, one task per kind, so the Grid shows which one
did what (each task's return value lists the rows or files it deleted): `prune_airflow_metadata` (Airflow's
runs, task instances, XComs, ...; `AIRFLOW_METADATA_RETENTION_DAYS`), `prune_logs` (Airflow's log files, by
the same retention; the component logs and `ALERT_FILE` rotated above `COMPONENT_LOG_MAX_BYTES`, keeping
`COMPONENT_LOG_BACKUPS`) and `prune_pipeline_tables` (the pipeline's history tables,
`PIPELINE_HISTORY_RETENTION_DAYS`; replayed or resolved dead letters, `RESOLVED_DEAD_LETTER_RETENTION_DAYS`). A
retention of `0` keeps everything of its kind; stored events and open dead letters are never pruned.

What each task deletes, what it keeps and why that is safe: `docs/operations.md`, "Housekeeping".
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from include.airflow.dag_defaults import default_args
from include.names import HOUSEKEEPING_DAG_ID


@dag(
    dag_id=HOUSEKEEPING_DAG_ID,
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ecommerce", "maintenance"],
    default_args=default_args(retry_delay=timedelta(minutes=5)),
)
def ecommerce_housekeeping():
    @task
    def prune_airflow_metadata() -> dict:
        """Delete Airflow metadata older than AIRFLOW_METADATA_RETENTION_DAYS (`airflow db clean`)."""
        from include.airflow.settings_resolution import metadata_database_url, settings_from_connection
        from include.ops.housekeeping import prune_airflow_metadata as prune

        result = prune(settings_from_connection(live=False), metadata_database_url()).as_dict()
        print(f"Airflow metadata: {result}")
        return result

    @task
    def prune_logs() -> dict:
        """Delete Airflow log files older than AIRFLOW_METADATA_RETENTION_DAYS; rotate the component logs."""
        from pathlib import Path

        from airflow.sdk import conf

        from include.airflow.settings_resolution import settings_from_connection
        from include.ops.housekeeping import delete_expired_task_logs, rotate_component_logs

        settings = settings_from_connection(live=False)
        result = {
            "airflow_logs": delete_expired_task_logs(Path(conf.get("logging", "base_log_folder")), settings).as_dict(),
            "component_logs": rotate_component_logs(settings).as_dict(),
        }
        print(f"logs: {result}")
        return result

    @task
    def prune_pipeline_tables() -> dict:
        """Delete the pipeline's history rows older than their retention (published ledger rows, resolved
        dead letters, quality metrics, ...)."""
        from include.airflow.settings_resolution import settings_from_connection
        from include.ops.housekeeping import prune_pipeline_tables as prune

        result = prune(settings_from_connection(live=False)).as_dict()
        print(f"pipeline tables: {result}")
        return result

    # independent: one failing (say, the metadata database busy) does not hold the others back
    prune_airflow_metadata()
    prune_logs()
    prune_pipeline_tables()


ecommerce_housekeeping()
