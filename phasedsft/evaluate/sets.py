"""The instruction test sets, each read in its original field layout.

| set            | items | layout                                    | category keys        |
| -------------- | ----- | ----------------------------------------- | -------------------- |
| Self-Instruct  | 252   | ``instruction`` + ``instances[0].input``  | ``motivation_app``   |
| WizardLM       | 218   | ``Instruction``                           | ``Skill``, ``Difficulty`` |
| Koala          | 180   | ``prompt``                                |                      |
| Vicuna         | 80    | ``text``                                  | ``category``         |
| OASST          | 188   | ``instruction`` + ``input``               |                      |
| Anthropic      | 129   | ``instruction`` + ``input``               |                      |
| LIMA           | 300   | ``conversations`` (string or list)        |                      |

Items become :class:`~phasedsft.records.Example` records whose ``output`` is the
reference answer when the set has one (Self-Instruct does), else empty; category fields
go to ``meta``. Errors name the file and line, as for training data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phasedsft.data.loaders import (
    FORMATS,
    Loaded,
    RowError,
    _convert_rows,
    _read_json_array,
    _read_jsonl,
    _text,
    load_hub,
)
from phasedsft.records import DataError, Example, SkipReport


def _id(row: Mapping[str, Any], key: str, index: int) -> str:
    return str(row[key]) if row.get(key) is not None else str(index)


def _meta(row: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: row[k] for k in keys if row.get(k) is not None}


def from_koala(row: Mapping[str, Any], index: int) -> Example:
    return Example(_id(row, "id", index), _text(row, "prompt"), "", "")


def from_self_instruct(row: Mapping[str, Any], index: int) -> Example:
    instances = row.get("instances")
    if not isinstance(instances, list) or not instances or not isinstance(instances[0], Mapping):
        raise RowError("field 'instances' must be a non-empty list of {input, output} objects")
    first = instances[0]
    return Example(
        _id(row, "id", index),
        _text(row, "instruction"),
        _text(first, "input", required=False),
        _text(first, "output", required=False),
        meta=_meta(row, ("motivation_app",)),
    )


def from_vicuna(row: Mapping[str, Any], index: int) -> Example:
    return Example(
        _id(row, "question_id", index), _text(row, "text"), "", "", meta=_meta(row, ("category",))
    )


def from_wizardlm(row: Mapping[str, Any], index: int) -> Example:
    return Example(
        _id(row, "idx", index),
        _text(row, "Instruction"),
        "",
        "",
        meta=_meta(row, ("Skill", "Difficulty")),
    )


def from_instruction_input(row: Mapping[str, Any], index: int) -> Example:
    """OASST / Anthropic test sets: ``instruction`` (+ optional ``input``, reference ``output``)."""
    return Example(
        _id(row, "id", index),
        _text(row, "instruction"),
        _text(row, "input", required=False),
        _text(row, "output", required=False),
        meta=_meta(row, ("category", "source")),
    )


def from_lima_test(row: Mapping[str, Any], index: int) -> Example:
    """LIMA's test file holds the prompt as a string; the training file as a list of turns."""
    conv = row.get("conversations")
    if isinstance(conv, list) and conv and isinstance(conv[0], str):
        prompt = conv[0]
    elif isinstance(conv, str):
        prompt = conv
    else:
        raise RowError("field 'conversations' must be a string or a list of strings")
    return Example(_id(row, "id", index), prompt, "", "", meta=_meta(row, ("source",)))


EVAL_FORMATS = {
    "koala": from_koala,
    "self_instruct": from_self_instruct,
    "vicuna": from_vicuna,
    "wizardlm": from_wizardlm,
    "instruction_input": from_instruction_input,
    "lima_test": from_lima_test,
}
FORMATS.update(EVAL_FORMATS)


def load_eval_set(
    path: str,
    format: str,
    split: str = "test",
    on_error: str = "raise",
) -> Loaded:
    """A test set from a local ``.jsonl`` / ``.json`` file, or a hub dataset id."""
    if format not in FORMATS:
        raise DataError(f"unknown eval set format '{format}'; known: {sorted(EVAL_FORMATS)}")
    p = Path(path).expanduser()
    if p.is_file():
        report = SkipReport(str(p))
        rows = _read_jsonl(p, report, on_error) if p.suffix == ".jsonl" else _read_json_array(p)
        return _convert_rows(rows, format, str(p), report, on_error, require_output=False)
    if p.suffix in (".json", ".jsonl") or path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise DataError(
            f"eval set file not found: {p}. Download the test sets (see README, 'Evaluation') and set "
            "eval_data_dir, or point eval_sets.<name>.source.path at the file or a hub dataset id"
        )
    return load_hub(path, split=split, format=format, on_error=on_error, require_output=False)


@dataclass
class EvalSet:
    """A named test set, ready for generation."""

    name: str
    items: list[Example]
    categories: list[str] = field(default_factory=list)
    # answer lengths for this set (max_new_tokens / max_length; see evaluation.generation)
    generation: dict[str, Any] = field(default_factory=dict)

    @property
    def has_references(self) -> bool:
        return all(ex.output.strip() for ex in self.items)

    def category(self, ex: Example) -> dict[str, Any]:
        return {k: ex.meta[k] for k in self.categories if k in ex.meta}


def build_eval_set(
    name: str,
    loaded: Loaded,
    categories: list[str],
    max_items: int | None = None,
    generation: Mapping[str, Any] | None = None,
) -> EvalSet:
    items = loaded.examples[:max_items] if max_items else loaded.examples
    unknown = [c for c in categories if not any(c in ex.meta for ex in items)]
    if unknown:
        raise DataError(
            f"eval_sets.{name}.categories: no item carries {unknown}; "
            f"fields seen: {sorted({k for ex in items for k in ex.meta})}"
        )
    return EvalSet(name, items, list(categories), dict(generation or {}))
