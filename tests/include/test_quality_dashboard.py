"""The Quality dashboard's decisions without a database: which range and buckets a request means, what its
queries may touch, and how the aggregates become the series a reader sees."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from include.airflow import quality_dashboard as qd
from include.airflow.dead_letters import FilterError
from include.airflow.quality_dashboard import Batches, Dashboard, Publishes, TimeRange

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 7, 14, 7, 30, tzinfo=UTC)
# query -> the time column it filters by: each has an index but data_quality_metrics.recorded_at
QUERIES = {"BATCHES_SQL": "recorded_at", "DEAD_LETTERS_SQL": "failed_at", "DEAD_LETTER_ROWS_SQL": "failed_at",
           "VIOLATIONS_SQL": "recorded_at", "PUBLISHES_SQL": "staged_at"}


def at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 12, 7, hour, minute, second, tzinfo=UTC)


def hours(start: datetime, end: datetime) -> TimeRange:
    """A range of whole hours in hour-long buckets."""
    return TimeRange(start, end, timedelta(hours=1), None)


def dashboard(time_range: TimeRange, **parts) -> Dashboard:
    return Dashboard(**{"range": time_range, "batches": {}, "dead_letters": {}, "dead_letter_rows": 0,
                        "violations": {}, "publishes": {}, "last_publish_before": None, **parts})


def batches(valid: int, invalid: int = 0, duplicates: int = 0, worst: float | None = None,
            threshold: float | None = 95.0, n: int = 1) -> Batches:
    rate = round(100 * valid / (valid + invalid), 2) if valid + invalid else 100.0
    return Batches(n, valid + invalid + duplicates, valid, invalid, duplicates, 0,
                   rate if worst is None else worst, threshold)


# ------------------------------------------------------------------------------------------ range and buckets

def test_by_default_the_last_24_hours_in_15_minute_buckets_starting_on_a_boundary():
    chosen = TimeRange.from_params({}, NOW)
    assert (chosen.preset, chosen.bucket, chosen.end) == ("24h", timedelta(minutes=15), NOW)
    assert chosen.start == datetime(2026, 12, 6, 14, 0, tzinfo=UTC)  # 14:07:30 a day before, moved back to 14:00
    buckets = chosen.buckets()
    assert len(buckets) == 97 and buckets[0] == chosen.start and buckets[-1] == at(14, 0)
    assert chosen.minutes_in(buckets[0]) == 15 and chosen.minutes_in(buckets[-1]) == 7.5  # the last one is running


@pytest.mark.parametrize(("preset", "bucket"), [("1h", 1), ("6h", 5), ("24h", 15), ("7d", 120)])
def test_each_preset_has_a_bucket_that_keeps_the_charts_readable(preset, bucket):
    chosen = TimeRange.from_params({"range": preset}, NOW)
    assert chosen.bucket == timedelta(minutes=bucket) and chosen.end - chosen.start >= qd.PRESETS[preset]
    assert len(chosen.buckets()) <= qd.MAX_BUCKETS


def test_a_custom_range_from_to_in_utc_unless_a_zone_is_given_and_never_past_now():
    chosen = TimeRange.from_params({"from": "2026-12-07T08:00", "to": "2026-12-07T10:00+01:00"}, NOW)
    assert (chosen.start, chosen.end, chosen.bucket, chosen.preset) == (at(8), at(9), timedelta(minutes=1), None)
    assert TimeRange.from_params({"from": "2026-12-01"}, NOW).end == NOW
    assert TimeRange.from_params({"from": "2026-12-07T13:00", "to": "2027-01-01"}, NOW).end == NOW
    assert TimeRange.from_params({"to": "2026-12-07T12:00"}, NOW).start == datetime(2026, 12, 6, 12, tzinfo=UTC)
    a_year = TimeRange.from_params({"from": "2025-12-08", "to": "2026-12-07"}, NOW)
    assert a_year.bucket == timedelta(days=7) and len(a_year.buckets()) <= qd.MAX_BUCKETS
    assert a_year.start.weekday() == 0 and a_year.start.time() == datetime.min.time()  # weeks start on Mondays


@pytest.mark.parametrize(("params", "message"), [
    ({"range": "2w"}, "range='2w' is not one of 1h, 6h, 24h, 7d"),
    ({"range": "<b>"}, "range='<b>'"),
    ({"from": "yesterday"}, "from='yesterday' is not an ISO-8601 date or time"),
    ({"from": "2026-12-07T12:00", "to": "2026-12-07T11:00"}, "from must be before to"),
    ({"from": "2026-12-08"}, "from must be before to (and before now)"),
    ({"from": "2020-01-01"}, "longer than 366 days"),
])
def test_a_range_the_page_cannot_show_is_refused_with_a_reason(params, message):
    with pytest.raises(FilterError, match=re.escape(message)):
        TimeRange.from_params(params, NOW)


@pytest.mark.parametrize(("moment", "size", "start"), [
    (at(14, 7, 30), timedelta(minutes=15), at(14, 0)),
    (at(14, 15), timedelta(minutes=15), at(14, 15)),  # a boundary starts its own bucket
    (at(13, 59, 59), timedelta(hours=2), at(12)),
    (at(23, 59), timedelta(days=1), at(0)),
    (at(9), timedelta(days=7), datetime(2026, 12, 7, tzinfo=UTC)),  # 7 Dec 2026 is a Monday
])
def test_a_moment_falls_in_the_bucket_postgresql_date_bin_puts_it_in(moment, size, start):
    assert qd.bucket_of(moment, size) == start


def test_the_range_goes_back_to_the_listing_pages_as_from_and_to():
    chosen = hours(at(8), at(11, 30))
    assert chosen.query_params() == {"from": "2026-12-07T08:00:00+00:00", "to": "2026-12-07T11:30:00+00:00"}
    assert [TimeRange(at(0), at(1), timedelta(minutes=m)).bucket_label() for m in (1, 15, 60, 120, 1440, 10080)] == [
        "minute", "15 min", "hour", "2 h", "day", "week"]


# ------------------------------------------------------------------------------------------ the queries

def test_every_query_reads_only_its_range_of_a_time_column_and_aggregates():
    params = hours(at(8), at(11)).sql_params()
    for name, column in QUERIES.items():
        sql = getattr(qd, name)
        assert f"{column} >= %(" in sql and f"{column} < %(end)s" in sql, name
        assert "GROUP BY" in sql or "count(*)" in sql, name  # aggregated in PostgreSQL, never the rows
        assert set(re.findall(r"%\((\w+)\)s", sql)) <= set(params), name  # every placeholder is bound
        assert "{" not in sql, name  # nothing is formatted into the text
    assert "ORDER BY staged_at DESC LIMIT 1" in qd.LAST_PUBLISH_BEFORE_SQL
    assert params["lookback"] == at(8) - qd.LEDGER_LOOKBACK and params["origin"] == qd.ORIGIN


def test_the_queries_ask_postgresql_for_the_same_buckets_as_the_page():
    for name in ("BATCHES_SQL", "DEAD_LETTERS_SQL", "VIOLATIONS_SQL", "PUBLISHES_SQL"):
        assert "date_bin(%(bucket)s, " in getattr(qd, name) and ", %(origin)s) AS bucket" in getattr(qd, name)


# ------------------------------------------------------------------------------------------ series

def test_validity_per_bucket_all_batches_together_the_worst_and_the_threshold_in_force():
    chosen = hours(at(8), at(11))
    board = dashboard(chosen, batches={at(8): batches(90, 10, duplicates=50, worst=80.0),
                                       at(10): batches(100, threshold=97.5)})
    together, worst, threshold = qd.validity_lines(board)
    assert [v for _, v in together.points] == [90.0, None, 100.0]  # duplicates are neither valid nor invalid
    assert [v for _, v in worst.points] == [80.0, None, 100.0]
    assert [v for _, v in threshold.points] == [95.0, None, 97.5] and threshold.reference
    assert [t for t, _ in together.points] == [at(8, 30), at(9, 30), at(10, 30)]  # the middle of each bucket


def test_rows_per_minute_divide_by_the_minutes_of_the_bucket_in_the_range():
    chosen = hours(at(8), at(9, 30))  # the second bucket has only run for 30 minutes
    board = dashboard(chosen, batches={at(8): batches(600, 60, 120), at(9): batches(300, 30)})
    stored, dead, duplicates = qd.rows_per_minute_stacks(board)
    assert stored.values == [10.0, 10.0] and dead.values == [1.0, 1.0] and duplicates.values == [2.0, 0.0]
    assert (stored.note, dead.note, duplicates.note) == ("(900 rows)", "(90 rows)", "(120 rows)")


def test_rules_are_layers_most_rows_first_and_the_tail_becomes_other_rules():
    buckets = [at(8), at(9)]
    counts = {(at(8), "price_in_range"): 5, (at(9), "price_in_range"): 1, (at(9), "parse"): 9,
              **{(at(8), f"rule_{i}"): 1 for i in range(3)}}
    stacks = qd.per_rule_stacks(counts, buckets, top=2)
    assert [(s.name, list(s.values), s.note) for s in stacks] == [
        ("parse", [0, 9], "(9)"), ("price_in_range", [5, 1], "(6)"), ("3 other rules", [3, 0], "(3)")]
    assert len({s.colour for s in stacks}) == 3
    # one rule past the top is drawn itself, not as "1 other rules"
    assert [s.name for s in qd.per_rule_stacks(counts, buckets, top=4)] == [
        "parse", "price_in_range", "rule_0", "rule_1", "rule_2"]
    assert qd.per_rule_stacks({}, buckets) == []


def test_staleness_is_the_longest_time_since_a_publish_and_climbs_while_nothing_is_published():
    chosen = hours(at(8), at(11, 30))
    board = dashboard(chosen, last_publish_before=at(7, 58), publishes={
        # publishes at 08:01 and 08:40 (gap 39 min; the one before the range was at 07:58)
        at(8): Publishes(2, timedelta(minutes=39), at(8, 1), at(8, 40), timedelta(seconds=40)),
        # nothing from 08:40 until 10:05, then every minute until 10:50
        at(10): Publishes(46, timedelta(minutes=85), at(10, 5), at(10, 50), timedelta(seconds=75)),
    })
    assert qd.staleness(board) == [timedelta(minutes=39), timedelta(minutes=80), timedelta(minutes=85),
                                   timedelta(minutes=40)]  # the last bucket ends at the range's end, 11:30
    lines, unit = qd.freshness_lines(board)
    assert unit == " min" and [v for _, v in lines[0].points] == [39.0, 80.0, 85.0, 40.0]
    assert [v for _, v in lines[1].points] == [0.67, None, 1.25, None]


def test_staleness_is_unknown_until_a_first_publish_and_the_first_one_counts_from_the_one_before():
    chosen = hours(at(8), at(10))
    only_later = dashboard(chosen, publishes={at(9): Publishes(1, None, at(9, 30), at(9, 30), timedelta(seconds=9))})
    assert qd.staleness(only_later) == [None, timedelta(minutes=30)]
    known_before = dashboard(chosen, last_publish_before=at(6), publishes=only_later.publishes)
    assert qd.staleness(known_before) == [timedelta(hours=3), timedelta(hours=3, minutes=30)]
    assert qd.freshness_lines(known_before)[1] == " h"


def test_the_summary_gives_the_range_in_figures():
    chosen = hours(at(8), at(10))
    board = dashboard(chosen, batches={at(8): batches(90, 10, 5, worst=85.0, n=3), at(9): batches(100)},
                      dead_letter_rows=10, violations={(at(8), "category_known"): 4, (at(9), "category_known"): 2},
                      last_publish_before=at(7, 59),
                      publishes={at(8): Publishes(3, timedelta(minutes=2), at(8, 1), at(8, 50), timedelta(seconds=30))})
    assert dict(qd.summary(board)) == {
        "batches published": "4", "rows published": "205", "validity, all batches": "95%", "worst batch": "85%",
        "dead letters": "10", "warn-level violations": "6", "longest wait for new data": "70 min"}  # 08:50 to 10:00
    assert dict(qd.summary(dashboard(chosen)))["validity, all batches"] == "—"


def test_every_chart_is_drawn_and_an_empty_range_says_so_in_each():
    chosen = hours(at(8), at(10))
    drawn = qd.render(dashboard(chosen))
    assert list(drawn) == ["validity", "rows", "dead-letters", "violations", "freshness"]
    messages = {name: [e.text for e in ET.fromstring(svg).iter() if e.get("class") == "empty"]
                for name, svg in drawn.items()}
    assert messages == {"validity": ["No batch was published in this range"],
                        "rows": ["No batch was published in this range"],
                        "dead-letters": ["No row was dead-lettered in this range"],
                        "violations": ["No warn-level violation in this range"],
                        "freshness": ["No batch was published in this range"]}
    full = qd.render(dashboard(chosen, batches={at(8): batches(90, 10)}, dead_letters={(at(9), "parse"): 2},
                               violations={(at(9), "category_known"): 1}, last_publish_before=at(7),
                               publishes={at(8): Publishes(1, None, at(8, 30), at(8, 30), timedelta(seconds=20))}))
    assert all('class="empty"' not in svg for svg in full.values())
    assert 'data-series="parse"' in full["dead-letters"] and 'data-series="category_known"' in full["violations"]
