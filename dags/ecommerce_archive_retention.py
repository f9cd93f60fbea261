"""
### Archive retention: delete archived landing files older than `ARCHIVE_RETENTION_DAYS`

Processed files wait in `ARCHIVE_DIR/YYYY-MM-DD/HH/` (the date and hour they were claimed) so that backfills can re-read
them. Once a day this DAG deletes the hour folders that ended more than `ARCHIVE_RETENTION_DAYS` (default
30; `0` keeps everything) ago. It only ever deletes whole `YYYY-MM-DD/HH` folders of that layout, and it
holds the same PostgreSQL lock as backfills and dead-letter replays, so it never deletes a file a running
backfill is reading (if one runs, it skips and tries again the next day).

A backfill of a window older than the retention finds no file and changes nothing: the rows stored for that
window stay as they are (`detect_work` of the backfill run says so in its log).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

from include.airflow.dag_defaults import default_args
from include.names import RETENTION_DAG_ID


@dag(
    dag_id=RETENTION_DAG_ID,
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ecommerce", "archive", "maintenance"],
    default_args=default_args(retry_delay=timedelta(minutes=5)),
)
def ecommerce_archive_retention():
    @task
    def delete_expired_archive() -> dict:
        """Delete archive hour folders older than ARCHIVE_RETENTION_DAYS; report what was deleted."""
        from include.airflow.settings_resolution import settings_from_connection
        from include.ops.retention import delete_expired_archive as delete

        result = delete(settings_from_connection())
        print(f"archive retention: {result}")
        return result

    delete_expired_archive()


ecommerce_archive_retention()
