"""Difficulty scorers (the paper's IDC step). This module holds the cheap, local ones.

A scorer maps examples to difficulty scores in the paper's 1-5 range. ``OracleScorer``
reads a score the data already carries (the graded suite's level, the authors' GPT-4
scores, the output of a separate scoring job); ``LengthScorer`` is a cheap baseline.
LLM scorers (OpenAI-compatible API, local LM, IFD) plug in through the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from phasedsft.records import DataError, Example


class Scorer(Protocol):
    name: str

    def score(self, examples: Sequence[Example], tokenizer: Any) -> list[float]: ...


@dataclass
class OracleScorer:
    """Use the ``score`` each example already has; fail clearly if any is missing."""

    name: str = "oracle"

    def score(self, examples: Sequence[Example], tokenizer: Any = None) -> list[float]:
        missing = [ex.id for ex in examples if ex.score is None]
        if missing:
            raise DataError(
                f"scorer=oracle: {len(missing)} of {len(examples)} examples carry no difficulty score "
                f"(e.g. ids {missing[:3]}). Point the dataset at a scored file, use scorer=length, "
                "or use ordering=one_off, which needs no scores."
            )
        return [float(ex.score) for ex in examples]  # type: ignore[arg-type]


@dataclass
class LengthScorer:
    """Token length of instruction + input + output, mapped to 1-5 by rank.

    Normalisation: the i-th shortest of n examples gets ``1 + 4 * i / (n - 1)`` (equal
    lengths share the mean of their ranks), so scores span 1-5 whatever the tokenizer.
    """

    name: str = "length"

    def score(self, examples: Sequence[Example], tokenizer: Any) -> list[float]:
        if not examples:
            return []
        texts = [f"{ex.instruction}\n{ex.input}\n{ex.output}" for ex in examples]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        ranks = [0.0] * len(lengths)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and lengths[order[j + 1]] == lengths[order[i]]:
                j += 1
            for k in range(i, j + 1):
                ranks[order[k]] = (i + j) / 2
            i = j + 1
        n = len(examples)
        return [1.0 + 4.0 * r / (n - 1) if n > 1 else 3.0 for r in ranks]


def apply_scores(
    examples: Sequence[Example], scores: Sequence[float], scorer_name: str
) -> list[Example]:
    if len(scores) != len(examples):
        raise DataError(
            f"scorer {scorer_name} returned {len(scores)} scores for {len(examples)} examples"
        )
    return [ex.with_score(s) for ex, s in zip(examples, scores, strict=True)]
