"""The staging step both Spark entry points share: landed files (path, content) -> typed rows in
``staging_events``, written by the executors with COPY.

The stream (``ingest_events``) stages each micro-batch under (Spark query id, batch id); the backfill
(``backfill_batch``) stages the archived files of one window under (backfill batch id, 0). Pure transforms
live in ``spark_jobs.transforms``; this module adds the writes.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from pyspark.sql import DataFrame, SparkSession

from include.contract.columns import STAGED_COLUMNS
from include.settings import Settings
from include.storage.landing import quarantine_path
from include.storage.staging import copy_arrow_to_staging
from spark_jobs.transforms import (
    PARSED_SCHEMA,
    filter_file_errors,
    parse_landed_files,
    with_late_arrival,
    with_total_amount,
    with_typed_columns,
)

log = logging.getLogger("spark_jobs.staging")


def stage_rows(batch: DataFrame, settings: Settings, *, query_id: str, batch_id: int, started_at: datetime,
               partition_offset: int = 0, clock: PhaseClock | None = None) -> list[tuple[str, str, str]]:
    """Parse, type and COPY the rows of ``batch`` (path, content) into ``staging_events`` under
    (``query_id``, ``batch_id``), from the executors; return the files that cannot be read at all as
    (source file, quarantine path, reason). ``started_at`` is the processing time late arrival is judged by.

    The stream stages a micro-batch under (Spark query id, batch id); a backfill under (backfill batch id, 0)."""
    clock = clock or PhaseClock()
    parsed = batch.select("path", "content").mapInArrow(parse_landed_files, PARSED_SCHEMA).persist()
    try:
        rejected = {
            row.source_file: row.file_error
            for row in parsed.filter("file_error IS NOT NULL").select("source_file", "file_error").collect()
        }
        clock.lap("parse")
        events = typed_events(parsed, started_at, settings.late_arrival_minutes)
        # The executors get the database settings inside this closure, which Spark pickles with each
        # task: nothing on the spark-submit command line, nothing in the Spark conf or UI, and no
        # POSTGRES_* on the cluster's workers (docs/scaling.md).

        def stage_partition(batches):
            import pyarrow as pa
            from pyspark import TaskContext

            from include import faults

            partition = partition_offset + TaskContext.get().partitionId()
            started = time.perf_counter()
            rows, copy_seconds = copy_arrow_to_staging(settings, query_id, batch_id, partition, batches)
            faults.reached("mid_staging")
            yield pa.RecordBatch.from_pylist([{"partition": partition, "staged": rows, "copy_s": copy_seconds,
                                               "task_s": time.perf_counter() - started}])

        results = events.mapInArrow(stage_partition, "partition long, staged long, copy_s double, task_s double").collect()
        staged = sum(r.staged for r in results)
        clock.lap("type + stage")
    finally:
        parsed.unpersist()
    log.info("batch %s: %d rows staged by %d partitions (%s)", batch_id, staged, len(results),
             ", ".join(f"#{r.partition} {r.staged} rows, task {r.task_s:.2f} s of which COPY {r.copy_s:.2f} s"
                       for r in results))
    return [(source, str(quarantine_path(settings.quarantine_dir, source, started_at)), reason) for source, reason in rejected.items()]


def typed_events(parsed: DataFrame, processing_time: datetime, late_arrival_minutes: int) -> DataFrame:
    """Parsed records of readable files -> typed rows in ``STAGED_COLUMNS`` order."""
    return (
        parsed.transform(filter_file_errors)
        .transform(with_typed_columns)
        .transform(with_total_amount)
        .transform(lambda df: with_late_arrival(df, processing_time, late_arrival_minutes))
        .select(*STAGED_COLUMNS)
    )


class PhaseClock:
    """Wall time of each phase of a micro-batch, for the batch's log line (docs/performance.md)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()
        self._laps: list[tuple[str, float]] = []

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self._laps.append((phase, now - self._last))
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in self._laps)


def build_spark(app_name: str = "ecommerce_events_ingest") -> SparkSession:
    return (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        # A file moved to the archive by a batch that crashed before its checkpoint commit is simply gone
        # on replay; the ledger already holds that batch.
        .config("spark.sql.files.ignoreMissingFiles", "true")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.showConsoleProgress", "false")
        # A run lives for seconds and its story is in the Airflow task log; the web UI costs ~1 s of every
        # start (docs/performance.md).
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
