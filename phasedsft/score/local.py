"""Scorers that run a local causal LM (no server): prompted ratings, IFD and perplexity.

``LocalLMScorer`` asks the model the same versioned question as the API scorer and
parses the reply the same way. ``IFDScorer`` computes the instruction-following
difficulty of Cherry LLM / Superfiltering: the loss of the output given the instruction
divided by the loss of the output alone. ``PerplexityScorer`` is the perplexity of the
output given the instruction. IFD and perplexity are not on a 1-5 scale: their raw
values are cached and reported, and the score is the raw value mapped to 1-5 by rank
(see :func:`phasedsft.score.base.rank_to_scale`) over the examples being scored.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from phasedsft.llm.cache import Result, cache_key
from phasedsft.llm.engine import RunStats
from phasedsft.prompts import AlpacaTemplate, pad_batch
from phasedsft.records import DataError, Example
from phasedsft.score.base import ScorerBase, rank_to_scale
from phasedsft.score.context import ScoreContext
from phasedsft.score.prompt import (
    PROMPT_VERSION,
    ParseError,
    combine,
    messages,
    parse_reply,
    spread,
)


def run_batched(
    name: str,
    identity: dict[str, Any],
    examples: Sequence[Example],
    ctx: ScoreContext,
    compute: Callable[[list[Example], list[str]], list[Result]],
    batch_size: int,
) -> RunStats:
    """Compute uncached examples batch by batch, caching each result as soon as it exists."""
    started = time.time()
    keys = [cache_key(identity, ex) for ex in examples]
    cached = ctx.cache.get_many(keys)
    todo = [(k, ex) for k, ex in zip(keys, examples, strict=True) if k not in cached]
    stats = RunStats(total=len(examples), cached=len(examples) - len(todo), results=dict(cached))
    with tqdm(total=len(examples), initial=stats.cached, desc=f"score ({name})", unit="ex") as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            for r in compute([ex for _, ex in chunk], [k for k, _ in chunk]):
                ctx.cache.put(r)
                stats.results[r.key] = r
                stats.done += 1
                stats.failed += r.status != "ok"
                stats.requests += r.requests
            bar.update(len(chunk))
    stats.seconds = round(time.time() - started, 2)
    stats.ordered = [stats.results.get(k) for k in keys]
    return stats


def _lazy_model(ctx: ScoreContext) -> Callable[[], Any]:
    """Load the model on first use only (a fully cached rerun never loads it)."""
    if ctx.load_model is None or ctx.tokenizer is None:
        raise DataError(
            "this scorer runs a local model: choose one with model=... (e.g. model=smollm2_135m)"
        )
    loaded: list[Any] = []

    def get() -> Any:
        if not loaded:
            assert ctx.load_model is not None
            loaded.append(ctx.load_model().eval())
        return loaded[0]

    return get


@dataclass
class LocalLMScorer(ScorerBase):
    """A local causal LM answers the scoring prompt (through its chat template)."""

    samples: int = 1
    temperature: float = 0.0
    max_new_tokens: int = 24
    combine: str = "mean"
    batch_size: int = 8
    seed: int = 0
    name: str = "local"
    uses_model: ClassVar[bool] = True

    def identity(self, ctx: ScoreContext) -> dict[str, Any]:
        return {
            "scorer": "local",
            "model": ctx.model_name,
            "prompt": PROMPT_VERSION,
            "samples": self.samples,
            "temperature": self.temperature,
            "max_new_tokens": self.max_new_tokens,
            "combine": self.combine,
            "seed": self.seed,
        }

    def run(self, examples: Sequence[Example], ctx: ScoreContext) -> RunStats:
        model, tok = _lazy_model(ctx), ctx.tokenizer
        if not getattr(tok, "chat_template", None):
            raise DataError(
                "scorer=local needs a tokenizer with a chat template (e.g. model=smollm2_135m)"
            )

        @torch.no_grad()
        def compute(batch: list[Example], keys: list[str]) -> list[Result]:
            prompts = [
                {
                    "input_ids": list(
                        tok.apply_chat_template(
                            messages(ex),
                            add_generation_prompt=True,
                            tokenize=True,
                            return_dict=True,
                        )["input_ids"]
                    )
                }
                for ex in batch
            ]
            padded = pad_batch(prompts, tok.pad_token_id, side="left")
            ids = torch.tensor(padded["input_ids"])
            torch.manual_seed(self.seed)
            out = model().generate(
                input_ids=ids,
                attention_mask=torch.tensor(padded["attention_mask"]),
                max_new_tokens=self.max_new_tokens,
                do_sample=self.temperature > 0,
                temperature=self.temperature if self.temperature > 0 else None,
                num_return_sequences=self.samples,
                pad_token_id=tok.pad_token_id,
            )
            texts = tok.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
            results = []
            for i, (ex, key) in enumerate(zip(batch, keys, strict=True)):
                replies = texts[i * self.samples : (i + 1) * self.samples]
                parsed, reason = [], ""
                for reply in replies:
                    try:
                        parsed.append(parse_reply(reply))
                    except ParseError as e:
                        reason = str(e)
                if not parsed:
                    results.append(
                        Result(
                            key,
                            ex.id,
                            self.name,
                            "failed",
                            None,
                            {},
                            json.dumps(replies),
                            f"unparseable reply: {reason}",
                            requests=1,
                        )
                    )
                    continue
                values = [combine(self.combine, t, r) for t, r in parsed]
                detail = {"samples": values, "n_valid": len(parsed), "spread": spread(values)}
                results.append(
                    Result(
                        key,
                        ex.id,
                        self.name,
                        "ok",
                        statistics.mean(values),
                        detail,
                        json.dumps(replies),
                        requests=1,
                    )
                )
            return results

        return run_batched(self.name, self.identity(ctx), examples, ctx, compute, self.batch_size)

    def finalize(self, raw: list[float | None]) -> list[float | None]:
        return raw

    def score(self, examples: Sequence[Example], ctx: ScoreContext) -> list[float | None]:
        return self.finalize(self.run(examples, ctx).raw_scores())


@torch.no_grad()
def output_losses(
    model: Any, tok: Any, examples: Sequence[Example], conditioned: bool
) -> list[float]:
    """Mean token loss of each output, given the Alpaca prompt (or given nothing but BOS)."""
    template = AlpacaTemplate()
    batch = []
    for ex in examples:
        prompt, completion = template.split_ids(ex, tok)
        if not conditioned:
            prompt = prompt[:1] if tok.bos_token_id is not None else []
        batch.append(
            {"input_ids": prompt + completion, "labels": [-100] * len(prompt) + completion}
        )
    padded = pad_batch(batch, tok.pad_token_id)
    labels = torch.tensor(padded["labels"])
    logits = model(
        input_ids=torch.tensor(padded["input_ids"]),
        attention_mask=torch.tensor(padded["attention_mask"]),
    ).logits
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        shift_logits.transpose(1, 2), shift_labels, ignore_index=-100, reduction="none"
    )
    mask = (shift_labels != -100).float()
    return ((loss * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()


@dataclass
class IFDScorer(ScorerBase):
    """Instruction-following difficulty: loss(output | instruction) / loss(output), rank-mapped to 1-5."""

    batch_size: int = 8
    name: str = "ifd"
    uses_model: ClassVar[bool] = True

    def identity(self, ctx: ScoreContext) -> dict[str, Any]:
        return {"scorer": self.name, "model": ctx.model_name, "template": "alpaca"}

    def raw(self, model: Any, tok: Any, batch: list[Example]) -> list[float]:
        cond = output_losses(model, tok, batch, conditioned=True)
        uncond = output_losses(model, tok, batch, conditioned=False)
        return [c / u if u > 0 else math.inf for c, u in zip(cond, uncond, strict=True)]

    def run(self, examples: Sequence[Example], ctx: ScoreContext) -> RunStats:
        model, tok = _lazy_model(ctx), ctx.tokenizer

        def compute(batch: list[Example], keys: list[str]) -> list[Result]:
            values = self.raw(model(), tok, batch)
            return [
                Result(k, ex.id, self.name, "ok", v, {"raw": v})
                if math.isfinite(v)
                else Result(
                    k,
                    ex.id,
                    self.name,
                    "failed",
                    None,
                    {},
                    None,
                    "the output has no tokens to score",
                )
                for ex, k, v in zip(batch, keys, values, strict=True)
            ]

        return run_batched(self.name, self.identity(ctx), examples, ctx, compute, self.batch_size)

    def finalize(self, raw: list[float | None]) -> list[float | None]:
        return rank_to_scale(raw)

    def score(self, examples: Sequence[Example], ctx: ScoreContext) -> list[float | None]:
        return self.finalize(self.run(examples, ctx).raw_scores())


@dataclass
class PerplexityScorer(IFDScorer):
    """Perplexity of the output given the instruction, rank-mapped to 1-5."""

    name: str = "perplexity"

    def raw(self, model: Any, tok: Any, batch: list[Example]) -> list[float]:
        return [math.exp(x) for x in output_losses(model, tok, batch, conditioned=True)]
