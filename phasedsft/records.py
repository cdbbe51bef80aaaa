"""The one canonical training record, and the error every loader raises on bad input."""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Turn = tuple[str, str]  # (role, content): the plain form of a :class:`Message`
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class ToolCall:
    """One function call an assistant turn makes; ``arguments`` is its JSON text."""

    name: str
    arguments: str = "{}"
    id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The call as chat templates take it (OpenAI's layout, arguments as an object)."""
        call: dict[str, Any] = {
            "type": "function",
            "function": {"name": self.name, "arguments": json.loads(self.arguments)},
        }
        if self.id is not None:
            call["id"] = self.id
        return call

    def text(self) -> str:
        return f"{self.name}({self.arguments})"

    def as_openai(self) -> dict[str, Any]:
        """The call in OpenAI's fine-tuning files (arguments as JSON text)."""
        call = {"type": "function", "function": {"name": self.name, "arguments": self.arguments}}
        return {"id": self.id, **call} if self.id is not None else call


@dataclass(frozen=True)
class Message:
    """One turn of a conversation.

    ``role``: system, user, assistant or tool (a tool's result). An assistant turn may carry
    ``tool_calls`` (then its ``content`` may be empty); ``trained`` is whether the loss is on it
    (OpenAI's ``weight``: 0 makes a turn context only). A tool turn may name the function it
    answers (``name``) and the call (``tool_call_id``).
    """

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    trained: bool = True
    name: str | None = None
    tool_call_id: str | None = None

    @property
    def plain(self) -> bool:
        """Role and content only: nothing a plain-text template could lose."""
        return (
            not self.tool_calls
            and self.trained
            and self.name is None
            and (self.tool_call_id is None)
        )

    def text(self) -> str:
        """The turn as plain text: its content, then one line per tool call."""
        calls = [f"[calls {c.text()}]" for c in self.tool_calls]
        return "\n".join([self.content, *calls] if self.content else calls)

    def as_dict(self) -> dict[str, Any]:
        """The turn as chat templates (and OpenAI's fine-tuning files) take it."""
        msg: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = [c.as_dict() for c in self.tool_calls]
        if self.name is not None:
            msg["name"] = self.name
        if self.tool_call_id is not None:
            msg["tool_call_id"] = self.tool_call_id
        return msg

    def as_openai(self) -> dict[str, Any]:
        """The turn as a line of an OpenAI fine-tuning file holds it (``weight: 0`` if it is
        not trained); :func:`phasedsft.data.loaders.from_messages` reads it back unchanged."""
        msg = {**self.as_dict(), "content": self.content}
        if self.tool_calls:
            msg["tool_calls"] = [c.as_openai() for c in self.tool_calls]
        if not self.trained:
            msg["weight"] = 0
        return msg


def as_message(turn: Message | Turn) -> Message:
    return turn if isinstance(turn, Message) else Message(turn[0], turn[1])


@dataclass(frozen=True, slots=True)  # slots: a million of them without a dict each
class Example:
    """One instruction-tuning triplet, plus its difficulty score and stage once known.

    A conversation that is more than one plain exchange (several turns, a system message, tool
    calls and results, a turn that is not trained, or tools to call) also keeps its
    ``messages`` (and ``tools``, the JSON text of the tool definitions); its triplet is then a
    view for the steps that read text (scoring, Table 1, caches): ``instruction`` is the
    transcript of the tools and every turn before the last assistant turn (:func:`transcript`),
    ``output`` the last assistant turn as text. Training through ``prompt=chat`` uses
    ``messages`` and puts the loss on every trained assistant turn.
    """

    id: str
    instruction: str
    input: str
    output: str
    score: float | None = None
    stage: int | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    messages: tuple[Message, ...] | None = None
    tools: str | None = None

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
            self.tools,
        )


def transcript(turns: Sequence[Message | Turn], tools: str | None = None) -> str:
    """Plain-text view of ``turns``: ``"System: ...\n\nUser: ...\n\nAssistant: ..."``; tool
    calls as ``[calls name({...})]`` lines, tool results as ``Tool (name): ...``, and the tools
    on offer first (``Tools: [...]``)."""
    blocks = [f"Tools: {tools}"] if tools else []
    for turn in map(as_message, turns):
        who = turn.role.capitalize() + (
            f" ({turn.name})" if turn.role == "tool" and turn.name else ""
        )
        blocks.append(f"{who}: {turn.text()}")
    return "\n\n".join(blocks)


def conversation_example(
    id: str,
    turns: Sequence[Message | Turn],
    *,
    score: float | None = None,
    meta: dict[str, Any] | None = None,
    tools: str | None = None,
) -> Example:
    """The :class:`Example` of a checked conversation (see :func:`check_turns`).

    One plain user turn and one plain assistant turn, with no tools, is a triplet (``messages``
    not kept); anything more keeps ``messages``, with the transcript of the turns before the
    last as instruction.
    """
    msgs = tuple(map(as_message, turns))
    meta = {**(meta or {}), "turns": sum(1 for m in msgs if m.role != "system")}
    if len(msgs) == 2 and not tools and all(m.plain for m in msgs):
        return Example(id, msgs[0].content, "", msgs[1].content, score, meta=meta)
    return Example(
        id,
        transcript(msgs[:-1], tools),
        "",
        msgs[-1].text(),
        score,
        meta=meta,
        messages=msgs,
        tools=tools,
    )


def check_turns(turns: Sequence[Message | Turn]) -> str | None:
    """Why ``turns`` cannot be trained on (``None``: it can).

    An optional system turn first; then a user turn; then assistant turns answering user turns
    or tool results, user and assistant alternating (LLaMA-Factory's rule: user and tool turns
    at odd positions, assistant turns at even ones); tool turns only right after an assistant
    turn that calls a tool (several in a row for parallel calls); the last turn an assistant's,
    and at least one assistant turn trained.
    """
    msgs = list(map(as_message, turns))
    body = msgs[1:] if msgs and msgs[0].role == "system" else msgs
    offset = len(msgs) - len(body)
    for i, m in enumerate(body):
        if m.role not in ROLES:
            return f"turn {i + 1 + offset} has role '{m.role}'; roles are {', '.join(ROLES)}"
    previous: Message | None = None
    for i, m in enumerate(body):  # (an empty body passes the loop and fails below)
        where = i + 1 + offset
        if not isinstance(m.content, str):
            return f"turn {where} has content of type {type(m.content).__name__}, not a string"
        if m.role == "system":
            return f"turn {where} is a system turn; only the first turn may be"
        if not m.content.strip() and not m.tool_calls:
            return f"turn {where} ({m.role}) is empty"
        if m.tool_calls and m.role != "assistant":
            return f"turn {where} ({m.role}) calls tools; only assistant turns may"
        if previous is None:
            if m.role != "user":
                return (
                    f"turn {where} is '{m.role}', expected 'user' (a conversation starts with user)"
                )
        elif previous.tool_calls and m.role != "tool":
            return (
                f"turn {where - 1} calls a tool, but turn {where} is '{m.role}', not the tool's "
                "result"
            )
        elif m.role == "tool":
            if previous.role != "tool" and not previous.tool_calls:
                return (
                    f"turn {where} is a tool result, but turn {where - 1} calls no tool "
                    "(tool results follow the assistant turn that calls the tool)"
                )
        elif m.role == "user" and previous.role != "assistant":
            return (
                f"turn {where} is 'user', expected 'assistant' after '{previous.role}' "
                "(user and assistant alternate)"
            )
        elif m.role == "assistant" and previous.role == "assistant":
            return f"turn {where} is 'assistant', expected 'user' (user and assistant alternate)"
        previous = m
    if not any(m.role == "user" for m in body) or not any(m.role == "assistant" for m in body):
        return "a conversation needs at least one user turn and one assistant turn"
    if body[-1].role != "assistant":
        return "the conversation must end with an assistant turn"
    if not any(m.trained for m in body if m.role == "assistant"):
        return "no assistant turn is trained (every assistant turn has weight 0)"
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
