"""Spark entry point: ingest every claimed delivery into ``staging_events``, once, and exit.

    spark-submit --py-files pipeline_code.zip spark_jobs/ingest_events.py --airflow-run-id RUN_ID

Under the checkpoint's lock, with a fresh fence epoch (``include.storage.locks``):

1. claim what has become complete in LANDING_DIR since the detect task looked (``include.storage.deliveries``:
   this look comes right before the query starts, after the JVM's start), and finish the moves to the archive
   or quarantine a crash interrupted;
2. a Structured Streaming query over the delivery ledger (``spark_jobs.delivery_source``) with
   ``trigger(availableNow=True)`` and its checkpoint in CHECKPOINT_DIR: every claimed delivery, in micro-batches
   of at most MAX_FILES_PER_TRIGGER files and about MAX_BYTES_PER_TRIGGER bytes. For each batch
   (``foreachBatch``, ``BatchWriter``):

   a. read and parse its deliveries once (cached), and learn them from their file records;
   b. unless the ledger holds this (query id, batch id) already, COPY the typed rows from the executors into
      ``staging_events`` (rows that cannot be typed carry their reason in ``parse_errors``);
   c. record the batch in one transaction: its ledger row, its deliveries ``staged``, the unreadable ones
      ``quarantined`` with their reasons;
   d. move the files out of ``.claimed/``: to ARCHIVE_DIR/YYYY-MM-DD/HH/ by claim time, or to QUARANTINE_DIR.

The Airflow tasks after this job audit the staged rows with Great Expectations and publish them.

Connection settings come from the driver's environment (POSTGRES_*), never from the command line; the
executors receive them with their tasks. The job runs unchanged on ``local[*]`` and on a standalone cluster
(``spark://host:7077``) as long as the executors see LANDING_DIR at the same path (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from include import faults
from include.contract.versions import CANONICAL
from include.names import INGEST_LOCK_PREFIX
from include.settings import Settings, get_settings
from include.storage import deliveries
from include.storage.connections import with_connection
from include.storage.locks import Fence, HeldLock, IngestLockLost, session_lock, take_fence
from include.storage.staging_table import prepare_staging, record_staged_batch
from spark_jobs.delivery_source import SOURCE_NAME
from spark_jobs.session import build_spark, die_with_parent
from spark_jobs.stage import PhaseClock, stage_rows, typed_events
from spark_jobs.transforms import file_records

log = logging.getLogger("ingest_events")


@dataclass
class BatchWriter:
    """The ``foreachBatch`` function: read once, stage once, record, then move the files."""

    settings: Settings
    airflow_run_id: str | None
    lock: HeldLock
    fence: Fence

    @property
    def query_id(self) -> str:
        # The query id is stable for the life of the checkpoint (a new checkpoint means a new id), which
        # makes (query id, batch id) a safe ledger key. Spark writes it before the first batch runs.
        metadata = json.loads((self.settings.checkpoint_dir / "metadata").read_text())
        return metadata["id"]

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        started_at = datetime.now(UTC)
        clock = PhaseClock()
        batch = batch.persist()
        try:
            files = batch.transform(file_records).collect()  # reads and parses every delivery, into the cache
            clock.lap("read + parse")
            if not files:
                return  # a batch Spark replays after a crash whose deliveries were staged before it
            self._stop_if_lock_lost()
            query_id, settings = self.query_id, self.settings
            ids = [f.delivery_id for f in files]
            faults.reached("before_staging")
            if with_connection(settings, lambda conn: prepare_staging(conn, query_id, batch_id)):
                stage_rows(batch, settings, query_id=query_id, batch_id=batch_id, started_at=started_at,
                           fence=self.fence, clock=clock)
                self._stop_if_lock_lost()
                rejected = self._rejected(files)
                recorded = with_connection(settings, lambda conn: record_staged_batch(
                    conn, query_id=query_id, batch_id=batch_id, airflow_run_id=self.airflow_run_id,
                    started_at=started_at, deliveries=ids, rejected=rejected, fence=self.fence))
                if not recorded:
                    log.warning("batch %s of query %s was recorded by another attempt", batch_id, query_id)
            else:
                log.warning("batch %s of query %s was staged before a restart; only moving its files", batch_id,
                            query_id)
            clock.lap("ledger record")
            faults.reached("after_ledger")
            moved = with_connection(settings, lambda conn: deliveries.finalize(settings, conn))
            clock.lap("move files")
            log.info("batch %s: %d deliveries staged (%d quarantined), %d file(s) moved, in %.1f s (%s)", batch_id,
                     len(files), sum(1 for f in files if f.file_error), len(moved),
                     (datetime.now(UTC) - started_at).total_seconds(), clock)
            for f in files:
                if f.file_error:
                    log.warning("delivery %s (%s) quarantined: %s", f.delivery_id, f.source_file, f.file_error)
            faults.reached("after_moves")
            # Spark writes this batch's commit to the checkpoint when this function returns: that too is a write
            self._stop_if_lock_lost()
        finally:
            batch.unpersist()

    def _rejected(self, files) -> list[tuple[int, str, str, str]]:
        """(delivery id, source file, quarantine path, reason) of the deliveries that cannot be read."""
        reasons = {f.delivery_id: f.file_error for f in files if f.file_error}
        if not reasons:
            return []
        found = with_connection(self.settings, lambda conn: deliveries.by_ids(conn, list(reasons)))
        return [(d.delivery_id, d.source_file, str(deliveries.quarantine_path(self.settings, d)), reasons[d.delivery_id])
                for d in found]

    def _stop_if_lock_lost(self) -> None:
        """Before a write: does this ingest still hold its checkpoint? A lock whose session ended (PostgreSQL
        restarted, the connection was cut) is taken again at once if no other session holds it and no other
        ingest took the fence meanwhile: then nothing else ran on this checkpoint and the batch goes on.
        Otherwise it stops here, before it writes."""
        if self.lock.held():
            return
        if self.lock.retake() and with_connection(self.settings, self.fence.still_ours):
            log.warning("the lock on %s was lost with its database session and taken again; no other ingest ran "
                        "meanwhile (fence epoch %d), so this one goes on", self.settings.checkpoint_dir,
                        self.fence.epoch)
            return
        raise IngestLockLost(f"this ingest lost its lock on {self.settings.checkpoint_dir} (its database session "
                             "ended: PostgreSQL restarted or the connection was cut) and another ingest has used "
                             "the checkpoint since; it stops before its next write, and Airflow retries it")


# A file of two events that exercises the parse and typing paths (one good row, one that fails typing).
_WARM_UP_CSV = (
    CANONICAL.header + "\n"
    "00000000-0000-4000-8000-000000000000,1,s,view,1,electronics,9.99,1,regular,2026-01-01T00:00:00Z,"
    "mobile,chrome,DE,Berlin,google,c1\n"
    "00000000-0000-4000-8000-000000000001,x,s,view,1,electronics,abc,1,regular,never,,,,,,\n"
).encode()


def warm_up(spark: SparkSession, settings: Settings) -> None:
    """Run a tiny file through the batch path (the delivery source's read and parse in the Python workers,
    typing, the Arrow round trips), writing nothing, before the stream starts.

    ``availableNow`` fixes the deliveries of a run when the query starts; everything the first batch pays after
    that (Python workers starting, imports, JIT) adds to how long a file that just missed the claim waits for
    its rows to be queryable. Paid here, it comes before the claim instead (docs/performance.md)."""
    started = time.perf_counter()
    workers = max(spark.sparkContext.defaultParallelism, 1)
    with tempfile.TemporaryDirectory(prefix="warm-up-") as folder:
        files = []
        for index in range(workers):  # one file per partition, so that every Python worker starts
            path = Path(folder) / f"{index}.csv"
            path.write_bytes(_WARM_UP_CSV)
            files.append([-1 - index, str(path), len(_WARM_UP_CSV), f"/warm-up/{index}.csv"])
        parsed = (spark.read.format(SOURCE_NAME).option("deliveries", json.dumps(files))
                  .option("parallelism", str(workers)).load().persist())
        try:
            parsed.count()
            rows = typed_events(parsed, datetime.now(UTC), settings.late_arrival_minutes).mapInArrow(
                _count_rows, "rows long").collect()
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
def checkpoint_lock(settings: Settings) -> Iterator[tuple[HeldLock, Fence]]:
    """Hold a PostgreSQL advisory lock named after the checkpoint for the life of the query, and the fence
    epoch taken with it (every write of this ingest checks it).

    A second ingest on the same checkpoint (a manual trigger during a scheduled run, ``make once`` next to
    ``make run``) waits up to INGEST_LOCK_WAIT_SECONDS, then fails with ``IngestAlreadyRunning``. The lock
    dies with its session, so a killed job never leaves it behind; a session that dies under a live job (a
    PostgreSQL restart) is noticed before its next write (``BatchWriter``, ``Fence``).
    """
    name = f"{INGEST_LOCK_PREFIX} {settings.checkpoint_dir.resolve()}"
    with session_lock(settings, name, wait_seconds=settings.ingest_lock_wait_seconds, poll_seconds=2,
                      on_wait=lambda _: log.info("another ingest is using %s; waiting", settings.checkpoint_dir)
                      ) as lock:
        if not lock:
            raise IngestAlreadyRunning(
                f"another ingest has been using {settings.checkpoint_dir} for over "
                f"{settings.ingest_lock_wait_seconds} s; this run gives up (Airflow will retry it)"
            )
        yield lock, with_connection(settings, lambda conn: take_fence(conn, name))


def delivery_stream(spark: SparkSession, settings: Settings) -> DataFrame:
    """The streaming source: the claimed deliveries, admitted per micro-batch up to MAX_FILES_PER_TRIGGER files
    and MAX_BYTES_PER_TRIGGER bytes (at least one file; 0 bytes: by files alone)."""
    return (spark.readStream.format(SOURCE_NAME)
            .option("maxBytesPerTrigger", str(int(settings.max_bytes_per_trigger)))
            .option("maxFilesPerTrigger", str(settings.max_files_per_trigger))
            .option("parallelism", str(max(spark.sparkContext.defaultParallelism, 1)))
            .load())


def claim_and_recover(settings: Settings, airflow_run_id: str | None) -> deliveries.Claimed:
    """Finish the moves a crash interrupted, then claim what is complete in LANDING_DIR now."""

    def work(conn):
        deliveries.finalize(settings, conn)
        return deliveries.claim(settings, conn, airflow_run_id)

    claimed = with_connection(settings, work)
    suspects = with_connection(settings, lambda conn: conn.execute(
        "SELECT count(*) FROM deliveries WHERE status = 'claimed' AND attempts > 0").fetchone()[0])
    if suspects:
        log.warning("%d delivery(ies) were being read when an earlier attempt crashed: they are read one at a time, "
                    "so that a poison file is found and quarantined (POISON_FILE_MAX_ATTEMPTS=%d)", suspects,
                    settings.poison_file_max_attempts)
    for delivery in claimed.recovered:
        log.warning("delivery %s (%s) was claimed by a process that died before recording it; registered now",
                    delivery.delivery_id, delivery.file_name)
    log.info("claimed %d delivery(ies), quarantined %d, %d entry(ies) waiting in %s", len(claimed.deliveries),
             len(claimed.quarantined), len(claimed.stock.waiting), settings.landing_dir)
    return claimed


def run(settings: Settings, airflow_run_id: str | None) -> None:
    for directory in (settings.landing_dir, settings.archive_dir, settings.quarantine_dir):
        directory.mkdir(parents=True, exist_ok=True)
    with checkpoint_lock(settings) as (lock, fence):
        spark = build_spark()
        try:
            warm_up(spark, settings)
            claim_and_recover(settings, airflow_run_id)
            query = (
                delivery_stream(spark, settings).writeStream
                .foreachBatch(BatchWriter(settings, airflow_run_id, lock, fence))
                .option("checkpointLocation", str(settings.checkpoint_dir))
                .trigger(availableNow=True)
                .start()
            )
            query.awaitTermination()
        finally:
            spark.stop()


def main(argv: list[str] | None = None) -> None:
    die_with_parent()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--airflow-run-id", default=None, help="run id recorded as lineage on every row")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(get_settings(), args.airflow_run_id)


if __name__ == "__main__":
    main()
