"""Spark entry point: ingest newly landed CSV files into PostgreSQL, once, and exit.

    spark-submit --py-files pipeline_code.zip spark_jobs/ingest_events.py --airflow-run-id RUN_ID

A Structured Streaming query over LANDING_DIR (``binaryFile`` source, so each file is read whole and its
header decides its schema version) with ``trigger(availableNow=True)``: it processes every file that
landed since the last run in batches of about MAX_BYTES_PER_TRIGGER bytes (~200k rows by default; a batch
of more than MAX_FILES_PER_TRIGGER files is staged in chunks of that many), commits its checkpoint in
CHECKPOINT_DIR, and stops. For each batch (``foreachBatch``):

1. unless the ledger says this (query id, batch id) is already staged (a replay after a crash): parse and
   type the rows, COPY them from the executors into ``staging_events`` (rows that cannot be typed carry
   their reason in ``parse_errors``), then record the batch and its unreadable files in the ledger;
2. move the batch's files out of LANDING_DIR: unreadable ones to QUARANTINE_DIR, the rest to
   ARCHIVE_DIR/YYYY-MM-DD/HH/ by landing time.

The Airflow tasks after this job audit the staged rows with Great Expectations and publish them.

Connection settings come from the driver's environment (POSTGRES_*), never from the command line; the
executors receive them with their tasks. The job runs unchanged on ``local[*]`` and on a standalone cluster
(``spark://host:7077``) as long as the executors see LANDING_DIR at the same path (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from include import faults
from include.contract.versions import CANONICAL
from include.names import INGEST_LOCK_PREFIX
from include.settings import Settings, get_settings
from include.storage.connections import with_connection
from include.storage.landing import SPARK_GLOB, archive_path, move_file, quarantine_path
from include.storage.locks import session_lock
from include.storage.staging import (
    clear_attempts,
    count_attempt,
    file_attempts,
    prepare_staging,
    quarantined_in_batch,
    record_staged_batch,
)
from spark_jobs.staging import PhaseClock, build_spark, stage_rows, typed_events
from spark_jobs.transforms import (
    PARSED_SCHEMA,
    local_path,
    parse_landed_files,
)

log = logging.getLogger("ingest_events")

# Spark partitions of one staging call are numbered below this; a batch staged in several calls (chunks, or
# file by file after a crash) numbers each call's partitions from a multiple of it.
_PARTITIONS_PER_CHUNK = 100_000

# The fixed schema of Spark's binaryFile source: each landed file is one row, read whole.
BINARY_FILE_SCHEMA = "path STRING, modificationTime TIMESTAMP, length BIGINT, content BINARY"


@dataclass
class BatchWriter:
    """The ``foreachBatch`` function: stage once, then move the files out of the landing dir."""

    settings: Settings
    airflow_run_id: str | None

    @property
    def query_id(self) -> str:
        # The query id is stable for the life of the checkpoint (a new checkpoint means a new id), which
        # makes (query id, batch id) a safe ledger key. Spark writes it before the first batch runs.
        metadata = json.loads((self.settings.checkpoint_dir / "metadata").read_text())
        return metadata["id"]

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        started_at = datetime.now(UTC)
        clock = PhaseClock()
        uris = {
            row.path: datetime.fromtimestamp(row.modificationTime.timestamp(), UTC)
            for row in batch.select("path", "modificationTime").collect()
        }
        files = {Path(local_path(uri)): landed for uri, landed in uris.items()}
        clock.lap("list files")
        if not files:
            return  # a replayed batch whose files were already moved: it is staged (see after_moves)
        query_id, settings = self.query_id, self.settings
        faults.reached("before_staging")
        if with_connection(settings, lambda conn: prepare_staging(conn, query_id, batch_id)):
            attempts = with_connection(settings, lambda conn: file_attempts(conn, [str(p) for p in files]))
            if any(attempts.values()):
                quarantined = self._stage_file_by_file(batch, batch_id, query_id, started_at, uris, attempts)
            else:
                with_connection(settings, lambda conn: count_attempt(conn, [str(p) for p in files]))
                clock.lap("ledger checks")
                quarantined = self._stage_in_chunks(batch, batch_id, query_id, started_at, sorted(uris), clock)
            recorded = with_connection(settings, lambda conn: record_staged_batch(
                conn, query_id=query_id, batch_id=batch_id, airflow_run_id=self.airflow_run_id,
                input_files=len(files), started_at=started_at, quarantined=quarantined,
                source_files=[str(p) for p in files],
            ))
            if not recorded:
                log.warning("batch %s of query %s was recorded by another attempt", batch_id, query_id)
                quarantined = with_connection(settings, lambda conn: quarantined_in_batch(conn, query_id, batch_id))
        else:
            log.warning("batch %s of query %s was staged before a restart; only moving its files", batch_id, query_id)
            quarantined = with_connection(settings, lambda conn: quarantined_in_batch(conn, query_id, batch_id))
        clock.lap("ledger record")
        faults.reached("after_ledger")
        self._move_files(files, quarantined)
        clock.lap("move files")
        log.info("batch %s: %d files staged (%d quarantined) in %.1f s (%s)", batch_id, len(files),
                 len(quarantined), (datetime.now(UTC) - started_at).total_seconds(), clock)
        faults.reached("after_moves")

    def _stage_in_chunks(self, batch, batch_id, query_id, started_at, uris, clock) -> list[tuple[str, str, str]]:
        """Stage the batch at once, or, when it holds more than MAX_FILES_PER_TRIGGER files (a byte-bounded
        batch of many small files), in chunks of that many files, so that one parse and COPY never holds more.
        Each chunk's Spark partitions are numbered apart (``partition_offset``), so no two share a key."""
        limit = self.settings.max_files_per_trigger
        if len(uris) <= limit:
            return stage_rows(batch, self.settings, query_id=query_id, batch_id=batch_id, started_at=started_at,
                              clock=clock)
        quarantined = []
        for chunk, first in enumerate(range(0, len(uris), limit)):
            quarantined += stage_rows(batch.filter(F.col("path").isin(uris[first:first + limit])), self.settings,
                                      query_id=query_id, batch_id=batch_id, started_at=started_at, clock=clock,
                                      partition_offset=chunk * _PARTITIONS_PER_CHUNK)
        return quarantined

    def _stage_file_by_file(self, batch, batch_id, query_id, started_at, uris, attempts) -> list[tuple[str, str, str]]:
        """After a crash in this batch: stage its files one at a time, so the file that crashes the job is
        the only one whose attempts grow, and quarantine a file once it has crashed POISON_FILE_MAX_ATTEMPTS
        times, letting the rest of the batch (and every later file) go on."""
        settings = self.settings
        limit = settings.poison_file_max_attempts
        quarantined = []
        log.warning("batch %s failed before (attempts per file: %s); staging it file by file", batch_id,
                    {Path(f).name: n for f, n in attempts.items() if n})
        for index, uri in enumerate(sorted(uris)):
            path = local_path(uri)
            if attempts.get(path, 0) >= limit:
                reason = (f"poison file: the ingest job crashed {attempts[path]} times while processing it "
                          f"(POISON_FILE_MAX_ATTEMPTS={limit}); quarantined so that later files can go on")
                quarantined.append((path, str(quarantine_path(self.settings.quarantine_dir, path, started_at)), reason))
                log.error("quarantining %s: %s", path, reason)
                continue
            with_connection(settings, lambda conn, path=path: count_attempt(conn, [path]))
            quarantined += stage_rows(batch.filter(F.col("path") == uri), settings, query_id=query_id,
                                      batch_id=batch_id, started_at=started_at,
                                      partition_offset=(index + 1) * _PARTITIONS_PER_CHUNK)
            with_connection(settings, lambda conn, path=path: clear_attempts(conn, [path]))
        return quarantined

    def _move_files(self, files: dict[Path, datetime], quarantined: list[tuple[str, str, str]]) -> None:
        to_quarantine = {Path(source): Path(target) for source, target, _ in quarantined}
        for source, landed_at in files.items():
            target = to_quarantine.get(source) or archive_path(self.settings.archive_dir, source, landed_at)
            move_file(source, target)


# A file of two events that exercises the parse and typing paths (one good row, one that fails typing).
_WARM_UP_CSV = (
    CANONICAL.header + "\n"
    "00000000-0000-4000-8000-000000000000,1,s,view,1,electronics,9.99,1,regular,2026-01-01T00:00:00Z,"
    "mobile,chrome,DE,Berlin,google,c1\n"
    "00000000-0000-4000-8000-000000000001,x,s,view,1,electronics,abc,1,regular,never,,,,,,\n"
).encode()


def warm_up(spark: SparkSession, settings: Settings) -> None:
    """Run a tiny in-memory file through the batch path (parse in the Python workers, typing, the Arrow
    round trips), writing nothing, before the stream starts.

    ``availableNow`` fixes the files of a run when the query starts; everything the first batch pays after
    that (Python workers starting, imports, JIT) adds to how long a file that just missed the listing waits
    for its rows to be queryable. Paid here, it comes before the listing instead (docs/performance.md)."""
    started = time.perf_counter()
    workers = max(spark.sparkContext.defaultParallelism, 1)
    # built in the JVM (no Python RDD), one file per partition so that every Python worker starts
    files = spark.range(0, workers, 1, workers).select(
        F.format_string("file:/warm-up/%d.csv", "id").alias("path"), F.lit(_WARM_UP_CSV).alias("content")
    )
    # parsed and cached first, then typed from the cache, as ``stage_rows`` does: one Python function per Spark
    # task, so only as many Python workers start as a batch will use (two chained in one task would start twice
    # as many, each holding its imports, ~200 MB, for the rest of the run)
    parsed = files.mapInArrow(parse_landed_files, PARSED_SCHEMA).persist()
    try:
        parsed.count()
        events = typed_events(parsed, datetime.now(UTC), settings.late_arrival_minutes)
        rows = events.mapInArrow(_count_rows, "rows long").collect()
    finally:
        parsed.unpersist()
    log.info("warm-up: %d rows through %d Python worker(s) in %.2f s", sum(r.rows for r in rows), workers,
             time.perf_counter() - started)


def _count_rows(batches):
    import pyarrow as pa

    yield pa.RecordBatch.from_pylist([{"rows": sum(batch.num_rows for batch in batches)}])


class IngestAlreadyRunning(RuntimeError):
    """Another ingest holds this checkpoint; two live queries must never share it."""


@contextmanager
def checkpoint_lock(settings: Settings) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock named after the checkpoint for the life of the query.

    A second ingest on the same checkpoint (a manual trigger during a scheduled run, ``make once`` next to
    ``make run``) waits up to INGEST_LOCK_WAIT_SECONDS, then fails with ``IngestAlreadyRunning``. The lock
    dies with its session, so a killed job never leaves it behind.
    """
    name = f"{INGEST_LOCK_PREFIX} {settings.checkpoint_dir.resolve()}"
    with session_lock(settings, name, wait_seconds=settings.ingest_lock_wait_seconds, poll_seconds=2,
                      on_wait=lambda _: log.info("another ingest is using %s; waiting", settings.checkpoint_dir)
                      ) as acquired:
        if not acquired:
            raise IngestAlreadyRunning(
                f"another ingest has been using {settings.checkpoint_dir} for over "
                f"{settings.ingest_lock_wait_seconds} s; this run gives up (Airflow will retry it)"
            )
        yield


def landing_stream(spark: SparkSession, settings: Settings) -> DataFrame:
    """The streaming source: each landed file whole, admitted per micro-batch up to MAX_BYTES_PER_TRIGGER
    bytes (at least one file), or up to MAX_FILES_PER_TRIGGER files when that is 0. Spark takes one of its
    two limits, never both; the file bound of a byte-bounded batch is kept by ``BatchWriter`` (chunks)."""
    reader = spark.readStream.format("binaryFile").schema(BINARY_FILE_SCHEMA).option("pathGlobFilter", SPARK_GLOB)
    if settings.max_bytes_per_trigger:
        reader = reader.option("maxBytesPerTrigger", int(settings.max_bytes_per_trigger))
    else:
        reader = reader.option("maxFilesPerTrigger", settings.max_files_per_trigger)
    return reader.load(str(settings.landing_dir))


def run(settings: Settings, airflow_run_id: str | None) -> None:
    for directory in (settings.landing_dir, settings.archive_dir, settings.quarantine_dir):
        directory.mkdir(parents=True, exist_ok=True)
    with checkpoint_lock(settings):
        spark = build_spark()
        try:
            warm_up(spark, settings)
            landed = landing_stream(spark, settings)
            query = (
                landed.writeStream.foreachBatch(BatchWriter(settings, airflow_run_id))
                .option("checkpointLocation", str(settings.checkpoint_dir))
                .trigger(availableNow=True)
                .start()
            )
            query.awaitTermination()
        finally:
            spark.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airflow-run-id", default=None, help="run id recorded as lineage on every row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(get_settings(), args.airflow_run_id)


if __name__ == "__main__":
    main()
