"""Compare two score files: rank correlation and agreement of stage assignment.

    python -m phasedsft.score.agree runs/score/a/scored.jsonl runs/score/b/scored.jsonl
    python -m phasedsft.score.agree A.jsonl B.jsonl --thresholds 1.5 3.5 --json

Files: our ``scored.jsonl`` ({id, instruction, input, output, score}) or the Phased IFT
authors' format ({id, score, data}); examples are matched by id.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from phasedsft.data.loaders import load_jsonl
from phasedsft.records import DataError, stage_of


def _scores(path: str) -> dict[str, float]:
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "{}")
    fmt = "phasedsft_scored" if "data" in json.loads(first) else "alpaca"
    loaded = load_jsonl(path, format=fmt)
    missing = [e.id for e in loaded.examples if e.score is None]
    if missing:
        raise DataError(f"{path}: {len(missing)} examples have no score (e.g. {missing[:3]})")
    return {e.id: float(e.score) for e in loaded.examples}  # type: ignore[arg-type]


def agreement(
    a: dict[str, float], b: dict[str, float], thresholds: Sequence[float]
) -> dict[str, Any]:
    from scipy import stats

    ids = sorted(set(a) & set(b))
    if len(ids) < 2:
        raise DataError(f"only {len(ids)} ids in common: nothing to compare")
    x, y = [a[i] for i in ids], [b[i] for i in ids]
    k = len(thresholds) + 1
    confusion = [[0] * k for _ in range(k)]
    for u, v in zip(x, y, strict=True):
        confusion[stage_of(u, thresholds) - 1][stage_of(v, thresholds) - 1] += 1
    same = sum(confusion[i][i] for i in range(k))
    return {
        "n_common": len(ids),
        "only_in_a": len(set(a) - set(b)),
        "only_in_b": len(set(b) - set(a)),
        "spearman": float(stats.spearmanr(x, y).statistic),
        "kendall_tau": float(stats.kendalltau(x, y).statistic),
        "thresholds": list(thresholds),
        "stage_confusion": confusion,  # rows: stage under A, columns: stage under B
        "same_stage": same / len(ids),
    }


def render(result: dict[str, Any]) -> str:
    k = len(result["stage_confusion"])
    lines = [
        f"common ids: {result['n_common']} (only in A: {result['only_in_a']}, only in B: {result['only_in_b']})",
        f"Spearman: {result['spearman']:.3f}   Kendall tau: {result['kendall_tau']:.3f}",
        f"same stage under thresholds {result['thresholds']}: {result['same_stage']:.1%}",
        "",
        "| A \\ B | " + " | ".join(f"stage {j + 1}" for j in range(k)) + " |",
        "|---" * (k + 1) + "|",
    ]
    for i, row in enumerate(result["stage_confusion"]):
        lines.append(f"| stage {i + 1} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--thresholds", type=float, nargs="+", default=[1.5, 3.5])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    try:
        result = agreement(_scores(args.a), _scores(args.b), sorted(args.thresholds))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
