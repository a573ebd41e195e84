"""Charts as inline SVG, written from Python: horizontal bars for categories (linear or
log scale, one bar per series) and columns for histogram buckets. Every text is escaped;
each bar carries its exact count in a <title>. No dependency, no script.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

from oidownload.gallery.stats import Figure

WIDTH = 720
LABEL_W = 210
BAR_H = 9  # per series
GAP = 5
MAX_BARS = 600  # rows drawn; the table below a chart always has them all
COLOURS = ("#3b6fb6", "#e08a2c", "#4a9a5b", "#a3508f")


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def _short(text: str, n: int = 30) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


class _Scale:
    """Counts to lengths in [0, span]. The log scale starts at 0.5, so a count of 1 still shows."""

    def __init__(self, top: int, span: float, log: bool) -> None:
        self.log, self.span = log, span
        self.top = max(top, 1)
        self.lo = math.log10(0.5)
        self.hi = math.log10(self.top) if log else float(self.top)

    def __call__(self, v: float) -> float:
        if v <= 0:
            return 0.0
        if self.log:
            return self.span * (math.log10(v) - self.lo) / (max(self.hi, 0.0) - self.lo)
        return self.span * v / self.top

    def ticks(self) -> list[int]:
        if self.log:
            return [10**k for k in range(int(self.hi) + 1)]
        step = 10 ** max(0, int(math.log10(self.top)))
        if self.top / step < 3:
            step = max(1, step // 2)
        return list(range(0, self.top + 1, step))


def chart(fig: Figure) -> Markup:
    return columns(fig) if fig.chart == "columns" else bars(fig)


def _svg(body: list[str], height: float, title: str) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height:.0f}" width="{WIDTH}" height="{height:.0f}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>'
    )


def _legend(series: Sequence[str], y: float, colours: Sequence[str] = COLOURS) -> list[str]:
    if len(series) < 2:
        return []
    out, x = [], LABEL_W
    for i, s in enumerate(series):
        out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colours[i % len(colours)]}"/>'
                   f'<text x="{x + 14}" y="{y}" class="legend">{escape(s)}</text>')
        x += 30 + 8 * len(s)
    return out


def bars(fig: Figure) -> Markup:
    """One row per category, one bar per series, longest first as given."""
    rows = fig.rows[: min(MAX_BARS, len(fig.rows) if fig.drawn is None else fig.drawn)]
    n = len(fig.series)
    row_h = BAR_H * n + GAP
    top = 34
    plot_w = WIDTH - LABEL_W - 60
    scale = _Scale(max((max(c) for _, _, c in rows), default=1), plot_w, fig.log)
    height = top + row_h * len(rows) + 10
    colours = fig.colours or COLOURS
    body = _legend(fig.series, 14, colours)
    for t in scale.ticks():
        x = LABEL_W + scale(t) if t else LABEL_W
        body.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 6}" y2="{height - 8}" class="grid"/>'
                    f'<text x="{x:.1f}" y="{top - 9}" class="tick">{_fmt(t)}</text>')
    for r, (_, label, counts) in enumerate(rows):
        y = top + r * row_h
        body.append(f'<text x="{LABEL_W - 6}" y="{y + BAR_H * n / 2 + 4:.1f}" class="label"><title>{escape(label)}</title>'
                    f'{escape(_short(label))}</text>')
        for i, v in enumerate(counts):
            w = scale(v)
            yy = y + i * BAR_H
            body.append(f'<rect x="{LABEL_W}" y="{yy}" width="{w:.1f}" height="{BAR_H - 1}" fill="{colours[i % len(colours)]}">'
                        f'<title>{escape(label)}: {_fmt(v)} {escape(fig.series[i])}</title></rect>'
                        f'<text x="{LABEL_W + w + 3:.1f}" y="{yy + BAR_H - 1.5}" class="value">{_fmt(v)}</text>')
    if len(fig.rows) > len(rows):
        body.append(f'<text x="{LABEL_W}" y="{height - 1}" class="tick">… {len(fig.rows) - len(rows)} more in the table</text>')
    if fig.log:
        body.append(f'<text x="{WIDTH - 4}" y="{top - 9}" class="tick end">log scale</text>')
    return _svg(body, height, fig.title)


def columns(fig: Figure) -> Markup:
    """A histogram: one column per bucket, the first series only."""
    rows = fig.rows
    left, top, bottom = 50, 16, 40
    plot_h = 200
    col_w = (WIDTH - left - 10) / max(len(rows), 1)
    counts = [c[0] for _, _, c in rows]
    scale = _Scale(max(counts, default=1), plot_h, False)
    height = top + plot_h + bottom
    base = top + plot_h
    body = []
    for t in scale.ticks():
        y = base - scale(t)
        body.append(f'<line x1="{left}" x2="{WIDTH - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                    f'<text x="{left - 4}" y="{y + 4:.1f}" class="tick end">{_fmt(t)}</text>')
    for i, (_, label, (v, *_)) in enumerate(rows):
        x = left + i * col_w
        h = scale(v)
        body.append(f'<rect x="{x + 2:.1f}" y="{base - h:.1f}" width="{col_w - 4:.1f}" height="{h:.1f}" fill="{COLOURS[0]}">'
                    f'<title>{escape(label)}: {_fmt(v)} {escape(fig.series[0])}</title></rect>'
                    f'<text x="{x + col_w / 2:.1f}" y="{base - h - 3:.1f}" class="value mid">{_fmt(v)}</text>'
                    f'<text x="{x + col_w / 2:.1f}" y="{base + 14}" class="tick mid">{escape(label)}</text>')
    return _svg(body, height, fig.title)
