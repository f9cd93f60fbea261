"""Micro-batches of the delivery source: what the stream admits per batch (files and bytes), and how a batch's
deliveries are spread over partitions."""

from __future__ import annotations

import json

import pytest

from spark_jobs.delivery_source import SOURCE_NAME, DeliveryFile, DeliverySource, spread

pytestmark = pytest.mark.unit


def batches_of(spark, tmp_path, files: list[DeliveryFile], checkpoint: str, **options: str) -> list[list[int]]:
    """The delivery ids of each micro-batch an availableNow run of the delivery stream admits."""
    spark.dataSource.register(DeliverySource)
    seen: list[list[int]] = []
    reader = spark.readStream.format(SOURCE_NAME).option("deliveries", json.dumps([list(vars(f).values())
                                                                                    for f in files]))
    for key, value in options.items():
        reader = reader.option(key, value)
    query = (reader.load().writeStream
             .foreachBatch(lambda batch, _: seen.append(sorted(
                 r.delivery_id for r in batch.filter("source_line = 0").select("delivery_id").collect())))
             .option("checkpointLocation", str(tmp_path / checkpoint)).trigger(availableNow=True).start())
    query.awaitTermination()
    return [batch for batch in seen if batch]


@pytest.fixture
def backlog(tmp_path) -> list[DeliveryFile]:
    files = []
    for index in range(1, 6):
        path = tmp_path / f"{index}__events.csv"
        path.write_bytes(b"event_id,user_id,event_type,product_id,price,event_time\n" + b"x" * 943)
        files.append(DeliveryFile(index, str(path), 1000, f"/landing/events_{index}.csv"))
    return files


def test_a_backlog_is_admitted_up_to_max_bytes_per_batch_and_never_less_than_one_file(spark, backlog, tmp_path):
    batches = batches_of(spark, tmp_path, backlog, "bytes", maxBytesPerTrigger="2500", maxFilesPerTrigger="100")
    assert batches == [[1, 2], [3, 4], [5]]  # two 1,000-byte files fit in 2,500 bytes
    tiny = batches_of(spark, tmp_path, backlog, "tiny", maxBytesPerTrigger="10", maxFilesPerTrigger="100")
    assert tiny == [[1], [2], [3], [4], [5]]


def test_the_file_bound_holds_too_and_alone_without_a_byte_bound(spark, backlog, tmp_path):
    assert batches_of(spark, tmp_path, backlog, "both", maxBytesPerTrigger="100000", maxFilesPerTrigger="2") == [
        [1, 2], [3, 4], [5]]
    assert batches_of(spark, tmp_path, backlog, "files", maxBytesPerTrigger="0", maxFilesPerTrigger="3") == [
        [1, 2, 3], [4, 5]]


def test_a_batch_is_spread_over_partitions_by_bytes_each_in_delivery_order():
    files = [DeliveryFile(i, f"/{i}", size, f"/l/{i}") for i, size in enumerate([900, 100, 100, 500, 400], 1)]
    groups = spread(files, 2)
    assert sorted(sum(f.size for f in g) for g in groups) == [1000, 1000]
    assert all([f.delivery_id for f in g] == sorted(f.delivery_id for f in g) for g in groups)
    assert spread(files[:1], 4) == [[files[0]]]  # never an empty partition
