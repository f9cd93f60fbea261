"""Charts as SVG text drawn on the server: the Quality dashboard's pictures need no script and no download.

Pure functions from series to SVG (include/airflow/quality_dashboard.py builds the series from PostgreSQL).
Every text that reaches the SVG is escaped here, whatever its source: rule names come from the contract,
but a chart treats all its text as untrusted. Times are UTC.

Each drawn value carries its numbers, for people (a ``<title>`` the browser shows on hover) and for tests:
a bar is ``<rect class="bar" data-series=… data-bucket=… data-value=…>``, a point of a line
``<circle class="point" data-series=… data-time=… data-value=…>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape

WIDTH = 600                            # SVG units; the page scales a chart to the width of its column
LEFT, RIGHT, TOP = 60, 14, 50          # room for the value labels, and for the title and subtitle above
PLOT_HEIGHT = 170
LEGEND_ROW = 18
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
TEXT, MUTED, GRID = "#1a202c", "#4a5568", "#e2e8f0"
# Okabe and Ito's colours, which people with a colour-vision deficiency can tell apart; grey is "other"
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
OTHER = "#A0AEC0"
TIME_STEPS = tuple(timedelta(minutes=m) for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 240, 360, 720, 1440, 2880, 10080))


@dataclass(frozen=True)
class Line:
    """A series of a line chart: (time, value) points; a value of None is a gap in the line."""

    name: str
    points: Sequence[tuple[datetime, float | None]]
    colour: str
    reference: bool = False  # a threshold: dashed, without dots, carried across gaps


@dataclass(frozen=True)
class Stack:
    """A layer of a stacked bar chart: one value per bucket, in the order of the chart's buckets."""

    name: str
    values: Sequence[float]
    colour: str
    note: str = ""  # shown after the name in the legend, e.g. the layer's total


def text(value: object) -> str:
    """Text for an SVG element or attribute: every markup character escaped, quotes included."""
    return escape(str(value), quote=True)


def number(value: float) -> str:
    """A value as people read it: whole numbers with thousands separators, others to 3 significant digits."""
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    magnitude = math.floor(math.log10(abs(value)))
    shown = f"{value:,.{max(0, 2 - magnitude)}f}"
    return shown.rstrip("0").rstrip(".") if "." in shown else shown


def value_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round values from at most ``low`` to at least ``high``, about ``count`` of them (a 1-2-2.5-5 step)."""
    if high <= low:
        high = low + 1
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(power * f for f in (1, 2, 2.5, 5, 10) if power * f >= raw)
    first = math.floor(low / step) * step
    ticks = [first]
    while ticks[-1] < high - 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def time_ticks(start: datetime, end: datetime, most: int = 7) -> tuple[list[datetime], timedelta]:
    """Round UTC times within [start, end], at most ``most`` of them, and the step between them."""
    step = next((s for s in TIME_STEPS if (end - start) / s <= most), TIME_STEPS[-1])
    origin = datetime(2000, 1, 3, tzinfo=UTC)  # a Monday: a week-long step starts on Mondays
    tick = origin + math.ceil((start - origin) / step) * step
    ticks = []
    while tick <= end:
        ticks.append(tick)
        tick += step
    return ticks, step


def time_label(moment: datetime, step: timedelta) -> str:
    """``14:30`` within a day, ``7 Dec`` at midnight or for steps of a day or more."""
    moment = moment.astimezone(UTC)
    if step >= timedelta(days=1) or (moment.hour, moment.minute) == (0, 0):
        return f"{moment.day} {moment:%b}"
    return f"{moment:%H:%M}"


class _Plot:
    """The coordinates of one chart: a time axis from ``start`` to ``end`` and values ``low`` to ``high``."""

    def __init__(self, start: datetime, end: datetime, low: float, high: float) -> None:
        self.start, self.end, self.low, self.high = start, end, low, high
        self.width = WIDTH - LEFT - RIGHT

    def x(self, moment: datetime) -> float:
        share = (moment - self.start) / (self.end - self.start)
        return round(LEFT + min(max(share, 0.0), 1.0) * self.width, 1)

    def y(self, value: float) -> float:
        share = (value - self.low) / (self.high - self.low)
        return round(TOP + PLOT_HEIGHT - min(max(share, 0.0), 1.0) * PLOT_HEIGHT, 1)

    def axes(self, ticks: list[float], unit: str) -> list[str]:
        """Horizontal grid lines with their values, the time labels, and the base line."""
        parts = []
        for tick in ticks:
            y = self.y(tick)
            parts.append(f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" stroke="{GRID}"/>')
            parts.append(f'<text class="y-label" x="{LEFT - 6}" y="{y + 4}" text-anchor="end" fill="{MUTED}">'
                         f'{text(number(tick) + unit)}</text>')
        moments, step = time_ticks(self.start, self.end)
        base = TOP + PLOT_HEIGHT
        for moment in moments:
            x = self.x(moment)
            parts.append(f'<line x1="{x}" y1="{base}" x2="{x}" y2="{base + 4}" stroke="{MUTED}"/>')
            parts.append(f'<text class="x-label" x="{x}" y="{base + 16}" text-anchor="middle" fill="{MUTED}">'
                         f'{text(time_label(moment, step))}</text>')
        parts.append(f'<line x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" y2="{base}" stroke="{MUTED}"/>')
        return parts


def _legend(entries: list[tuple[str, str, bool]], top: float) -> tuple[list[str], int]:
    """Swatches and names in rows that wrap at the chart's width; the parts and the number of rows."""
    parts, x, row = [], LEFT, 0
    for name, colour, reference in entries:
        width = 22 + 7 * len(name) + 14  # an estimate of the name's width at 12 px
        if x + width > WIDTH - RIGHT and x > LEFT:
            x, row = LEFT, row + 1
        y = top + row * LEGEND_ROW
        swatch = (f'<line x1="{x}" y1="{y - 4}" x2="{x + 16}" y2="{y - 4}" stroke="{colour}" stroke-width="2" '
                  f'stroke-dasharray="5 3"/>' if reference else
                  f'<rect x="{x}" y="{y - 9}" width="16" height="10" rx="2" fill="{colour}"/>')
        parts.append(f'<g class="legend-entry">{swatch}'
                     f'<text x="{x + 22}" y="{y}" fill="{TEXT}">{text(name)}</text></g>')
        x += width
    return parts, row + 1 if entries else 0


def _frame(chart_id: str, title: str, subtitle: str, height: float, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{text(chart_id)}" role="img" '
            f'aria-label="{text(title)}" viewBox="0 0 {WIDTH} {height:g}" width="100%" '
            f'font-family="{text(FONT)}" font-size="12">'
            f'<title>{text(title)}</title>'
            f'<text class="chart-title" x="2" y="18" font-size="15" font-weight="600" fill="{TEXT}">'
            f'{text(title)}</text>'
            f'<text class="chart-subtitle" x="2" y="36" fill="{MUTED}">{text(subtitle)}</text>'
            + "".join(body) + "</svg>")


def empty_chart(chart_id: str, title: str, subtitle: str, message: str) -> str:
    """A chart's frame with ``message`` where the plot would be."""
    middle = TOP + PLOT_HEIGHT / 2
    return _frame(chart_id, title, subtitle, TOP + PLOT_HEIGHT + 24, [
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" height="{PLOT_HEIGHT}" fill="#f7fafc" '
        f'stroke="{GRID}" rx="4"/>',
        f'<text class="empty" x="{(LEFT + WIDTH - RIGHT) / 2}" y="{middle}" text-anchor="middle" font-size="13" '
        f'fill="{MUTED}">{text(message)}</text>'])


def line_chart(chart_id: str, title: str, subtitle: str, lines: Sequence[Line], start: datetime, end: datetime, *,
               unit: str = "", low: float | None = None, high: float | None = None,
               empty: str = "No data in this range") -> str:
    """Lines over time, the first drawn on top; ``low``/``high`` fix the value axis (else it spans the values,
    from 0 when all are positive). Without a value in a non-reference line: the empty chart saying ``empty``."""
    values = [v for line in lines for _, v in line.points if v is not None]
    if not any(v is not None for line in lines if not line.reference for _, v in line.points):
        return empty_chart(chart_id, title, subtitle, empty)
    ticks = value_ticks(min(values) if low is None else low, max(values) if high is None else high)
    if low is None and min(values) >= 0:
        ticks = value_ticks(0, ticks[-1])
    plot = _Plot(start, end, ticks[0], ticks[-1])
    body = plot.axes(ticks, unit)
    for line in reversed(lines):
        runs: list[list[tuple[float, float]]] = [[]]
        for moment, value in line.points:
            if value is None and not line.reference:
                runs.append([])
            elif value is None:
                continue
            else:
                runs[-1].append((plot.x(moment), plot.y(value)))
        path = " ".join("M" + " L".join(f"{x},{y}" for x, y in run) for run in runs if run)
        dash = ' stroke-dasharray="6 4"' if line.reference else ""
        body.append(f'<path class="line" data-series="{text(line.name)}" d="{path}" fill="none" '
                    f'stroke="{line.colour}" stroke-width="{1.5 if line.reference else 2}"{dash}/>')
        if line.reference:
            continue
        for moment, value in line.points:
            if value is not None:
                label = f"{line.name}: {number(value)}{unit} at {moment:%Y-%m-%d %H:%M} UTC"
                body.append(f'<circle class="point" data-series="{text(line.name)}" data-time="{moment.isoformat()}" '
                            f'data-value="{value:.12g}" cx="{plot.x(moment)}" cy="{plot.y(value)}" r="2.6" '
                            f'fill="{line.colour}"><title>{text(label)}</title></circle>')
    legend, rows = _legend([(line.name, line.colour, line.reference) for line in lines], TOP + PLOT_HEIGHT + 40)
    return _frame(chart_id, title, subtitle, TOP + PLOT_HEIGHT + 30 + rows * LEGEND_ROW, body + legend)


def stacked_bar_chart(chart_id: str, title: str, subtitle: str, buckets: Sequence[datetime], bucket: timedelta,
                      stacks: Sequence[Stack], start: datetime, end: datetime, *, unit: str = "",
                      empty: str = "No data in this range") -> str:
    """One bar per bucket (``buckets`` are their starts, each ``bucket`` long), its layers ``stacks`` from the
    bottom up; only layers above zero are drawn. The legend names each layer, with its ``note``."""
    totals = [sum(stack.values[i] for stack in stacks) for i in range(len(buckets))]
    if not any(totals):
        return empty_chart(chart_id, title, subtitle, empty)
    ticks = value_ticks(0, max(totals))
    plot = _Plot(start, end, ticks[0], ticks[-1])
    body = plot.axes(ticks, unit)
    for i, bucket_start in enumerate(buckets):
        left, right = plot.x(max(bucket_start, start)), plot.x(min(bucket_start + bucket, end))
        width = max(right - left - (1 if right - left > 3 else 0), 0.8)
        level = 0.0
        for stack in stacks:
            value = stack.values[i]
            if value <= 0:
                continue
            top, bottom = plot.y(level + value), plot.y(level)
            label = f"{stack.name}: {number(value)}{unit}, {bucket_start:%Y-%m-%d %H:%M} UTC"
            body.append(f'<rect class="bar" data-series="{text(stack.name)}" data-bucket="{bucket_start.isoformat()}" '
                        f'data-value="{value:.12g}" x="{left}" y="{top}" width="{width:.1f}" '
                        f'height="{max(bottom - top, 0.5):.1f}" fill="{stack.colour}">'
                        f'<title>{text(label)}</title></rect>')
            level += value
    legend, rows = _legend([(f"{stack.name} {stack.note}".strip(), stack.colour, False) for stack in stacks],
                           TOP + PLOT_HEIGHT + 40)
    return _frame(chart_id, title, subtitle, TOP + PLOT_HEIGHT + 30 + rows * LEGEND_ROW, body + legend)
