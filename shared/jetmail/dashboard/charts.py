"""Small server-side charts as inline SVG: a line chart, a funnel and grouped horizontal bars.

Every chart is accessible on its own (``role="img"``, a ``<title>`` and a ``<desc>`` it is labelled
by, axis and value labels as text) and the pages show the same numbers in a table beside it. Colours
come from CSS classes (``series-0``, ``series-1``, ...) so the stylesheet decides them and the page's
Content-Security-Policy needs no inline styles. All text is escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

FONT_PX = 12


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]
    tone: int | None = None  # colour class ``series-<tone>``; by default the series' position

    def css(self, position: int) -> str:
        return f"series-{position if self.tone is None else self.tone}"


@dataclass(frozen=True)
class Box:
    """The plot area inside the SVG's viewBox."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 4 or 8 times a power of ten that is >= value (1 for nothing to show): the top of an
    axis whose four quarter ticks are round numbers."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 4, 8, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def y_of(value: float, *, top_value: float, box: Box) -> float:
    """Vertical coordinate of ``value`` on a 0..top_value scale (0 at the bottom edge)."""
    return box.bottom - (max(value, 0.0) / top_value) * box.height


def x_of(index: int, *, count: int, box: Box) -> float:
    """Horizontal coordinate of point ``index`` of ``count`` spread evenly across the box."""
    if count <= 1:
        return box.left + box.width / 2
    return box.left + index * box.width / (count - 1)


def _n(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _open(chart_id: str, title: str, desc: str, width: int, height: int) -> list[str]:
    cid = escape(chart_id)
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{cid}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-labelledby="{cid}-title {cid}-desc">',
        f'<title id="{cid}-title">{escape(title)}</title>',
        f'<desc id="{cid}-desc">{escape(desc)}</desc>',
    ]


def _text(x: float, y: float, text: str, *, cls: str = "label", anchor: str = "start") -> str:
    return (f'<text x="{_n(x)}" y="{_n(y)}" class="{cls}" text-anchor="{anchor}" '
            f'font-size="{FONT_PX}">{escape(text)}</text>')


def _empty(parts: list[str], width: int, height: int, message: str) -> Markup:
    parts.append(_text(width / 2, height / 2, message, cls="empty", anchor="middle"))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every piece above is escaped


def line_chart(labels: Sequence[str], series: Sequence[Series], *, chart_id: str, title: str, desc: str,
               width: int = 720, height: int = 260, max_x_labels: int = 8) -> Markup:
    """One polyline per series over the shared ``labels`` (x axis), with a 0-based y axis."""
    parts = _open(chart_id, title, desc, width, height)
    if not labels or not series:
        return _empty(parts, width, height, "no data yet")
    box = Box(left=56, top=28, right=width - 32, bottom=height - 36)
    top_value = nice_ceiling(max((max(s.values, default=0) for s in series), default=0))
    parts.append(f'<g class="axis"><line x1="{_n(box.left)}" y1="{_n(box.bottom)}" x2="{_n(box.right)}" '
                 f'y2="{_n(box.bottom)}"/><line x1="{_n(box.left)}" y1="{_n(box.top)}" x2="{_n(box.left)}" '
                 f'y2="{_n(box.bottom)}"/></g>')
    for tick in range(5):
        value = top_value * tick / 4
        y = y_of(value, top_value=top_value, box=box)
        parts.append(f'<line class="grid" x1="{_n(box.left)}" y1="{_n(y)}" x2="{_n(box.right)}" y2="{_n(y)}"/>')
        parts.append(_text(box.left - 6, y + FONT_PX / 3, _count(value) if value == int(value) else _n(value),
                           anchor="end"))
    every = max(1, math.ceil(len(labels) / max_x_labels))
    for index, label in enumerate(labels):
        if index % every == 0:
            parts.append(_text(x_of(index, count=len(labels), box=box), box.bottom + 16, label, anchor="middle"))
    for number, one in enumerate(series):
        points = " ".join(f"{_n(x_of(i, count=len(labels), box=box))},{_n(y_of(v, top_value=top_value, box=box))}"
                          for i, v in enumerate(one.values[:len(labels)]))
        parts.append(f'<polyline class="line {one.css(number)}" fill="none" points="{points}" '
                     f'data-series="{escape(one.name)}"/>')
        if len(labels) == 1:  # a single point draws no line: mark it
            cx, cy = points.split(",")
            parts.append(f'<circle class="dot {one.css(number)}" cx="{cx}" cy="{cy}" r="3"/>')
        lx = box.left + number * 110
        parts.append(f'<rect class="swatch {one.css(number)}" x="{_n(lx)}" y="8" width="10" height="10"/>')
        parts.append(_text(lx + 14, 17, one.name))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every piece above is escaped


def funnel_chart(steps: Sequence[tuple[str, int]], *, chart_id: str, title: str, desc: str,
                 width: int = 720) -> Markup:
    """One bar per step, its length relative to the first step, labelled with the count and that share."""
    row, label_w = 34, 110
    height = 16 + row * max(len(steps), 1)
    parts = _open(chart_id, title, desc, width, height)
    first = steps[0][1] if steps else 0
    if not steps or first <= 0:
        return _empty(parts, width, height, "nothing sent yet")
    box = Box(left=label_w, top=8, right=width - 150, bottom=height - 8)
    for index, (name, value) in enumerate(steps):
        y = box.top + index * row
        length = box.width * min(max(value, 0) / first, 1.0)
        parts.append(_text(box.left - 8, y + row / 2 + FONT_PX / 3, name, anchor="end"))
        parts.append(f'<rect class="bar series-{index}" x="{_n(box.left)}" y="{_n(y + 4)}" '
                     f'width="{_n(length)}" height="{row - 8}" data-value="{value}"/>')
        parts.append(_text(box.left + length + 8, y + row / 2 + FONT_PX / 3, f"{value:,} ({value / first:.1%})"))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every piece above is escaped


def bar_chart(groups: Sequence[str], series: Sequence[Series], *, chart_id: str, title: str, desc: str,
              width: int = 720, fmt: Callable[[float], str] = _count, top_value: float | None = None) -> Markup:
    """Horizontal bars grouped by ``groups`` (e.g. A/B variants), one bar per series in each group."""
    bar, gap, label_w = 16, 14, 110
    rows = len(groups) * len(series)
    height = 30 + rows * bar + len(groups) * gap
    parts = _open(chart_id, title, desc, width, height)
    if not groups or not series:
        return _empty(parts, width, height, "no data yet")
    top = top_value or nice_ceiling(max((max(s.values, default=0) for s in series), default=0))
    box = Box(left=label_w, top=28, right=width - 90, bottom=height)
    for number, one in enumerate(series):
        lx = box.left + number * 130
        parts.append(f'<rect class="swatch {one.css(number)}" x="{_n(lx)}" y="8" width="10" height="10"/>')
        parts.append(_text(lx + 14, 17, one.name))
    y = box.top
    for g, group in enumerate(groups):
        parts.append(_text(box.left - 8, y + bar * len(series) / 2 + FONT_PX / 3, group, anchor="end"))
        for number, one in enumerate(series):
            value = one.values[g] if g < len(one.values) else 0
            length = box.width * min(max(value, 0) / top, 1.0)
            parts.append(f'<rect class="bar {one.css(number)}" x="{_n(box.left)}" y="{_n(y + 1)}" '
                         f'width="{_n(length)}" height="{bar - 2}" data-value="{value}"/>')
            parts.append(_text(box.left + length + 6, y + bar - 4, fmt(value)))
            y += bar
        y += gap
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every piece above is escaped
