"""Answers files: what a generator is asked for, and the file it writes, saved and resumable.

:func:`answers_for` writes ``stage_<i>_<name>/generations/<set>.<key>.json`` with a
checkpoint's answers to a test set, rewritten atomically as answers come in; rerunning
continues after the last saved answer. The key hashes the generator's settings
(:meth:`Generator.identity`, with the set's :class:`Lengths`), the test set's content, the
prompt template and the weights' data order, so changing any of them writes a new file
instead of mixing answers. A backend (:mod:`.generation`, :mod:`.completions`) answers a
:class:`Pending` and nothing else.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from phasedsft.evaluate.runs import Checkpoint
from phasedsft.evaluate.sets import EvalSet
from phasedsft.io import atomic_write_json, sha256_json
from phasedsft.records import DataError, Example
from phasedsft.rundir import GENERATIONS_DIR

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # of the answers file (part of its key)
LENGTH_KEYS = ("max_new_tokens", "max_length")  # what a test set's ``generation`` node may set
DEFAULT_MAX_NEW_TOKENS = 512  # neither the generator nor the set gives a length


def _prompt_ids(ex: Example, template: Any, tokenizer: Any) -> list[int]:
    return list(template.split_ids(ex, tokenizer)[0])


def length_settings(settings: Any) -> dict[str, int | None]:
    """A test set's ``generation`` node, checked: only :data:`LENGTH_KEYS`, positive ints or null."""
    if settings is None:
        return {}
    out: dict[str, int | None] = {}
    for key, value in dict(settings).items():
        if key not in LENGTH_KEYS:
            raise DataError(
                f"unknown generation setting '{key}' for a test set; known: {list(LENGTH_KEYS)} "
                "(decoding settings belong to the generator: generator.temperature, ...)"
            )
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise DataError(f"generation.{key} must be a positive integer or null, not {value!r}")
        out[str(key)] = value
    return out


@dataclass(frozen=True)
class Lengths:
    """The effective answer lengths for one test set (see the module docstring)."""

    max_new_tokens: int | None = DEFAULT_MAX_NEW_TOKENS
    max_length: int | None = None  # prompt + answer tokens (transformers' max_length)

    def budget(self, prompt_tokens: int, context: int | None) -> int:
        """How many answer tokens a prompt of this length may get (at least 1, as transformers)."""
        caps = []
        if self.max_new_tokens is not None:
            caps.append(self.max_new_tokens)
        if self.max_length is not None:
            caps.append(max(1, self.max_length - prompt_tokens))
        if context is not None:
            caps.append(max(1, context - prompt_tokens))
        if not caps:
            raise DataError(
                "no answer length: set the test set's generation.max_new_tokens or max_length "
                "(the model does not say its context length)"
            )
        return min(caps)

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.max_length is not None:  # absent when unset: older answers files keep their key
            ident["max_length"] = self.max_length
        return ident


def lengths_of(settings: Any, generator: Any) -> Lengths:
    """A test set's lengths, where ``generator``'s ``max_new_tokens`` / ``max_length`` leave
    them open (module docstring)."""
    given = length_settings(settings)
    ours = {k: getattr(generator, k) for k in LENGTH_KEYS if getattr(generator, k) is not None}
    merged = {**given, **ours}
    if not given and not ours:
        return Lengths()  # nobody says: DEFAULT_MAX_NEW_TOKENS
    return Lengths(merged.get("max_new_tokens"), merged.get("max_length"))


@dataclass
class Prompt:
    """One test item as a generator sends it: the prompt ids and the answer's token budget."""

    ex: Example
    ids: list[int]  # as sent: the last tokens where the whole prompt does not fit the context
    full: int  # tokens of the whole prompt
    budget: int  # answer tokens at most

    def item(self, text: str) -> dict[str, Any]:
        """The answers file's record of this item (the same for every backend)."""
        return {
            "id": self.ex.id,
            "instruction": self.ex.instruction,
            "input": self.ex.input,
            "output": text,
            "prompt_tokens": len(self.ids),
            "prompt_truncated": len(self.ids) < self.full,
            "max_answer_tokens": self.budget,
        }


@dataclass
class Pending:
    """What :func:`answers_for` hands a generator: the items of one set still to answer."""

    ckpt: Checkpoint
    eval_set: str
    total: int  # items in the set
    items: list[Example]  # the ones without an answer yet, in the set's order
    template: Any  # the run's prompt template
    lengths: Lengths
    key: str  # the answers file's key
    done: dict[str, dict[str, Any]]  # answers so far by id: the generator adds to it
    save: Callable[[], None]  # rewrites the answers file (complete: false) from ``done``
    loaded: dict[str, Any] | None = None  # what stays loaded for the checkpoint's next set

    def prompts(self, tokenizer: Any, context: int | None, truncate: bool = True) -> list[Prompt]:
        """The items' prompts, longest first (similar lengths share a batch, memory peaks
        early). Where the prompt and the promised answer exceed the context, the prompt keeps
        its last tokens (``truncate``) and is flagged."""
        room = None if context is None else context - (self.lengths.max_new_tokens or 1)
        if room is not None and room < 8:
            raise DataError(
                f"max_new_tokens={self.lengths.max_new_tokens} leaves no room for a prompt in "
                f"{self.ckpt.label}'s context of {context} tokens"
            )
        out = []
        for ex in self.items:
            full = _prompt_ids(ex, self.template, tokenizer)
            ids = full[-room:] if truncate and room is not None and len(full) > room else full
            out.append(Prompt(ex, ids, len(full), self.lengths.budget(len(ids), context)))
        out.sort(key=lambda p: -p.full)
        return out


def kept_model(pending: Pending, load: Callable[[Path], tuple[Any, Any]]) -> tuple[Any, Any]:
    """The checkpoint's (model, tokenizer): loaded once and kept in ``pending.loaded`` for the
    checkpoint's next test set."""
    ckpt, loaded = pending.ckpt, pending.loaded
    if loaded is not None and loaded.get("dir") == ckpt.model_dir:
        return loaded["model"], loaded["tokenizer"]
    model, tokenizer = load(ckpt.model_dir)
    if loaded is not None:
        loaded.clear()
        loaded.update(dir=ckpt.model_dir, model=model, tokenizer=tokenizer)
    return model, tokenizer


class Generator(Protocol):
    """What :func:`answers_for` needs of a backend (HFGenerator, VLLMGenerator, OpenAIGenerator)."""

    def lengths(self, settings: Any) -> Lengths: ...

    def identity(self, lengths: Lengths | None = None) -> dict[str, Any]: ...

    def answer(self, pending: Pending) -> None: ...


@runtime_checkable
class Prepares(Protocol):
    """A generator with work to do once before its checkpoints (vLLM: check it is installed)."""

    def prepare(self, checkpoints: Sequence[Checkpoint]) -> None: ...


@runtime_checkable
class Releases(Protocol):
    """A generator that lets go of a checkpoint's model or server itself."""

    def release(self, loaded: dict[str, Any]) -> None: ...


def prepare(generator: Any, checkpoints: Sequence[Checkpoint]) -> None:
    """Run ``generator``'s :class:`Prepares` hook, if it has one."""
    if isinstance(generator, Prepares):
        generator.prepare(checkpoints)


def release(generator: Any, loaded: dict[str, Any]) -> None:
    """Let go of what ``generator`` kept for a checkpoint (its model, its server)."""
    if isinstance(generator, Releases):
        generator.release(loaded)
    else:
        loaded.clear()


@dataclass
class Answers:
    path: Path
    checkpoint: str
    eval_set: str
    items: list[dict[str, Any]] = field(default_factory=list)

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {it["id"]: it for it in self.items}


def set_hash(items: Sequence[Example]) -> str:
    return sha256_json([[ex.id, ex.instruction, ex.input] for ex in items])


def _answers_file(
    ckpt: Checkpoint, eval_set: EvalSet, generator: Generator, run_config: DictConfig
) -> tuple[Path, str, Lengths, Any]:
    """Where ``generator``'s answers of ``ckpt`` to ``eval_set`` go: (path, key, lengths,
    the prompt template's config)."""
    lengths = generator.lengths(eval_set.generation)
    template_cfg = OmegaConf.to_container(run_config.prompt, resolve=True)
    key = sha256_json(
        {
            "v": FORMAT_VERSION,
            "generator": generator.identity(lengths),
            "set": set_hash(eval_set.items),
            "template": template_cfg,
            "weights": ckpt.order_sha256,
        }
    )[:12]
    return ckpt.dir / GENERATIONS_DIR / f"{eval_set.name}.{key}.json", key, lengths, template_cfg


def read_answers(
    ckpt: Checkpoint, eval_set: EvalSet, generator: Generator, run_config: DictConfig
) -> Answers | None:
    """The checkpoint's complete answers to the set from this generator, or None."""
    path = _answers_file(ckpt, eval_set, generator, run_config)[0]
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if not saved.get("complete"):
        return None
    return Answers(path, ckpt.label, eval_set.name, saved["items"])


def answers_for(
    ckpt: Checkpoint,
    eval_set: EvalSet,
    generator: Generator,
    run_config: DictConfig,
    loaded: dict[str, Any] | None = None,
) -> Answers:
    """The checkpoint's answers to the set: read if complete, else generated (resuming).

    ``generator`` is applied with the set's own lengths (:meth:`HFGenerator.lengths`).
    ``loaded``: what the generator keeps for the checkpoint's next set (its model, its
    server); the caller lets go of it with the generator's ``release``.
    """
    path, key, lengths, template_cfg = _answers_file(ckpt, eval_set, generator, run_config)
    done: dict[str, dict[str, Any]] = {}
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("complete"):
            return Answers(path, ckpt.label, eval_set.name, saved["items"])
        done = {it["id"]: it for it in saved["items"]}
        log.info("%s: resuming %s after %d answers", ckpt.label, eval_set.name, len(done))

    header = {
        "version": FORMAT_VERSION,
        "key": key,
        "checkpoint": ckpt.label,
        "model_dir": str(ckpt.model_dir),
        "eval_set": eval_set.name,
        "eval_set_sha256": set_hash(eval_set.items),
        "generator": {**asdict(generator), **generator.identity(lengths)},  # type: ignore[call-overload]
        "prompt": template_cfg,
    }
    todo = [ex for ex in eval_set.items if ex.id not in done]
    if todo:
        started = time.time()

        def save() -> None:
            atomic_write_json(path, {**header, "complete": False, "items": list(done.values())})

        pending = Pending(
            ckpt,
            eval_set.name,
            len(eval_set.items),
            todo,
            instantiate(run_config.prompt),
            lengths,
            key,
            done,
            save,
            loaded,
        )
        generator.answer(pending)
        header["seconds"] = round(time.time() - started, 1)
    items = [done[ex.id] for ex in eval_set.items]
    truncated = sum(it["prompt_truncated"] for it in items)
    if truncated:
        log.warning(
            "%s / %s: %d prompts were longer than the context allows and kept their last tokens",
            ckpt.label,
            eval_set.name,
            truncated,
        )
    atomic_write_json(
        path, {**header, "complete": True, "prompts_truncated": truncated, "items": items}
    )
    return Answers(path, ckpt.label, eval_set.name, items)
