"""Charts as inline SVG, drawn by hand: axes with round ticks, lines, stacked bars, markers.

The report (``flows.report``) must open anywhere, offline, years later, from a blob
container or an e-mail attachment: so no script, no web font, no library fetched from
a CDN. A few line and bar charts need no plotting library either — about a hundred
lines here against matplotlib's 40 MB (or a vendored JavaScript bundle) in every
worker image. Every drawn series carries ``data-series`` (its name) and ``data-points``
(how many values it plots), so a test can check what is drawn against the metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from html import escape

PALETTE = ("#1f6fb4", "#8e44ad", "#16a085", "#d35400", "#2c3e50", "#c0392b")
STATUS_COLORS = {"ok": "#2e9d4c", "filtered": "#e0a800", "error": "#c8322f", "invalid": "#8e44ad"}
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 28, 30


def short(value: float) -> str:
    """A number for an axis label: 950, 1.2k, 3.4M, 0.05."""
    magnitude = abs(value)
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round values spanning ``lo``–``hi`` (1, 2 or 5 times a power of ten apart; whole with ``integer``)."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = max(1, step) if integer else step
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def time_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """Clock-aligned ticks (UTC) between two epoch times, at most about eight."""
    span = max(hi - lo, 1.0)
    step = next((s for s in (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
                 if span / s <= 8), 86400.0)
    first = math.ceil(lo / step) * step
    fmt = "%H:%M:%S" if step < 60 else "%H:%M"
    return [(t, time.strftime(fmt, time.gmtime(t))) for t in _frange(first, hi, step)]


def _frange(start: float, stop: float, step: float) -> list[float]:
    return [start + i * step for i in range(int((stop - start) / step + 1e-9) + 1)]


class Chart:
    """One SVG plot: call ``line``, ``bars``, ``markers`` in drawing order, then ``svg``."""

    def __init__(self, x: tuple[float, float], y: tuple[float, float], *, width: int = 1100, height: int = 240,
                 y_label: str = "", x_ticks: Sequence[tuple[float, str]] | None = None, log_x: bool = False,
                 y_ticks: str = "real"):
        self.width, self.height = width, height
        self.x0, self.x1 = x
        self.y0, self.y1 = y[0], y[1] if y[1] > y[0] else y[0] + 1
        self.log_x = log_x
        self.parts: list[str] = []
        self._axes(y_label, x_ticks, y_ticks)

    def px(self, x: float) -> float:
        if self.log_x:
            x, lo, hi = math.log10(max(x, 1e-9)), math.log10(self.x0), math.log10(self.x1)
        else:
            lo, hi = self.x0, self.x1
        span = hi - lo or 1.0
        return _LEFT + (x - lo) / span * (self.width - _LEFT - _RIGHT)

    def py(self, y: float) -> float:
        return self.height - _BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (self.height - _TOP - _BOTTOM)

    def _axes(self, y_label: str, x_ticks: Sequence[tuple[float, str]] | None, y_ticks: str) -> None:
        for tick in nice_ticks(self.y0, self.y1, integer=y_ticks == "integer") if y_ticks != "none" else []:
            y = self.py(tick)
            self.parts.append(f'<line x1="{_LEFT}" x2="{self.width - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                              'stroke="#e5e5e5"/>')
            self.parts.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                              f'{short(tick)}</text>')
        for value, label in x_ticks or []:
            x = self.px(value)
            if x > self.width - _RIGHT - 18:
                continue  # its label would be cut at the edge
            self.parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.height - _BOTTOM}" '
                              f'y2="{self.height - _BOTTOM + 4}" stroke="#888"/>')
            self.parts.append(f'<text x="{x:.1f}" y="{self.height - _BOTTOM + 16}" text-anchor="middle" '
                              f'class="tick">{escape(label)}</text>')
        self.parts.append(f'<line x1="{_LEFT}" x2="{self.width - _RIGHT}" y1="{self.height - _BOTTOM}" '
                          f'y2="{self.height - _BOTTOM}" stroke="#888"/>')
        if y_label:
            self.parts.append(f'<text x="{_LEFT}" y="{_TOP - 10}" class="axis">{escape(y_label)}</text>')

    def line(self, xs: Sequence[float], ys: Sequence[float | None], *, name: str, color: str, dash: str = "",
             stroke: float = 2.0, gap: float | None = None) -> None:
        """A line through the points; broken where a value is missing or ``x`` jumps by more than ``gap``."""
        runs: list[list[str]] = [[]]
        last: float | None = None
        for x, y in zip(xs, ys, strict=True):
            if y is None or (gap is not None and last is not None and x - last > gap):
                runs.append([])
            if y is not None:
                runs[-1].append(f"{self.px(x):.1f},{self.py(y):.1f}")
            last = x
        points = sum(1 for y in ys if y is not None)
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        paths = "".join(f'<polyline fill="none" stroke="{color}" stroke-width="{stroke}"{dashed} '
                        f'points="{" ".join(run)}"/>' if len(run) > 1 else
                        f'<circle r="{stroke}" fill="{color}" cx="{run[0].split(",")[0]}" cy="{run[0].split(",")[1]}"/>'
                        for run in runs if run)
        self.parts.append(f'<g data-series="{escape(name)}" data-points="{points}">{paths}</g>')

    def bars(self, xs: Sequence[float], stacks: Sequence[Sequence[float]], *, names: Sequence[str],
             colors: Sequence[str], bar_width: float) -> None:
        """Stacked bars: ``stacks[k][i]`` is layer k's height at ``xs[i]``, each ``bar_width`` wide (in x units)."""
        base = [0.0] * len(xs)
        for name, color, heights in zip(names, colors, stacks, strict=True):
            rects = []
            for i, (x, h) in enumerate(zip(xs, heights, strict=True)):
                if h:
                    left, right = self.px(x), self.px(x + bar_width)
                    top, bottom = self.py(base[i] + h), self.py(base[i])
                    rects.append(f'<rect x="{left:.1f}" y="{top:.1f}" width="{max(right - left - 0.5, 0.8):.1f}" '
                                 f'height="{max(bottom - top, 0.5):.1f}"/>')
                    base[i] += h
            self.parts.append(f'<g data-series="{escape(name)}" data-points="{len(rects)}" fill="{color}">'
                              f'{"".join(rects)}</g>')

    def markers(self, xs: Sequence[float], *, name: str, color: str, y: float | None = None) -> None:
        """Small triangles along the top of the plot (or at ``y``): events such as pauses."""
        top = _TOP + 2 if y is None else self.py(y)
        shapes = "".join(f'<path d="M{self.px(x) - 4:.1f},{top - 6:.1f} h8 l-4,7 z"/>' for x in xs)
        self.parts.append(f'<g data-series="{escape(name)}" data-points="{len(xs)}" fill="{color}">{shapes}</g>')

    def svg(self, legend: Sequence[tuple[str, str, str]] = ()) -> str:
        """The chart; ``legend`` of (label, colour, dash) drawn at the top right."""
        keys, x = [], self.width - _RIGHT
        for label, color, dash in reversed(legend):
            x -= 30 + 7 * len(label)
            dashed = f' stroke-dasharray="{dash}"' if dash else ""
            keys.append(f'<line x1="{x}" x2="{x + 14}" y1="{_TOP - 14}" y2="{_TOP - 14}" stroke="{color}" '
                        f'stroke-width="3"{dashed}/><text x="{x + 18}" y="{_TOP - 10}" class="tick">'
                        f'{escape(label)}</text>')
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}">{"".join(self.parts)}{"".join(keys)}</svg>')
