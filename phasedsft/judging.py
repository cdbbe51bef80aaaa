"""What a judge is, below both steps: the pair types, the judge protocols and the reference judge.

``train.py`` marks the final weights' answers on the held-out set with a judge that knows a
right answer from a wrong one (:class:`MarksAnswers`: :class:`ReferenceJudge`); ``evaluate.py``
judges pairs of answers in both orders (:class:`Judge`; its LLM judges are in
:mod:`phasedsft.evaluate.judges`, which re-exports these names). Shared code: it imports
neither step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from phasedsft.records import DataError

ORDERS = ("ab", "ba")


@dataclass(frozen=True)
class Pair:
    """One test item and the two answers to compare (A = candidate, B = baseline).

    ``instruction`` and ``input`` stay apart: how they are joined into the question the judge
    sees belongs to the judge's prompt style (:func:`format_question`).
    """

    id: str
    instruction: str
    answer_a: str
    answer_b: str
    reference: str = ""
    category: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    input: str = ""

    def shown(self, order: str) -> tuple[str, str]:
        return (self.answer_a, self.answer_b) if order == "ab" else (self.answer_b, self.answer_a)


@dataclass
class Reviews:
    """The judge's raw texts for one pair (``None`` where the judge gave no usable reply), and
    its first reply in each order: what the authors' script records, which never asks again
    (``None``: the same as the review, or no reply at all)."""

    id: str
    review_ab: str | None
    review_ba: str | None
    errors: list[str] = field(default_factory=list)
    first_ab: str | None = None
    first_ba: str | None = None

    def first(self, order: int) -> str | None:
        """The first reply in order ``order`` (0: ab, 1: ba)."""
        kept = (self.first_ab, self.first_ba)[order]
        return kept if kept is not None else (self.review_ab, self.review_ba)[order]


@dataclass
class JudgeRun:
    reviews: list[Reviews]
    stats: dict[str, Any]


@runtime_checkable
class Judge(Protocol):
    """What ``evaluate.py`` calls on a judge: both orders of every pair reviewed, and (for
    ``dry_run``) what that will send and cost, or ``None`` when it sends nothing.

    Each review's first line holds the two scores, so :mod:`.folding` folds any judge's
    reviews the same way.
    """

    name: str

    def judge_pairs(self, pairs: Sequence[Pair], cache: Any, desc: str = "judge") -> JudgeRun: ...

    def estimate(self, pairs: Sequence[Pair], cache: Any) -> dict[str, Any] | None: ...


@runtime_checkable
class MarksAnswers(Protocol):
    """A judge that knows a right answer from a wrong one, against the reference (known-answer
    sets): ``train.py`` marks the final weights' answers on the held-out set with it, and
    ``evaluate.py`` also reports accuracy per category."""

    name: str

    def correct(self, answer: str, reference: str) -> bool: ...


def checked_judge(obj: Any) -> Judge:
    """``obj`` if it implements :class:`Judge`; else a plain error naming what it lacks."""
    if isinstance(obj, Judge):
        return obj
    missing = [m for m in ("name", "judge_pairs", "estimate") if not hasattr(obj, m)]
    raise DataError(f"judge {type(obj).__name__} lacks {', '.join(missing)} (see judges.Judge)")


# How each judge prompt style joins an item's input to its instruction (the styles' prompts
# are in phasedsft.evaluate.judges). ``authors``: eval.py:142-153: "{instruction} Input:
# {input}" when the item has a (non-empty) input; ``vicuna`` (ours): its own paragraph.
INPUT_SEPARATORS = {"authors": " Input: ", "vicuna": "\n\n"}


def format_question(pair: Pair, style: str = "vicuna") -> str:
    """The question the judge reads: the instruction, joined to the input as ``style`` does."""
    if style not in INPUT_SEPARATORS:
        raise DataError(f"unknown judge.style '{style}'; known: {sorted(INPUT_SEPARATORS)}")
    # the authors test ``if input:`` (eval.py:142, :148); ours ignores white-space-only inputs
    has_input = bool(pair.input) if style == "authors" else bool(pair.input.strip())
    return pair.instruction + (INPUT_SEPARATORS[style] + pair.input if has_input else "")


# ------------------------------------------------------------------ reference judge


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@dataclass
class ReferenceJudge:
    """Exact match against the reference answer, after normalisation (known-answer data)."""

    name: str = "reference"
    first_line_only: bool = True

    def question(self, pair: Pair) -> str:
        return format_question(pair, "vicuna")

    def correct(self, answer: str, reference: str) -> bool:
        if self.first_line_only:
            answer = answer.strip().split("\n", 1)[0]
        return normalise(answer) == normalise(reference)

    def estimate(self, pairs: Sequence[Pair], cache: Any) -> None:
        return None  # sends no request

    def review(self, first: str, second: str, reference: str) -> str:
        a, b = (int(self.correct(x, reference)) for x in (first, second))
        words = {1: "matches", 0: "does not match"}
        return f"{a} {b}\nAssistant 1 {words[a]} the reference answer; Assistant 2 {words[b]} it."

    def judge_pairs(
        self, pairs: Sequence[Pair], cache: Any = None, desc: str = "judge"
    ) -> JudgeRun:
        missing = [p.id for p in pairs if not p.reference.strip()]
        if missing:
            raise DataError(
                f"judge=reference needs reference answers; {len(missing)} items have none "
                f"(e.g. {missing[:3]}). Use it on known-answer sets (eval_set=held_out) or pick "
                "an LLM judge (judge=gpt4, judge=local)"
            )
        reviews = [
            Reviews(
                p.id,
                self.review(*p.shown("ab"), p.reference),
                self.review(*p.shown("ba"), p.reference),
            )
            for p in pairs
        ]
        return JudgeRun(reviews, {"requests": 0, "cost_usd": 0.0})
