"""Scorers that run a local causal LM (no server): prompted ratings, IFD and perplexity.

``LocalLMScorer`` asks the model the same versioned question as the API scorer and
parses the reply the same way. ``IFDScorer`` computes the instruction-following
difficulty of Cherry LLM / Superfiltering: the loss of the output given the instruction
divided by the loss of the output alone. ``PerplexityScorer`` is the perplexity of the
output given the instruction. IFD and perplexity are not on a 1-5 scale: their raw
values are cached and reported, and the score is the raw value mapped to 1-5 by rank
(see :func:`phasedsft.score.base.rank_to_scale`) over the examples being scored.

IFD and perplexity run at forward-pass speed (:func:`iter_sequence_losses`): every sequence
they need (IFD: the prompt and output, and BOS and the output, of every example) is batched
by length with the others, padded within its batch and run once, the output layer only on
the output tokens' positions; results come back in the examples' order. They equal the path
before (:func:`output_losses`, one forward per kind of pass in input order) to float
tolerance, and keep its cache identity.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from phasedsft.llm.cache import Result, cache_key
from phasedsft.llm.engine import RunStats
from phasedsft.prompts import AlpacaTemplate, pad_batch
from phasedsft.ranges import ranged
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
            loaded.append(on_scoring_device(ctx.load_model().eval()))
        return loaded[0]

    return get


def scoring_device(cuda: bool | None = None, env: Mapping[str, str] = os.environ) -> str:
    """Where a local scorer runs: this rank's GPU (``cuda:LOCAL_RANK``; torchrun and SLURM
    tasks set it) when there is one, else the CPU."""
    if cuda is None:
        cuda = torch.cuda.is_available()
    return f"cuda:{int(env.get('LOCAL_RANK', '0'))}" if cuda else "cpu"


def on_scoring_device(model: Any) -> Any:
    """``model`` moved to :func:`scoring_device` when all of it sits on the CPU (a model placed
    by its loader, ``device_map`` or quantized, stays where it is)."""
    device = scoring_device()
    placed = getattr(model, "hf_device_map", None) or getattr(model, "is_quantized", False)
    if device == "cpu" or placed or _device(model).type != "cpu":
        return model
    return model.to(device)


@dataclass
class LocalLMScorer(ScorerBase):
    """A local causal LM answers the scoring prompt (through its chat template)."""

    samples: int = ranged(1, ge=1, why="draws averaged per item")
    temperature: float = ranged(0.0, ge=0, why="sampling temperature; 0: greedy")
    max_new_tokens: int = ranged(24, ge=1, why="tokens a reply may take")
    combine: str = "mean"
    batch_size: int = ranged(8, ge=1, why="prompts per generate call")
    seed: int = ranged(0, ge=0)
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
            device = _device(model())
            ids = torch.tensor(padded["input_ids"], device=device)
            torch.manual_seed(self.seed)
            out = model().generate(
                input_ids=ids,
                attention_mask=torch.tensor(padded["attention_mask"], device=device),
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
    """Mean token loss of each output, given the Alpaca prompt (or given nothing but BOS).

    The path before :func:`sequence_losses` (one forward per kind of pass, examples in the
    order given, padded on the right, logits at every position): kept as the reference the
    batched path is tested and benchmarked against (``benchmarks/bench_local_scorers.py``).
    """
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


# ------------------------------------------------------------- batched by length

Scored = tuple[tuple[int, ...], int]  # token ids, and where the scored part starts
# IFD / perplexity tokenise and sort this many batches' worth of examples at a time (IFD: two
# sequences each). Padding falls as the window grows (Alpaca lengths, batches of 8: 57 % of
# the computed tokens real in input order, 92 % sorted within 16 batches, 98 % within 64);
# the window bounds the tokenised examples held at once. Results are cached as each example
# finishes, so a killed run loses little more than the forward pass in flight.
SORT_WINDOW_BATCHES = 64
# Logits per cross-entropy call (rows x vocabulary): small enough to stay in cache and out of
# fresh allocations (on 2 CPU cores, SmolLM2's vocabulary: 0.07 s for 2000 rows, not 0.17).
CE_CHUNK = 1 << 22


def scored_tokens(seq: Scored) -> int:
    """How many tokens of ``seq`` the loss is taken on (the first token is never predicted)."""
    ids, start = seq
    return max(0, len(ids) - max(start, 1))


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches of at most ``batch_size``, by length.

    Shortest first, so a sequence that another's result waits on (IFD's output alone is
    always shorter than the same output after its instruction) tends to be done before it and
    examples finish, and are cached, steadily; except that the longest batch runs first, so a
    batch too large for memory fails at once rather than at the end.
    """
    if batch_size < 1:
        raise DataError(f"scorer batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return batches[-1:] + batches[:-1]


def _forward_params(model: Any) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _device(model: Any) -> Any:
    device = getattr(model, "device", None)
    if device is None:
        try:
            device = next(model.parameters()).device
        except (AttributeError, StopIteration):
            device = torch.device("cpu")
    return device


def _output_head(model: Any) -> Any:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    return head if isinstance(head, torch.nn.Module) else None


def scored_positions(rows: Sequence[Scored], width: int, side: str) -> tuple[list[int], list[int]]:
    """Row and column, in a batch padded to ``width`` on ``side``, of every logit that predicts
    a scored token (the logit at column c predicts the token at c + 1), row by row."""
    r_idx: list[int] = []
    c_idx: list[int] = []
    for r, seq in enumerate(rows):
        n, length = scored_tokens(seq), len(seq[0])
        end = (width if side == "left" else length) - 1
        r_idx += [r] * n
        c_idx += range(end - n, end)
    return r_idx, c_idx


def _batch_losses(model: Any, rows: list[Scored], pad_id: int, side: str) -> list[float]:
    """One forward over ``rows`` (each with something to score), padded on ``side``.

    The output layer is run on the scored positions only: a forward pre-hook on the model's
    output embeddings hands it those hidden states (one row of them), so whatever the model
    does to its logits afterwards (scaling, soft-capping) still applies. A model whose output
    layer is not reached that way has every position's logits computed, and those kept.
    Left padding gives each row its own positions (``position_ids``), as unpadded.
    """
    padded = pad_batch([{"input_ids": list(ids)} for ids, _ in rows], pad_id, side=side)
    device = _device(model)
    ids = torch.tensor(padded["input_ids"], device=device)
    mask = torch.tensor(padded["attention_mask"], device=device)
    r_list, c_list = scored_positions(rows, ids.shape[1], side)
    r_idx = torch.tensor(r_list, device=device)
    c_idx = torch.tensor(c_list, device=device)
    kwargs: dict[str, Any] = {}
    if side == "left":
        kwargs["position_ids"] = (mask.cumsum(1) - 1).clamp(min=0)
    gathered: list[bool] = []

    def only_scored(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        hidden = args[0] if args else None
        if gathered or not isinstance(hidden, torch.Tensor) or hidden.shape[:2] != ids.shape:
            return None  # not the hidden states of this batch: leave the layer alone
        gathered.append(True)
        return (hidden[r_idx, c_idx].unsqueeze(0), *args[1:])

    head = _output_head(model)
    handle = head.register_forward_pre_hook(only_scored) if head is not None else None
    try:
        logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits
    finally:
        if handle is not None:
            handle.remove()
    if not gathered:
        flat = logits[r_idx, c_idx]
    elif logits.shape[:2] == (1, len(c_list)):
        flat = logits[0]
    else:
        raise RuntimeError(
            f"{type(model).__name__} reshaped the logits of the scored positions to "
            f"{tuple(logits.shape)}; IFD / perplexity cannot read them"
        )
    targets = ids[r_idx, c_idx + 1]
    step = max(1, CE_CHUNK // flat.shape[-1])  # a few MB at a time: 2-3x faster on CPU
    losses = torch.cat(
        [
            torch.nn.functional.cross_entropy(
                flat[i : i + step].float(), targets[i : i + step], reduction="none"
            )
            for i in range(0, len(targets), step)
        ]
    )
    sums = torch.zeros(len(rows), device=device).index_add_(0, r_idx, losses)
    sizes = torch.tensor([scored_tokens(seq) for seq in rows], device=device)
    out: list[float] = (sums / sizes).tolist()  # one transfer for the batch
    return out


def iter_sequence_losses(
    model: Any,
    seqs: Sequence[Scored],
    pad_id: int | None,
    batch_size: int,
    padding_side: str = "right",
) -> Iterator[list[tuple[int, float | None]]]:
    """Mean next-token loss of each sequence on ``ids[start:]``, a batch at a time.

    Yields, per forward pass, ``(index into seqs, loss)`` for the sequences it computed:
    identical sequences are computed once (and reported under every index), sequences with
    no token to score are reported first with ``None``. Batches are formed by length
    (:func:`length_batches`) and padded on ``padding_side`` (left: for a model that takes
    ``position_ids``); either side gives the unpadded losses, to float tolerance.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be left or right, got {padding_side!r}")
    if padding_side == "left" and "position_ids" not in _forward_params(model):
        raise ValueError("left padding needs a model whose forward takes position_ids")
    pad = 0 if pad_id is None else int(pad_id)  # masked out: any id will do
    where: dict[Scored, list[int]] = {}
    empty: list[tuple[int, float | None]] = []
    for i, seq in enumerate(seqs):
        if scored_tokens(seq) == 0:
            empty.append((i, None))
        else:
            where.setdefault((tuple(seq[0]), seq[1]), []).append(i)
    if empty:
        yield empty
    unique = list(where)
    for batch in length_batches([len(ids) for ids, _ in unique], batch_size):
        rows = [unique[j] for j in batch]
        with torch.inference_mode():  # not around the yield: the caller's code runs as usual
            losses = _batch_losses(model, rows, pad, padding_side)
        yield [(i, loss) for seq, loss in zip(rows, losses, strict=True) for i in where[seq]]


def sequence_losses(
    model: Any,
    seqs: Sequence[Scored],
    pad_id: int | None,
    batch_size: int = 8,
    padding_side: str = "right",
) -> list[float | None]:
    """:func:`iter_sequence_losses`, collected in the order of ``seqs``."""
    out: list[float | None] = [None] * len(seqs)
    for done in iter_sequence_losses(model, seqs, pad_id, batch_size, padding_side):
        for i, loss in done:
            out[i] = loss
    return out


@dataclass
class IFDScorer(ScorerBase):
    """Instruction-following difficulty: loss(output | instruction) / loss(output), rank-mapped to 1-5.

    Both losses are over the same output tokens, the output alone starting from BOS (with a
    tokenizer that has none, the output's first token is not scored alone, as before). The
    two sequences of every example (Alpaca prompt + output; BOS + output) go into one pool,
    batched by length with the other examples' (:func:`iter_sequence_losses`); an example is
    cached as soon as both are done. ``max_length`` (``None``: no limit) keeps the first
    ``max_length`` tokens of prompt + output and scores the output tokens that fit, after the
    prompt and alone alike (Cherry LLM cuts the output alone to about the same span); an
    example whose prompt leaves no room fails, saying so.
    """

    batch_size: int = ranged(8, ge=1, why="sequences per forward pass")
    name: str = "ifd"
    max_length: int | None = ranged(
        None, ge=1, why="tokens of prompt + output kept; null: no limit"
    )
    uses_model: ClassVar[bool] = True
    conditioned_only: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise DataError(f"scorer.batch_size must be at least 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 2:
            raise DataError(f"scorer.max_length must be at least 2, got {self.max_length}")

    def identity(self, ctx: ScoreContext) -> dict[str, Any]:
        ident: dict[str, Any] = {"scorer": self.name, "model": ctx.model_name, "template": "alpaca"}
        if self.max_length is not None:  # absent at None: scores cached before it existed hold
            ident["max_length"] = self.max_length
        return ident

    def sequences(self, tok: Any, ex: Example) -> tuple[list[Scored], str | None]:
        """The sequences whose losses make the example's value, or none and why."""
        prompt, completion = AlpacaTemplate().split_ids(ex, tok)
        if self.max_length is not None:
            completion = completion[: max(0, self.max_length - len(prompt))]
            if not completion:
                return [], (
                    f"no output token fits max_length {self.max_length} "
                    f"(the prompt alone is {len(prompt)} tokens)"
                )
        conditioned = (tuple(prompt + completion), len(prompt))
        if self.conditioned_only:
            return [conditioned], None
        alone = prompt[:1] if tok.bos_token_id is not None else []
        return [conditioned, (tuple(alone + completion), len(alone))], None

    def value(self, losses: list[float | None]) -> float:
        """The raw value from the sequences' losses (not finite: the example failed)."""
        cond, uncond = losses
        if cond is None or uncond is None or not uncond > 0:
            return math.inf
        return cond / uncond

    def raw(self, model: Any, tok: Any, batch: list[Example]) -> list[float]:
        """Raw values of ``batch`` (in its order), not finite where an example fails."""
        planned = [self.sequences(tok, ex) for ex in batch]
        flat = [s for seqs, _ in planned for s in seqs]
        losses = sequence_losses(model, flat, tok.pad_token_id, self.batch_size)
        out, at = [], 0
        for seqs, _ in planned:
            out.append(self.value(losses[at : at + len(seqs)]) if seqs else math.inf)
            at += len(seqs)
        return out

    def run(self, examples: Sequence[Example], ctx: ScoreContext) -> RunStats:
        model, tok = _lazy_model(ctx), ctx.tokenizer
        started = time.time()
        identity = self.identity(ctx)
        keys = [cache_key(identity, ex) for ex in examples]
        cached = ctx.cache.get_many(keys)
        todo = [(k, ex) for k, ex in zip(keys, examples, strict=True) if k not in cached]
        stats = RunStats(
            total=len(examples), cached=len(examples) - len(todo), results=dict(cached)
        )

        def record(key: str, ex: Example, value: float, reason: str | None) -> None:
            if math.isfinite(value):
                r = Result(key, ex.id, self.name, "ok", value, {"raw": value})
            else:
                why = reason or "the output has no tokens to score"
                r = Result(key, ex.id, self.name, "failed", None, {}, None, why)
            ctx.cache.put(r)
            stats.results[key] = r
            stats.done += 1
            stats.failed += r.status != "ok"
            bar.update(1)

        window = SORT_WINDOW_BATCHES * self.batch_size
        with tqdm(
            total=len(examples), initial=stats.cached, desc=f"score ({self.name})", unit="ex"
        ) as bar:
            for begin in range(0, len(todo), window):
                chunk = todo[begin : begin + window]
                flat: list[Scored] = []
                first: list[int] = []  # where each example's sequences start in ``flat``
                owner: list[int] = []  # which example of the chunk each sequence is of
                losses: list[list[float | None]] = []
                waiting: list[int] = []  # sequences not yet computed, per example
                for n, (key, ex) in enumerate(chunk):
                    seqs, reason = self.sequences(tok, ex)
                    first.append(len(flat))
                    flat += seqs
                    owner += [n] * len(seqs)
                    losses.append([None] * len(seqs))
                    waiting.append(len(seqs))
                    if not seqs:
                        record(key, ex, math.inf, reason)
                if not flat:
                    continue
                for done in iter_sequence_losses(model(), flat, tok.pad_token_id, self.batch_size):
                    for i, loss in done:
                        n = owner[i]
                        losses[n][i - first[n]] = loss
                        waiting[n] -= 1
                        if waiting[n] == 0:
                            key, ex = chunk[n]
                            record(key, ex, self.value(losses[n]), None)
        stats.seconds = round(time.time() - started, 2)
        stats.ordered = [stats.results.get(k) for k in keys]
        return stats

    def finalize(self, raw: list[float | None]) -> list[float | None]:
        return rank_to_scale(raw)

    def score(self, examples: Sequence[Example], ctx: ScoreContext) -> list[float | None]:
        return self.finalize(self.run(examples, ctx).raw_scores())


@dataclass
class PerplexityScorer(IFDScorer):
    """Perplexity of the output given the instruction, rank-mapped to 1-5."""

    name: str = "perplexity"
    conditioned_only: ClassVar[bool] = True

    def value(self, losses: list[float | None]) -> float:
        (cond,) = losses
        if cond is None:
            return math.inf
        try:
            return math.exp(cond)
        except OverflowError:
            return math.inf
