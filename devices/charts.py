"""Time-series charts drawn on the server as SVG (pure functions, no JavaScript library).

Why SVG from the server: a device page shows a handful of series of at most a few thousand
points; an SVG path is a few kilobytes, renders without a script (so under the strict CSP
and with JavaScript off), scales to a narrow screen through its viewBox, and carries its
numbers as text for screen readers and tests. A long range is reduced to the minimum and
maximum of each pixel column, so peaks stay visible.

Readable without colour alone: the reported values are a solid line with point markers
when sparse, the set value a dashed line, and both are named in the legend and summary.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

WIDTH, HEIGHT = 720, 220
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 56, 12, 12, 28
COLUMNS = WIDTH - PAD_LEFT - PAD_RIGHT  # one min/max pair per pixel column at most
MARKERS_UP_TO = 120  # points drawn as dots too when there are no more than this


@dataclass
class Chart:
    alias: str
    unit: str
    count: int  # points in the range
    path: str = ""
    markers: list[tuple[float, float]] = field(default_factory=list)
    set_y: float | None = None
    set_value: float | None = None
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    low: float | None = None
    high: float | None = None
    last: float | None = None
    skipped: int = 0  # values that are not numbers
    width: int = WIDTH
    height: int = HEIGHT
    plot_left: int = PAD_LEFT
    plot_right: int = WIDTH - PAD_RIGHT
    plot_top: int = PAD_TOP
    plot_bottom: int = HEIGHT - PAD_BOTTOM


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 5 × a power of ten apart)."""
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = [round(first, 12)]
    while ticks[-1] < high:
        ticks.append(round(first + step * len(ticks), 12))
    return ticks


def _label(value: float) -> str:
    return f"{value:g}"


def _time_label(us: int, span_us: int) -> str:
    moment = dt.datetime.fromtimestamp(us / 1_000_000, dt.UTC)
    return moment.strftime("%H:%M" if span_us <= 2 * 86400 * 1_000_000 else "%m-%d %H:%M")


def line_chart(
    alias: str,
    points: list[tuple[int, str]],
    since: int,
    until: int,
    *,
    unit: str = "",
    set_value: str | None = None,
) -> Chart:
    """`points` oldest first as (µs, text). Non-numbers are counted in `skipped`."""
    numeric = [(ts, v) for ts, text in points if (v := _number(text)) is not None]
    chart = Chart(alias, unit, len(numeric), skipped=len(points) - len(numeric))
    target = _number(set_value) if set_value is not None else None
    values = [v for _ts, v in numeric] + ([target] if target is not None else [])
    if not values:
        return chart
    low, high = min(values), max(values)
    if low == high:
        low, high = low - 1, high + 1
    ticks = nice_ticks(low, high)
    low, high = min(ticks[0], low), max(ticks[-1], high)
    span = max(1, until - since)
    left, right = chart.plot_left, chart.plot_right
    top, bottom = chart.plot_top, chart.plot_bottom

    def x(ts: int) -> float:
        return round(left + (ts - since) / span * (right - left), 1)

    def y(value: float) -> float:
        return round(bottom - (value - low) / (high - low) * (bottom - top), 1)

    chart.y_ticks = [(y(t), _label(t)) for t in ticks]
    chart.x_ticks = [
        (x(since + span * i // 4), _time_label(since + span * i // 4, span)) for i in range(5)
    ]
    if numeric:
        chart.low = min(v for _ts, v in numeric)
        chart.high = max(v for _ts, v in numeric)
        chart.last = numeric[-1][1]
        chart.path = _path([(x(ts), y(v)) for ts, v in _reduce(numeric, since, span)])
        if len(numeric) <= MARKERS_UP_TO:
            chart.markers = [(x(ts), y(v)) for ts, v in numeric]
    if target is not None:
        chart.set_value, chart.set_y = target, y(target)
    return chart


def _reduce(points: list[tuple[int, float]], since: int, span: int) -> list[tuple[int, float]]:
    """At most two points (the lowest and the highest, in time order) per pixel column."""
    if len(points) <= 2 * COLUMNS:
        return points
    columns: dict[int, list[tuple[int, float]]] = {}
    for ts, value in points:
        column = min(COLUMNS - 1, (ts - since) * COLUMNS // span)
        found = columns.setdefault(column, [(ts, value), (ts, value)])
        if value < found[0][1]:
            found[0] = (ts, value)
        if value > found[1][1]:
            found[1] = (ts, value)
    reduced: list[tuple[int, float]] = []
    for column in sorted(columns):
        low, high = columns[column]
        reduced += sorted({low, high})
    return reduced


def _path(xy: list[tuple[float, float]]) -> str:
    if not xy:
        return ""
    first, *rest = xy
    return f"M{first[0]},{first[1]}" + "".join(f"L{px},{py}" for px, py in rest)


@dataclass
class Bars:
    """A bar chart of counts per period (oldest first), for the Overview tab."""

    bars: list[tuple[float, float, float, int, str]]  # x, y, height, count, label
    bar_width: float
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    total: int
    peak: int
    width: int = WIDTH
    height: int = 160
    plot_left: int = PAD_LEFT
    plot_right: int = WIDTH - PAD_RIGHT
    plot_top: int = PAD_TOP
    plot_bottom: int = 160 - PAD_BOTTOM


def bar_chart(counts: list[tuple[int, int]], period_us: int, *, labels: int = 6) -> Bars:
    """`counts` as (period start µs, count), oldest first, one per period."""
    chart = Bars([], 0, [], [], sum(n for _t, n in counts), max((n for _t, n in counts), default=0))
    if not counts:
        return chart
    top, bottom = chart.plot_top, chart.plot_bottom
    ticks = nice_ticks(0, max(chart.peak, 1), count=4)
    high = ticks[-1]
    slot = (chart.plot_right - chart.plot_left) / len(counts)
    chart.bar_width = round(max(1.0, slot * 0.8), 2)
    span = period_us * len(counts)
    for i, (start, n) in enumerate(counts):
        x = round(chart.plot_left + i * slot + (slot - chart.bar_width) / 2, 2)
        height = round(n / high * (bottom - top), 2)
        label = _time_label(start, span)
        chart.bars.append((x, round(bottom - height, 2), height, n, label))
    chart.y_ticks = [(round(bottom - t / high * (bottom - top), 1), _label(t)) for t in ticks]
    step = max(1, len(counts) // labels)
    chart.x_ticks = [
        (round(chart.plot_left + (i + 0.5) * slot, 1), _time_label(counts[i][0], span))
        for i in range(0, len(counts), step)
    ]
    return chart
