"""Loaders from the formats researchers actually have into :class:`Example` records.

Every loader reads rows, converts each with a pure row converter (one per *format*),
and applies the same checks: required fields, non-empty output, unique ids. Bad input
raises :class:`DataError` naming the file and line (or dataset and row). With
``on_error="skip"`` the bad rows are skipped, counted and logged instead, never dropped
silently.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phasedsft.io import paused_gc
from phasedsft.records import (
    DataError,
    Example,
    Message,
    SkipReport,
    ToolCall,
    check_turns,
    conversation_example,
)

log = logging.getLogger(__name__)


class RowError(ValueError):
    """A row is malformed; the caller adds where it is."""


@dataclass
class Loaded:
    """What a loader returns: the examples and what was skipped (and why)."""

    examples: list[Example]
    skips: SkipReport
    notes: dict[str, int] = field(default_factory=dict)
    # columns (and nested fields) the format does not train on, with how many rows had them
    unused_fields: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- row converters


def _text(row: Mapping[str, Any], key: str, *, required: bool = True) -> str:
    if key not in row or row[key] is None:
        if required:
            raise RowError(f"missing field '{key}'")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise RowError(f"field '{key}' must be a string, got {type(value).__name__}")
    return value


DEFAULT_SCORE_RANGE = (1.0, 5.0)  # the difficulty scale; dataset.source.score_range changes it


def _score(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RowError(f"field 'score' must be a number (or a numeric string), got {value!r}")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise RowError(f"field 'score' is not a number: {value!r}") from None
    if math.isnan(score) or math.isinf(score):
        raise RowError(f"field 'score' is not finite: {value!r}")
    return score


# Columns a row may have that every format keeps as metadata (eval categories, task groups).
# kept with every row, conversations included; ``scores``: the named score columns score.py
# writes beside ``score`` (selection=... reads them)
META_COLUMNS = frozenset({"source", "category", "task", "level", "scores"})
# Columns of other modalities: a text-only run refuses a row that fills one (on_error=skip counts).
NON_TEXT_COLUMNS = ("images", "videos", "audios", "image", "audio", "video")
IGNORED = "_ignored_fields"  # meta key a converter fills with the nested fields it did not use


def _refuse_non_text(row: Mapping[str, Any]) -> None:
    for key in NON_TEXT_COLUMNS:
        if row.get(key) not in (None, "", [], ()):
            raise RowError(f"column '{key}' holds non-text content; this run is text-only")


def _json_value(value: Any, what: str) -> Any:
    """``value``, or what the JSON text ``value`` holds (LLaMA-Factory writes JSON as strings)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise RowError(f"{what} is not valid JSON: {e.msg} (column {e.colno})") from None


def _tools(value: Any, what: str = "field 'tools'") -> str | None:
    """The tool definitions as canonical JSON text in OpenAI's layout
    (``[{"type": "function", "function": {"name", "description", "parameters"}}]``), from
    that layout, LLaMA-Factory's bare ``[{"name", ...}]`` (a JSON string there), or ``None``."""
    if value is None or value == "" or value == []:
        return None
    tools = _json_value(value, what)
    if tools == []:  # LLaMA-Factory writes "[]" for a conversation without tools
        return None
    if isinstance(tools, Mapping):
        tools = [tools]
    if not isinstance(tools, list) or not all(isinstance(t, Mapping) for t in tools):
        raise RowError(f"{what} must be a list of tool definitions")
    out = []
    for i, tool in enumerate(tools, start=1):
        if "function" in tool:
            if tool.get("type", "function") != "function":
                raise RowError(
                    f"{what}: tool {i} has type '{tool['type']}'; only 'function' is text"
                )
            fn = tool["function"]
        else:
            fn = tool
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise RowError(f"{what}: tool {i} has no function name")
        out.append({"type": "function", "function": dict(fn)})
    return json.dumps(out, ensure_ascii=False)


def _tool_call(value: Any, where: str) -> ToolCall:
    """One call, from OpenAI's ``{"id", "type": "function", "function": {"name", "arguments"}}``
    (arguments as JSON text) or LLaMA-Factory's ``{"name", "arguments"}``."""
    if not isinstance(value, Mapping):
        raise RowError(f"{where} must be an object")
    if "function" in value:
        if value.get("type", "function") != "function":
            raise RowError(f"{where} has type '{value['type']}'; only function calls are supported")
        fn = value["function"]
    else:
        fn = value
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise RowError(f"{where} has no function name")
    args = _json_value(fn.get("arguments", {}), f"{where} arguments")
    if not isinstance(args, Mapping):
        raise RowError(f"{where} arguments must be a JSON object")
    call_id = value.get("id")
    return ToolCall(
        fn["name"], json.dumps(args, ensure_ascii=False), None if call_id is None else str(call_id)
    )


def _content(value: Any, where: str) -> str:
    """A turn's text: a string, ``None`` (empty), or OpenAI's list of content parts, whose text
    parts are joined with a newline; any other part (image, audio, file) is refused."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise RowError(f"{where} has non-text content ({kind}); this run is text-only")
            texts.append(part["text"])
        return "\n".join(texts)
    raise RowError(
        f"{where} content must be a string or a list of text parts, got {type(value).__name__}"
    )


OPENAI_ROLES = {"developer": "system", "function": "tool"}  # developer: o-series' system role
OPENAI_MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "tool_calls", "tool_call_id", "weight", "function_call"}
)


def _openai_turns(value: Any, key: str, ignored: set[str]) -> list[Message]:
    """OpenAI's chat fine-tuning messages (and TRL's conversational layout): roles system,
    developer (as system), user, assistant, tool (and the legacy function); content as text or
    text parts; ``tool_calls`` (and the legacy ``function_call``); ``weight`` 0 or 1 on
    assistant turns; ``name`` of a tool turn (else the name of the call it answers)."""
    if not isinstance(value, list) or not value:
        raise RowError(f"field '{key}' must be a non-empty list of turns")
    turns: list[Message] = []
    calls: dict[str, str] = {}  # tool_call_id -> function name
    for i, m in enumerate(value, start=1):
        where = f"{key} turn {i}"
        if not isinstance(m, Mapping) or "role" not in m:
            raise RowError(f"{where} must be an object with 'role' and 'content'")
        if "content" not in m and not m.get("tool_calls") and not m.get("function_call"):
            raise RowError(f"{where} must be an object with 'role' and 'content'")
        role = OPENAI_ROLES.get(str(m["role"]), str(m["role"]))
        ignored.update(f"{key}[].{k}" for k in m if k not in OPENAI_MESSAGE_KEYS)
        tool_calls = [
            _tool_call(c, f"{where} tool call {j}")
            for j, c in enumerate(m.get("tool_calls") or [], start=1)
        ]
        if m.get("function_call"):
            tool_calls.append(_tool_call(m["function_call"], f"{where} function_call"))
        weight = m.get("weight")
        if weight is not None:
            if isinstance(weight, bool) or weight not in (0, 1):
                raise RowError(f"{where} has weight {weight!r}; weight is 0 or 1")
            if role != "assistant":
                raise RowError(f"{where} ({role}) has a weight; only assistant turns take one")
        name = m.get("name")
        tool_call_id = m.get("tool_call_id")
        if role == "tool":
            if name is None and tool_call_id is not None:
                name = calls.get(str(tool_call_id))
        elif name is not None:
            ignored.add(f"{key}[].name (a participant's name, which chat templates do not show)")
            name = None
        for c in tool_calls:
            if c.id is not None:
                calls[c.id] = c.name
        turns.append(
            Message(
                role,
                _content(m.get("content"), where),
                tuple(tool_calls),
                trained=weight != 0,
                name=None if name is None else str(name),
                tool_call_id=None if tool_call_id is None else str(tool_call_id),
            )
        )
    return turns


def _checked(turns: list[Message], key: str) -> list[Message]:
    why = check_turns(turns)
    if why is not None:
        raise RowError(f"field '{key}': {why}")
    return turns


def _conversation(
    row: Mapping[str, Any],
    index: int,
    turns: list[Message],
    tools: str | None,
    ignored: set[str],
) -> Example:
    meta: dict[str, Any] = {k: v for k, v in row.items() if k in META_COLUMNS}
    if ignored:
        meta[IGNORED] = sorted(ignored)
    return conversation_example(
        _row_id(row, index), turns, score=_score(row.get("score")), meta=meta, tools=tools
    )


def _row_id(row: Mapping[str, Any], index: int) -> str:
    return str(row["id"]) if row.get("id") is not None else str(index)


def from_messages(row: Mapping[str, Any], index: int) -> Example:
    """Conversations as OpenAI's chat fine-tuning files, TRL and the chat templates take them:
    ``{"messages": [{"role", "content", ...}, ...], "tools": [...]}`` (see :func:`_openai_turns`;
    the legacy top-level ``functions`` are tools too)."""
    _refuse_non_text(row)
    ignored: set[str] = set()
    turns = _checked(_openai_turns(row.get("messages"), "messages", ignored), "messages")
    tools = _tools(row.get("tools"))
    if row.get("functions"):
        legacy = _tools(row["functions"], "field 'functions'")
        tools = json.dumps(
            [*json.loads(tools or "[]"), *json.loads(legacy or "[]")], ensure_ascii=False
        )
    return _conversation(row, index, turns, tools, ignored)


def _user_text(instruction: str, input: str) -> str:
    """LLaMA-Factory's user turn of an Alpaca row: ``instruction\ninput`` (its data README)."""
    return f"{instruction}\n{input}" if input.strip() else instruction


def from_alpaca(row: Mapping[str, Any], index: int) -> Example:
    """Alpaca triplet ``{instruction, input, output}`` (+ optional ``id``, ``score``), with
    LLaMA-Factory's optional ``system`` prompt, ``history`` (``[[user, assistant], ...]`` turns
    before it, trained too, as LLaMA-Factory trains them) and ``tools``.

    A row with a system prompt, history or tools is the conversation they describe (train it
    with ``prompt=chat``); the others are plain triplets. Without an ``id`` the row's position in
    the source is its id, as in the Phased IFT authors' score files (their id "46229" is row
    46229 of ``alpaca_data.json``).
    """
    if row.get("messages") is not None:  # a conversation written back by score.py
        return from_messages(row, index)
    _refuse_non_text(row)
    instruction, input = _text(row, "instruction"), _text(row, "input", required=False)
    output = _text(row, "output")
    system = _text(row, "system", required=False)
    history = row.get("history") or []
    tools = _tools(row.get("tools"))
    if system.strip() or history or tools:
        if not isinstance(history, list) or not all(
            isinstance(h, list | tuple) and len(h) == 2 and all(isinstance(x, str) for x in h)
            for h in history
        ):
            raise RowError("field 'history' must be a list of [user, assistant] string pairs")
        turns = [Message("system", system)] if system.strip() else []
        for user, assistant in history:
            turns += [Message("user", user), Message("assistant", assistant)]
        turns += [Message("user", _user_text(instruction, input)), Message("assistant", output)]
        return _conversation(row, index, _checked(turns, "history"), tools, set())
    return Example(
        id=_row_id(row, index),
        instruction=instruction,
        input=input,
        output=output,
        score=_score(row.get("score")),
        meta={k: v for k, v in row.items() if k not in ALPACA_COLUMNS},
    )


def from_phasedsft_scored(row: Mapping[str, Any], index: int) -> Example:
    """The authors' scored format: ``{"id", "score", "data": [prompt, output]}``."""
    data = row.get("data")
    if not isinstance(data, list) or len(data) != 2 or not all(isinstance(x, str) for x in data):
        raise RowError("field 'data' must be a list [prompt, output] of two strings")
    if row.get("id") is None:
        raise RowError("missing field 'id'")
    score = _score(row.get("score"))
    if score is None:
        raise RowError("missing field 'score'")
    return Example(id=str(row["id"]), instruction=data[0], input="", output=data[1], score=score)


def from_lima(row: Mapping[str, Any], index: int) -> Example:
    """LIMA: ``{"conversations": [user, assistant, ...]}``; the first exchange is used."""
    conv = row.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2 or not all(isinstance(x, str) for x in conv):
        raise RowError("field 'conversations' must be a list of at least two strings")
    meta = {"turns": len(conv)}
    if row.get("source") is not None:
        meta["source"] = row["source"]
    return Example(
        id=str(row["id"]) if row.get("id") is not None else str(index),
        instruction=conv[0],
        input="",
        output=conv[1],
        meta=meta,
    )


# LLaMA-Factory's ShareGPT tags (its data README): human / observation at odd positions,
# gpt / function_call at even ones; a function_call's value is the JSON of one call
# {"name", "arguments"} (or a list of them), an observation's the tool's result.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "observation": "tool",
    "function_call": "assistant",
}
SHAREGPT_TURN_KEYS = frozenset({"from", "value"})


def _sharegpt_turns(value: Any, key: str, ignored: set[str]) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise RowError(f"field '{key}' must be a non-empty list of turns")
    turns: list[Message] = []
    for i, t in enumerate(value, start=1):
        where = f"{key} turn {i}"
        if not isinstance(t, Mapping) or "from" not in t or "value" not in t:
            raise RowError(f"{where} must be an object with 'from' and 'value'")
        ignored.update(f"{key}[].{k}" for k in t if k not in SHAREGPT_TURN_KEYS)
        tag = str(t["from"])
        if tag not in SHAREGPT_ROLES:
            raise RowError(
                f"{where} is from '{tag}'; ShareGPT tags are {', '.join(SHAREGPT_ROLES)}"
            )
        if not isinstance(t["value"], str):
            raise RowError(f"{where} has a value of type {type(t['value']).__name__}, not a string")
        if tag == "function_call":
            calls = _json_value(t["value"], f"{where} (function_call)")
            calls = calls if isinstance(calls, list) else [calls]
            tool_calls = tuple(_tool_call(c, f"{where} call {j}") for j, c in enumerate(calls, 1))
            turns.append(Message("assistant", "", tool_calls))
        elif tag == "observation":
            prev = turns[-1] if turns else None
            name = None
            if prev is not None and len(prev.tool_calls) == 1:
                name = prev.tool_calls[0].name
            turns.append(Message("tool", t["value"], name=name))
        else:
            turns.append(Message(SHAREGPT_ROLES[tag], t["value"]))
    return turns


def from_sharegpt(row: Mapping[str, Any], index: int) -> Example:
    """ShareGPT as LLaMA-Factory reads it (FastChat's is the plain case): ``{"conversations":
    [{"from": "human"|"gpt"|"function_call"|"observation"|"system", "value"}, ...]}`` with an
    optional ``system`` prompt and ``tools`` (JSON text or a list of definitions)."""
    _refuse_non_text(row)
    ignored: set[str] = set()
    turns = _sharegpt_turns(row.get("conversations"), "conversations", ignored)
    system = row.get("system")
    if system is not None and str(system).strip():
        if turns[0].role == "system":
            raise RowError("both a 'system' field and a system turn")
        turns = [Message("system", _text(row, "system")), *turns]
    return _conversation(
        row, index, _checked(turns, "conversations"), _tools(row.get("tools")), ignored
    )


def from_prompt_completion(row: Mapping[str, Any], index: int) -> Example:
    """TRL's prompt-completion layout: ``{"prompt": str, "completion": str}``, or each a list
    of messages (conversational prompt-completion, optional ``tools``). As TRL trains it, the
    loss is on the completion only: assistant turns inside the prompt are context."""
    _refuse_non_text(row)
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):
        if not isinstance(prompt, list) or not isinstance(completion, list):
            raise RowError("'prompt' and 'completion' must both be strings or both message lists")
        if not prompt or not completion:
            raise RowError("'prompt' and 'completion' must not be empty lists")
        ignored: set[str] = set()
        context = [
            Message(m.role, m.content, m.tool_calls, False, m.name, m.tool_call_id)
            if m.role == "assistant"
            else m
            for m in _openai_turns(prompt, "prompt", ignored)
        ]
        turns = [*context, *_openai_turns(completion, "completion", ignored)]
        return _conversation(
            row, index, _checked(turns, "prompt + completion"), _tools(row.get("tools")), ignored
        )
    return Example(
        id=_row_id(row, index),
        instruction=_text(row, "prompt"),
        input="",
        output=_text(row, "completion"),
        score=_score(row.get("score")),
        meta={k: v for k, v in row.items() if k not in PROMPT_COMPLETION_COLUMNS},
    )


# Each format's columns (score.py's write-back included); any other column is kept as metadata
# (eval categories can read it) and reported as not used for training.
ALPACA_COLUMNS = frozenset(
    {"id", "instruction", "input", "output", "score", "system", "history", "tools", "messages"}
    | {"score_detail", *NON_TEXT_COLUMNS}
)
MESSAGES_COLUMNS = frozenset(
    {"id", "messages", "tools", "functions", "parallel_tool_calls", "score", *NON_TEXT_COLUMNS}
)
PROMPT_COMPLETION_COLUMNS = frozenset(
    {"id", "prompt", "completion", "tools", "score", *NON_TEXT_COLUMNS}
)
FORMAT_COLUMNS: dict[str, frozenset[str]] = {
    "alpaca": ALPACA_COLUMNS | MESSAGES_COLUMNS,
    "phasedsft_scored": frozenset({"id", "score", "data"}),
    "lima": frozenset({"id", "conversations"}),
    "messages": MESSAGES_COLUMNS,
    "sharegpt": frozenset({"id", "conversations", "system", "tools", "score", *NON_TEXT_COLUMNS}),
    "prompt_completion": PROMPT_COMPLETION_COLUMNS,
}


FORMATS: dict[str, Callable[[Mapping[str, Any], int], Example]] = {
    "alpaca": from_alpaca,
    "phasedsft_scored": from_phasedsft_scored,
    "lima": from_lima,
    "messages": from_messages,
    "sharegpt": from_sharegpt,
    "prompt_completion": from_prompt_completion,
}


def renamed(row: Mapping[str, Any], columns: Mapping[str, str] | None) -> Mapping[str, Any]:
    """``row`` with each field read from the column ``columns`` maps it to (e.g.
    ``{"instruction": "question", "output": "answer"}``); unmapped fields keep their names."""
    if not columns:
        return row
    missing = [f"'{c}' (dataset.source.columns.{f})" for f, c in columns.items() if c not in row]
    if missing:
        raise RowError(f"missing column {', '.join(missing)}")
    sources = set(columns.values())
    out = {k: v for k, v in row.items() if k not in sources and k not in columns}
    out.update({field: row[col] for field, col in columns.items()})
    return out


def _converter(fmt: str) -> Callable[[Mapping[str, Any], int], Example]:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise DataError(f"unknown data format '{fmt}'; known formats: {sorted(FORMATS)}") from None


# ---------------------------------------------------------------- readers


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "re-encode the file as UTF-8"
        ) from None


def _read_json_array(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, element)`` for each element of a top-level JSON array, with its line."""
    text = _decode(path.read_bytes(), path)
    decoder = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if not text[i:].startswith("["):
        raise DataError(
            f"{path}:1: expected a JSON list of records (use format jsonl for one record per line)"
        )
    i += 1
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n:
            raise DataError(f"{path}: the JSON list is not closed with ']'")
        if text[i] == "]":
            return
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        yield f"{path}:{text.count(chr(10), 0, i) + 1}", obj
        i = end


def _read_jsonl(path: Path, report: SkipReport, on_error: str) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                _fail(report, on_error, where, f"not valid UTF-8 (byte 0x{raw[e.start]:02x})")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                _fail(report, on_error, where, f"invalid JSON: {e.msg} (column {e.colno})")
                continue
            yield where, obj


def _fail(report: SkipReport, on_error: str, where: str, reason: str) -> None:
    if on_error == "raise":
        hint = (
            " (to skip and count bad rows: dataset.source.on_error=skip for train.py, score.py "
            "and segment.py; eval_sets.<name>.source.on_error=skip for evaluate.py)"
        )
        raise DataError(f"{where}: {reason}{hint}", reason=f"{where}: {reason}")
    report.add(where, reason)
    log.warning("skipping %s: %s", where, reason)


def _convert_rows(
    rows: Iterator[tuple[str, Any]],
    fmt: str,
    source: str,
    report: SkipReport,
    on_error: str,
    require_output: bool = True,
    score_range: Sequence[float] | None = DEFAULT_SCORE_RANGE,
    columns: Mapping[str, str] | None = None,
) -> Loaded:
    """Convert and check rows; ``require_output=False`` for test sets (answers come later).

    A score outside ``score_range`` (``[low, high]``; ``None``: any finite number) is a bad row.
    """
    if on_error not in ("raise", "skip"):
        raise DataError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if score_range is not None and (len(score_range) != 2 or score_range[0] > score_range[1]):
        raise DataError(f"score_range must be [low, high], got {list(score_range)}")
    convert = _converter(fmt)
    known = FORMAT_COLUMNS.get(fmt)  # None: a test set's own layout (evaluate.sets), not reported
    reported = None if known is None else known | META_COLUMNS
    # once, not per row: a Hydra ListConfig's item access costs more than converting the row
    bounds = None if score_range is None else (float(score_range[0]), float(score_range[1]))
    unused: Counter[str] = Counter()
    examples: list[Example] = []
    seen: dict[str, str] = {}
    notes: dict[str, int] = {}
    # no cyclic GC while the records pile up: each full collection would rescan every record
    # kept so far (a quarter of the loading time at 1M rows); they hold no reference cycles
    with paused_gc():
        for index, (where, row) in enumerate(rows):
            if not isinstance(row, Mapping):
                _fail(report, on_error, where, f"record is a {type(row).__name__}, not an object")
                continue
            try:
                row = renamed(row, columns)
                ex = convert(row, index)
            except RowError as e:
                _fail(report, on_error, where, str(e))
                continue
            if bounds is not None and ex.score is not None:
                low, high = bounds
                if not low <= ex.score <= high:
                    _fail(
                        report, on_error, where,
                        f"score {ex.score:g} is outside the scale {low:g}-{high:g} (dataset.source.score_range)",
                    )  # fmt: skip
                    continue
            if require_output and not ex.output.strip():
                _fail(report, on_error, where, "empty output")
                continue
            if not ex.instruction.strip():
                _fail(report, on_error, where, "empty instruction")
                continue
            if ex.id in seen:
                _fail(
                    report, on_error, where, f"duplicate id '{ex.id}' (first seen at {seen[ex.id]})"
                )
                continue
            seen[ex.id] = where
            if reported is not None:
                unused.update(k for k in row if k not in reported and row[k] not in (None, ""))
            unused.update(ex.meta.pop(IGNORED, ()))
            if ex.meta.get("turns", 2) > 2:
                note = (
                    "multi_turn_conversations" if ex.messages else "multi_turn_first_exchange_only"
                )
                notes[note] = notes.get(note, 0) + 1
            examples.append(ex)
    if not examples:
        raise DataError(f"{source}: no usable examples ({report.count} skipped)")
    if report.count:
        log.warning(
            "%s: skipped %d bad rows (each named above; listed under data.skipped_rows in "
            "run.json by train.py, in summary.json by segment.py)",
            source,
            report.count,
        )
    if unused:
        log.warning(
            "%s: not used for training (kept as metadata where a column): %s; listed under "
            "data.unused_fields in run.json (summary.json for score.py and segment.py)",
            source,
            ", ".join(f"{k} ({n} rows)" for k, n in sorted(unused.items())),
        )
    return Loaded(examples, report, notes, dict(sorted(unused.items())))


# ---------------------------------------------------------------- public loaders


def _existing(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data file not found: {p} (set dataset.source.path)")
    return p


def load_json(
    path: str,
    format: str = "alpaca",
    on_error: str = "raise",
    score_range: Sequence[float] | None = DEFAULT_SCORE_RANGE,
) -> Loaded:
    """A JSON list of records, e.g. Alpaca's ``alpaca_data.json``."""
    p = _existing(path)
    report = SkipReport(str(p))
    return _convert_rows(_read_json_array(p), format, str(p), report, on_error, True, score_range)


def load_jsonl(
    path: str,
    format: str = "alpaca",
    on_error: str = "raise",
    score_range: Sequence[float] | None = DEFAULT_SCORE_RANGE,
) -> Loaded:
    """One JSON record per line (our own scored output, the authors' score files...)."""
    p = _existing(path)
    report = SkipReport(str(p))
    rows = _read_jsonl(p, report, on_error)
    return _convert_rows(rows, format, str(p), report, on_error, True, score_range)


def load_hub(
    path: str,
    split: str = "train",
    format: str = "alpaca",
    name: str | None = None,
    revision: str | None = None,
    on_error: str = "raise",
    require_output: bool = True,
    score_range: Sequence[float] | None = DEFAULT_SCORE_RANGE,
    columns: Mapping[str, str] | None = None,
) -> Loaded:
    """A Hugging Face ``datasets`` dataset, by hub id (``tatsu-lab/alpaca``) or local path."""
    import datasets

    try:
        ds = datasets.load_dataset(path, name=name, split=split, revision=revision)
    except Exception as e:  # datasets raises many types: name the dataset in plain words
        raise DataError(
            f"could not load dataset '{path}' (split '{split}'): {type(e).__name__}: {e}. "
            "Without internet, download it once elsewhere and point dataset.source.path at the copy."
        ) from e
    source = f"{path}[{split}]"
    report = SkipReport(source)
    rows = ((f"{source} row {i}", row) for i, row in enumerate(ds))
    return _convert_rows(
        rows, format, source, report, on_error, require_output, score_range, columns
    )


FILE_KINDS = (".json", ".jsonl", ".parquet", ".csv")


def _read_csv(path: Path) -> Iterator[tuple[str, Any]]:
    """Rows of a CSV file with a header, every value a string (as written), with its line."""
    import csv

    text = _decode(path.read_bytes(), path)
    reader = csv.DictReader(text.splitlines(keepends=True))
    start = 2
    try:
        for row in reader:
            if None in row:  # more values than the header has names
                raise DataError(f"{path}:{start}: more values than columns in the header")
            yield f"{path}:{start}", {k: (v if v != "" else None) for k, v in row.items()}
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV: {e}") from None


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's errors name no file: say which and why
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    i = 0
    for batch in table.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            yield f"{path} row {i}", row
            i += 1


def _file_rows(p: Path, report: SkipReport, on_error: str) -> Iterator[tuple[str, Any]]:
    suffix = p.suffix.lower()
    if suffix == ".json":  # a JSON list, or (as the hub often names them) JSON lines
        with open(p, "rb") as f:
            head = f.read(4096).lstrip()
        if head.startswith(b"["):
            return _read_json_array(p)
        return _read_jsonl(p, report, on_error)
    if suffix == ".jsonl":
        return _read_jsonl(p, report, on_error)
    if suffix == ".parquet":
        return _read_parquet(p)
    if suffix == ".csv":
        return _read_csv(p)
    raise DataError(f"{p}: unknown data file type '{p.suffix}'; expected one of {FILE_KINDS}")


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or path.lower().endswith(FILE_KINDS)


def load_data(
    path: str,
    format: str = "alpaca",
    columns: Mapping[str, str] | None = None,
    split: str = "train",
    name: str | None = None,
    revision: str | None = None,
    on_error: str = "raise",
    require_output: bool = True,
    score_range: Sequence[float] | None = DEFAULT_SCORE_RANGE,
) -> Loaded:
    """Records in ``format`` from wherever they are: a local ``.json`` / ``.jsonl`` /
    ``.parquet`` / ``.csv`` file, a local dataset directory, or a hub id (``datasets``).

    ``columns`` maps the format's field names to the data's column names.
    """
    p = Path(path).expanduser()
    if p.is_file():
        report = SkipReport(str(p))
        rows = _file_rows(p, report, on_error)
        return _convert_rows(
            rows, format, str(p), report, on_error, require_output, score_range, columns
        )
    if not p.exists() and _looks_local(path):
        raise DataError(f"data file not found: {p} (set dataset.source.path)")
    return load_hub(
        path, split, format, name, revision, on_error, require_output, score_range, columns
    )
