"""Segmentation + plots for 52K scores: compute time per method, side by side.

    python benchmarks/bench_segmentation.py [--n 52002] [--rounds 5] [--json FILE]

Two score sets of ``--n`` items (default 52,002, Alpaca's size): GPT-4-like (means of up to
four 1-5 ratings, so spikes on a 0.25 grid, most items easy, as in the paper's 30.3k / 14.7k /
6.8k split) and continuous (like IFD or perplexity). Every row builds the whole manifest
(thresholds + stages + random stages + hash); the density PNG is timed on its own.

After an untimed warm-up on 1,000 items, interleaved: ``--rounds`` rounds, each round every
method on both sets and both plots once. Printed per cell: seconds, median [min-max] over
rounds, and the method's time over manual thresholds' in the same round (manual thresholds
fit nothing, so the ratio is roughly what fitting the method adds to building the manifest).
Target: the slowest method + the plot, for GPT-4-like scores, well under a second
(``gpt4_like/slowest_plus_plot_s``). ``--json FILE`` writes every measurement, for
``benchmarks/compare.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
from compare import median_range, write_json

from phasedsft.records import Example
from phasedsft.segment.manifest import build_manifest
from phasedsft.segment.methods import (
    Balanced,
    GMMThresholds,
    Jenks,
    KDEValleys,
    ManualThresholds,
    QuantileThresholds,
)
from phasedsft.segment.run import plot_density

SETS = {"gpt4_like": "gpt4-like (spiky)", "continuous": "continuous"}
METHODS = {
    "manual": ("manual [1.5, 3.5]", lambda: ManualThresholds()),
    "quantile": ("quantile k=3", lambda: QuantileThresholds(3)),
    "kde_valleys": ("kde_valleys k=3", lambda: KDEValleys(3)),
    "jenks": ("jenks k=3", lambda: Jenks(3)),
    "gmm": ("gmm (k by BIC)", lambda: GMMThresholds(None)),
    "balanced": ("balanced(manual, 3x)", lambda: Balanced(ManualThresholds(), 3.0)),
}


def gpt4_like(rng: np.random.Generator, n: int) -> list[float]:
    level = rng.choice([1, 2, 3, 4, 5], size=(n, 4), p=[0.55, 0.2, 0.12, 0.08, 0.05])
    return [float(x) for x in np.round(level.mean(1) * 4) / 4]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=52002, help="scores per set")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    args = p.parse_args()
    import matplotlib.pyplot  # noqa: F401  (one-off import cost is not segmentation)
    import scipy.stats  # noqa: F401

    rng = np.random.default_rng(0)
    scores = {
        "gpt4_like": gpt4_like(rng, args.n),
        "continuous": [float(x) for x in rng.gamma(2.0, 1.0, args.n)],
    }
    examples = {
        s: [Example(str(i), "q", "", "a", score=x) for i, x in enumerate(v)]
        for s, v in scores.items()
    }
    seconds: dict[str, list[float]] = {}
    stages: dict[str, int] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as d:
        for s in SETS:  # warm-up on 1,000 items: lazy imports, first-call caches
            for _, make in METHODS.values():
                with contextlib.suppress(Exception):  # a failure is reported in the rounds
                    build_manifest(examples[s][:1000], make(), random_seed=0)
            plot_density(scores[s][:1000], [1.5, 3.5], Path(d) / "warm.png", "bench", None)
        for _ in range(args.rounds):  # interleaved: every cell once per round
            for s in SETS:
                for m, (_, make) in METHODS.items():
                    key = f"{s}/{m}"
                    if key in failed:
                        continue
                    method = make()
                    t = time.perf_counter()
                    try:
                        manifest = build_manifest(examples[s], method, random_seed=0)
                    except Exception as e:
                        failed[key] = f"{type(e).__name__}: {e}"
                        continue
                    seconds.setdefault(key, []).append(time.perf_counter() - t)
                    stages[key] = len(manifest.stages)
                t = time.perf_counter()
                plot_density(scores[s], [1.5, 3.5], Path(d) / f"{s}.png", "bench", None)
                seconds.setdefault(f"{s}/plot", []).append(time.perf_counter() - t)

    per_round: dict[str, list[float]] = {}
    for s in SETS:
        manual = seconds[f"{s}/manual"]
        for m in METHODS:
            if m != "manual" and f"{s}/{m}" in seconds:
                per_round[f"{s}/{m}_over_manual"] = [
                    t / b for t, b in zip(seconds[f"{s}/{m}"], manual, strict=True)
                ]
    done = [m for m in METHODS if f"gpt4_like/{m}" in seconds]
    per_round["gpt4_like/slowest_plus_plot_s"] = [
        max(seconds[f"gpt4_like/{m}"][r] for m in done) + seconds["gpt4_like/plot"][r]
        for r in range(args.rounds)
    ]
    summary = {k: median_range(v) for k, v in per_round.items()}

    print(
        f"{args.n} scores per set; {args.rounds} interleaved rounds, seconds median [min-max]"
        " (x manual in the same round, median)"
    )
    print(f"{'method':<22}" + "".join(f"{label:>36}" for label in SETS.values()))
    for m, (label, _) in METHODS.items():
        cells = []
        for s in SETS:
            key = f"{s}/{m}"
            if key in failed:
                cells.append(f"n/a ({failed[key].split(':')[0]})")
                continue
            t = median_range(seconds[key])
            ratio = summary.get(f"{s}/{m}_over_manual")
            x = f" x{ratio['median']:.1f}" if ratio else ""
            cells.append(
                f"{t['median']:.3f} [{t['min']:.2f}-{t['max']:.2f}] ({stages[key]} st.){x}"
            )
        print(f"{label:<22}" + "".join(f"{c:>36}" for c in cells))
    cells = []
    for s in SETS:
        t = median_range(seconds[f"{s}/plot"])
        cells.append(f"{t['median']:.3f} [{t['min']:.2f}-{t['max']:.2f}]")
    print(f"{'density plot (PNG)':<22}" + "".join(f"{c:>36}" for c in cells))
    m = summary["gpt4_like/slowest_plus_plot_s"]
    print(
        f"\ngpt4-like, slowest method + plot: {m['median']:.2f} s [{m['min']:.2f}-{m['max']:.2f}]"
        "   (target well under 1 s)"
    )
    print("manifest building (thresholds + stages + random stages + hash) included in every row")
    write_json(
        args.json,
        {
            "bench": "segmentation",
            "n": args.n,
            "rounds": args.rounds,
            "seconds": seconds,
            "stages": stages,
            "failed": failed,
            "per_round": per_round,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
