"""Spark entry point: ingest newly landed CSV files into PostgreSQL, once, and exit.

    spark-submit --py-files pipeline_code.zip spark_jobs/ingest_events.py --airflow-run-id RUN_ID

A Structured Streaming query over LANDING_DIR (``binaryFile`` source, so each file is read whole and its
header decides its schema version) with ``trigger(availableNow=True)``: it processes every file that
landed since the last run in batches of at most MAX_FILES_PER_TRIGGER files, commits its checkpoint in
CHECKPOINT_DIR, and stops. For each batch (``foreachBatch``):

1. unless the ledger says this (query id, batch id) is already published (a replay after a crash):
   parse and type the rows, COPY them from the executors into ``staging_events``, and publish the batch in
   one transaction (good rows, dead letters, metrics, quarantined files, ledger row);
2. move the batch's files out of LANDING_DIR: unreadable ones to QUARANTINE_DIR, the rest to
   ARCHIVE_DIR/YYYY-MM-DD/HH/ by landing time.

Connection settings come from the environment (POSTGRES_*), never from the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from pyspark.sql import DataFrame, SparkSession

from include.settings import Settings, get_settings
from include.warehouse import STAGED_COLUMNS, batch_is_published, copy_arrow_to_staging, publish_staged_batch
from spark_jobs.transforms import (
    PARSED_SCHEMA,
    filter_file_errors,
    local_path,
    parse_landed_files,
    with_late_arrival,
    with_total_amount,
    with_typed_columns,
)

log = logging.getLogger("ingest_events")

# The fixed schema of Spark's binaryFile source: each landed file is one row, read whole.
BINARY_FILE_SCHEMA = "path STRING, modificationTime TIMESTAMP, length BIGINT, content BINARY"


def archive_path(archive_dir: Path, source: Path, landed_at: datetime) -> Path:
    """Where a processed file goes: partitioned by landing hour so a time window maps to a few folders."""
    return archive_dir / f"{landed_at:%Y-%m-%d}" / f"{landed_at:%H}" / source.name


def move_file(source: Path, target: Path) -> Path | None:
    """Move ``source`` to ``target`` (a free name next to it if taken); ``None`` if it is already gone."""
    if not source.exists():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = target, 0
    while candidate.exists():
        n += 1
        candidate = target.with_name(f"{target.stem}__{n}{target.suffix}")
    shutil.move(str(source), str(candidate))
    return candidate


@dataclass
class BatchWriter:
    """The ``foreachBatch`` function: stage, publish once, then move the files out of the landing dir."""

    settings: Settings
    airflow_run_id: str | None

    @property
    def query_id(self) -> str:
        # The query id is stable for the life of the checkpoint (a new checkpoint means a new id), which
        # makes (query id, batch id) a safe ledger key. Spark writes it before the first batch runs.
        metadata = json.loads((self.settings.checkpoint_dir / "metadata").read_text())
        return metadata["id"]

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        processing_time = datetime.now(UTC)
        files = {
            Path(local_path(row.path)): datetime.fromtimestamp(row.modificationTime.timestamp(), UTC)
            for row in batch.select("path", "modificationTime").collect()
        }
        if not files:
            return
        query_id, conninfo = self.query_id, self.settings.postgres_conninfo
        with psycopg.connect(conninfo) as conn:
            if batch_is_published(conn, query_id, batch_id):
                log.warning("batch %s of query %s was published before a restart; only moving its files",
                            batch_id, query_id)
                quarantined = _quarantined_in_batch(conn, query_id, batch_id)
            else:
                quarantined = self._stage_and_publish(batch, batch_id, query_id, conn, started, processing_time,
                                                      files)
        self._move_files(files, quarantined)

    def _stage_and_publish(self, batch, batch_id, query_id, conn, started, processing_time, files):
        parsed = batch.select("path", "content").mapInArrow(parse_landed_files, PARSED_SCHEMA).persist()
        try:
            rejected = {
                row.source_file: row.file_error
                for row in parsed.filter("file_error IS NOT NULL").select("source_file", "file_error").collect()
            }
            events = (
                parsed.transform(filter_file_errors)
                .transform(with_typed_columns)
                .transform(with_total_amount)
                .transform(lambda df: with_late_arrival(df, processing_time, self.settings.late_arrival_minutes))
                .select(*STAGED_COLUMNS)
            )
            conninfo = self.settings.postgres_conninfo

            def stage_partition(batches):
                import pyarrow as pa
                from pyspark import TaskContext

                partition = TaskContext.get().partitionId()
                rows = copy_arrow_to_staging(conninfo, query_id, batch_id, partition, batches)
                yield pa.RecordBatch.from_pylist([{"staged": rows}])

            staged = sum(r.staged for r in events.mapInArrow(stage_partition, "staged long").collect())
        finally:
            parsed.unpersist()
        quarantine_dir = self.settings.quarantine_dir
        quarantined = [
            (source, str(quarantine_dir / f"{processing_time:%Y-%m-%d}" / Path(source).name), reason)
            for source, reason in rejected.items()
        ]
        outcome = publish_staged_batch(
            conn, query_id=query_id, batch_id=batch_id, airflow_run_id=self.airflow_run_id,
            input_files=len(files), quarantined=quarantined, started=started,
        )
        if outcome is None:
            log.warning("batch %s was published concurrently; nothing written", batch_id)
        else:
            log.info(
                "batch %s: %d files, %d rows staged -> %d valid, %d invalid, %d duplicates, %d late, "
                "%d files quarantined (%.2f%% valid, %d ms)",
                batch_id, len(files), staged, outcome.valid, outcome.invalid, outcome.duplicates, outcome.late,
                outcome.quarantined_files, outcome.validity_rate, outcome.processing_time_ms,
            )
        return quarantined

    def _move_files(self, files: dict[Path, datetime], quarantined: list[tuple[str, str, str]]) -> None:
        to_quarantine = {Path(source): Path(target) for source, target, _ in quarantined}
        for source, landed_at in files.items():
            target = to_quarantine.get(source) or archive_path(self.settings.archive_dir, source, landed_at)
            move_file(source, target)


def _quarantined_in_batch(conn: psycopg.Connection, query_id: str, batch_id: int) -> list[tuple[str, str, str]]:
    return conn.execute(
        "SELECT source_file, quarantine_path, reason FROM quarantined_files "
        "WHERE spark_query_id = %s AND spark_batch_id = %s",
        (query_id, batch_id),
    ).fetchall()


def build_spark(app_name: str = "ecommerce_events_ingest") -> SparkSession:
    return (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.session.timeZone", "UTC")
        # A file moved to the archive by a batch that crashed before its checkpoint commit is simply gone
        # on replay; the ledger already holds that batch.
        .config("spark.sql.files.ignoreMissingFiles", "true")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )


def run(settings: Settings, airflow_run_id: str | None) -> None:
    for directory in (settings.landing_dir, settings.archive_dir, settings.quarantine_dir):
        directory.mkdir(parents=True, exist_ok=True)
    spark = build_spark()
    try:
        landed = (
            spark.readStream.format("binaryFile")
            .schema(BINARY_FILE_SCHEMA)
            .option("pathGlobFilter", "*.csv")
            .option("maxFilesPerTrigger", settings.max_files_per_trigger)
            .load(str(settings.landing_dir))
        )
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
