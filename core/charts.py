"""Dependency-free, server-rendered, accessible inline SVG charts.

Why server-rendered SVG: pages must load nothing from the internet and read without JavaScript, and
tests (unit and browser) must be able to read exact figures from the DOM. So every bar and point
(class ``chart-mark``) carries ``data-label`` and ``data-value``, inside its series' group, which
carries ``data-series`` (``mark.closest("[data-series]")``); the chart has ``role="img"``, an
``aria-label``, a ``<title>`` and a ``<desc>``; pages put the same numbers in a table under it.

Drawn for the width it gets (a 390 px phone as well as a desktop): the marks are SVG in a viewBox of
one unit per label slot, stretched to the width (``preserveAspectRatio="none"``; strokes do not
scale), while the axis text is HTML laid over it, sized by CSS, so it never shrinks with the chart.
A year of days is about a third of what one SVG with a tooltip per mark weighed (see
``tests/core/test_charts.py::test_a_year_of_days_is_small``).

Contract:
- ``bar_chart_svg`` / ``line_chart_svg`` take keyword-only ``labels`` (the x axis) and ``series``
  (one :class:`ChartSeries` per line or bar colour, each with exactly ``len(labels)`` values) and
  return a ``SafeString`` holding ``<div class="chart">`` with the ``<svg>`` and an HTML legend.
- Every caller-supplied string (labels, series names, title, unit) is escaped: model names are
  user-visible text and may come from operators.
- Colours come from a fixed palette, by series index: class ``chart-series-<i>`` on each series group
  (so a stylesheet can restyle them) plus the same colour as a presentation attribute, so the chart looks
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

# The plot is drawn for the width it gets: marks stretch (viewBox, preserveAspectRatio="none"), axis
# text is HTML in CSS pixels. WIDTH is the desktop width the x labels are thinned for.
WIDTH = 720
_NARROW_PLOT_WIDTH = 250  # a 390 px phone's plot, for the labels kept there
_MARGIN_LEFT = 56
_MARGIN_RIGHT = 12
_MARGIN_TOP = 24  # room for the unit above the axis
_MARGIN_BOTTOM = 30
_MIN_SLOTS = 12
_TOOLTIPS_UP_TO = 62
_TEXT = "#5a6478"
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


def _fmt1(coordinate: float) -> str:
    """A y coordinate or height: the plot is drawn in CSS pixels vertically, so a tenth is plenty."""
    return f"{coordinate:.1f}".rstrip("0").rstrip(".")


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
    kind_name = "Bar chart" if kind == "bar" else "Line chart"
    summary = _summary(kind_name, labels, series, unit)
    svg_open = (
        f'<svg class="chart-svg chart-{kind}" xmlns="http://www.w3.org/2000/svg" role="img"'
        f' aria-label="{escape(title)}" data-chart="{kind}" data-points="{len(labels)}"'
        f' data-series-count="{len(series)}" data-unit="{escape(unit)}"'
    )
    head = f"<title>{escape(title)}</title><desc>{escape(summary)}</desc>"

    if not labels or not series:
        return mark_safe(  # noqa: S308 - every caller string above is escaped
            f'<div class="chart chart-empty-state">{svg_open} width="100%" height="60">{head}'
            f'<text class="chart-empty" x="50%" y="30" text-anchor="middle" fill="{_TEXT}"'
            f' font-size="14">No data for this period</text></svg></div>'
        )

    if stacked and kind == "bar":
        peak = max(sum(max(one.values[i], 0) for one in series) for i in range(len(labels)))
    else:
        peak = max(max(one.values) for one in series)
    ticks = nice_ticks(peak)
    top = ticks[-1]
    plot_height = max(height - _MARGIN_TOP - _MARGIN_BOTTOM, 1)
    # x runs in label slots (slot i spans [i, i + 1)); a short range is centred among _MIN_SLOTS slots so
    # one hour of usage is one ordinary bar, not a bar as wide as the chart.
    slots = max(len(labels), _MIN_SLOTS)
    offset = (slots - len(labels)) / 2

    def y_of(value: int | float) -> float:
        return plot_height - (max(value, 0) / top) * plot_height

    def left_of(x: float) -> str:
        # Where a slot position falls in the frame, as CSS: the plot is the frame less its margins.
        return f"calc({_MARGIN_LEFT}px + (100% - {_MARGIN_LEFT + _MARGIN_RIGHT}px) * {_fmt(x / slots)})"

    frame_style = (
        f"position:relative;height:{height}px;padding:{_MARGIN_TOP}px {_MARGIN_RIGHT}px {_MARGIN_BOTTOM}px"
        f" {_MARGIN_LEFT}px;box-sizing:border-box;color:{_TEXT};font-size:0.75rem;line-height:1;"
        "container-type:inline-size"
    )
    parts: list[str] = [f'<div class="chart-frame" style="{frame_style}">']
    # Axis text is HTML, sized by CSS, so it reads the same at any width; the plot below stretches.
    parts.append('<div class="chart-axis chart-axis-y" aria-hidden="true">')
    for tick in ticks:
        parts.append(
            f'<span class="chart-tick" data-tick="{_raw_value(tick)}" style="position:absolute;left:0;'
            f"width:{_MARGIN_LEFT - 8}px;text-align:right;top:{_fmt(_MARGIN_TOP + y_of(tick))}px;"
            f'transform:translateY(-50%)">{escape(format_compact(tick))}</span>'
        )
    if unit:
        parts.append(f'<span class="chart-unit" style="position:absolute;left:4px;top:4px">{escape(unit)}</span>')
    parts.append("</div>")

    # X labels, thinned for a desktop-wide plot; the ones a phone-wide plot has no room for are marked
    # minor (a stylesheet hides them under 480 px). Every label stays on its marks' data-label.
    wide_step = _label_step(len(labels), WIDTH - _MARGIN_LEFT - _MARGIN_RIGHT)
    narrow_step = wide_step * _label_step(math.ceil(len(labels) / wide_step), _NARROW_PLOT_WIDTH)
    parts.append('<div class="chart-axis chart-axis-x" aria-hidden="true">')
    for i, label in enumerate(labels):
        if i % wide_step:
            continue
        minor = " chart-xlabel-minor" if i % narrow_step else ""
        parts.append(
            f'<span class="chart-xlabel{minor}" style="position:absolute;top:{height - _MARGIN_BOTTOM + 8}px;'
            f'left:{left_of(offset + i + 0.5)};transform:translateX(-50%);white-space:nowrap">{escape(label)}</span>'
        )
    parts.append("</div>")

    parts.append(
        f'{svg_open} viewBox="0 0 {slots} {plot_height}" preserveAspectRatio="none" width="100%" height="100%"'
        f' style="display:block;overflow:visible">{head}'
    )
    parts.append('<g class="chart-grid-lines" aria-hidden="true">')
    for tick in ticks:
        y = _fmt(y_of(tick))
        colour = "#cdd2de" if tick == 0 else "#e3e6ee"
        parts.append(
            f'<line class="chart-grid" x1="0" x2="{slots}" y1="{y}" y2="{y}" stroke="{colour}"'
            ' stroke-width="1" vector-effect="non-scaling-stroke"/>'
        )
    parts.append("</g>")
    unit_suffix = f" {unit}" if unit else ""
    # A tooltip per mark only where marks are wide enough to point at; the table has every figure.
    marks = _Marks(labels, series, unit_suffix, tooltips=len(labels) <= _TOOLTIPS_UP_TO)
    if kind == "bar":
        parts.append(_bars(marks, labels, series, stacked=stacked, offset=offset, y_of=y_of))
    else:
        parts.append(_lines(marks, labels, series, offset=offset, y_of=y_of))
    parts.append("</svg></div>")
    return mark_safe(f'<div class="chart">{"".join(parts)}{_legend(series)}</div>')  # noqa: S308


class _Marks:
    """Escaped text computed once per chart: a year of daily points is ~1,500 marks, and escaping the
    same series name and label on every mark was most of the rendering time."""

    def __init__(self, labels: list[str], series: list[ChartSeries], unit: str, *, tooltips: bool):
        self.labels = [escape(label) for label in labels]
        self.names = [escape(one.name) for one in series]
        self.unit = escape(unit)
        self.tooltips = tooltips

    def group(self, s: int, paint: str) -> str:
        """The opening of series ``s``'s group: its name, palette class and colour, said once for its marks."""
        return f'<g class="chart-series chart-series-{s % len(PALETTE)}" data-series="{self.names[s]}" {paint}>'

    def attrs(self, s: int, i: int, value: int | float) -> str:
        return f'class="chart-mark" data-label="{self.labels[i]}" data-value="{_raw_value(value)}"'

    def close(self, tag: str, s: int, i: int, value: int | float) -> str:
        """The end of a mark: its tooltip and closing tag, or a self-closing tag without one."""
        if not self.tooltips:
            return "/>"
        return f"><title>{self.names[s]}, {self.labels[i]}: {format_number(value)}{self.unit}</title></{tag}>"


def _bars(marks: _Marks, labels, series, *, stacked, offset, y_of) -> str:
    out: list[str] = ['<g class="chart-marks">']
    group_width = 0.78
    bar_width = group_width if stacked else group_width / len(series)
    # A hair narrower than the slot share, so neighbouring bars of a group stay apart.
    width = _fmt(bar_width * 0.9)
    zero = y_of(0)
    for s, one in enumerate(series):
        # One group per series: its colour is set once (a presentation attribute, for pages without the
        # dashboard stylesheet), not on each of a year's marks.
        out.append(marks.group(s, f'fill="{_colour(s)}"'))
        for i in range(len(labels)):
            group_left = offset + i + (1 - group_width) / 2
            value = one.values[i]
            if stacked:
                base = zero - sum((zero - y_of(other.values[i])) for other in series[:s])
                top = base - (zero - y_of(value))
                x = group_left
            else:
                top = y_of(value)
                base = zero
                x = group_left + bar_width * s
            h = max(base - top, 0)
            if h < 0.05:
                # Nothing to draw (most days of a year): the mark keeps its data, not its geometry.
                out.append(f"<rect {marks.attrs(s, i, value)}{marks.close('rect', s, i, value)}")
                continue
            out.append(
                f'<rect {marks.attrs(s, i, value)} x="{_fmt(x)}" y="{_fmt1(top)}" width="{width}"'
                f' height="{_fmt1(h)}"{marks.close("rect", s, i, value)}'
            )
        out.append("</g>")
    out.append("</g>")
    return "".join(out)


def _lines(marks: _Marks, labels, series, *, offset, y_of) -> str:
    # vector-effect is not inherited, so one rule gives it to every dot rather than an attribute on each.
    out: list[str] = ['<style>.chart-line .chart-mark{vector-effect:non-scaling-stroke}</style><g class="chart-marks">']
    # Points are zero-length round-capped strokes: with a non-scaling stroke they stay round dots however
    # the plot is stretched (a circle would become an ellipse). Smaller when there are many.
    dot = 6 if len(labels) <= 60 else 3
    for s, one in enumerate(series):
        colour = _colour(s)
        points = [(_fmt(offset + i + 0.5), _fmt1(y_of(v))) for i, v in enumerate(one.values)]
        if len(points) > 1:
            path = " ".join(f"{x},{y}" for x, y in points)
            out.append(
                f'<polyline class="chart-line chart-series-{s % len(PALETTE)}" fill="none" stroke="{colour}"'
                f' stroke-width="2" stroke-linejoin="round" vector-effect="non-scaling-stroke" points="{path}"'
                f' data-series="{marks.names[s]}"/>'
            )
        out.append(marks.group(s, f'stroke="{colour}" stroke-width="{dot}" stroke-linecap="round"'))
        for i, ((x, y), value) in enumerate(zip(points, one.values, strict=True)):
            out.append(f'<path {marks.attrs(s, i, value)} d="M{x} {y}h0"{marks.close("path", s, i, value)}')
        out.append("</g>")
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
