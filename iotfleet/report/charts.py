"""Small inline SVG charts for the report page (no script, no external file).

Every data point is a ``<circle class="point">`` carrying ``data-series``, ``data-x`` and
``data-y`` and a ``<title>`` (its tooltip), so the page reads without a legend lookup and a
test can count what is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 940, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 48, 12, 36
PALETTE = (
    "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
)  # fmt: skip
GOOD, BAD = "#2e7d32", "#c62828"


@dataclass(frozen=True)
class Point:
    x: float  # position on the x axis (a run's index, or a time in seconds)
    y: float
    label: str  # tooltip: what a person hovering the point is told


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[Point]
    color: str = ""
    line: bool = True
    values: bool = False  # write each non-zero value above its point (a few among many)


def color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _nice_range(low: float, high: float) -> tuple[float, float, float]:
    """Axis bounds and tick step that include ``low`` and ``high`` (ticks at round numbers)."""
    if high <= low:
        high = low + 1
    raw = (high - low) / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return math.floor(low / step) * step, math.ceil(high / step) * step, step


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}"


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[Series],
    x_ticks: Sequence[tuple[float, str]],
    y_label: str,
    threshold: tuple[float, str] | None = None,
) -> Markup:
    """An SVG chart of ``series`` (lines through their points); ``threshold`` draws a dashed
    red line at a value (a margin) with its label."""
    points = [p for s in series for p in s.points]
    ys = [p.y for p in points] + ([threshold[0]] if threshold else []) + [0.0]
    xs = [p.x for p in points] + [x for x, _ in x_ticks]
    y_low, y_high, y_step = _nice_range(min(ys), max(ys))
    x_low, x_high = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x_low) / (x_high - x_low) * plot_w

    def sy(y: float) -> float:
        return TOP + (y_high - y) / (y_high - y_low) * plot_h

    parts = [
        f'<svg id="{escape(chart_id)}" class="chart" role="img" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    tick = y_low
    while tick <= y_high + y_step / 1000:
        y = sy(tick)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{_fmt(tick)}</text>"
        )
        tick += y_step
    for x, text in x_ticks:
        parts.append(
            f'<text x="{sx(x):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" '
            f'class="tick">{escape(text)}</text>'
        )
    parts.append(
        f'<text x="12" y="{TOP + plot_h / 2:.0f}" class="axis" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + plot_h / 2:.0f})">{escape(y_label)}</text>'
    )
    if threshold is not None:
        y = sy(threshold[0])
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="threshold"/>'
            f'<text x="{WIDTH - RIGHT - 4}" y="{y - 4:.1f}" text-anchor="end" '
            f'class="threshold-label">{escape(threshold[1])}</text>'
        )
    for s in series:
        ordered = sorted(s.points, key=lambda p: p.x)
        if s.line and len(ordered) > 1:
            path = " ".join(f"{sx(p.x):.1f},{sy(p.y):.1f}" for p in ordered)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2"/>'
            )
        for p in ordered:
            parts.append(
                f'<circle class="point" cx="{sx(p.x):.1f}" cy="{sy(p.y):.1f}" r="4" '
                f'fill="{s.color}" data-series="{escape(s.name)}" data-x="{p.x:g}" '
                f'data-y="{p.y:g}"><title>{escape(p.label)}</title></circle>'
            )
            if s.values and p.y:
                parts.append(
                    f'<text class="value" x="{sx(p.x):.1f}" y="{sy(p.y) - 8:.1f}" '
                    f'text-anchor="middle" fill="{s.color}">{_fmt(p.y)}</text>'
                )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text and attribute above is escaped
