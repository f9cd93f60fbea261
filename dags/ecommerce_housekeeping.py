"""
### Housekeeping: prune what grows with every run once it is only history

The every-minute DAG makes 1,440 runs a day, each with task instances, XComs, audit-log rows and log files,
and the pipeline writes a quality row, ledger rows and alert state per batch. Once a day this DAG deletes
what is older than its retention, one task per kind, so the Grid shows which one did what (each task's
return value lists the rows or files it deleted). A retention of `0` keeps everything of its kind.

| task | prunes | setting (default) |
| --- | --- | --- |
| `prune_airflow_metadata` | Airflow's `dag_run`, `task_instance` (+ history, XComs), `task_reschedule`, `log`, `job`, `asset_event` rows older than the retention, with `airflow db clean` on the database of the connection `airflow_metadata`; the latest scheduled run of each DAG stays | `AIRFLOW_METADATA_RETENTION_DAYS` (30) |
| `prune_logs` | Airflow's task, scheduler and dag-processor log files under `[logging] base_log_folder` last written before the same retention; `make run`'s component logs (`PIPELINE_LOG_DIR/*.log`) and `ALERT_FILE` above a size are rotated into `.1` .. `.N` (copy, then truncate in place) | `AIRFLOW_METADATA_RETENTION_DAYS` (30), `COMPONENT_LOG_MAX_BYTES` (50m), `COMPONENT_LOG_BACKUPS` (3) |
| `prune_pipeline_tables` | `data_quality_metrics`, `rule_violations`, `dead_letter_moves`; **published** rows of `pipeline_batch_ledger` (not the newest batch of a streaming query: the checkpoint may replay it) and `pipeline_backfill_ledger`; `file_attempts` of files gone; `pipeline_alerts` of conditions that recovered | `PIPELINE_HISTORY_RETENTION_DAYS` (90) |
| `prune_pipeline_tables` | `dead_letter_events` that were `replayed` or `resolved` (never `open` ones) | `RESOLVED_DEAD_LETTER_RETENTION_DAYS` (30) |

`prune_pipeline_tables` holds the same PostgreSQL locks as publishes, backfills and replays: when a backfill or
replay is running it skips (and says so in its return value) and tries again the next day. Stored events
(`ecommerce_events`), open dead letters, quarantined files and the hourly rollup are never pruned.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from include.names import HOUSEKEEPING_DAG_ID


@dag(
    dag_id=HOUSEKEEPING_DAG_ID,
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ecommerce", "maintenance"],
    default_args={"owner": "data-engineering", "retries": 2, "retry_delay": timedelta(minutes=5)},
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
