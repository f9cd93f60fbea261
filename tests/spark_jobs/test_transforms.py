"""Pure transforms of the ingest job on tiny DataFrames (null cases included)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from pyspark.sql import types as T

from include.contract.columns import PARSED_COLUMNS
from include.contract.versions import V1
from spark_jobs.transforms import (
    PARSED_SCHEMA,
    file_records,
    filter_file_records,
    parse_landed_files,
    with_late_arrival,
    with_total_amount,
    with_typed_columns,
)

pytestmark = pytest.mark.unit

FILES_SCHEMA = T.StructType([T.StructField("delivery_id", T.LongType()), T.StructField("source_file", T.StringType()),
                             T.StructField("content", T.BinaryType())])


def records(spark, *rows: dict):
    full = [{column: row.get(column) for column in PARSED_COLUMNS} | {"file_error": None} for row in rows]
    return spark.createDataFrame(full, PARSED_SCHEMA)


def test_deliveries_become_records_and_each_one_file_record_saying_whether_it_was_read(spark):
    good = f"{V1.header}\ne1,,view,5,9.99,2026-01-01T00:00:00\ne2,3,purchase,5,9.99,2026-01-01T00:00:01\n"
    files = spark.createDataFrame(
        [(1, "/land/good one.csv", good.encode()), (2, "/land/bad.csv", b"who,what\n1,2\n"),
         (3, "/land/empty.csv", None), (4, "/land/header_only.csv", V1.header.encode() + b"\n")],
        FILES_SCHEMA,
    )
    parsed = files.mapInArrow(parse_landed_files, PARSED_SCHEMA)
    rows = {(r.delivery_id, r.source_line): r for r in parsed.collect()}
    assert rows[(1, 2)].event_id == "e1" and rows[(1, 2)].source_file == "/land/good one.csv"
    assert rows[(1, 2)].user_id is None
    assert rows[(1, 3)].quantity == "1"
    assert "lacks the required column(s) event_id" in rows[(2, 0)].file_error
    assert "empty file" in rows[(3, 0)].file_error
    assert filter_file_records(parsed).count() == 2
    # every delivery, the one without rows too, has its file record
    assert sorted((r.delivery_id, r.file_error is None) for r in file_records(parsed).collect()) == [
        (1, True), (2, False), (3, False), (4, True)]


def test_typing_casts_values_and_explains_what_does_not_cast(spark):
    base = {"event_type": "view", "event_time": "2026-01-01T10:00:00"}
    df = records(
        spark,
        base | {"event_id": "ok", "user_id": "7", "product_id": "5", "price": "19.99", "quantity": "2",
                "event_time": "2026-01-01T10:00:00.5"},
        base | {"event_id": "nulls"},
        base | {"event_id": "bad", "user_id": "x7", "price": "abc", "quantity": "2.5x", "event_time": "not-a-date"},
        base | {"event_id": "huge", "price": "1e20"},
        {"event_id": "damaged", "price": "abc", "parse_errors": "wrong number of fields: expected 10, found 9"},
    )
    out = {r.event_id: r for r in with_typed_columns(df).collect()}
    assert out["ok"].price == Decimal("19.99") and out["ok"].quantity == 2 and out["ok"].user_id == 7
    assert out["ok"].event_time == datetime(2026, 1, 1, 10, 0, 0, 500000)
    assert out["ok"].parse_errors is None
    assert out["nulls"].parse_errors is None and out["nulls"].price is None
    reasons = out["bad"].parse_errors
    for fragment in ("user_id 'x7' is not a valid integer", "price 'abc' is not a valid number",
                     "quantity '2.5x'", "event_time 'not-a-date' is not a valid ISO-8601 timestamp"):
        assert fragment in reasons
    assert "price '1e20' is not a valid number" in out["huge"].parse_errors
    # a structurally damaged row keeps its one structural reason
    assert out["damaged"].parse_errors == "wrong number of fields: expected 10, found 9"


def test_rows_missing_a_required_column_get_a_reason(spark):
    df = records(spark, {"event_id": "e1", "event_type": "view", "event_time": "2026-01-01T00:00:00"},
                 {"event_id": None, "event_type": None, "event_time": None},
                 {"event_id": None, "price": "abc", "event_type": "view", "event_time": "2026-01-01T00:00:00"})
    out = with_typed_columns(df).collect()
    assert out[0].parse_errors is None
    assert out[1].parse_errors == "event_id is empty; event_type is empty; event_time is empty"
    assert out[2].parse_errors == "event_id is empty; price 'abc' is not a valid number (at most 10 digits before the point)"


def test_total_amount_is_price_times_quantity_and_null_safe(spark):
    df = with_typed_columns(records(spark, {"event_id": "a", "price": "19.99", "quantity": "3"},
                                    {"event_id": "b", "price": None, "quantity": "3"}))
    out = {r.event_id: r.total_amount for r in with_total_amount(df).collect()}
    assert out == {"a": Decimal("59.97"), "b": None}


def test_late_events_are_flagged_never_dropped(spark):
    df = with_typed_columns(records(
        spark,
        {"event_id": "fresh", "event_time": "2026-01-01T11:58:00"},
        {"event_id": "late", "event_time": "2026-01-01T11:54:59"},
        {"event_id": "no_time", "event_time": None},
    ))
    out = {r.event_id: r.is_late_arrival for r in with_late_arrival(df, datetime(2026, 1, 1, 12, 0), 5).collect()}
    assert out == {"fresh": False, "late": True, "no_time": False}


