"""Figure 1 per test set as inline SVG: win rate against the baseline after each stage.

No plotting library: a few lines of markup, so the page stays one file, prints sharply and
each point names its figures on hover (``<title>``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]
Point = tuple[int, float, float | None, float | None]  # stage, win rate, CI low, CI high


def stage_chart(
    lines: Mapping[str, Sequence[Point]],
    title: str,
    baseline: str,
    chart_id: str,
    width: int = 420,
    height: int = 260,
) -> str:
    """One panel: x = after stage (1..K), y = win rate from -50 to +50, one line per ordering
    with its 95 % CI as error bars; lines are nudged apart sideways as in figure1_stages.png."""
    left, right, top, bottom = 46, 120, 26, 36
    pw, ph = width - left - right, height - top - bottom
    stages = sorted({p[0] for pts in lines.values() for p in pts}) or [1]
    lo_s, hi_s = stages[0], stages[-1]
    span = max(hi_s - lo_s, 1)

    def x(stage: float) -> float:
        return left + (stage - lo_s + 0.5) / (span + 1) * pw

    def y(value: float) -> float:
        return top + (50 - max(-52.0, min(52.0, value))) / 100 * ph

    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{chart_id}-t">{escape(title)}</title>',
    ]
    described = []
    for tick in (-50, -25, 0, 25, 50):
        ty = y(tick)
        dash = ' stroke-dasharray="4 3"' if tick == 0 else ""
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{ty:.1f}" y2="{ty:.1f}" '
            f'stroke="{"#777" if tick == 0 else "#ddd"}"{dash}/>'
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end" class="tick">{tick:+d}</text>'
        )
    for s in stages:
        out.append(
            f'<text x="{x(s):.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">{s}</text>'
        )
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" class="axis">after stage</text>'
        f'<text transform="translate(12 {top + ph / 2:.1f}) rotate(-90)" text-anchor="middle" '
        f'class="axis">win rate vs {escape(baseline)}</text>'
    )
    names = sorted(lines)
    for k, name in enumerate(names):
        color = PALETTE[k % len(PALETTE)]
        nudge = 0.06 * (k - (len(names) - 1) / 2)
        pts = sorted(lines[name])
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{x(s + nudge):.1f},{y(w):.1f}"
            for i, (s, w, _, _) in enumerate(pts)
        )
        out.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        for s, w, lo, hi in pts:
            px = x(s + nudge)
            ci = ""
            if lo is not None and hi is not None:
                out.append(
                    f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{y(lo):.1f}" y2="{y(hi):.1f}" stroke="{color}"/>'
                )
                ci = f" [{lo:+.1f}, {hi:+.1f}]"
            label = f"{name}, after stage {s}: {w:+.1f}{ci}"
            described.append(label)
            out.append(
                f'<circle cx="{px:.1f}" cy="{y(w):.1f}" r="3.5" fill="{color}">'
                f"<title>{escape(label)}</title></circle>"
            )
        ly = top + 4 + 16 * k
        out.append(
            f'<line x1="{left + pw + 12}" x2="{left + pw + 28}" y1="{ly:.1f}" y2="{ly:.1f}" '
            f'stroke="{color}" stroke-width="2"/>'
            f'<text x="{left + pw + 32}" y="{ly + 4:.1f}" class="legend">{escape(name)}</text>'
        )
    out.insert(2, f'<desc id="{chart_id}-d">{escape("; ".join(described) or "no point")}</desc>')
    out.append("</svg>")
    return "".join(out)
