"""The raw-COPY baseline of `make bench` copies exactly the rows a table like ecommerce_events can hold."""

from __future__ import annotations

import csv
import io

import pytest

from benchmarks.bench import p95, storable_csv
from include.generator import EventGenerator
from include.warehouse import EVENT_COLUMNS

pytestmark = pytest.mark.unit


def test_baseline_rows_are_typed_and_unique_per_event_id(tmp_path):
    generator = EventGenerator(11, invalid_ratio=0.1, duplicate_ratio=0.05, structural_ratio=0.05)
    files, reports = [], []
    for version in ("v1", "v2", "v3"):
        files.append(generator.write_batch(generator.generate_batch(200, version), version, tmp_path))
        reports.append(generator.last_report)
    chunks, total = storable_csv(files)
    rows = [row for chunk in chunks for row in csv.reader(io.StringIO(chunk.decode()))]
    assert len(rows) == total
    ids = [row[EVENT_COLUMNS.index("event_id")] for row in rows]
    assert len(ids) == len(set(ids)) and all(ids), "one row per non-empty event_id, like the primary key"
    duplicates = sum(report.duplicates for report in reports)
    assert total < 600 - duplicates, "rows that cannot be typed are left out"
    for row in rows:
        price, quantity, total_amount = (row[EVENT_COLUMNS.index(c)] for c in ("price", "quantity", "total_amount"))
        if price and quantity:
            assert float(total_amount) == pytest.approx(float(price) * int(quantity))


def test_p95_is_the_value_below_which_95_percent_fall():
    assert p95([]) is None
    assert p95([float(n) for n in range(1, 101)]) == 95.0
    assert p95([3.0]) == 3.0
