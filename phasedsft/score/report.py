"""What a scoring run shows a person: a histogram in the terminal and as a PNG, counts, cost."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phasedsft.io import save_figure


def score_counts(scores: Sequence[float | None], width: float = 0.5) -> dict[str, int]:
    """Counts per bin of ``width`` (1.0, 1.5, ... 5.0), plus failures."""
    counts: Counter[str] = Counter()
    for s in scores:
        counts["failed" if s is None else f"{math.floor(s / width) * width:.1f}"] += 1
    return dict(sorted(counts.items()))


def text_histogram(counts: dict[str, int], width: int = 40) -> str:
    peak = max(counts.values(), default=1)
    lines = []
    for label, n in counts.items():
        bar = "#" * max(1 if n else 0, round(width * n / peak))
        lines.append(f"{label:>7} | {bar:<{width}} {n}")
    return "\n".join(lines)


def centred_bins(values: Sequence[float] | np.ndarray) -> list[float]:
    """Histogram bin edges centred on the scores: bins of width 1 around each whole number for
    whole-number scores (1..5), of 0.5 or 0.25 for halves or quarters; other scores get
    numpy's "auto" width, the first bin centred on the lowest score. No value: 1..5."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        arr = np.array([1.0, 5.0])
    lo, hi = float(arr.min()), float(arr.max())
    for step in (1.0, 0.5, 0.25):
        if np.allclose(arr / step, np.round(arr / step)):
            n = round((hi - lo) / step) + 1
            return (lo - step / 2 + step * np.arange(n + 1)).tolist()
    auto = np.histogram_bin_edges(arr, bins="auto")
    width = float(auto[1] - auto[0])
    n = math.ceil((hi - lo) / width) + 1
    return (lo - width / 2 + width * np.arange(n + 1)).tolist()


def plot_histogram(
    scores: Sequence[float | None], path: Path, title: str, thresholds: Sequence[float] = ()
) -> None:
    """Counts per score (bins centred on the scores' grid) with the thresholds; written as
    ``path`` (PNG) and the PDF beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one float64 array (a list of a million floats costs matplotlib several copies of it)
    values = np.fromiter((s for s in scores if s is not None), dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(values, bins=centred_bins(values), color="#4c72b0", edgecolor="white")
    for t in thresholds:
        ax.axvline(t, color="#c44e52", linestyle="--", linewidth=1)
    failed = len(scores) - len(values)
    ax.set_xlabel("difficulty score")
    ax.set_ylabel("examples")
    ax.set_title(f"{title}  (n={len(values)}, failed={failed})", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


class SummaryMismatch(RuntimeError):
    """A scoring summary whose counts do not add up (a bug: the summary must never lie)."""


def check_summary(s: dict[str, Any]) -> None:
    """Every example is ok, failed or not scored, once; cached + answered now + not scored too."""
    problems = []
    if s["ok"] + s["failed"] + s["not_scored"] != s["examples"]:
        problems.append(
            f"ok {s['ok']} + failed {s['failed']} + not_scored {s['not_scored']} "
            f"!= examples {s['examples']}"
        )
    if s["cached"] + s["answered_this_run"] + s["not_scored"] != s["examples"]:
        problems.append(
            f"cached {s['cached']} + answered_this_run {s['answered_this_run']} + not_scored "
            f"{s['not_scored']} != examples {s['examples']}"
        )
    if sum(s["counts"].values()) != s["ok"] + s["failed"]:
        problems.append(f"counts {s['counts']} do not sum to ok + failed")
    if not 0 <= s["failed_this_run"] <= s["failed"]:
        problems.append(f"failed_this_run {s['failed_this_run']} > failed {s['failed']}")
    if "cost_from_tokens_usd" in s:  # every dollar from tokens x prices, or a worst case
        parts = s["cost_from_tokens_usd"] + s["cost_unmetered_usd"]
        if abs(s["cost_usd"] - parts) > 1e-9 * max(1.0, abs(s["cost_usd"])):
            problems.append(
                f"cost_usd {s['cost_usd']} != cost_from_tokens_usd {s['cost_from_tokens_usd']} + "
                f"cost_unmetered_usd {s['cost_unmetered_usd']}"
            )
    if problems:
        raise SummaryMismatch("the scoring summary does not add up: " + "; ".join(problems))


def summary_lines(summary: dict[str, Any]) -> str:
    s = summary
    return (
        f"scored {s['ok']} of {s['examples']} examples ({s['failed']} failed, "
        f"{s['failed_this_run']} of them in this run; {s['cached']} from cache, "
        f"{s['not_scored']} not scored); this run: {s['requests']} requests, "
        f"{s['tokens_in']} + {s['tokens_out']} tokens, ${s['cost_usd']:.4f}"
        + (
            f" (${s['cost_unmetered_usd']:.4f} of it the worst case of requests whose reply "
            "reported no usage)"
            if s.get("cost_unmetered_usd")
            else ""
        )
    )
