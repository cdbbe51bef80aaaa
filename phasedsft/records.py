"""The one canonical training record, and the error every loader raises on bad input."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Turn = tuple[str, str]  # (role, content); role: "system", "user" or "assistant"
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """One instruction-tuning triplet, plus its difficulty score and stage once known.

    A conversation that is more than one plain exchange (several turns, or a system message)
    also keeps its ``messages``; its triplet is then a view for the steps that read text
    (scoring, Table 1, caches): ``instruction`` is the transcript of every turn before the last
    assistant turn (:func:`transcript`), ``output`` the last assistant turn. Training through
    ``prompt=chat`` uses ``messages`` and puts the loss on every assistant turn.
    """

    id: str
    instruction: str
    input: str
    output: str
    score: float | None = None
    stage: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    messages: tuple[Turn, ...] | None = None

    def with_score(self, score: float) -> Example:
        return Example(
            self.id,
            self.instruction,
            self.input,
            self.output,
            score,
            self.stage,
            self.meta,
            self.messages,
        )


def transcript(turns: Sequence[Turn]) -> str:
    """Plain-text view of ``turns``: ``"System: ...\n\nUser: ...\n\nAssistant: ..."``."""
    return "\n\n".join(f"{role.capitalize()}: {content}" for role, content in turns)


def conversation_example(
    id: str,
    turns: Sequence[Turn],
    *,
    score: float | None = None,
    meta: dict[str, Any] | None = None,
) -> Example:
    """The :class:`Example` of a checked conversation (see :func:`check_turns`).

    One user turn and one assistant turn is a plain triplet (``messages`` not kept); anything
    more keeps ``messages``, with the transcript of the turns before the last as instruction.
    """
    turns = tuple((r, c) for r, c in turns)
    meta = {**(meta or {}), "turns": sum(1 for r, _ in turns if r != "system")}
    if len(turns) == 2:
        return Example(id, turns[0][1], "", turns[1][1], score, meta=meta)
    return Example(id, transcript(turns[:-1]), "", turns[-1][1], score, meta=meta, messages=turns)


def check_turns(turns: Sequence[Turn]) -> str | None:
    """Why ``turns`` cannot be trained on (``None``: it can): an optional system turn first, then
    user and assistant turns alternating, starting with user and ending with assistant."""
    body = list(turns)
    if body and body[0][0] == "system":
        body = body[1:]
    if len(body) < 2:
        return "a conversation needs at least one user turn and one assistant turn"
    offset = len(turns) - len(body)
    for i, (role, content) in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        where = i + 1 + offset
        if role != expected:
            if role not in ROLES:
                return f"turn {where} has role '{role}'; roles are {', '.join(ROLES)}"
            return f"turn {where} is '{role}', expected '{expected}' (user and assistant alternate)"
        if not isinstance(content, str):
            return f"turn {where} has content of type {type(content).__name__}, not a string"
        if not content.strip():
            return f"turn {where} ({role}) is empty"
    if body[-1][0] != "assistant":
        return "the conversation must end with an assistant turn"
    return None


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
