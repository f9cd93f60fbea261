"""The ingest's Spark source: the delivery ledger, read in order, parsing each file as it is read.

    spark.readStream.format("ecommerce_deliveries").load()                   # the every-minute stream
    spark.read.format("ecommerce_deliveries").option("window_start", ...)    # a backfill's archived window

A Python data source (PySpark 4.2: ``DataSource`` with a stream reader that supports ``Trigger.AvailableNow``
and read limits). Its offsets are delivery ids from ``deliveries`` (``include.storage.deliveries``): a
micro-batch is the claimed deliveries up to an id, at most MAX_FILES_PER_TRIGGER files and (unless it is 0)
MAX_BYTES_PER_TRIGGER bytes, at least one. Spark never lists a directory, so no path it saw before and no
modification time decides what is new, and the checkpoint holds offsets only (no list of every file ever
seen, which grew by ~17k entries a day and was reloaded at every start). A micro-batch reads every claimed
delivery up to its end id, so a delivery the stream's offsets passed while it waited (a checkpoint older than
the database, say) is read by the next one; when only such deliveries wait, the offset's ``sweep`` moves on
instead of the id, which makes a batch for them.

Each partition reads its deliveries' files from where they are (``.claimed/`` or the archive), exactly the
bytes each had when it was claimed, and parses them (``spark_jobs.transforms.parse_delivery``): a row's record
per CSV record and one *file record* per delivery (line 0), which carries why a file cannot be read at all.

**Poison files.** A file whose reading kills the worker (a real poison file, or a crash of any kind) must not
stop every later file. Every read of a partition counts an attempt for its deliveries first; the batch's ledger
record clears the count. A delivery with attempts left over is a suspect: the next batch reads the suspects in
one partition of their own, one at a time, counting and clearing each around its own read, so only the one that
crashes keeps counting; at POISON_FILE_MAX_ATTEMPTS it is rejected unread (quarantined) and the rest goes on.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
from pyspark.sql.datasource import DataSource, DataSourceReader, DataSourceStreamReader, InputPartition
from pyspark.sql.streaming.datasource import (
    ReadAllAvailable,
    ReadLimit,
    ReadMaxBytes,
    ReadMaxFiles,
    SupportsTriggerAvailableNow,
)

from include.settings import Settings, get_settings
from spark_jobs.transforms import FILE_RECORD_LINE, PARSED_ARROW_SCHEMA, PARSED_SCHEMA, parse_delivery

SOURCE_NAME = "ecommerce_deliveries"


@dataclass(frozen=True)
class DeliveryFile:
    """What a partition needs to read one delivery (no database on the executors but for attempts)."""

    delivery_id: int
    path: str          # where the file is now
    size: int          # the bytes to read: its size when claimed
    source_file: str   # its landing path, the lineage of its rows
    attempts: int = 0


class DeliveryPartition(InputPartition):
    def __init__(self, files: list[DeliveryFile], settings: Settings, *, suspects: bool = False,
                 count_attempts: bool = True) -> None:
        super().__init__(None)
        self.files = files
        self.settings = settings
        self.suspects = suspects
        self.count_attempts = count_attempts


def read_partition(partition: DeliveryPartition) -> Iterator[pa.RecordBatch]:
    from include.storage import deliveries
    from include.storage.connections import with_connection

    settings = partition.settings
    ids = [f.delivery_id for f in partition.files]
    if not partition.suspects:
        if partition.count_attempts:
            with_connection(settings, lambda conn: deliveries.count_attempts(conn, ids))
        for delivery in partition.files:
            yield from read_delivery(delivery, settings)
        return
    for delivery in partition.files:  # one at a time: only the one that crashes keeps its count
        if delivery.attempts >= settings.poison_file_max_attempts:
            yield file_record(delivery, f"poison file: the ingest job crashed {delivery.attempts} times while "
                                        f"reading it (POISON_FILE_MAX_ATTEMPTS={settings.poison_file_max_attempts}); "
                                        "quarantined unread so that later files can go on")
            continue
        with_connection(settings, lambda conn, d=delivery: deliveries.count_attempts(conn, [d.delivery_id]))
        yield from read_delivery(delivery, settings)
        with_connection(settings, lambda conn, d=delivery: deliveries.clear_attempts(conn, [d.delivery_id]))


def read_delivery(delivery: DeliveryFile, settings: Settings) -> Iterator[pa.RecordBatch]:
    """The parsed records of one delivery and its file record."""
    if delivery.size > settings.max_file_bytes:
        yield file_record(delivery, f"file of {delivery.size} bytes is over MAX_FILE_BYTES="
                                    f"{int(settings.max_file_bytes)}; not read")
        return
    try:
        content = read_exactly(delivery.path, delivery.size)
    except OSError as error:
        yield file_record(delivery, f"cannot be read: {error.strerror or error}")
        return
    except ValueError as error:
        yield file_record(delivery, str(error))
        return
    yield from parse_delivery(content, delivery.source_file, delivery.delivery_id, int(settings.max_decompressed_bytes))


def read_exactly(path: str, size: int) -> bytes:
    """The first ``size`` bytes of the regular file at ``path``: what it held when claimed, even if a producer
    still writes into it (the archive step notices that), and the same bytes on every retry. A symbolic link is
    never followed."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file; not read")
        chunks, left = [], size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                raise ValueError(f"the file shrank after it was claimed: {size - left} of its {size} bytes are left")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def file_record(delivery: DeliveryFile, error: str | None) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [{"source_file": delivery.source_file, "source_line": FILE_RECORD_LINE, "delivery_id": delivery.delivery_id,
          "file_error": error}], schema=PARSED_ARROW_SCHEMA)


def spread(files: list[DeliveryFile], parts: int) -> list[list[DeliveryFile]]:
    """``files`` in at most ``parts`` groups of about equal bytes (largest first onto the lightest group), each
    group in delivery order."""
    groups: list[list[DeliveryFile]] = [[] for _ in range(max(1, min(parts, len(files))))]
    sizes = [0] * len(groups)
    for delivery in sorted(files, key=lambda f: -f.size):
        lightest = sizes.index(min(sizes))
        groups[lightest].append(delivery)
        sizes[lightest] += delivery.size
    return [sorted(g, key=lambda f: f.delivery_id) for g in groups if g]


def _files(rows) -> list[DeliveryFile]:
    return [DeliveryFile(d.delivery_id, d.path, d.size_bytes, d.source_file, d.attempts) for d in rows]


class DeliveryStreamReader(DataSourceStreamReader, SupportsTriggerAvailableNow):
    """Offsets ``{"delivery": id, "sweep": n}``; see the module docstring."""

    def __init__(self, options: dict[str, str]) -> None:
        self.settings = get_settings()  # the driver's environment: the job's database settings
        self.max_bytes = int(options.get("maxBytesPerTrigger", self.settings.max_bytes_per_trigger))
        self.max_files = int(options.get("maxFilesPerTrigger", self.settings.max_files_per_trigger))
        self.parallelism = int(options.get("parallelism", "2"))
        self.target: int | None = None
        # without a database (the class-data archive's training run): a fixed list, read once
        self.fixed = [DeliveryFile(*item) for item in json.loads(options["deliveries"])] \
            if "deliveries" in options else None

    def _waiting(self, after: int, through: int | None, limit: int) -> list[DeliveryFile]:
        """Claimed deliveries not yet staged, by id, up to ``through``. (By the ledger, every one not staged yet,
        ``after`` or not; in a fixed list, the ones after ``after``: nothing there is ever staged.)"""
        if self.fixed is not None:
            return [f for f in self.fixed if f.delivery_id > after and (through is None or f.delivery_id <= through)
                    ][:limit]
        from include.storage.connections import with_connection
        from include.storage.deliveries import waiting

        return _files(with_connection(self.settings, lambda conn: waiting(conn, through, limit)))

    def initialOffset(self) -> dict:
        return {"delivery": 0, "sweep": 0}

    def prepareForTriggerAvailableNow(self) -> None:
        waiting = self._waiting(0, None, 1_000_000_000)
        self.target = waiting[-1].delivery_id if waiting else 0

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxBytes(self.max_bytes) if self.max_bytes else ReadMaxFiles(self.max_files)

    def latestOffset(self, start: dict, limit: ReadLimit) -> dict:
        everything = isinstance(limit, ReadAllAvailable)
        found = self._waiting(start["delivery"], self.target, 1_000_000 if everything else self.max_files)
        taken, size = [], 0
        for delivery in found:
            if taken and not everything and self.max_bytes and size + delivery.size > self.max_bytes:
                break
            taken.append(delivery)
            size += delivery.size
        if not taken:
            return start
        last = taken[-1].delivery_id
        if last > start["delivery"]:
            return {"delivery": last, "sweep": start["sweep"]}
        return {"delivery": start["delivery"], "sweep": start["sweep"] + 1}

    def partitions(self, start: dict, end: dict) -> Sequence[InputPartition]:
        files = self._waiting(start["delivery"], end["delivery"], 1_000_000)
        if self.fixed is not None:
            return [DeliveryPartition(group, self.settings, count_attempts=False)
                    for group in spread(files, self.parallelism)]
        suspects = [f for f in files if f.attempts > 0]
        others = [f for f in files if f.attempts == 0]
        parts = [DeliveryPartition(suspects, self.settings, suspects=True)] if suspects else []
        return parts + [DeliveryPartition(group, self.settings) for group in spread(others, self.parallelism)]

    def read(self, partition: DeliveryPartition) -> Iterator[pa.RecordBatch]:
        return read_partition(partition)


class DeliveryBatchReader(DataSourceReader):
    """The archived deliveries claimed in [window_start, window_end) (a backfill), or the ``deliveries`` option's
    JSON list of [id, path, size, source_file] (the class-data archive's training run, tests)."""

    def __init__(self, options: dict[str, str]) -> None:
        self.options = options
        self.settings = get_settings()
        self.parallelism = int(options.get("parallelism", "2"))

    def partitions(self) -> Sequence[InputPartition]:
        if "deliveries" in self.options:
            files = [DeliveryFile(*item) for item in json.loads(self.options["deliveries"])]
        else:
            from include.storage.connections import with_connection
            from include.storage.deliveries import claimed_in

            start, end = (datetime.fromisoformat(self.options[k]) for k in ("window_start", "window_end"))
            files = _files(with_connection(self.settings, lambda conn: claimed_in(conn, start, end)))
        return [DeliveryPartition(group, self.settings, count_attempts=False)
                for group in spread(files, self.parallelism)] or [DeliveryPartition([], self.settings, count_attempts=False)]

    def read(self, partition: DeliveryPartition) -> Iterator[pa.RecordBatch]:
        return read_partition(partition)


class DeliverySource(DataSource):
    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def schema(self):
        return PARSED_SCHEMA

    def streamReader(self, schema) -> DeliveryStreamReader:
        return DeliveryStreamReader(self.options)

    def reader(self, schema) -> DeliveryBatchReader:
        return DeliveryBatchReader(self.options)
