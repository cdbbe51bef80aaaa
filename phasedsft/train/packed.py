"""The Trainer's side of packing (``trainer.packing=true``): the planned packs as a torch
dataset of rows (:func:`~phasedsft.train.packing.packed_row`) and the collator that batches
them, padded per batch or as one flat sequence. The packs themselves are planned in
:mod:`phasedsft.train.packing`, which needs no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from phasedsft.prompts import IGNORE_INDEX, Encoded
from phasedsft.train.packing import packed_row


class PackedDataset(torch.utils.data.Dataset):
    """One item per pack of the planned order; each carries the plan positions it holds."""

    def __init__(
        self,
        encoded: Mapping[str, Encoded],
        sequence: Sequence[str],
        packs: Sequence[Sequence[int]],
    ):
        self.encoded, self.sequence, self.packs = encoded, list(sequence), packs

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, j: int) -> dict[str, Any]:
        positions = list(self.packs[j])
        row = packed_row([self.encoded[self.sequence[p]] for p in positions])
        return {**row, "positions": positions}


@dataclass
class PackedCollator:
    """Rows padded to the longest (padding: its own segment, never a target); no attention
    mask and no cache, so the model builds the per-example causal mask from the position ids.

    ``flat``: the batch's rows end to end as one row, so nothing is padded at all (the layout
    of flash attention's variable-length kernels, and of TRL's ``padding_free``). The same
    examples, tokens, targets and per-example attention as ``flat=False``, so the same loss.
    """

    pad_token_id: int
    unpacked: Callable[[Sequence[dict[str, Any]]], dict[str, Any]] | None = None  # eval batches
    flat: bool = False

    def __call__(self, batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if "position_ids" not in batch[0]:  # a held-out set's examples: batched as unpacked
            assert self.unpacked is not None, "PackedCollator got unpacked items"
            return self.unpacked(batch)
        if self.flat:
            batch = [{k: [x for b in batch for x in b[k]] for k in batch[0]}]
        width = max(len(b["input_ids"]) for b in batch)
        ids, labels, pos = [], [], []
        for b in batch:
            pad = width - len(b["input_ids"])
            ids.append(b["input_ids"] + [self.pad_token_id] * pad)
            labels.append(b["labels"] + [IGNORE_INDEX] * pad)
            pos.append(b["position_ids"] + list(range(pad)))
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(pos, dtype=torch.long),
            "positions": torch.tensor([p for b in batch for p in b["positions"]], dtype=torch.long),
            # with a cache the per-example mask is not built; per batch, so the saved config
            # (and generation from it) is left as the model had it
            "use_cache": False,
        }
