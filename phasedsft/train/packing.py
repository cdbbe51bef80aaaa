"""Padding-free packing in the planned order (``trainer.packing=true``).

Consecutive examples of a stage's planned sequence are packed into rows of at most
``trainer.packing_max_tokens`` tokens (``null``: ``trainer.max_seq_length``): greedily, in
order, never reordered, so the curriculum and every epoch of it are fed exactly as planned
(packing whose rows take the best-fitting example, as bin-packing does, would not be).
Each row carries per-example position ids that restart at 0; with no attention mask and no
cache, transformers builds a block-diagonal causal mask from them (sdpa / eager; flash
attention's variable-length kernels on GPUs), so no token attends across examples. Labels
stay masked per example (the prompt's -100s), and the first token of every example is never
a target, so no loss crosses a boundary either.

The Trainer then sees one dataset item per row (:mod:`phasedsft.train.packed`: the rows as a
torch dataset and their collator); the fed-order audit expands every row to the plan positions
it holds (:class:`~phasedsft.train.audit.FeedShape` ``units``). This module plans and lays out
rows without torch, so ``train.py plan_only`` never imports the training stack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from phasedsft.prompts import IGNORE_INDEX, Encoded


def pack_plan(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Plan positions ``0..n-1`` cut into consecutive packs of at most ``max_tokens`` tokens.

    An example longer than the budget gets a pack of its own (encoding already cut it to
    ``max_seq_length``); otherwise a pack closes when the next example would not fit.
    """
    if max_tokens < 1:
        raise ValueError(f"packing budget must be positive, got {max_tokens}")
    packs: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, n in enumerate(lengths):
        if current and used + n > max_tokens:
            packs.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        packs.append(current)
    return packs


def packed_row(items: Sequence[Encoded]) -> dict[str, list[int]]:
    """One row: the examples' tokens end to end, labels per example, positions from 0 each."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for e in items:
        input_ids += e.input_ids
        labels += [IGNORE_INDEX, *e.labels[1:]]  # an example's first token is never a target
        position_ids += range(e.n_tokens)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def flat_layout(layout: Any, model: Any) -> bool:
    """Whether ``trainer.packing_layout`` means one sequence per batch for ``model``: ``flat``,
    or ``auto`` with a flash attention kernel (whose varlen path skips attention across
    examples; sdpa and eager would compute a dense mask over the whole flattened batch)."""
    value = str(getattr(layout, "value", layout))
    if value == "auto":
        attn = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
        return "flash" in str(attn)
    return value == "flat"


def packing_budget(tcfg: Any) -> int:
    return int(tcfg.packing_max_tokens or tcfg.max_seq_length)


def stage_packs(
    tcfg: Any, encoded: Mapping[str, Encoded], sequence: Sequence[str]
) -> list[list[int]]:
    """The packs a stage feeds under ``tcfg`` (``trainer.packing``, its budget)."""
    return pack_plan([encoded[i].n_tokens for i in sequence], packing_budget(tcfg))


def stage_units(tcfg: Any, encoded: Mapping[str, Encoded], sequence: Sequence[str]) -> int:
    """What the Trainer iterates over for a stage fed ``sequence``: its packed rows under
    ``trainer.packing``, else its items (the one count the plan, schedule and audit use)."""
    return len(stage_packs(tcfg, encoded, sequence)) if tcfg.packing else len(sequence)
