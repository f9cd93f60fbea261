"""The staging step both Spark entry points share: parsed records -> typed rows in ``staging_events``,
written by the executors with binary COPY.

The stream (``ingest_events``) stages each micro-batch under (Spark query id, batch id); the backfill
(``backfill_batch``) stages the archived deliveries of its window under (backfill batch id, 0). Pure transforms
live in ``spark_jobs.transforms``; this module adds the writes.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from pyspark.sql import DataFrame

from include.contract.columns import STAGED_COLUMNS
from include.settings import Settings
from include.storage.locks import Fence
from include.storage.staging_table import copy_arrow_to_staging
from spark_jobs.transforms import filter_file_records, with_late_arrival, with_total_amount, with_typed_columns

log = logging.getLogger("spark_jobs.stage")


def stage_rows(parsed: DataFrame, settings: Settings, *, query_id: str, batch_id: int, started_at: datetime,
               fence: Fence | None = None, clock: PhaseClock | None = None) -> int:
    """Type the row records of ``parsed`` and COPY them into ``staging_events`` under (``query_id``,
    ``batch_id``), from the executors; return the number of rows staged. ``started_at`` is the processing time
    late arrival is judged by; ``fence``, the every-minute ingest's, is checked by every COPY transaction."""
    clock = clock or PhaseClock()
    events = typed_events(parsed, started_at, settings.late_arrival_minutes)
    # The executors get the database settings inside this closure, which Spark pickles with each task: nothing
    # on the spark-submit command line, nothing in the Spark conf or UI, and no POSTGRES_* on the cluster's
    # workers (docs/scaling.md).

    def stage_partition(batches):
        import pyarrow as pa
        from pyspark import TaskContext

        from include import faults

        partition = TaskContext.get().partitionId()
        started = time.perf_counter()
        rows, copy_seconds = copy_arrow_to_staging(settings, query_id, batch_id, partition, batches, fence=fence)
        faults.reached("mid_staging")
        yield pa.RecordBatch.from_pylist([{"partition": partition, "staged": rows, "copy_s": copy_seconds,
                                           "task_s": time.perf_counter() - started}])

    results = events.mapInArrow(stage_partition, "partition long, staged long, copy_s double, task_s double").collect()
    staged = sum(r.staged for r in results)
    clock.lap("type + stage")
    log.info("batch %s: %d rows staged by %d partitions (%s)", batch_id, staged, len(results),
             ", ".join(f"#{r.partition} {r.staged} rows, task {r.task_s:.2f} s of which COPY {r.copy_s:.2f} s"
                       for r in results))
    return staged


def typed_events(parsed: DataFrame, processing_time: datetime, late_arrival_minutes: int) -> DataFrame:
    """Parsed records (file records left out) -> typed rows in ``STAGED_COLUMNS`` order."""
    return (
        parsed.transform(filter_file_records)
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
