"""Answer generation throughput: batched + length-sorted vs one prompt at a time vs unsorted batches.

    python benchmarks/bench_generation.py [--items 64] [--batch 16] [--rounds 5] [--json FILE]

A 4-layer, 128-wide Llama (random init) answers graded-suite prompts of mixed lengths with
greedy decoding (a random model rarely stops early, so every variant decodes about
``--new-tokens`` steps per item); the model is loaded once, outside the timings, and every
variant generates with it. Three variants, side by side in one process:
``phasedsft`` (``answers_for``: batches of --batch, longest prompts first), ``one-at-a-time``
(batch size 1) and ``unsorted`` (same batch size, the set's own order: more padding).

Interleaved: ``--rounds`` rounds (after an untimed warm-up), each round every variant once
(each writes a fresh answers file, so none reads another's); every ratio is taken within a
round and reported as median [min-max] over rounds. Printed: seconds, items/s, batched /
one-at-a-time (target >= 4x) and sorted / unsorted (target >= 1.2x). ``--json FILE`` writes
every measurement, for ``benchmarks/compare.py``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from compare import median_range, write_json
from omegaconf import OmegaConf

from phasedsft.data.graded import generate_suite
from phasedsft.evaluate.generation import Checkpoint, HFGenerator, answers_for
from phasedsft.evaluate.sets import EvalSet
from phasedsft.jobs import tokenizer_corpus
from phasedsft.models import BuildContext, scratch_llama, train_bpe_tokenizer

RUN_CONFIG = OmegaConf.create({"prompt": {"_target_": "phasedsft.prompts.AlpacaTemplate"}})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    args = p.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    examples = generate_suite(600, seed=0).examples
    ctx = BuildContext(work, 0, lambda: tokenizer_corpus(examples))
    tok = train_bpe_tokenizer(ctx, vocab_size=400)
    model = scratch_llama(ctx, tok)
    stage = work / "stage_1_all"
    model.save_pretrained(stage / "model")
    tok.save_pretrained(stage / "model")
    items = generate_suite(args.items, seed=5, split="eval").examples
    # mixed lengths: every fourth prompt gets a long input, as real test sets have
    for i in range(0, len(items), 4):
        ex = items[i]
        items[i] = type(ex)(ex.id, ex.instruction, (ex.input + " ") * 4, ex.output, meta=ex.meta)
    es = EvalSet("held_out", items)

    opts = dict(max_new_tokens=args.new_tokens, save_every=4)
    gens = {
        "one": HFGenerator(batch_size=1, **opts),
        "ours": HFGenerator(batch_size=args.batch, **opts),
        "unsorted": HFGenerator(batch_size=args.batch, **opts),
    }
    m, t = gens["ours"].load(stage / "model")
    loaded = dict(dir=stage / "model", model=m, tokenizer=t)  # loaded once, outside the timings

    def ckpt(tag: str) -> Checkpoint:
        # the tag stands in for the weights' order hash: a fresh answers file per run
        return Checkpoint("bench", 1, "all", 1, stage, tag)

    def timed(name: str, tag: str) -> float:
        gen = gens[name]
        t0 = time.perf_counter()
        if name == "unsorted":  # chunks in the set's order: answers_for gets one chunk at a time
            for start in range(0, len(items), gen.batch_size):
                sub = EvalSet(f"part{start}", items[start : start + gen.batch_size])
                answers_for(ckpt(f"{tag}-{start}"), sub, gen, RUN_CONFIG, loaded)
        else:
            answers_for(ckpt(tag), es, gen, RUN_CONFIG, loaded)
        return time.perf_counter() - t0

    timed("ours", "warm-up")  # allocator, kernels, first-call costs
    seconds: dict[str, list[float]] = {k: [] for k in gens}
    for r in range(args.rounds):  # interleaved: every variant once per round
        for name in gens:
            seconds[name].append(timed(name, f"{name}{r}"))
    per_round = {
        "batched_over_one": [o / b for o, b in zip(seconds["one"], seconds["ours"], strict=True)],
        "unsorted_over_one": [
            o / u for o, u in zip(seconds["one"], seconds["unsorted"], strict=True)
        ],
        "sorted_over_unsorted": [
            u / b for u, b in zip(seconds["unsorted"], seconds["ours"], strict=True)
        ],
    }
    summary = {k: median_range(v) for k, v in per_round.items()}
    print(
        f"{args.items} prompts, {args.new_tokens} new tokens each, batch {args.batch} "
        f"(CPU, 2 threads); {args.rounds} interleaved rounds, median [min-max]"
    )
    labels = {
        "one": ("one-at-a-time", None),
        "unsorted": ("unsorted batches", "unsorted_over_one"),
        "ours": ("phasedsft (sorted batches)", "batched_over_one"),
    }
    for name, (label, ratio) in labels.items():
        t = median_range(seconds[name])
        x = summary[ratio] if ratio else {"median": 1.0, "min": 1.0, "max": 1.0}
        print(
            f"  {label:<28} {t['median']:6.2f} s  {args.items / t['median']:6.1f} items/s  "
            f"{x['median']:5.2f}x [{x['min']:.2f}-{x['max']:.2f}] one-at-a-time"
        )
    m = summary["sorted_over_unsorted"]
    print(
        f"  sorted vs unsorted batches: {m['median']:.2f}x [{m['min']:.2f}-{m['max']:.2f}]"
        "   (targets: batched >= 4x one-at-a-time, sorted >= 1.2x unsorted)"
    )
    write_json(
        args.json,
        {
            "bench": "generation",
            "items": args.items,
            "batch": args.batch,
            "new_tokens": args.new_tokens,
            "rounds": args.rounds,
            "seconds": seconds,
            "per_round": per_round,
            "summary": summary,
        },
    )


if __name__ == "__main__":
    main()
