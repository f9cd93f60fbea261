"""Batch mode of the ingest job for backfills: stage exactly the archived deliveries of the chunk a run claimed.

    spark-submit --py-files pipeline_code.zip spark_jobs/backfill_batch.py --airflow-run-id RUN_ID

The chunk (a window of claim times, claimed by the run's ``detect_work``: include/publish/coverage.py) is read
from ``pipeline_backfill_ledger``. The delivery source in batch mode (``spark_jobs.delivery_source``) reads
the deliveries the ledger shows claimed in that window and still archived, each from its archived file, and the
rows are staged with the staging step the stream uses too (``spark_jobs.stage.stage_rows``) under the chunk's
backfill batch id. Each row keeps its delivery id and line, so the re-derive step knows exactly which stored
rows the backfill owns: two deliveries of one name in the window are two files. A chunk of hours of history
is one Spark job: one JVM, however many minutes it holds.

It never starts a streaming query, never touches CHECKPOINT_DIR, and never moves a file; it holds no
checkpoint lock, so it can run next to the every-minute ingest.
"""

from __future__ import annotations

import argparse
import logging

from include.settings import Settings, get_settings
from include.storage.connections import with_connection
from include.storage.staging_table import claimed_chunk, discard_staged, record_backfill_batch
from spark_jobs.delivery_source import SOURCE_NAME
from spark_jobs.session import build_spark, die_with_parent
from spark_jobs.stage import stage_rows
from spark_jobs.transforms import file_records

log = logging.getLogger("backfill_batch")


def run_backfill(settings: Settings, airflow_run_id: str) -> int:
    """Stage the run's chunk; return the number of rows staged."""
    chunk = with_connection(settings, lambda conn: claimed_chunk(conn, airflow_run_id))
    if chunk is None:
        log.info("run %s has no chunk to stage (covered by another run)", airflow_run_id)
        return 0
    backfill_batch_id, start, end = chunk
    dropped = with_connection(settings, lambda conn: discard_staged(conn, backfill_batch_id))
    if dropped:
        log.warning("dropped %d rows an earlier attempt of %s staged", dropped, airflow_run_id)
    spark = build_spark("ecommerce_events_backfill")
    try:
        parsed = (spark.read.format(SOURCE_NAME).option("window_start", start.isoformat())
                  .option("window_end", end.isoformat())
                  .option("parallelism", str(max(spark.sparkContext.defaultParallelism, 1))).load().persist())
        try:
            files = [f for f in parsed.transform(file_records).collect() if f.delivery_id is not None]
            log.info("backfill chunk %s: %d archived delivery(ies) claimed in [%s, %s)", backfill_batch_id,
                     len(files), start, end)
            for f in files:
                if f.file_error:
                    log.warning("archived delivery %s (%s) cannot be read any more (%s); its rows are left as they are",
                                f.delivery_id, f.source_file, f.file_error)
            if files:
                # Late arrival is judged against the chunk's end, so a backfill flags late rows as an ingest of
                # that time did, whenever it runs.
                stage_rows(parsed, settings, query_id=backfill_batch_id, batch_id=0, started_at=end)
        finally:
            parsed.unpersist()
    finally:
        spark.stop()
    read = [f for f in files if not f.file_error]
    rows = with_connection(settings, lambda conn: record_backfill_batch(
        conn, backfill_batch_id=backfill_batch_id, deliveries=[f.delivery_id for f in read],
        source_files=sorted({f.source_file for f in read})))
    log.info("backfill chunk %s: %d delivery(ies), %d row(s) staged", backfill_batch_id, len(read), rows)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airflow-run-id", required=True, help="the run whose claimed chunk is staged")
    args = parser.parse_args(argv)
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_backfill(get_settings(), args.airflow_run_id)


if __name__ == "__main__":
    main()
