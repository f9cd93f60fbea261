"""Batch mode of the ingest job for backfills: stage exactly the archived files that landed in one window.

    spark-submit --py-files pipeline_code.zip spark_jobs/backfill_batch.py --airflow-run-id RUN_ID \\
        --window-start 2026-11-24T02:02:00+00:00 --window-end 2026-11-24T02:03:00+00:00

The driver lists the files of the window from ARCHIVE_DIR (``include.storage.landing.archived_files``: the hour
folders of the window, each file's landing time is its mtime), reads that explicit list with a batch
``binaryFile`` read, and stages the rows with the staging step the stream uses too
(``spark_jobs.staging.stage_rows``) under a new backfill batch id. Each row keeps the lineage name of its file (the
landing path), so the publish step can tell which stored rows the backfill owns.

It never starts a streaming query, never touches CHECKPOINT_DIR, and never moves a file; it holds no
checkpoint lock, so it can run next to the every-minute ingest.
"""

from __future__ import annotations

import argparse
import logging
import uuid
from datetime import UTC, datetime

from pyspark.sql import functions as F

from include.settings import Settings, get_settings
from include.storage.connections import with_connection
from include.storage.landing import archived_files, window
from include.storage.staging import discard_unpublished, record_backfill_batch
from spark_jobs.staging import build_spark, stage_rows

log = logging.getLogger("backfill_batch")


def run_backfill(settings: Settings, airflow_run_id: str, window_start: datetime, window_end: datetime) -> int:
    """Stage the window's archived files; return the number of rows staged."""
    start, end = window(window_start, window_end)
    started_at = datetime.now(UTC)
    files = archived_files(settings, start, end)
    dropped = with_connection(settings, lambda conn: discard_unpublished(conn, airflow_run_id))
    if dropped:
        log.warning("dropped %d unpublished backfill batch(es) an earlier attempt of %s staged", dropped, airflow_run_id)
    backfill_batch_id = str(uuid.uuid4())
    log.info("backfill %s: %d archived file(s) landed in [%s, %s)", backfill_batch_id, len(files), start, end)
    if files:
        spark = build_spark("ecommerce_events_backfill")
        try:
            lineage = spark.createDataFrame(
                [(str(f.path), f.source_file) for f in files], "archive_path string, source_file string"
            )
            landed = (
                spark.read.format("binaryFile")
                .load([str(f.path) for f in files])
                # Spark reports file:/a/b.csv (URL-encoded); the rows must carry the file's landing path
                .withColumn("archive_path", F.expr("url_decode(regexp_replace(path, '^file:(//)?', ''))"))
                .join(F.broadcast(lineage), "archive_path")
                .select(F.col("source_file").alias("path"), "content")
            )
            # Late arrival is judged against the window's end (when the original run processed these files),
            # so a backfill flags the same rows as the every-minute run did, whenever it runs.
            rejected = stage_rows(landed, settings, query_id=backfill_batch_id, batch_id=0, started_at=end)
        finally:
            spark.stop()
        for source, _, reason in rejected:
            log.warning("archived file %s cannot be read any more (%s); its rows are left as they are", source, reason)
    rows = with_connection(settings, lambda conn: record_backfill_batch(
        conn, backfill_batch_id=backfill_batch_id, airflow_run_id=airflow_run_id, start=start, end=end,
        files=files, started_at=started_at,
    ))
    log.info("backfill %s: %d file(s), %d row(s) staged: %s", backfill_batch_id, len(files), rows,
             ", ".join(f.source_file for f in files) or "none")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airflow-run-id", required=True, help="run id recorded as lineage on every row")
    parser.add_argument("--window-start", required=True, type=datetime.fromisoformat,
                        help="the run's data interval start (ISO-8601)")
    parser.add_argument("--window-end", required=True, type=datetime.fromisoformat,
                        help="the run's data interval end (ISO-8601)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_backfill(get_settings(), args.airflow_run_id, args.window_start, args.window_end)


if __name__ == "__main__":
    main()
