"""The Quality dashboard's SVG charts: what a reader sees (axes, labels, bars, points, an empty state) and that
no text of a series can become markup."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest

from include.airflow.charts import (
    LEFT,
    RIGHT,
    WIDTH,
    Line,
    Stack,
    empty_chart,
    line_chart,
    number,
    stacked_bar_chart,
    time_label,
    time_ticks,
    value_ticks,
)

pytestmark = pytest.mark.unit

SVG = "{http://www.w3.org/2000/svg}"
START = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
END = START + timedelta(hours=3)
HOURS = [START + timedelta(hours=i) for i in range(3)]
HOSTILE = '<script>alert("x")</script> & \'quoted\''


def parsed(svg: str) -> ET.Element:
    """The chart as XML: it must be well-formed for a browser to draw it inline."""
    return ET.fromstring(svg)


def texts(root: ET.Element, css_class: str | None = None) -> list[str]:
    return ["".join(e.itertext()) for e in root.iter(f"{SVG}text") if css_class is None or e.get("class") == css_class]


def of_class(root: ET.Element, tag: str, css_class: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{SVG}{tag}") if e.get("class") == css_class]


def test_a_stacked_bar_chart_draws_one_rect_per_non_zero_value_with_title_axes_and_legend():
    stacks = [Stack("price_in_range", [3, 0, 5], "#0072B2", note="(8)"), Stack("parse", [1, 2, 0], "#E69F00")]
    root = parsed(stacked_bar_chart("chart-x", "Dead letters per rule", "per hour", HOURS, timedelta(hours=1),
                                    stacks, START, END))
    assert root.get("id") == "chart-x" and root.get("role") == "img"
    assert texts(root, "chart-title") == ["Dead letters per rule"] and texts(root, "chart-subtitle") == ["per hour"]
    bars = of_class(root, "rect", "bar")
    assert [(b.get("data-series"), b.get("data-value")) for b in bars] == [
        ("price_in_range", "3"), ("parse", "1"), ("parse", "2"), ("price_in_range", "5")]
    assert bars[0].get("data-bucket") == START.isoformat()
    # the second layer sits on the first: its bottom is the first one's top
    first, second = bars[0], bars[1]
    assert float(second.get("y")) + float(second.get("height")) == pytest.approx(float(first.get("y")), abs=0.2)
    assert texts(root, "y-label") == ["0", "1", "2", "3", "4", "5"]  # the tallest bar is 5
    assert texts(root, "x-label")[:2] == ["09:00", "09:30"]
    legend = ["".join(g.itertext()) for g in root.iter(f"{SVG}g") if g.get("class") == "legend-entry"]
    assert legend == ["price_in_range (8)", "parse"]
    assert "price_in_range: 3, 2026-12-07 09:00 UTC" in [t.text for t in root.iter(f"{SVG}title")]


def test_bars_of_a_bucket_that_starts_before_the_range_are_cut_at_its_start():
    root = parsed(stacked_bar_chart("c", "t", "s", [START - timedelta(minutes=30)], timedelta(hours=1),
                                    [Stack("a", [2], "#000")], START, END))
    [bar] = of_class(root, "rect", "bar")
    assert float(bar.get("x")) == LEFT  # the plot's left edge
    assert float(bar.get("width")) == pytest.approx((WIDTH - LEFT - RIGHT) / 6 - 1, abs=0.2)  # half an hour of three


def test_a_line_chart_has_a_point_per_value_and_breaks_its_line_where_there_is_none():
    points = [(START, 99.5), (START + timedelta(hours=1), None), (START + timedelta(hours=2), 97.0)]
    threshold = [(START, 95.0), (START + timedelta(hours=1), None), (START + timedelta(hours=2), 95.0)]
    root = parsed(line_chart("chart-v", "Validity rate", "per hour",
                             [Line("all batches", points, "#0072B2"), Line("threshold", threshold, "#D55E00", True)],
                             START, END, unit="%", low=90, high=100))
    circles = of_class(root, "circle", "point")
    assert [(c.get("data-series"), c.get("data-value")) for c in circles] == [("all batches", "99.5"),
                                                                              ("all batches", "97")]
    paths = {p.get("data-series"): p for p in of_class(root, "path", "line")}
    assert paths["all batches"].get("d").count("M") == 2  # two runs: the gap is not bridged
    assert paths["threshold"].get("d").count("M") == 1  # a threshold holds across a gap
    assert paths["threshold"].get("stroke-dasharray")
    assert [c for c in circles if c.get("data-series") == "threshold"] == []
    # the first series is drawn last, on top
    assert [p.get("data-series") for p in of_class(root, "path", "line")] == ["threshold", "all batches"]
    assert texts(root, "y-label") == ["90%", "92%", "94%", "96%", "98%", "100%"]
    assert float(circles[0].get("cy")) < float(circles[1].get("cy"))  # 99.5 is drawn above 97


def test_a_line_chart_starts_its_axis_at_zero_for_positive_values_unless_told():
    root = parsed(line_chart("c", "Freshness", "s", [Line("wait", [(START, 40.0), (END, 70.0)], "#000")],
                             START, END, unit=" s"))
    assert texts(root, "y-label")[0] == "0 s" and texts(root, "y-label")[-1] == "80 s"


@pytest.mark.parametrize("draw", [
    lambda: stacked_bar_chart("c", "Dead letters", "s", HOURS, timedelta(hours=1), [Stack("a", [0, 0, 0], "#000")],
                              START, END, empty="No row was dead-lettered"),
    lambda: line_chart("c", "Dead letters", "s", [Line("a", [(START, None)], "#000"),
                                                  Line("ref", [(START, 95.0)], "#000", True)],
                       START, END, empty="No row was dead-lettered"),
    lambda: empty_chart("c", "Dead letters", "s", "No row was dead-lettered"),
])
def test_without_data_a_chart_keeps_its_title_and_says_why_it_is_empty(draw):
    root = parsed(draw())
    assert texts(root, "chart-title") == ["Dead letters"]
    assert texts(root, "empty") == ["No row was dead-lettered"]
    assert not of_class(root, "rect", "bar") and not of_class(root, "circle", "point")


def test_every_text_of_a_chart_is_escaped_never_markup():
    svg = stacked_bar_chart(HOSTILE, HOSTILE, HOSTILE, HOURS, timedelta(hours=1),
                            [Stack(HOSTILE, [1, 2, 3], "#000", note=HOSTILE)], START, END)
    svg += line_chart("c", "t", "s", [Line(HOSTILE, [(START, 1.0)], "#000")], START, END, unit=HOSTILE)
    svg += empty_chart("c", "t", "s", HOSTILE)
    assert "<script" not in svg and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;quoted&#x27;" in svg
    for chart in svg.split("</svg>")[:-1]:
        root = parsed(chart + "</svg>")
        assert not list(root.iter(f"{SVG}script")) and not list(root.iter("script"))
    bar = of_class(parsed(svg.split("</svg>")[0] + "</svg>"), "rect", "bar")[0]
    assert bar.get("data-series") == HOSTILE  # the attribute holds the text itself, as text


@pytest.mark.parametrize(("low", "high", "expected"), [
    (0, 7, [0, 2, 4, 6, 8]), (0, 5, [0, 1, 2, 3, 4, 5]), (90, 100, [90, 92, 94, 96, 98, 100]),
    (0, 0, [0, 0.2, 0.4, 0.6, 0.8, 1.0]), (0, 1234, [0, 250, 500, 750, 1000, 1250]),
])
def test_value_ticks_are_round_and_span_the_values(low, high, expected):
    assert value_ticks(low, high) == expected


def test_time_ticks_are_round_utc_times_within_the_range():
    ticks, step = time_ticks(datetime(2026, 12, 6, 9, 7, tzinfo=UTC), datetime(2026, 12, 7, 9, 7, tzinfo=UTC))
    assert step == timedelta(hours=4) and ticks[0] == datetime(2026, 12, 6, 12, 0, tzinfo=UTC) and len(ticks) == 6
    assert [time_label(t, step) for t in ticks] == ["12:00", "16:00", "20:00", "7 Dec", "04:00", "08:00"]
    ticks, step = time_ticks(START, START + timedelta(days=7))
    assert step == timedelta(days=1) and [time_label(t, step) for t in ticks][::3] == ["8 Dec", "11 Dec", "14 Dec"]
    ticks, step = time_ticks(START, START + timedelta(hours=1))
    assert step == timedelta(minutes=10) and len(ticks) == 7


@pytest.mark.parametrize(("value", "shown"), [(0, "0"), (12345, "12,345"), (97.534, "97.5"), (2.5, "2.5"),
                                              (0.25, "0.25"), (1.0, "1"), (8.333333, "8.33")])
def test_numbers_are_shown_as_people_read_them(value, shown):
    assert number(value) == shown
