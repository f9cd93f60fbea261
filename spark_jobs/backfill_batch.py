"""Batch mode of the ingest job for backfills: stage exactly the archived deliveries claimed in one window.

    spark-submit --py-files pipeline_code.zip spark_jobs/backfill_batch.py --airflow-run-id RUN_ID \\
        --window-start 2026-11-24T02:02:00+00:00 --window-end 2026-11-24T02:03:00+00:00

The delivery source in batch mode (``spark_jobs.delivery_source.DeliveryBatchReader``) reads the deliveries the
ledger shows claimed in the window and still archived, each from its archived file, and the rows are staged with
the staging step the stream uses too (``spark_jobs.stage.stage_rows``) under a new backfill batch id. Each row
keeps its delivery id and line, so the re-derive step knows exactly which stored rows the backfill owns: two
deliveries of one name in the window are two files.

It never starts a streaming query, never touches CHECKPOINT_DIR, and never moves a file; it holds no
checkpoint lock, so it can run next to the every-minute ingest.
"""

from __future__ import annotations

import argparse
import logging
import uuid
from datetime import UTC, datetime

from include.settings import Settings, get_settings
from include.storage.connections import with_connection
from include.storage.deliveries import window
from include.storage.staging_table import discard_unpublished, record_backfill_batch
from spark_jobs.delivery_source import SOURCE_NAME
from spark_jobs.session import build_spark, die_with_parent
from spark_jobs.stage import stage_rows
from spark_jobs.transforms import file_records

log = logging.getLogger("backfill_batch")


def run_backfill(settings: Settings, airflow_run_id: str, window_start: datetime, window_end: datetime) -> int:
    """Stage the window's archived deliveries; return the number of rows staged."""
    start, end = window(window_start, window_end)
    started_at = datetime.now(UTC)
    dropped = with_connection(settings, lambda conn: discard_unpublished(conn, airflow_run_id))
    if dropped:
        log.warning("dropped %d unpublished backfill batch(es) an earlier attempt of %s staged", dropped, airflow_run_id)
    backfill_batch_id = str(uuid.uuid4())
    spark = build_spark("ecommerce_events_backfill")
    try:
        parsed = (spark.read.format(SOURCE_NAME).option("window_start", start.isoformat())
                  .option("window_end", end.isoformat())
                  .option("parallelism", str(max(spark.sparkContext.defaultParallelism, 1))).load().persist())
        try:
            files = [f for f in parsed.transform(file_records).collect() if f.delivery_id is not None]
            log.info("backfill %s: %d archived delivery(ies) claimed in [%s, %s)", backfill_batch_id, len(files),
                     start, end)
            for f in files:
                if f.file_error:
                    log.warning("archived delivery %s (%s) cannot be read any more (%s); its rows are left as they are",
                                f.delivery_id, f.source_file, f.file_error)
            if files:
                # Late arrival is judged against the window's end (when the original run processed these files),
                # so a backfill flags the same rows as the every-minute run did, whenever it runs.
                stage_rows(parsed, settings, query_id=backfill_batch_id, batch_id=0, started_at=end)
        finally:
            parsed.unpersist()
    finally:
        spark.stop()
    read = [f for f in files if not f.file_error]
    rows = with_connection(settings, lambda conn: record_backfill_batch(
        conn, backfill_batch_id=backfill_batch_id, airflow_run_id=airflow_run_id, start=start, end=end,
        deliveries=[f.delivery_id for f in read], source_files=[f.source_file for f in read], started_at=started_at,
    ))
    log.info("backfill %s: %d delivery(ies), %d row(s) staged", backfill_batch_id, len(read), rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airflow-run-id", required=True, help="run id recorded as lineage on every row")
    parser.add_argument("--window-start", required=True, type=datetime.fromisoformat,
                        help="the run's data interval start (ISO-8601)")
    parser.add_argument("--window-end", required=True, type=datetime.fromisoformat,
                        help="the run's data interval end (ISO-8601)")
    args = parser.parse_args(argv)
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_backfill(get_settings(), args.airflow_run_id, args.window_start, args.window_end)


if __name__ == "__main__":
    main()
