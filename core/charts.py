"""Dependency-free, server-rendered, accessible inline SVG charts.

Why server-rendered SVG: pages must load nothing from the internet and read without JavaScript, and
tests (unit and browser) must be able to read exact figures from the DOM. So every bar and point
carries ``data-series``, ``data-label`` and ``data-value``; the chart has ``role="img"``, an
``aria-label``, a ``<title>`` and a ``<desc>``; pages put the same numbers in a table under it.

Contract:
- ``bar_chart_svg`` / ``line_chart_svg`` take keyword-only ``labels`` (the x axis) and ``series``
  (one :class:`ChartSeries` per line or bar colour, each with exactly ``len(labels)`` values) and
  return a ``SafeString`` holding ``<div class="chart">`` with the ``<svg>`` and an HTML legend.
- Every caller-supplied string (labels, series names, title, unit) is escaped: model names are
  user-visible text and may come from operators.
- Colours come from a fixed palette, by series index: class ``chart-series-<i>`` on each mark (so a
  stylesheet can restyle them) plus the same colour as a presentation attribute, so the chart looks
  right on pages without the dashboard stylesheet (the admin). CSS beats presentation attributes.
- The y axis starts at 0 and ends on a "nice" round tick (1, 2, 2.5, 5 x 10^n steps). Negative
  values are drawn as 0 but keep their exact ``data-value``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

# Colour-blind-friendly (Okabe-Ito based), in an order where neighbours contrast; all >= 3:1 on white.
PALETTE: tuple[str, ...] = (
    "#5547e6",  # the site's accent
    "#0072b2",
    "#d55e00",
    "#009e73",
    "#cc79a7",
    "#8a6d00",
    "#56687a",
    "#b42318",
)

WIDTH = 720
_MARGIN_LEFT = 60
_MARGIN_RIGHT = 16
_MARGIN_TOP = 24  # room for the unit above the axis
_MARGIN_BOTTOM = 34
# Roughly how many pixels an x label needs so neighbours do not overlap at 11px type.
_MIN_LABEL_SPACING = 56


@dataclass(frozen=True)
class ChartSeries:
    """One named sequence of values, aligned with the chart's labels."""

    name: str
    values: list[int | float]


def gauge_percent(used: int | float, limit: int | float | None) -> int | None:
    """How much of a limit is used, as a whole percentage rounded down (so 80% means really >= 80%).

    None when there is no limit (unlimited). Not capped at 100: over-use shows as e.g. 120; callers
    clamp the drawn width. A limit of 0 is fully used as soon as it exists (nothing is allowed).
    """
    if limit is None:
        return None
    if limit <= 0:
        return 100
    used = max(used, 0)
    if isinstance(used, int) and isinstance(limit, int):
        return used * 100 // limit
    return math.floor(used * 100 / limit)


def gauge_level(percent: int | None) -> str:
    """The colour band of a gauge: "ok" below 80%, "warn" from 80%, "over" from 100%."""
    if percent is None or percent < 80:
        return "ok"
    return "warn" if percent < 100 else "over"


def nice_ticks(max_value: int | float, *, count: int = 5) -> list[int | float]:
    """Round tick values from 0 up to at least ``max_value``, about ``count`` of them.

    Steps are 1, 2, 2.5 or 5 times a power of ten, so axes read 0, 250, 500, 750, 1000 rather
    than 0, 237, 474. An empty or all-zero chart gets 0 and 1.
    """
    if not max_value or max_value <= 0 or not math.isfinite(max_value):
        return [0, 1]
    raw_step = max_value / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    for multiple in (1, 2, 2.5, 5, 10):
        step = multiple * magnitude
        if step >= raw_step:
            break
    top_index = math.ceil(max_value / step - 1e-9)
    ticks: list[int | float] = []
    for i in range(top_index + 1):
        value = round(i * step, 10)
        ticks.append(int(value) if float(value).is_integer() else value)
    return ticks


def format_number(value: int | float) -> str:
    """Exact figure for data attributes, tooltips and tables: 1234567 -> "1,234,567"."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}"
    return f"{int(value):,}"


def format_compact(value: int | float) -> str:
    """Short figure for axis ticks: 1500 -> "1.5k", 2000000 -> "2M"."""
    for threshold, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if abs(value) >= threshold:
            scaled = value / threshold
            text = f"{scaled:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(int(value))


def _raw_value(value: int | float) -> str:
    """Machine-readable value for data-value: no separators, integers without a decimal point."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _fmt(coordinate: float) -> str:
    return f"{coordinate:.2f}".rstrip("0").rstrip(".")


def _validate(labels: list[str], series: list[ChartSeries]) -> None:
    for one in series:
        if len(one.values) != len(labels):
            raise ValueError(f"series {one.name!r} has {len(one.values)} values for {len(labels)} labels")


def _label_step(count: int, plot_width: float) -> int:
    """Show every n-th x label so that neighbours do not overlap."""
    fits = max(int(plot_width // _MIN_LABEL_SPACING), 1)
    return max(math.ceil(count / fits), 1)


def _colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _legend(series: list[ChartSeries]) -> str:
    items = "".join(
        f'<li class="chart-legend-item" data-series="{escape(one.name)}">'
        f'<span class="chart-swatch chart-series-{i % len(PALETTE)}" style="background:{_colour(i)}"'
        f' aria-hidden="true"></span>{escape(one.name)}</li>'
        for i, one in enumerate(series)
    )
    return f'<ul class="chart-legend">{items}</ul>'


def _summary(kind: str, labels: list[str], series: list[ChartSeries], unit: str) -> str:
    if not labels or not series:
        return f"{kind}: no data."
    unit_text = f" in {unit}" if unit else ""
    totals = "; ".join(f"{one.name}: {format_number(sum(one.values))}" for one in series)
    return (
        f"{kind} of {len(series)} series over {len(labels)} point{'s' if len(labels) != 1 else ''},"
        f" from {labels[0]} to {labels[-1]}"
        f"{unit_text}. Totals: {totals}."
    )


def _chart(
    *,
    kind: str,
    labels: list[str],
    series: list[ChartSeries],
    title: str,
    unit: str,
    stacked: bool,
    height: int,
) -> SafeString:
    _validate(labels, series)
    plot_left = _MARGIN_LEFT
    plot_right = WIDTH - _MARGIN_RIGHT
    plot_top = _MARGIN_TOP
    plot_bottom = height - _MARGIN_BOTTOM
    plot_width = plot_right - plot_left
    plot_height = max(plot_bottom - plot_top, 1)
    kind_name = "Bar chart" if kind == "bar" else "Line chart"
    summary = _summary(kind_name, labels, series, unit)
    empty = not labels or not series

    parts: list[str] = [
        f'<svg class="chart-svg chart-{kind}" xmlns="http://www.w3.org/2000/svg" role="img"'
        f' viewBox="0 0 {WIDTH} {height}" width="100%" preserveAspectRatio="xMidYMid meet"'
        f' aria-label="{escape(title)}" data-chart="{kind}" data-points="{len(labels)}"'
        f' data-series-count="{len(series)}" data-unit="{escape(unit)}">',
        f"<title>{escape(title)}</title>",
        f"<desc>{escape(summary)}</desc>",
    ]

    if empty:
        parts.append(
            f'<text class="chart-empty" x="{WIDTH / 2:g}" y="{height / 2:g}" text-anchor="middle"'
            f' fill="#5a6478" font-size="14">No data for this period</text>'
        )
        parts.append("</svg>")
        return mark_safe(f'<div class="chart chart-empty-state">{"".join(parts)}</div>')  # noqa: S308

    if stacked and kind == "bar":
        peak = max(sum(max(one.values[i], 0) for one in series) for i in range(len(labels)))
    else:
        peak = max(max(one.values) for one in series)
    ticks = nice_ticks(peak)
    top = ticks[-1]

    def y_of(value: int | float) -> float:
        return plot_bottom - (max(value, 0) / top) * plot_height

    # Grid lines and y tick labels.
    parts.append('<g class="chart-axis chart-axis-y" aria-hidden="true">')
    for tick in ticks:
        y = _fmt(y_of(tick))
        parts.append(
            f'<line class="chart-grid" x1="{plot_left}" x2="{plot_right}" y1="{y}" y2="{y}"'
            f' stroke="#e3e6ee" stroke-width="1"/>'
            f'<text class="chart-tick" x="{plot_left - 8}" y="{y}" dy="0.32em" text-anchor="end"'
            f' fill="#5a6478" font-size="11" data-tick="{_raw_value(tick)}">{escape(format_compact(tick))}</text>'
        )
    if unit:
        parts.append(f'<text class="chart-unit" x="4" y="11" fill="#5a6478" font-size="11">{escape(unit)}</text>')
    parts.append("</g>")

    # X labels, thinned so they do not overlap; every label stays on its marks' data-label.
    slot = plot_width / len(labels)
    step = _label_step(len(labels), plot_width)
    parts.append('<g class="chart-axis chart-axis-x" aria-hidden="true">')
    for i, label in enumerate(labels):
        if i % step:
            continue
        x = _fmt(plot_left + slot * (i + 0.5))
        parts.append(
            f'<text class="chart-xlabel" x="{x}" y="{plot_bottom + 18}" text-anchor="middle" fill="#5a6478"'
            f' font-size="11">{escape(label)}</text>'
        )
    parts.append(
        f'<line class="chart-baseline" x1="{plot_left}" x2="{plot_right}" y1="{plot_bottom}" y2="{plot_bottom}"'
        f' stroke="#cdd2de" stroke-width="1"/>'
    )
    parts.append("</g>")

    unit_suffix = f" {unit}" if unit else ""
    if kind == "bar":
        parts.append(
            _bars(labels, series, stacked=stacked, slot=slot, plot_left=plot_left, y_of=y_of, unit=unit_suffix)
        )
    else:
        parts.append(_lines(labels, series, slot=slot, plot_left=plot_left, y_of=y_of, unit=unit_suffix))
    parts.append("</svg>")
    return mark_safe(f'<div class="chart">{"".join(parts)}{_legend(series)}</div>')  # noqa: S308


class _Marks:
    """Escaped text computed once per chart: a year of daily points is ~1,500 marks, and escaping the
    same series name and label on every mark was most of the rendering time."""

    def __init__(self, labels: list[str], series: list[ChartSeries], unit: str):
        self.labels = [escape(label) for label in labels]
        self.names = [escape(one.name) for one in series]
        self.unit = escape(unit)
        self.prefixes = [
            f'class="chart-mark chart-series-{s % len(PALETTE)}" fill="{_colour(s)}" data-series="{name}"'
            for s, name in enumerate(self.names)
        ]

    def attrs(self, s: int, i: int, value: int | float) -> str:
        return f'{self.prefixes[s]} data-label="{self.labels[i]}" data-value="{_raw_value(value)}"'

    def tooltip(self, s: int, i: int, value: int | float) -> str:
        return f"<title>{self.names[s]}, {self.labels[i]}: {format_number(value)}{self.unit}</title>"


def _bars(labels, series, *, stacked, slot, plot_left, y_of, unit) -> str:
    marks = _Marks(labels, series, unit)
    out: list[str] = ['<g class="chart-marks">']
    group_width = slot * 0.78
    bar_width = group_width if stacked else group_width / len(series)
    width = _fmt(max(bar_width - 1, 0.5))
    zero = y_of(0)
    for i in range(len(labels)):
        group_left = plot_left + slot * i + (slot - group_width) / 2
        base = zero
        for s, one in enumerate(series):
            value = one.values[i]
            if stacked:
                top = base - (zero - y_of(value))
                x = group_left
            else:
                top = y_of(value)
                base = zero
                x = group_left + bar_width * s
            h = max(base - top, 0)
            out.append(
                f'<rect {marks.attrs(s, i, value)} x="{_fmt(x)}" y="{_fmt(top)}" width="{width}" height="{_fmt(h)}">'
                f"{marks.tooltip(s, i, value)}</rect>"
            )
            if stacked:
                base = top
    out.append("</g>")
    return "".join(out)


def _lines(labels, series, *, slot, plot_left, y_of, unit) -> str:
    marks = _Marks(labels, series, unit)
    out: list[str] = ['<g class="chart-marks">']
    # Smaller points when there are many, to keep the line readable; they stay in the DOM for tests.
    radius = 3 if len(labels) <= 60 else 1.5
    for s, one in enumerate(series):
        points = [(_fmt(plot_left + slot * (i + 0.5)), _fmt(y_of(v))) for i, v in enumerate(one.values)]
        if len(points) > 1:
            path = " ".join(f"{x},{y}" for x, y in points)
            out.append(
                f'<polyline class="chart-line chart-series-{s % len(PALETTE)}" fill="none" stroke="{_colour(s)}"'
                f' stroke-width="2" stroke-linejoin="round" points="{path}" data-series="{marks.names[s]}"/>'
            )
        for i, ((x, y), value) in enumerate(zip(points, one.values, strict=True)):
            out.append(
                f'<circle {marks.attrs(s, i, value)} cx="{x}" cy="{y}" r="{radius}">'
                f"{marks.tooltip(s, i, value)}</circle>"
            )
    out.append("</g>")
    return "".join(out)


def bar_chart_svg(
    *,
    labels: list[str],
    series: list[ChartSeries],
    title: str,
    unit: str = "",
    stacked: bool = False,
    height: int = 220,
) -> SafeString:
    """Grouped (or stacked) bars, one group per label, one colour per series."""
    return _chart(kind="bar", labels=labels, series=series, title=title, unit=unit, stacked=stacked, height=height)


def line_chart_svg(
    *,
    labels: list[str],
    series: list[ChartSeries],
    title: str,
    unit: str = "",
    stacked: bool = False,
    height: int = 220,
) -> SafeString:
    """One line per series, with a point (carrying the data-* values) at every label.

    ``stacked`` is accepted so both functions are interchangeable; lines are never stacked
    (stacked lines hide which series moved).
    """
    return _chart(kind="line", labels=labels, series=series, title=title, unit=unit, stacked=False, height=height)
