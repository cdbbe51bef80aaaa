"""Selection (``selection=...``) over 1M scored rows: seconds and memory per rule, side by side.

    python benchmarks/bench_select.py [--n 1000000] [--diverse-n 20000] [--rounds 3] [--json FILE]

``--n`` examples (default 1M) carrying a GPT-4-like difficulty score (means of four 1-5
ratings, on a 0.25 grid: many ties) and two more score columns as score.py writes them
(``scores: {ifd, length}``), plus per-example training token counts. Every rule of
phasedsft/select runs on all of them, except ``diverse``, whose cost grows with examples x
examples kept: it runs on the first ``--diverse-n`` (varied texts) and is reported apart.

After an untimed warm-up on 10,000 rows, interleaved: ``--rounds`` rounds, each round every rule
once. Printed per rule: seconds, median [min-max] over rounds; then, from one more untimed pass
under tracemalloc, the peak memory the selection allocated (bytes per row: bounded means a
few numpy arrays of n, not copies of the examples). Target: every rule over 1M rows in a few
seconds (``all/slowest_s``). ``--json FILE`` writes every measurement, for
``benchmarks/compare.py``.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from compare import median_range, write_json

from phasedsft.records import Example
from phasedsft.select.rules import (
    Diverse,
    Random,
    Rule,
    Threshold,
    TokenBudget,
    Tokens,
    TopFraction,
    TopK,
)

WORDS = "sea poem sum prime list sort word add light tree river count letters reverse".split()

RULES: dict[str, tuple[str, Callable[[int], Rule]]] = {
    "threshold": ("threshold score >= 4.5", lambda n: Threshold(at_least=4.5)),
    "top_k": ("top_k 10 % by score", lambda n: TopK(k=n // 10)),
    "cherry": (
        "top_fraction 5 % by ifd, ifd < 1",
        lambda n: TopFraction(by="ifd", fraction=0.05, filters=[{"column": "ifd", "below": 1}]),
    ),
    "deita_product": (
        "top_k 6k by ifd x score",
        lambda n: TopK(by="ifd", times=["score"], k=6000),
    ),
    "token_budget": ("token_budget 10 % tokens", lambda n: TokenBudget(budget=n * 12)),
    "random_size": (
        "random, size of threshold",
        lambda n: Random(match=Threshold(at_least=4.5), seed=0),
    ),
    "random_tokens": (
        "random, tokens of budget",
        lambda n: Random(match=TokenBudget(budget=n * 12), matching="tokens", seed=0),
    ),
}


def scored_rows(n: int, seed: int = 0) -> tuple[list[Example], Tokens]:
    rng = np.random.default_rng(seed)
    level = rng.choice([1, 2, 3, 4, 5], size=(n, 4), p=[0.55, 0.2, 0.12, 0.08, 0.05])
    score = (np.round(level.mean(1) * 4) / 4).tolist()
    ifd = np.round(rng.gamma(8.0, 0.1, n), 3).tolist()
    total = rng.integers(20, 220, n)
    length = total.tolist()
    examples = [
        Example(
            str(i), "q", "", "a", score[i], meta={"scores": {"ifd": ifd[i], "length": length[i]}}
        )
        for i in range(n)
    ]
    return examples, Tokens(total, total // 3)


def varied(n: int, seed: int = 1) -> list[Example]:
    rng = np.random.default_rng(seed)
    words = rng.choice(WORDS, size=(n, 8))
    return [
        Example(str(i), " ".join(words[i, :5]), "", " ".join(words[i, 5:]), float(i % 5 + 1))
        for i in range(n)
    ]


def timed(rule: Rule, examples: list[Example], tokens: Tokens | None) -> tuple[float, int]:
    t = time.perf_counter()
    kept = rule.select(examples, tokens).kept
    return time.perf_counter() - t, kept


def peak_bytes(rule: Rule, examples: list[Example], tokens: Tokens | None) -> int:
    tracemalloc.start()
    rule.select(examples, tokens)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1_000_000, help="scored rows")
    p.add_argument("--diverse-n", type=int, default=20_000, help="rows for selection=diverse")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    args = p.parse_args()

    t = time.perf_counter()
    examples, tokens = scored_rows(args.n)
    small = varied(args.diverse_n)
    build_s = time.perf_counter() - t
    cells: dict[str, tuple[Rule, list[Example], Tokens | None]] = {
        key: (make(args.n), examples, tokens) for key, (_, make) in RULES.items()
    }
    cells["diverse"] = (Diverse(max_similarity=0.9, k=args.diverse_n // 10), small, None)
    warm = examples[:10_000], Tokens(tokens.total[:10_000], tokens.target[:10_000])
    for _label, make in RULES.values():  # warm-up: imports, first-call caches
        make(10_000).select(*warm)
    Diverse(k=100).select(small[:1000])

    seconds: dict[str, list[float]] = {}
    kept: dict[str, int] = {}
    for _ in range(args.rounds):  # interleaved: every rule once per round
        for key, (rule, exs, tok) in cells.items():
            s, k = timed(rule, exs, tok)
            seconds.setdefault(key, []).append(s)
            kept[key] = k
    memory = {key: peak_bytes(rule, exs, tok) for key, (rule, exs, tok) in cells.items()}
    per_round = {"all/slowest_s": [max(seconds[k][r] for k in RULES) for r in range(args.rounds)]}
    summary: dict[str, Any] = {k: median_range(v) for k, v in per_round.items()}

    print(
        f"{args.n} scored rows (built in {build_s:.1f} s, not timed); diverse on "
        f"{args.diverse_n}; {args.rounds} interleaved rounds, seconds median [min-max]"
    )
    labels = {**{k: v[0] for k, v in RULES.items()}, "diverse": "diverse k=10 %, sim <= 0.9"}
    print(f"{'rule':<36}{'seconds':>24}{'kept':>10}{'peak MB':>10}{'bytes/row':>11}")
    for key, label in labels.items():
        m = median_range(seconds[key])
        rows = len(cells[key][1])
        print(
            f"{label:<36}{m['median']:>10.3f} [{m['min']:.2f}-{m['max']:.2f}]"
            f"{kept[key]:>10}{memory[key] / 2**20:>10.1f}{memory[key] / rows:>11.1f}"
        )
    s = summary["all/slowest_s"]
    print(f"\nslowest rule over {args.n} rows: {s['median']:.2f} s [{s['min']:.2f}-{s['max']:.2f}]")
    write_json(
        args.json,
        {
            "bench": "select",
            "n": args.n,
            "diverse_n": args.diverse_n,
            "rounds": args.rounds,
            "seconds": seconds,
            "kept": kept,
            "peak_bytes": memory,
            "per_round": per_round,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
