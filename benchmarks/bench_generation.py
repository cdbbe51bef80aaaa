"""Answer generation throughput: batched + length-sorted vs one prompt at a time vs unsorted batches.

    python benchmarks/bench_generation.py [--items 64] [--batch 16]

A 4-layer, 128-wide Llama (random init) answers graded-suite prompts of mixed lengths with
greedy decoding (a random model rarely stops early, so every variant decodes about
``--new-tokens`` steps per item); the model is loaded once, outside the timings. Three variants run side by side in one process:
``phasedsft`` (``answers_for``: batches of --batch, longest prompts first), ``one-at-a-time``
(batch size 1) and ``unsorted`` (same batch size, the set's own order: more padding).
Printed: seconds, items/s, and ratios against one-at-a-time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from phasedsft.data.graded import generate_suite
from phasedsft.evaluate.generation import Checkpoint, HFGenerator, answers_for
from phasedsft.evaluate.sets import EvalSet
from phasedsft.models import BuildContext, scratch_llama, train_bpe_tokenizer
from phasedsft.train.run import tokenizer_corpus

RUN_CONFIG = OmegaConf.create({"prompt": {"_target_": "phasedsft.prompts.AlpacaTemplate"}})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=24)
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
    es = EvalSet("held_out", items)
    # mixed lengths: every fourth prompt gets a long input, as real test sets have
    for i in range(0, len(items), 4):
        ex = items[i]
        items[i] = type(ex)(ex.id, ex.instruction, (ex.input + " ") * 4, ex.output, meta=ex.meta)

    loaded: dict = {}  # the model is loaded once, outside the timings

    def timed(name: str, gen: HFGenerator, sort: bool = True) -> float:
        if not loaded:
            m, t = gen.load(stage / "model")
            loaded.update(dir=stage / "model", model=m, tokenizer=t)
        ck = Checkpoint("bench", 1, "all", 1, stage, name)
        if not sort:  # feed chunks in the set's order by handing answers_for one chunk at a time
            t0 = time.perf_counter()
            for start in range(0, len(items), gen.batch_size):
                sub = EvalSet(f"part{start}", items[start : start + gen.batch_size])
                answers_for(
                    Checkpoint("bench", 1, "all", 1, stage, f"{name}{start}"), sub, gen, RUN_CONFIG
                )
            return time.perf_counter() - t0
        t0 = time.perf_counter()
        answers_for(ck, es, gen, RUN_CONFIG, loaded)
        return time.perf_counter() - t0

    opts = dict(max_new_tokens=args.new_tokens, save_every=4)
    one = timed("one", HFGenerator(batch_size=1, **opts))
    ours = timed("ours", HFGenerator(batch_size=args.batch, **opts))
    unsorted = timed("unsorted", HFGenerator(batch_size=args.batch, **opts), sort=False)
    print(
        f"{args.items} prompts, {args.new_tokens} new tokens each, batch {args.batch} (CPU, 2 threads)"
    )
    for name, t in [
        ("one-at-a-time", one),
        ("unsorted batches", unsorted),
        ("phasedsft (sorted batches)", ours),
    ]:
        print(
            f"  {name:<28} {t:6.2f} s  {args.items / t:6.1f} items/s  {one / t:5.2f}x one-at-a-time"
        )
    print(f"  sorted vs unsorted batches: {unsorted / ours:.2f}x")


if __name__ == "__main__":
    main()
