"""Micro-batches sized in bytes: what the stream admits per batch, and the file bound kept by chunks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from include.settings import ByteSize, Settings
from spark_jobs import ingest_events
from spark_jobs.ingest_events import BatchWriter, landing_stream

pytestmark = pytest.mark.unit


def batches_of(spark, settings: Settings, checkpoint) -> list[list[str]]:
    """The file names of each micro-batch an availableNow run of the landing stream admits."""
    seen: list[list[str]] = []
    query = (
        landing_stream(spark, settings).writeStream
        .foreachBatch(lambda batch, _: seen.append(sorted(r.path.rsplit("/", 1)[1] for r in batch.select("path").collect())))
        .option("checkpointLocation", str(checkpoint)).trigger(availableNow=True).start()
    )
    query.awaitTermination()
    return [batch for batch in seen if batch]


@pytest.fixture
def backlog(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    for index in range(5):
        (landing / f"events_{index}.csv").write_bytes(b"x" * 1000)
    (landing / "notes.txt").write_bytes(b"not a feed file")  # the glob keeps it out (detect_work quarantines it)
    return landing


def test_a_backlog_is_admitted_up_to_max_bytes_per_batch(spark, backlog, tmp_path):
    settings = Settings(landing_dir=backlog, max_bytes_per_trigger=ByteSize("2500"), max_files_per_trigger=1)
    batches = batches_of(spark, settings, tmp_path / "bytes")
    # two 1,000-byte files fit in 2,500 bytes; the file bound does not limit what Spark admits (it chunks staging)
    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert sorted(sum(batches, [])) == [f"events_{i}.csv" for i in range(5)]
    one_file = Settings(landing_dir=backlog, max_bytes_per_trigger=ByteSize("10"))
    assert [len(b) for b in batches_of(spark, one_file, tmp_path / "tiny")] == [1] * 5  # never less than one file


def test_without_a_byte_bound_batches_are_counted_in_files(spark, backlog, tmp_path):
    settings = Settings(landing_dir=backlog, max_bytes_per_trigger=ByteSize(0), max_files_per_trigger=2)
    assert [len(batch) for batch in batches_of(spark, settings, tmp_path / "files")] == [2, 2, 1]


def test_a_batch_of_more_files_than_the_bound_is_staged_in_chunks_with_their_own_partitions(spark, monkeypatch):
    uris = [f"file:/land/events_{i}.csv" for i in range(5)]
    batch = spark.createDataFrame([(uri, b"") for uri in uris], "path string, content binary")
    calls = []

    def stage_rows(chunk, settings, *, partition_offset=0, **_):
        calls.append((sorted(r.path for r in chunk.collect()), partition_offset))
        return [(f"/quarantine/{partition_offset}", "", "reason")]

    monkeypatch.setattr(ingest_events, "stage_rows", stage_rows)
    writer = BatchWriter(Settings(max_files_per_trigger=2), airflow_run_id=None)
    quarantined = writer._stage_in_chunks(batch, 0, "q", datetime.now(UTC), uris, clock=None)
    assert calls == [(uris[0:2], 0), (uris[2:4], 100_000), (uris[4:], 200_000)]
    assert len(quarantined) == 3  # every chunk's unreadable files are kept
    calls.clear()
    BatchWriter(Settings(max_files_per_trigger=5), None)._stage_in_chunks(batch, 0, "q", datetime.now(UTC), uris, None)
    assert calls == [(uris, 0)]
