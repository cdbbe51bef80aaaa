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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phasedsft.records import (
    DataError,
    Example,
    SkipReport,
    Turn,
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


def from_alpaca(row: Mapping[str, Any], index: int) -> Example:
    """Alpaca triplet ``{instruction, input, output}`` (+ optional ``id``, ``score``).

    Without an ``id`` the row's position in the source is its id, as in the Phased IFT
    authors' score files (their id "46229" is row 46229 of ``alpaca_data.json``).
    """
    if row.get("messages") is not None:  # a conversation written back by score.py
        return from_messages(row, index)
    meta = {
        k: v for k, v in row.items() if k not in {"id", "instruction", "input", "output", "score"}
    }
    return Example(
        id=str(row["id"]) if row.get("id") is not None else str(index),
        instruction=_text(row, "instruction"),
        input=_text(row, "input", required=False),
        output=_text(row, "output"),
        score=_score(row.get("score")),
        meta=meta,
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


def _row_id(row: Mapping[str, Any], index: int) -> str:
    return str(row["id"]) if row.get("id") is not None else str(index)


def _turns(
    value: Any, key: str, role_key: str, content_key: str, roles: Mapping[str, str]
) -> list[Turn]:
    """Checked ``(role, content)`` turns from a list of objects; roles renamed by ``roles``."""
    if not isinstance(value, list) or not value:
        raise RowError(f"field '{key}' must be a non-empty list of turns")
    turns: list[Turn] = []
    for i, turn in enumerate(value, start=1):
        if not isinstance(turn, Mapping) or role_key not in turn or content_key not in turn:
            raise RowError(
                f"{key} turn {i} must be an object with '{role_key}' and '{content_key}'"
            )
        role = str(turn[role_key])
        turns.append((roles.get(role, role), turn[content_key]))
    why = check_turns(turns)
    if why is not None:
        raise RowError(f"field '{key}': {why}")
    return turns


def _conversation(row: Mapping[str, Any], index: int, turns: list[Turn]) -> Example:
    meta = {k: v for k, v in row.items() if k in {"source", "category"}}
    return conversation_example(
        _row_id(row, index), turns, score=_score(row.get("score")), meta=meta
    )


def from_messages(row: Mapping[str, Any], index: int) -> Example:
    """Conversations as TRL and the chat templates take them:
    ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``."""
    return _conversation(row, index, _turns(row.get("messages"), "messages", "role", "content", {}))


SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}


def from_sharegpt(row: Mapping[str, Any], index: int) -> Example:
    """ShareGPT (as LLaMA-Factory and FastChat read it): ``{"conversations": [{"from": "human"|
    "gpt"|"system", "value": ...}, ...]}``, optionally with a ``"system"`` string."""
    turns = _turns(row.get("conversations"), "conversations", "from", "value", SHAREGPT_ROLES)
    system = row.get("system")
    if system is not None and str(system).strip():
        if turns[0][0] == "system":
            raise RowError("both a 'system' field and a system turn")
        turns = [("system", _text(row, "system")), *turns]
    return _conversation(row, index, turns)


def from_prompt_completion(row: Mapping[str, Any], index: int) -> Example:
    """TRL's prompt-completion layout: ``{"prompt": str, "completion": str}``, or each a list
    of ``{"role", "content"}`` messages (conversational prompt-completion)."""
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list) or isinstance(completion, list):
        if not isinstance(prompt, list) or not isinstance(completion, list):
            raise RowError("'prompt' and 'completion' must both be strings or both message lists")
        if not prompt or not completion:
            raise RowError("'prompt' and 'completion' must not be empty lists")
        turns = _turns(prompt + completion, "prompt + completion", "role", "content", {})
        return _conversation(row, index, turns)
    meta = {k: v for k, v in row.items() if k not in {"id", "prompt", "completion", "score"}}
    return Example(
        id=_row_id(row, index),
        instruction=_text(row, "prompt"),
        input="",
        output=_text(row, "completion"),
        score=_score(row.get("score")),
        meta=meta,
    )


FORMATS: dict[str, Callable[[Mapping[str, Any], int], Example]] = {
    "alpaca": from_alpaca,
    "phasedsft_scored": from_phasedsft_scored,
    "lima": from_lima,
    "messages": from_messages,
    "sharegpt": from_sharegpt,
    "prompt_completion": from_prompt_completion,
}


def with_columns(
    convert: Callable[[Mapping[str, Any], int], Example], columns: Mapping[str, str] | None
) -> Callable[[Mapping[str, Any], int], Example]:
    """``convert`` reading each field from the column ``columns`` maps it to (e.g.
    ``{"instruction": "question", "output": "answer"}``); unmapped fields keep their names."""
    if not columns:
        return convert
    mapping = dict(columns)

    def renamed(row: Mapping[str, Any], index: int) -> Example:
        missing = [
            f"'{c}' (dataset.source.columns.{f})" for f, c in mapping.items() if c not in row
        ]
        if missing:
            raise RowError(f"missing column {', '.join(missing)}")
        sources = set(mapping.values())
        out = {k: v for k, v in row.items() if k not in sources and k not in mapping}
        out.update({field: row[col] for field, col in mapping.items()})
        return convert(out, index)

    return renamed


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
    convert = with_columns(_converter(fmt), columns)
    examples: list[Example] = []
    seen: dict[str, str] = {}
    notes: dict[str, int] = {}
    for index, (where, row) in enumerate(rows):
        if not isinstance(row, Mapping):
            _fail(report, on_error, where, f"record is a {type(row).__name__}, not an object")
            continue
        try:
            ex = convert(row, index)
        except RowError as e:
            _fail(report, on_error, where, str(e))
            continue
        if score_range is not None and ex.score is not None:
            low, high = float(score_range[0]), float(score_range[1])
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
            _fail(report, on_error, where, f"duplicate id '{ex.id}' (first seen at {seen[ex.id]})")
            continue
        seen[ex.id] = where
        if ex.meta.get("turns", 2) > 2:
            note = "multi_turn_conversations" if ex.messages else "multi_turn_first_exchange_only"
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
    return Loaded(examples, report, notes)


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
