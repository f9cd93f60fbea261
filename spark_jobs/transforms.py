"""Pure transforms of the ingest: the bytes of a delivery -> canonical records -> typed events.

No I/O here: ``spark_jobs.delivery_source`` reads the files, ``spark_jobs.stage`` writes the rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from include import faults
from include.contract.columns import NOT_EMPTY_COLUMNS, TYPED_FEED_COLUMNS
from include.contract.parser import DEFAULT_MAX_DECOMPRESSED_BYTES, FileRejected, parse_file
from spark_jobs.columnar import PARSED_ARROW_SCHEMA, parse_plain_file

_SPARK_OF_ARROW = {pa.string(): T.StringType(), pa.int32(): T.IntegerType(), pa.int64(): T.LongType()}
PARSED_SCHEMA = T.StructType([T.StructField(f.name, _SPARK_OF_ARROW[f.type]) for f in PARSED_ARROW_SCHEMA])

# Target type of each feed column that is not text (from the column table), as Spark spells it.
_SPARK_TYPES: dict[str, T.DataType] = {
    "integer": T.IntegerType(), "numeric(12,2)": T.DecimalType(12, 2), "timestamp with time zone": T.TimestampType(),
}
TYPED_COLUMNS: dict[str, T.DataType] = {column: _SPARK_TYPES[sql] for column, sql in TYPED_FEED_COLUMNS.items()}
# Records of the careful parser handed to Spark at once (a plain file goes as one batch, however long).
_RECORDS_PER_BATCH = 10_000
# The line number of a delivery's file record: every delivery yields exactly one, after its rows.
FILE_RECORD_LINE = 0


def parse_delivery(content: bytes, source_file: str, delivery_id: int | None,
                   max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES) -> Iterator[pa.RecordBatch]:
    """The parsed records of one delivered file, in ``PARSED_ARROW_SCHEMA`` batches, then its *file record*.

    A plain file (one line per record, no quotes; the common case) is split by Arrow's kernels
    (``spark_jobs.columnar``); any other goes through the careful parser, record by record, with the same
    result. The file record (``source_line`` 0, no event fields) says the delivery was read, and ``file_error``
    why it cannot be read at all (it then has no other record): so the driver learns every delivery of a
    batch, the empty ones and the unreadable ones too, from the records themselves."""
    faults.poison(content)
    error = None
    try:
        plain = parse_plain_file(content, source_file, delivery_id, max_decompressed_bytes)
        if plain is None:
            records: list[dict[str, object]] = []
            for record in parse_file(content, source_file, delivery_id, max_decompressed_bytes):
                records.append(record)
                if len(records) == _RECORDS_PER_BATCH:
                    yield pa.RecordBatch.from_pylist(records, schema=PARSED_ARROW_SCHEMA)
                    records = []
            if records:
                yield pa.RecordBatch.from_pylist(records, schema=PARSED_ARROW_SCHEMA)
        elif plain.num_rows:
            yield plain
    except FileRejected as rejected:
        error = str(rejected)
    yield pa.RecordBatch.from_pylist(
        [{"source_file": source_file, "source_line": FILE_RECORD_LINE, "delivery_id": delivery_id, "file_error": error}],
        schema=PARSED_ARROW_SCHEMA)


def parse_landed_files(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` function over (delivery_id, source_file, content) rows: ``parse_delivery`` of each.
    The delivery source parses as it reads; this is for files already in a DataFrame (the warm-up, tests)."""
    for batch in batches:
        for delivery_id, source_file, content in zip(*(batch.column(c).to_pylist() for c in
                                                        ("delivery_id", "source_file", "content"))):
            yield from parse_delivery(content or b"", source_file, delivery_id)


def filter_file_records(parsed: DataFrame) -> DataFrame:
    """Keep only the records of rows (each delivery's file record is for the driver)."""
    return parsed.filter(F.col("source_line") != FILE_RECORD_LINE).drop("file_error")


def file_records(parsed: DataFrame) -> DataFrame:
    """One row per delivery of ``parsed``: (delivery_id, source_file, file_error: NULL if it was read)."""
    return parsed.filter(F.col("source_line") == FILE_RECORD_LINE).select("delivery_id", "source_file", "file_error")


def with_typed_columns(records: DataFrame) -> DataFrame:
    """Cast the text columns to their types and add a reason for each value that cannot be stored.

    Reasons: a column the contract declares ``not_empty`` (``NOT_EMPTY_COLUMNS``: the events table cannot
    store the row without it) is empty, or a non-empty value does not cast. Other empty values stay NULL
    without a reason: whether NULL is allowed there is a data-quality rule, not a parsing matter. A row
    the parser already found damaged keeps its one structural reason.
    """
    structurally_ok = F.col("parse_errors").isNull()
    # Each reason is NULL unless its condition holds; concat_ws skips NULLs, so the reasons are joined
    # with '; ' after the parser's own. (Appending one `when(cond, concat_ws(errors, reason)).otherwise(errors)`
    # per column doubled the expression at each of the 8 steps: a 256-fold tree the driver analysed and
    # the executors evaluated for every row, several seconds per micro-batch; docs/performance.md.)
    reasons: list[Column] = [
        F.when(structurally_ok & F.col(column).isNull(), F.lit(f"{column} is empty")) for column in NOT_EMPTY_COLUMNS
    ]
    typed: dict[str, Column] = {}
    for column, data_type in TYPED_COLUMNS.items():
        raw = F.col(column)
        cast = F.expr(f"try_cast({column} AS {data_type.simpleString()})")
        reason = F.concat(
            F.lit(f"{column} '"), F.substring(raw, 1, 80), F.lit(f"' is not a valid {_type_name(data_type)}")
        )
        reasons.append(F.when(structurally_ok & raw.isNotNull() & cast.isNull(), reason))
        typed[column] = cast
    joined = F.concat_ws("; ", F.col("parse_errors"), *reasons)
    # no reason at all: NULL (every reason is non-empty, so '' means none applied)
    typed["parse_errors"] = F.when(structurally_ok & (joined == ""), F.lit(None).cast("string")).otherwise(joined)
    # One select, not a withColumn per column: every withColumn re-analyses the whole plan on the driver,
    # which cost seconds per micro-batch (docs/performance.md). Columns keep their order.
    return records.select(*[typed[c].alias(c) if c in typed else F.col(c) for c in records.columns])


def _type_name(data_type: T.DataType) -> str:
    if isinstance(data_type, T.IntegerType):
        return "integer"
    if isinstance(data_type, T.DecimalType):
        return f"number (at most {data_type.precision - data_type.scale} digits before the point)"
    return "ISO-8601 timestamp"


def with_total_amount(events: DataFrame) -> DataFrame:
    return events.withColumn("total_amount", (F.col("price") * F.col("quantity")).cast(T.DecimalType(14, 2)))


def with_late_arrival(events: DataFrame, processing_time: datetime, late_arrival_minutes: int) -> DataFrame:
    """Flag events older than ``late_arrival_minutes`` at processing time; late events are kept, never dropped."""
    cutoff = F.lit(processing_time) - F.expr(f"INTERVAL {int(late_arrival_minutes)} MINUTES")
    return events.withColumn("is_late_arrival", F.coalesce(F.col("event_time") < cutoff, F.lit(False)))
