"""Table 1's token counting alone: what a first segment.py run on new data cannot skip.

    python benchmarks/bench_token_counts.py [--n 1000000] [--rounds 2] [--json FILE]

``--n`` generated Alpaca-like rows (``bench_scale.generate``, the same seeded rows as
bench_scale.py, read by segment.py's loader ``load_jsonl``) give the texts segment.py counts
for Table 1 (``phasedsft.segment.run.table_text``); the tokenizer is ``model=tiny``'s
byte-level BPE, learnt from them as segment.py learns it
(``phasedsft.models.train_bpe_tokenizer``, untimed). Then ``--rounds`` interleaved rounds of
:func:`phasedsft.data.tokens.token_counts` over all texts:

- ``tokenizer``: no cache, only the tokenizer's pass (``encode_batch_fast``, batches of 2,048);
- ``cold``: with an empty count cache (each text hashed, counted, the cache written): a first run;
- ``warm``: the same cache again (every count read back): every later run.

Printed per variant: wall seconds, median [min-max]; microseconds a text; CPU seconds over
wall seconds (the cores the pass kept busy). The ``cold`` figure is the floor that
bench_scale.py's first (``--no-warmup``) segment.py run at ``--n`` rows stands on.
``--json FILE`` writes every measurement, for ``benchmarks/compare.py``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench_scale import generate
from compare import median_range, write_json

from phasedsft.data.loaders import load_jsonl
from phasedsft.data.tokens import token_counts
from phasedsft.jobs import tokenizer_corpus
from phasedsft.models import BuildContext, train_bpe_tokenizer
from phasedsft.segment.run import table_text

VARIANTS = ("tokenizer", "cold", "warm")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1_000_000, help="generated rows")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = work / "rows.jsonl"
        generate(data, args.n)
        examples = load_jsonl(str(data)).examples  # segment.py's own loader
        tokenizer = train_bpe_tokenizer(
            BuildContext(work / "bpe", 0, lambda: tokenizer_corpus(examples))
        )
        texts = [table_text(e) for e in examples]

        seconds: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cores: dict[str, list[float]] = {v: [] for v in VARIANTS}
        tokens = None
        for r in range(args.rounds):
            cache = work / f"counts_{r}"
            for variant in VARIANTS:
                t, c = time.perf_counter(), time.process_time()
                counts = token_counts(tokenizer, texts, None if variant == "tokenizer" else cache)
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                if tokens is None:
                    tokens = sum(counts)
                elif sum(counts) != tokens:
                    raise RuntimeError(f"{variant} counted {sum(counts)} tokens, not {tokens}")
                seconds[variant].append(wall)
                cores[variant].append(cpu / wall)
                print(f"round {r + 1}: {variant}: {wall:.2f} s, {cpu / wall:.2f} cores", flush=True)

    print(f"\n{args.n} texts, {tokens} tokens ({(tokens or 0) / args.n:.0f} a text)")
    print(f"{args.rounds} interleaved rounds, median [min-max]")
    print(f"{'variant':<11}{'seconds':>22}{'us/text':>9}{'cores':>7}")
    summary: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        t = summary[f"{variant}/seconds"] = median_range(seconds[variant])
        busy = summary[f"{variant}/cores"] = median_range(cores[variant])
        print(
            f"{variant:<11}{t['median']:>10.2f} [{t['min']:.2f}-{t['max']:.2f}]"
            f"{t['median'] / args.n * 1e6:>9.1f}{busy['median']:>7.2f}"
        )
    write_json(
        args.json,
        {
            "bench": "token_counts",
            "n": args.n,
            "rounds": args.rounds,
            "tokens": tokens,
            "seconds": seconds,
            "cores": cores,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
