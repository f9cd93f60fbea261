"""Helpers of `make bench`: the raw-COPY baseline copies exactly the rows a table like ecommerce_events can hold;
the percentile and the per-task profile it reports."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta

import pytest

from benchmarks.bench import _task_profile, p95, storable_csv
from include.contract.columns import EVENT_COLUMNS
from scripts.generator import EventGenerator

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


def test_task_profile_gives_median_task_seconds_and_the_waits_between_tasks():
    def run(start: datetime, spans: dict[str, tuple[float, float]]) -> dict:
        return {"start": start, "tasks": {
            task: {"seconds": b - a, "start": start + timedelta(seconds=a), "end": start + timedelta(seconds=b)}
            for task, (a, b) in spans.items()}}

    t0 = datetime(2026, 1, 1)
    runs = [
        run(t0, {"detect_work": (1, 2), "ingest": (3, 23), "audit": (24, 29)}),   # waits 1 + 1 + 1
        run(t0, {"detect_work": (2, 3), "ingest": (5, 35), "audit": (37, 41)}),   # waits 2 + 2 + 2
        run(t0, {"detect_work": (1, 2), "ingest": (2, 12), "audit": (12, 15)}),   # waits 1 + 0 + 0
    ]
    profile = _task_profile(runs)
    assert profile["task_s_p50"] == {"audit": 4, "detect_work": 1, "ingest": 20}
    assert profile["waits_between_tasks_s_p50"] == 3
    assert _task_profile([]) == {}
