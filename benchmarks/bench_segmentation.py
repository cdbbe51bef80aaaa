"""Segmentation + plots for 52K scores: compute time per method, side by side.

    python benchmarks/bench_segmentation.py

Two score sets of 52,002 items (Alpaca's size): GPT-4-like (means of up to four 1-5 ratings,
so spikes on a 0.25 grid, most items easy, as in the paper's 30.3k / 14.7k / 6.8k split)
and continuous (like IFD or perplexity). Target: segmentation + plots well under a second
for GPT-4-like scores.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

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

N = 52002


def gpt4_like(rng: np.random.Generator) -> list[float]:
    level = rng.choice([1, 2, 3, 4, 5], size=(N, 4), p=[0.55, 0.2, 0.12, 0.08, 0.05])
    return [float(x) for x in np.round(level.mean(1) * 4) / 4]


def main() -> None:
    import matplotlib.pyplot  # noqa: F401  (one-off import cost is not segmentation)
    import scipy.stats  # noqa: F401

    rng = np.random.default_rng(0)
    sets = {
        "gpt4-like (spiky)": gpt4_like(rng),
        "continuous": [float(x) for x in rng.gamma(2.0, 1.0, N)],
    }
    methods = {
        "manual [1.5, 3.5]": ManualThresholds(),
        "quantile k=3": QuantileThresholds(3),
        "kde_valleys k=3": KDEValleys(3),
        "jenks k=3": Jenks(3),
        "gmm (k by BIC)": GMMThresholds(None),
        "balanced(manual, 3x)": Balanced(ManualThresholds(), 3.0),
    }
    print(f"{'method':<24}" + "".join(f"{name:>22}" for name in sets))
    totals = dict.fromkeys(sets, 0.0)
    for mname, method in methods.items():
        cells = []
        for sname, scores in sets.items():
            examples = [Example(str(i), "q", "", "a", score=s) for i, s in enumerate(scores)]
            t = time.perf_counter()
            try:
                manifest = build_manifest(examples, method, random_seed=0)
                cell = f"{time.perf_counter() - t:.3f} s ({len(manifest.stages)} st.)"
            except Exception as e:
                cell = f"n/a ({type(e).__name__})"
            totals[sname] += time.perf_counter() - t
            cells.append(cell)
        print(f"{mname:<24}" + "".join(f"{c:>22}" for c in cells))
    with tempfile.TemporaryDirectory() as d:
        cells = []
        for scores in sets.values():
            t = time.perf_counter()
            plot_density(scores, [1.5, 3.5], Path(d) / "density.png", "bench", None)
            cells.append(f"{time.perf_counter() - t:.3f} s")
        print(f"{'density plot (PNG)':<24}" + "".join(f"{c:>22}" for c in cells))
    print("\nmanifest building (thresholds + stages + random stages + hash) included in every row")


if __name__ == "__main__":
    main()
