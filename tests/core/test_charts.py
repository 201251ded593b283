from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from django.utils.safestring import SafeString

from core.charts import (
    ChartSeries,
    bar_chart_svg,
    format_compact,
    gauge_level,
    gauge_percent,
    line_chart_svg,
    nice_ticks,
)

SVG = "{http://www.w3.org/2000/svg}"


def _parse(html: str) -> ET.Element:
    """The chart must be well-formed XML (inline SVG served in HTML is parsed leniently, tests are strict)."""
    return ET.fromstring(html)  # noqa: S314 - our own output, not untrusted input


def _marks(root: ET.Element) -> list[dict[str, str]]:
    """Every mark's series (from its series group), label and value, in document order."""
    found = []
    for group in root.iter():
        if "chart-series" not in (group.get("class") or "").split():
            continue
        for el in group:
            if "chart-mark" in (el.get("class") or "").split():
                values = {k: el.get(k) for k in ("data-label", "data-value")}
                found.append({"data-series": group.get("data-series")} | values)
    return found


@pytest.mark.parametrize(
    ("max_value", "expected"),
    [
        (1000, [0, 250, 500, 750, 1000]),
        (237, [0, 100, 200, 300]),
        (7, [0, 2, 4, 6, 8]),
        (1, [0, 0.25, 0.5, 0.75, 1]),
        (0.3, [0, 0.1, 0.2, 0.3]),
        (1_234_567, [0, 500_000, 1_000_000, 1_500_000]),
        (0, [0, 1]),
        (-5, [0, 1]),
    ],
)
def test_nice_ticks_are_round_and_cover_the_maximum(max_value, expected):
    ticks = nice_ticks(max_value)
    assert ticks == expected
    assert ticks[0] == 0
    assert ticks[-1] >= max_value


def test_ticks_are_integers_when_steps_are_whole():
    assert all(type(t) is int for t in nice_ticks(1000))


@pytest.mark.parametrize(
    ("value", "text"), [(0, "0"), (999, "999"), (1500, "1.5k"), (2_000_000, "2M"), (3_250_000_000, "3.2B")]
)
def test_format_compact(value, text):
    assert format_compact(value) == text


@pytest.mark.parametrize(
    ("used", "limit", "percent", "level"),
    [
        (0, 100, 0, "ok"),
        (79, 100, 79, "ok"),
        (799, 1000, 79, "ok"),  # rounds down: 79.9% is not yet the 80% warning
        (80, 100, 80, "warn"),
        (99, 100, 99, "warn"),
        (100, 100, 100, "over"),
        (150, 100, 150, "over"),  # not capped: over-use is visible
        (5, None, None, "ok"),  # unlimited
        (0, 0, 100, "over"),  # a zero limit allows nothing
        (1, 3, 33, "ok"),
    ],
)
def test_gauge_percent_and_level(used, limit, percent, level):
    assert gauge_percent(used, limit) == percent
    assert gauge_level(gauge_percent(used, limit)) == level


def test_bar_chart_carries_exact_values_labels_and_series():
    html = bar_chart_svg(
        labels=["Nov 1", "Nov 2"],
        series=[ChartSeries("Llama-A", [1200, 0]), ChartSeries("Llama-B", [300, 45])],
        title="Daily tokens",
        unit="tokens",
    )
    assert isinstance(html, SafeString)
    root = _parse(html)
    svg = next(root.iter(f"{SVG}svg"))
    assert svg.get("role") == "img"
    assert svg.get("aria-label") == "Daily tokens"
    assert svg.find(f"{SVG}title").text == "Daily tokens"
    assert "Llama-A: 1,200" in svg.find(f"{SVG}desc").text
    # Marks come series by series (one colour group each).
    assert _marks(root) == [
        {"data-series": "Llama-A", "data-label": "Nov 1", "data-value": "1200"},
        {"data-series": "Llama-A", "data-label": "Nov 2", "data-value": "0"},
        {"data-series": "Llama-B", "data-label": "Nov 1", "data-value": "300"},
        {"data-series": "Llama-B", "data-label": "Nov 2", "data-value": "45"},
    ]
    legend = [li.get("data-series") for li in root.iter("li")]
    assert legend == ["Llama-A", "Llama-B"]
    ticks = [int(t.get("data-tick")) for t in root.iter("span") if t.get("data-tick") is not None]
    assert ticks == [0, 500, 1000, 1500]


def test_bar_heights_are_proportional_and_stacking_sums():
    grouped = _parse(bar_chart_svg(labels=["x"], series=[ChartSeries("a", [50]), ChartSeries("b", [100])], title="t"))
    heights = [float(r.get("height")) for r in grouped.iter(f"{SVG}rect")]
    assert heights[1] == pytest.approx(2 * heights[0])

    stacked = _parse(
        bar_chart_svg(labels=["x"], series=[ChartSeries("a", [50]), ChartSeries("b", [100])], title="t", stacked=True)
    )
    rects = list(stacked.iter(f"{SVG}rect"))
    # The second bar sits on top of the first: its bottom edge is the first one's top edge.
    assert float(rects[1].get("y")) + float(rects[1].get("height")) == pytest.approx(float(rects[0].get("y")))
    # Stacked axis covers the sum (150), not the largest single value.
    ticks = [float(t.get("data-tick")) for t in stacked.iter("span") if t.get("data-tick")]
    assert ticks[-1] >= 150


def test_everything_user_visible_is_escaped():
    evil = '<script>alert("x")</script>'
    html = bar_chart_svg(
        labels=[evil], series=[ChartSeries(evil, [1])], title=evil, unit='"><img src=x onerror=alert(1)>'
    )
    assert "<script>" not in html
    assert "<img" not in html
    assert "&lt;script&gt;" in html
    root = _parse(html)  # still well-formed: nothing broke out of an attribute
    assert _marks(root)[0]["data-series"] == evil
    line = line_chart_svg(labels=[evil, "b"], series=[ChartSeries(evil, [1, 2])], title=evil)
    assert "<script>" not in line
    _parse(line)


def test_empty_data_renders_a_message_not_an_error():
    for render in (bar_chart_svg, line_chart_svg):
        for labels, series in (([], []), ([], [ChartSeries("a", [])]), (["Nov 1"], [])):
            html = render(labels=labels, series=series, title="Nothing")
            root = _parse(html)
            assert _marks(root) == []
            assert "No data" in html
            assert next(root.iter(f"{SVG}svg")).get("role") == "img"


def test_one_point_line_chart_draws_the_point_without_a_line():
    root = _parse(line_chart_svg(labels=["Nov 1"], series=[ChartSeries("a", [7])], title="One"))
    assert _marks(root) == [{"data-series": "a", "data-label": "Nov 1", "data-value": "7"}]
    assert list(root.iter(f"{SVG}polyline")) == []
    dot = next(root.iter(f"{SVG}path"))
    # A zero-length round-capped stroke: a dot that stays round when the plot stretches.
    _x, y = re.fullmatch(r"M([\d.]+) ([\d.]+)h0", dot.get("d")).groups()
    assert 0 < float(y) < 220
    assert ".chart-line .chart-mark{vector-effect:non-scaling-stroke}" in next(root.iter(f"{SVG}style")).text


def test_line_chart_draws_one_line_per_series():
    root = _parse(
        line_chart_svg(
            labels=["a", "b", "c"], series=[ChartSeries("x", [1, 2, 3]), ChartSeries("y", [3, 2, 1])], title="t"
        )
    )
    lines = list(root.iter(f"{SVG}polyline"))
    assert [pl.get("data-series") for pl in lines] == ["x", "y"]
    assert next(g for g in root.iter(f"{SVG}g") if g.get("data-series")).get("data-series") == "x"
    assert all(len(pl.get("points").split()) == 3 for pl in lines)
    # Higher values are drawn higher (smaller y).
    group_x = next(g for g in root.iter(f"{SVG}g") if g.get("data-series") == "x")
    xs = [float(c.get("d").split()[1][:-2]) for c in group_x.iter(f"{SVG}path")]
    assert xs[0] > xs[2]


def test_many_labels_are_thinned_but_every_mark_keeps_its_label():
    labels = [f"d{i}" for i in range(365)]
    root = _parse(bar_chart_svg(labels=labels, series=[ChartSeries("a", list(range(365)))], title="Year"))
    shown = [t.text for t in root.iter("span") if "chart-xlabel" in t.get("class", "")]
    assert 2 <= len(shown) <= 15
    assert shown[0] == "d0"
    # A phone-wide plot keeps fewer of them: the others are marked minor, for the stylesheet to hide.
    kept = [t.text for t in root.iter("span") if t.get("class") == "chart-xlabel"]
    assert 2 <= len(kept) <= 5
    assert kept[0] == "d0"
    assert set(kept) < set(shown)
    assert [m["data-label"] for m in _marks(root)] == labels


def test_a_short_range_draws_ordinary_bars_not_one_bar_across_the_chart():
    one = _parse(bar_chart_svg(labels=["14:00"], series=[ChartSeries("a", [5])], title="One hour"))
    svg = next(one.iter(f"{SVG}svg"))
    slots = float(svg.get("viewBox").split()[2])
    rect = next(one.iter(f"{SVG}rect"))
    assert float(rect.get("width")) / slots < 0.1
    # ... and centred.
    assert float(rect.get("x")) + float(rect.get("width")) / 2 == pytest.approx(slots / 2, abs=0.05)


def test_a_year_of_days_is_small():
    labels = [f"d{i}" for i in range(365)]
    series = [ChartSeries(name, [i * 37 % 1000 for i in range(365)]) for name in ("Llama-3.3-8B-Instruct", "b")]
    bars = bar_chart_svg(labels=labels, series=series, title="Year", stacked=True)
    lines = line_chart_svg(labels=labels, series=series, title="Year")
    # Measured 490 KB for the two dashboard charts before they were drawn in slot units without a
    # tooltip per mark; now about 150 KB (120 KB when one day in ten has usage, against 340 KB).
    assert len(bars) + len(lines) < 160_000


def test_palette_classes_cycle_by_series_index():
    series = [ChartSeries(f"s{i}", [1]) for i in range(10)]
    html = bar_chart_svg(labels=["x"], series=series, title="t")
    classes = re.findall(r'class="chart-series (chart-series-\d+)"', html)
    assert classes[:3] == ["chart-series-0", "chart-series-1", "chart-series-2"]
    assert classes[8] == "chart-series-0"


def test_mismatched_series_length_is_a_programming_error():
    with pytest.raises(ValueError, match="has 1 values for 2 labels"):
        bar_chart_svg(labels=["a", "b"], series=[ChartSeries("x", [1])], title="t")
