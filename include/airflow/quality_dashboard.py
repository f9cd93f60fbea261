"""The "Quality dashboard" page: the pipeline's health over a time range the user picks, in five charts.

* **Validity rate**: per bucket, all batches together (valid / (valid + invalid), duplicates are neither, as
  in the quality gate) and the worst single batch, against ``MIN_VALIDITY_RATE`` as it was in force when those
  batches were published (their ``rules_in_force``). From ``data_quality_metrics``.
* **Rows per minute**: rows published per minute, split into stored, dead-lettered and duplicates.
* **Dead letters per rule**: rows of ``dead_letter_events`` by when they failed and the rule they broke
  (``parse``: could not be typed); a row that broke two rules counts once for each.
* **Warn-level violations per rule**: rows of ``rule_violations`` (stored rows that broke a ``warn`` rule).
* **Freshness**, from ``pipeline_batch_ledger``: the longest time within the bucket since the last publish
  (how stale the tables were for their readers: it grows while nothing new is published), and the slowest
  batch from the start of its Spark batch to its publish (the pipeline's own latency).

The range is a preset (``range=1h|6h|24h|7d``, default 24h) or ``from``/``to``. Its start moves back to a
bucket boundary, so every bucket but the last is whole; the last ends at ``to`` or now. Each query filters
its table's time column to the range and aggregates per bucket in PostgreSQL (``date_bin``): the page reads
at most ``MAX_BUCKETS`` rows per series, whatever the range. Values are bound parameters. The time columns
are indexed except ``data_quality_metrics.recorded_at``: the schema has no index there, and the table has one
row per batch, pruned after PIPELINE_HISTORY_RETENTION_DAYS.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from include.airflow import charts
from include.airflow.charts import PALETTE, Line, Stack
from include.airflow.dead_letters import PARSE, FilterError, parse_time
from include.results import validity_rate

PRESETS = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(days=1), "7d": timedelta(days=7)}
DEFAULT_PRESET = "24h"
BUCKET_SIZES = tuple(timedelta(minutes=m) for m in (1, 5, 15, 30, 60, 120, 360, 720, 1440, 10080))
MAX_BUCKETS = 120
MAX_SPAN = timedelta(days=366)
# date_bin's origin: midnight UTC of a Monday, so day-long buckets start at midnight and week-long ones on Mondays
ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)
# How long before the range a batch published in it may have been staged: the ledger is read through its
# staged_at index. A batch that waited longer (a day of failed runs) leaves its point out of the chart.
LEDGER_LOOKBACK = timedelta(days=1)
TOP_RULES = 7  # rules drawn one by one; the rest are one layer, "other rules"
# the colours of the layers of "Rows per minute" (Okabe and Ito's blue, vermilion and grey)
STORED, DEAD_LETTERED, DUPLICATES = "#0072B2", "#D55E00", "#A0AEC0"


def bucket_size(span: timedelta) -> timedelta:
    """The smallest bucket that shows ``span`` in at most MAX_BUCKETS buckets (one more for the start's move)."""
    return next((size for size in BUCKET_SIZES if span / size <= MAX_BUCKETS - 1), BUCKET_SIZES[-1])


def bucket_of(moment: datetime, size: timedelta) -> datetime:
    """The start of the bucket ``moment`` is in: what ``date_bin(size, moment, ORIGIN)`` gives in PostgreSQL."""
    return ORIGIN + ((moment - ORIGIN) // size) * size


@dataclass(frozen=True)
class TimeRange:
    """What the user chose to see: [start, end), in buckets of ``bucket``; ``preset`` unless from/to."""

    start: datetime
    end: datetime
    bucket: timedelta
    preset: str | None = DEFAULT_PRESET

    @classmethod
    def from_params(cls, params: Mapping[str, str], now: datetime) -> TimeRange:
        """From untrusted query parameters: ``from``/``to`` (ISO-8601, UTC unless a zone is given; ``to``
        defaults to now, ``from`` to a day before ``to``), else ``range``. Raises FilterError naming the
        parameter that is wrong."""
        def value(name: str) -> str | None:
            return (params.get(name) or "").strip() or None

        start, end = parse_time(value("from"), "from"), parse_time(value("to"), "to")
        preset = None
        if start is None and end is None:
            preset = value("range") or DEFAULT_PRESET
            if preset not in PRESETS:
                raise FilterError(f"range={preset!r} is not one of {', '.join(PRESETS)}; "
                                  "or give from and to instead")
            start, end = now - PRESETS[preset], now
        else:
            end = min(end or now, now)  # nothing is recorded in the future
            start = start or end - PRESETS[DEFAULT_PRESET]
            if start >= end:
                raise FilterError("from must be before to (and before now)")
            if end - start > MAX_SPAN:
                raise FilterError(f"the range is longer than {MAX_SPAN.days} days; choose a shorter one")
        size = bucket_size(end - start)
        return cls(bucket_of(start, size), end, size, preset)

    def buckets(self) -> list[datetime]:
        """The start of every bucket of the range, oldest first."""
        count = math.ceil((self.end - self.start) / self.bucket)
        return [self.start + i * self.bucket for i in range(count)]

    def minutes_in(self, bucket: datetime) -> float:
        """How many minutes of the bucket starting at ``bucket`` lie in the range (the last may be short)."""
        return (min(bucket + self.bucket, self.end) - bucket).total_seconds() / 60

    def query_params(self) -> dict[str, str]:
        """The range as query parameters again, for the links to the listing pages."""
        return {"from": self.start.isoformat(timespec="seconds"), "to": self.end.isoformat(timespec="seconds")}

    def sql_params(self) -> dict[str, object]:
        return {"start": self.start, "end": self.end, "bucket": self.bucket, "origin": ORIGIN,
                "lookback": self.start - LEDGER_LOOKBACK, "parse": PARSE}

    def bucket_label(self) -> str:
        minutes = int(self.bucket.total_seconds() // 60)
        if minutes % 1440 == 0:
            return "day" if minutes == 1440 else ("week" if minutes == 10080 else f"{minutes // 1440} days")
        if minutes % 60 == 0:
            return "hour" if minutes == 60 else f"{minutes // 60} h"
        return "minute" if minutes == 1 else f"{minutes} min"


# ------------------------------------------------------------------------------------------------- SQL

# One row per bucket with batches published in it (recorded_at is the publish transaction's time).
BATCHES_SQL = """
SELECT date_bin(%(bucket)s, recorded_at, %(origin)s) AS bucket, count(*), sum(total_records), sum(valid_records),
       sum(invalid_records), sum(duplicate_records), sum(warned_records), min(validity_rate),
       max((rules_in_force ->> 'min_validity_rate')::numeric)
  FROM data_quality_metrics
 WHERE recorded_at >= %(start)s AND recorded_at < %(end)s
 GROUP BY 1
"""
# (bucket, rule, rows): a row counts once per broken rule; a row that could not be typed counts as 'parse'.
DEAD_LETTERS_SQL = """
SELECT date_bin(%(bucket)s, failed_at, %(origin)s) AS bucket, rule, count(*)
  FROM dead_letter_events
       CROSS JOIN LATERAL unnest(CASE WHEN error_kind = 'parse' THEN ARRAY[%(parse)s] ELSE failed_rules END) AS rule
 WHERE failed_at >= %(start)s AND failed_at < %(end)s
 GROUP BY 1, 2
"""
DEAD_LETTER_ROWS_SQL = "SELECT count(*) FROM dead_letter_events WHERE failed_at >= %(start)s AND failed_at < %(end)s"
VIOLATIONS_SQL = """
SELECT date_bin(%(bucket)s, recorded_at, %(origin)s) AS bucket, rule, count(*)
  FROM rule_violations
 WHERE recorded_at >= %(start)s AND recorded_at < %(end)s
 GROUP BY 1, 2
"""
# One row per bucket with publishes in it: how many, the longest gap since the publish before (lag over the
# range; the first publish of the range has none), the first and last publish, and the slowest batch. One
# publish may mark several batches published at the same moment: they are one publish here.
PUBLISHES_SQL = """
WITH publishes AS (
    SELECT published_at, max(published_at - started_at) AS slowest
      FROM pipeline_batch_ledger
     WHERE staged_at >= %(lookback)s AND staged_at < %(end)s AND published_at >= %(start)s AND published_at < %(end)s
     GROUP BY published_at
), gaps AS (
    SELECT published_at, slowest, published_at - lag(published_at) OVER (ORDER BY published_at) AS gap
      FROM publishes
)
SELECT date_bin(%(bucket)s, published_at, %(origin)s) AS bucket, count(*), max(gap), min(published_at),
       max(published_at), max(slowest)
  FROM gaps
 GROUP BY 1
"""
# The last publish before the range, walking the staged_at index back from the range's start.
LAST_PUBLISH_BEFORE_SQL = """
SELECT published_at FROM pipeline_batch_ledger
 WHERE staged_at < %(start)s AND published_at < %(start)s
 ORDER BY staged_at DESC LIMIT 1
"""


@dataclass(frozen=True)
class Batches:
    """The batches published in one bucket (data_quality_metrics)."""

    batches: int
    total: int
    valid: int
    invalid: int
    duplicates: int
    warned: int
    worst_rate: float | None
    threshold: float | None


@dataclass(frozen=True)
class Publishes:
    """The publishes in one bucket (pipeline_batch_ledger)."""

    count: int
    longest_gap: timedelta | None
    first: datetime
    last: datetime
    slowest_batch: timedelta


@dataclass(frozen=True)
class Dashboard:
    """Everything the page shows, aggregated per bucket start (absent: nothing in that bucket)."""

    range: TimeRange
    batches: dict[datetime, Batches]
    dead_letters: dict[tuple[datetime, str], int]
    dead_letter_rows: int
    violations: dict[tuple[datetime, str], int]
    publishes: dict[datetime, Publishes]
    last_publish_before: datetime | None


def _float(value) -> float | None:
    return None if value is None else float(value)


def read(conn, time_range: TimeRange) -> Dashboard:
    """The dashboard's aggregates for ``time_range``: six small queries on the read-only connection ``conn``."""
    params = time_range.sql_params()

    def rows(sql: str) -> list[tuple]:
        return conn.execute(sql, params).fetchall()

    last_before = conn.execute(LAST_PUBLISH_BEFORE_SQL, params).fetchone()
    return Dashboard(
        range=time_range,
        batches={bucket: Batches(int(n), int(total), int(valid), int(invalid), int(duplicates), int(warned),
                                 _float(worst), _float(threshold))
                 for bucket, n, total, valid, invalid, duplicates, warned, worst, threshold in rows(BATCHES_SQL)},
        dead_letters={(bucket, rule): count for bucket, rule, count in rows(DEAD_LETTERS_SQL)},
        dead_letter_rows=conn.execute(DEAD_LETTER_ROWS_SQL, params).fetchone()[0],
        violations={(bucket, rule): count for bucket, rule, count in rows(VIOLATIONS_SQL)},
        publishes={bucket: Publishes(n, gap, first, last, slowest)
                   for bucket, n, gap, first, last, slowest in rows(PUBLISHES_SQL)},
        last_publish_before=last_before[0] if last_before else None,
    )


# ------------------------------------------------------------------------------------- series and charts

def middle(time_range: TimeRange, bucket: datetime) -> datetime:
    """Where a bucket's point goes: the middle of its part of the range."""
    return bucket + (min(bucket + time_range.bucket, time_range.end) - bucket) / 2


def validity_lines(dashboard: Dashboard) -> list[Line]:
    """All batches of each bucket together, the worst batch, and the threshold in force (a reference)."""
    time_range, batches = dashboard.range, dashboard.batches

    def line(name: str, colour: str, value, reference: bool = False) -> Line:
        return Line(name, [(middle(time_range, b), value(batches[b]) if b in batches else None)
                           for b in time_range.buckets()], colour, reference)

    return [line("all batches", PALETTE[0], lambda b: validity_rate(b.valid, b.invalid)),
            line("worst batch", PALETTE[1], lambda b: b.worst_rate),
            line("MIN_VALIDITY_RATE in force", PALETTE[5], lambda b: b.threshold, reference=True)]


def rows_per_minute_stacks(dashboard: Dashboard) -> list[Stack]:
    """Rows published per minute of each bucket (of its part of the range), by outcome."""
    time_range, batches = dashboard.range, dashboard.batches

    def stack(name: str, colour: str, count) -> Stack:
        total = sum(count(b) for b in batches.values())
        return Stack(name, [count(batches[b]) / time_range.minutes_in(b) if b in batches else 0.0
                            for b in time_range.buckets()], colour, note=f"({total:,} rows)")

    return [stack("stored", STORED, lambda b: b.valid), stack("dead-lettered", DEAD_LETTERED, lambda b: b.invalid),
            stack("duplicates", DUPLICATES, lambda b: b.duplicates)]


def per_rule_stacks(counts: Mapping[tuple[datetime, str], int], buckets: list[datetime],
                    top: int = TOP_RULES) -> list[Stack]:
    """One layer per rule, most rows first (at the bottom); past the ``top`` rules, one layer of the others."""
    totals: dict[str, int] = defaultdict(int)
    for (_, rule), count in counts.items():
        totals[rule] += count
    ranked = sorted(totals, key=lambda rule: (-totals[rule], rule))
    shown = ranked if len(ranked) <= top + 1 else ranked[:top]  # never an "other" layer of one rule
    position = {bucket: i for i, bucket in enumerate(buckets)}
    values = {rule: [0] * len(buckets) for rule in ranked}
    for (bucket, rule), count in counts.items():
        if bucket in position:
            values[rule][position[bucket]] += count
    stacks = [Stack(rule, values[rule], PALETTE[i % len(PALETTE)], note=f"({totals[rule]:,})")
              for i, rule in enumerate(shown)]
    rest = ranked[len(shown):]
    if rest:
        other = [sum(values[rule][i] for rule in rest) for i in range(len(buckets))]
        stacks.append(Stack(f"{len(rest)} other rules", other, charts.OTHER,
                            note=f"({sum(totals[rule] for rule in rest):,})"))
    return stacks


def staleness(dashboard: Dashboard) -> list[timedelta | None]:
    """Per bucket, the longest time within it since the last publish: the longest gap between publishes that
    ends in it, or the time from the last publish to the bucket's end (the range's end for the last
    bucket). None until a first publish is known (none in the range and none before it)."""
    last, result = dashboard.last_publish_before, []
    for bucket in dashboard.range.buckets():
        stop = min(bucket + dashboard.range.bucket, dashboard.range.end)
        found = dashboard.publishes.get(bucket)
        waits = []
        if found is not None:
            waits += [found.longest_gap] if found.longest_gap is not None else []
            waits += [found.first - last] if last is not None else []
            last = found.last
        waits += [stop - last] if last is not None else []
        result.append(max(waits, default=None))
    return result


def duration_unit(longest: timedelta) -> tuple[float, str]:
    """(seconds per unit, unit) that shows durations up to ``longest`` in readable numbers."""
    if longest < timedelta(minutes=2):
        return 1.0, " s"
    return (60.0, " min") if longest < timedelta(hours=2) else (3600.0, " h")


def freshness_lines(dashboard: Dashboard) -> tuple[list[Line], str]:
    """The two freshness lines, in a unit that suits them, and that unit."""
    buckets, publishes = dashboard.range.buckets(), dashboard.publishes
    waits = staleness(dashboard)
    slowest = [publishes[b].slowest_batch if b in publishes else None for b in buckets]
    seconds, unit = duration_unit(max([d for d in (*waits, *slowest) if d is not None], default=timedelta(0)))

    def line(name: str, colour: str, durations: list[timedelta | None]) -> Line:
        return Line(name, [(middle(dashboard.range, b), None if d is None else round(d.total_seconds() / seconds, 2))
                           for b, d in zip(buckets, durations)], colour)

    return [line("time since the last publish (longest in bucket)", PALETTE[0], waits),
            line("slowest batch: Spark batch start to published", PALETTE[1], slowest)], unit


def render(dashboard: Dashboard) -> dict[str, str]:
    """Every chart of the page as SVG text, by id, in the page's order."""
    time_range = dashboard.range
    start, end, buckets, per = time_range.start, time_range.end, time_range.buckets(), time_range.bucket_label()
    lines = validity_lines(dashboard)
    rates = [v for line in lines for _, v in line.points if v is not None]
    freshness, unit = freshness_lines(dashboard)
    no_batch = "No batch was published in this range"
    return {
        "validity": charts.line_chart(
            "chart-validity", "Validity rate", f"per {per}: all batches together, the worst batch, the threshold",
            lines, start, end, unit="%", low=max(0.0, math.floor((min(rates, default=100) - 1) / 5) * 5), high=100,
            empty=no_batch),
        "rows": charts.stacked_bar_chart(
            "chart-rows", "Rows per minute", f"rows published per minute, per {per}, by outcome", buckets,
            time_range.bucket, rows_per_minute_stacks(dashboard), start, end, empty=no_batch),
        "dead-letters": charts.stacked_bar_chart(
            "chart-dead-letters", "Dead letters per rule", f"rows dead-lettered per {per}, by broken rule",
            buckets, time_range.bucket, per_rule_stacks(dashboard.dead_letters, buckets), start, end,
            empty="No row was dead-lettered in this range"),
        "violations": charts.stacked_bar_chart(
            "chart-violations", "Warn-level violations per rule",
            f"stored rows that broke a rule of severity warn, per {per}", buckets, time_range.bucket,
            per_rule_stacks(dashboard.violations, buckets), start, end, empty="No warn-level violation in this range"),
        "freshness": charts.line_chart(
            "chart-freshness", "Freshness", f"per {per}: waits for new data, and the slowest batch", freshness,
            start, end, unit=unit, empty=no_batch),
    }


def summary(dashboard: Dashboard) -> list[tuple[str, str]]:
    """The range in a few figures: (what, value)."""
    batches = dashboard.batches.values()
    valid, invalid = sum(b.valid for b in batches), sum(b.invalid for b in batches)
    worst = [b.worst_rate for b in batches if b.worst_rate is not None]
    waits = [w for w in staleness(dashboard) if w is not None]
    longest = max(waits, default=None)
    return [
        ("batches published", f"{sum(b.batches for b in batches):,}"),
        ("rows published", f"{sum(b.total for b in batches):,}"),
        ("validity, all batches", f"{validity_rate(valid, invalid):g}%" if batches else "—"),
        ("worst batch", f"{min(worst):g}%" if worst else "—"),
        ("dead letters", f"{dashboard.dead_letter_rows:,}"),
        ("warn-level violations", f"{sum(dashboard.violations.values()):,}"),
        ("longest wait for new data", _duration(longest) if longest is not None else "—"),
    ]


def _duration(duration: timedelta) -> str:
    seconds, unit = duration_unit(duration)
    return f"{charts.number(round(duration.total_seconds() / seconds, 1))}{unit}"
