"""Judges compare a model's answer with something. Here: the reference (exact-match) judge.

``ReferenceJudge`` serves data with known answers (the graded suite): an answer is
correct when it equals the reference after normalising case and white space. Pairwise
LLM judges (the paper's GPT-4 judge) plug in beside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@dataclass
class ReferenceJudge:
    """Exact match against the reference answer, after normalisation."""

    name: str = "reference"
    first_line_only: bool = True

    def correct(self, answer: str, reference: str) -> bool:
        if self.first_line_only:
            answer = answer.strip().split("\n", 1)[0]
        return normalise(answer) == normalise(reference)
