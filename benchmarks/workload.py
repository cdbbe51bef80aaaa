"""What the training and local-scorer benches feed: real Alpaca triplets when ``../shared/ref``
is there (a user's clone has none), else generated texts with Alpaca-like lengths."""

from __future__ import annotations

import json
import random
from pathlib import Path

from phasedsft.records import Example

REF = Path(__file__).resolve().parents[2] / "shared" / "ref" / "alpaca" / "alpaca_subset_3111.json"


def alpaca_examples(n: int) -> tuple[list[Example], str]:
    """``n`` examples and where they came from."""
    if REF.is_file():
        rows = json.loads(REF.read_text())[:n]
        return [
            Example(str(i), r["instruction"], r.get("input", ""), r["output"])
            for i, r in enumerate(rows)
        ], f"real Alpaca ({REF.name})"
    rng = random.Random(0)
    words = "the a model data answer question value list write explain number text".split()

    def text(mean: float) -> str:
        return " ".join(
            rng.choice(words) for _ in range(max(1, int(rng.lognormvariate(0, 0.8) * mean)))
        )

    return [
        Example(str(i), text(12), text(4) if i % 3 else "", text(60)) for i in range(n)
    ], "generated"
