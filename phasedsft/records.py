"""The one canonical training record, and the error every loader raises on bad input."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One instruction-tuning triplet, plus its difficulty score and stage once known."""

    id: str
    instruction: str
    input: str
    output: str
    score: float | None = None
    stage: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def with_score(self, score: float) -> Example:
        return Example(
            self.id, self.instruction, self.input, self.output, score, self.stage, self.meta
        )


class UserError(Exception):
    """An error in what the user gave (data, config, model, environment), not in the code:
    every entrypoint ends it as ``error: <message>`` with exit code 2, no traceback."""


class DataError(UserError, ValueError):
    """Bad input data. The message always names where (file and line, or dataset and row).

    ``skippable``: ``on_error=skip`` on the data source would have skipped (and counted) this
    row; the message then ends with a generic hint, and ``reason`` is the message without it,
    for an entrypoint that knows the exact override to name (:func:`phasedsft.cli.skip_hint`).
    """

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason

    @property
    def skippable(self) -> bool:
        return self.reason is not None


@dataclass
class SkipReport:
    """Examples dropped on purpose (the user asked to skip bad rows): counted, with reasons."""

    source: str
    skipped: list[dict[str, str]] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.skipped.append({"where": where, "reason": reason})

    @property
    def count(self) -> int:
        return len(self.skipped)

    def summary(self) -> dict[str, Any]:
        reasons = Counter(s["reason"].split(":")[0] for s in self.skipped)
        return {
            "source": self.source,
            "skipped": self.count,
            "by_reason": dict(reasons),
            "first": self.skipped[:20],
        }


def stage_of(score: float, thresholds: Sequence[float]) -> int:
    """1-based stage of ``score`` under increasing ``thresholds``; ties go to the upper stage
    (paper: [1, 1.5), [1.5, 3.5), [3.5, 5]). The one boundary rule every step uses."""
    return bisect.bisect_right(thresholds, score) + 1
