"""Answers to a test set from any checkpoint a training run wrote, saved and resumable.

A training run directory holds one ``stage_<i>_<name>/model`` per finished stage (see
:mod:`phasedsft.train.run`); :func:`discover_runs` finds them, and :func:`answers_for` writes
``stage_<i>_<name>/generations/<set>.<key>.json`` with the answers, using the run's own
prompt template and the tokenizer saved beside the weights. The file is rewritten
atomically as answers come in; rerunning continues after the last saved answer. The key
hashes the generator's settings, the test set's content and the weights' data order, so
changing any of them writes a new file instead of mixing answers.

Backends (``generator`` config group), all writing the same answers file:

* :class:`HFGenerator` (``hf``): transformers, batched with left padding, greedy by default;
  the file is rewritten every ``save_every`` batches.
* :class:`VLLMGenerator` (``vllm``, ``pip install phasedsft[vllm]``): vLLM offline inference.
  Each checkpoint generates in its own process (``own_process``, :func:`answers_in_own_process`:
  ``python -m phasedsft.evaluate.generation <spec>``), so one checkpoint's engine and GPU
  memory are gone before the next one loads; the answers come back through the answers file.
* :class:`OpenAIGenerator` (``openai``): any OpenAI-compatible server (``vllm serve``, SGLang,
  TGI, llama.cpp). The prompt token ids the run's template gives (what ``hf`` feeds the model)
  go to ``/v1/completions``; the server is given per checkpoint (``base_url``, ``base_urls``)
  or started for each checkpoint from ``command`` and stopped after it, with everything it
  started (:class:`ProcessGroup`). Requests run through :mod:`phasedsft.llm` as the judge's do:
  ``concurrency`` in flight, retries, and every answer recorded in
  ``generations/requests.sqlite`` the moment it arrives, so a killed run asks none again.

**Answer length belongs to the test set.** Each set's ``generation`` node
(``eval_sets.<name>.generation``) sets ``max_new_tokens`` (answer tokens) and / or
``max_length`` (prompt + answer tokens, the authors' semantics: their answers come from
``model.generate(input_ids, max_length=1024)`` one prompt at a time, greedy, with nothing
else set - xubuvd/PhasedSFT generation/generation_v2.py:148-151). Where both are set, the
answer stops at whichever comes first; ``null`` means no limit of that kind (the model's
context still applies). Precedence, per key: a non-null ``generator.max_new_tokens`` /
``generator.max_length`` (a command-line override for every set) > the set's ``generation``
> :data:`DEFAULT_MAX_NEW_TOKENS` when neither says anything. The effective values are part
of the answers file's key, so changing them generates anew.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import pickle
import shlex
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Protocol, runtime_checkable

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from phasedsft.checksums import require_verified
from phasedsft.config import (
    NON_SEMANTIC_KEYS,
    NON_SEMANTIC_SCORER_KEYS,
    current_target,
    with_first_targets,
    without_neutral_options,
)
from phasedsft.evaluate.sets import EvalSet
from phasedsft.io import atomic_write_json, sha256_json
from phasedsft.llm.cache import Result, ScoreCache
from phasedsft.llm.endpoint import ChatEndpoint, Rejected, Tally
from phasedsft.llm.engine import Job, RequestsAborted
from phasedsft.prompts import pad_batch
from phasedsft.records import DataError, Example

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
# Parts of a training run's saved config left out of its identity (what makes runs comparable):
# the ordering (what a sweep compares), in-run evaluation (eval, judge) and what does not change
# the weights (NON_SEMANTIC_KEYS; the scorer's spending settings; trainer bookkeeping).
IDENTITY_SKIP = (*NON_SEMANTIC_KEYS, "ordering", "eval", "judge")
TRAINER_BOOKKEEPING_KEYS = (
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "keep_checkpoints",
    "dataloader_num_workers",
    "per_device_eval_batch_size",
)
LENGTH_KEYS = ("max_new_tokens", "max_length")  # what a test set's ``generation`` node may set
DEFAULT_MAX_NEW_TOKENS = 512  # neither the generator nor the set gives a length


# ------------------------------------------------------------------ runs and their checkpoints


@dataclass
class Checkpoint:
    run: str  # run directory name
    index: int  # 1-based stage position
    stage: str  # stage name (difficulty-2, random-1, all, ...)
    n_stages: int
    dir: Path  # stage directory
    order_sha256: str  # the data order the weights were trained on

    @property
    def model_dir(self) -> Path:
        """The stage's weights, checked against their manifest the first time this process
        asks (``error: <dir>: <file> does not match its manifest ...`` if they do not)."""
        model_dir = self.dir / "model"
        if model_dir.is_dir():
            require_verified(model_dir, self.dir, once=True)
        return model_dir

    @property
    def final(self) -> bool:
        return self.index == self.n_stages

    @property
    def label(self) -> str:
        return f"{self.run}/stage_{self.index}_{self.stage}"


@dataclass
class Run:
    dir: Path
    config: DictConfig
    checkpoints: list[Checkpoint]

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def ordering(self) -> str:
        return str(self.config.ordering.name)

    @property
    def group(self) -> tuple[str, str, int]:
        """(dataset name, model name, seed): the readable part of :attr:`identity`."""
        return (str(self.config.dataset.name), str(self.config.model.name), int(self.config.seed))

    @property
    def identity(self) -> dict[str, Any]:
        """What makes runs comparable: the whole saved config but the ordering (IDENTITY_SKIP).

        The data (the whole ``dataset`` node: source, ``max_examples``, ``subsample_seed``),
        the model, the seed, the prompt template, the trainer's hyper-parameters, and the
        scorer and segmentation as configured.
        """
        ident = with_first_targets(OmegaConf.to_container(self.config, resolve=True))
        assert isinstance(ident, dict)
        without_neutral_options(ident)  # a run saved before an option existed compares the same
        for key in IDENTITY_SKIP:
            ident.pop(key, None)
        if isinstance(ident.get("scorer"), dict):
            for key in NON_SEMANTIC_SCORER_KEYS:
                ident["scorer"].pop(key, None)
        if isinstance(ident.get("trainer"), dict):
            for key in TRAINER_BOOKKEEPING_KEYS:
                ident["trainer"].pop(key, None)
        return {str(k): v for k, v in ident.items()}

    @property
    def unused(self) -> tuple[str, ...]:
        """Parts of the identity (dotted keys) this run's ordering does not read: a one-off run
        trains on the data as it is, so its scorer and segmentation settings do not change its
        weights; an ordering of one phase has no stage to replay or to continue a schedule from,
        so replay and the stage policy change nothing either."""
        target = self.config.ordering.get("_target_")
        if not target:
            return ()  # unknown ordering class: assume it reads everything
        from hydra.utils import get_class

        cls = get_class(current_target(str(target)))
        return tuple(
            key
            for key, unread in (
                ("scorer", not getattr(cls, "needs_scores", True)),
                ("segment", not getattr(cls, "needs_stages", True)),
                ("replay", getattr(cls, "one_phase", False)),
                ("trainer.stage_policy", getattr(cls, "one_phase", False)),
            )
            if unread
        )

    @property
    def final(self) -> Checkpoint:
        return self.checkpoints[-1]


def read_run(run_dir: Path) -> Run | None:
    """A finished training run (every planned stage has its completion marker), else None."""
    info_path, cfg_path = run_dir / "run.json", run_dir / "config.yaml"
    if not info_path.is_file() or not cfg_path.is_file():
        return None
    info = json.loads(info_path.read_text(encoding="utf-8"))
    config = OmegaConf.load(cfg_path)
    assert isinstance(config, DictConfig)
    stages = info.get("stages", [])
    checkpoints = []
    for st in stages:
        stage_dir = run_dir / f"stage_{st['index']}_{st['name']}"
        marker = stage_dir / "stage.json"
        if not marker.is_file() or not (stage_dir / "model").is_dir():
            return None
        done = json.loads(marker.read_text(encoding="utf-8"))
        if done.get("status") != "done":
            return None
        checkpoints.append(
            Checkpoint(
                run_dir.name, st["index"], st["name"], len(stages), stage_dir, st["order_sha256"]
            )
        )
    return Run(run_dir, config, checkpoints) if checkpoints else None


def discover_runs(sweep_dir: str | Path, select: Sequence[str] = ("*",)) -> list[Run]:
    """Finished runs directly under ``sweep_dir`` whose names match one of the ``select`` globs."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise DataError(f"sweep_dir not found: {root} (the training runs' run.root)")
    runs, unfinished = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if not any(fnmatch.fnmatch(d.name, pattern) for pattern in select):
            continue
        run = read_run(d)
        if run is not None:
            runs.append(run)
        elif (d / "run.json").is_file():
            unfinished.append(d.name)
    if unfinished:
        log.warning("left out %d unfinished runs: %s", len(unfinished), ", ".join(unfinished))
    if not runs:
        raise DataError(
            f"no finished training run under {root} matching {list(select)}"
            + (f" ({len(unfinished)} unfinished)" if unfinished else "")
        )
    return runs


# ------------------------------------------------------------------ backends


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


@dataclass
class HFGenerator:
    """transformers ``generate``: batched, left-padded, greedy unless ``temperature > 0``.

    ``max_new_tokens`` / ``max_length``: ``None`` leaves the length to each test set
    (:meth:`lengths`); a value applies to every set. ``own_process``: each checkpoint
    generates in a process of its own (:func:`answers_in_own_process`).
    """

    max_new_tokens: int | None = None
    max_length: int | None = None  # prompt + answer tokens (transformers' max_length)
    batch_size: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"  # "auto": CUDA when available
    save_every: int = 4  # batches between saves of the answers file
    own_process: bool = False  # each checkpoint in its own process: all its memory freed after
    name: str = "hf"

    def identity(self, lengths: Lengths | None = None) -> dict[str, Any]:
        """What changes the answers; ``lengths``: a test set's (default: :meth:`lengths` of none)."""
        keep = ("temperature", "top_p", "repetition_penalty", "seed")
        ident = {"backend": "hf", **{k: getattr(self, k) for k in keep}}
        return {**ident, **(lengths or self.lengths(None)).identity()}

    def lengths(self, settings: Any) -> Lengths:
        """A test set's lengths, where this generator leaves them open (module docstring)."""
        return lengths_of(settings, self)

    @property
    def chunk(self) -> int:
        return self.batch_size * max(1, self.save_every)

    def prepare(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Checks before any checkpoint generates (nothing to check here)."""

    def release(self, loaded: dict[str, Any]) -> None:
        """Let go of what :meth:`answer` kept loaded for a checkpoint's next set."""
        loaded.clear()

    def load(self, model_dir: Path) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype)
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(torch.device(device)).eval()  # type: ignore[arg-type]
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    def context_length(self, model: Any) -> int | None:
        return getattr(model.config, "max_position_embeddings", None)

    def answer(self, pending: Pending) -> None:
        """Answers for ``pending``'s items, ``chunk`` prompts at a time, saved after each chunk;
        the model stays in ``pending.loaded`` for the checkpoint's next set."""
        model, tokenizer = kept_model(pending, self.load)
        prompts = pending.prompts(tokenizer, self.context_length(model))
        bar = tqdm(
            total=pending.total,
            initial=len(pending.done),
            desc=f"generate {pending.eval_set}",
            unit="item",
        )
        for start in range(0, len(prompts), self.chunk):
            part = prompts[start : start + self.chunk]
            texts = self.generate(model, tokenizer, [p.ids for p in part], [p.budget for p in part])
            for p, text in zip(part, texts, strict=True):
                pending.done[p.ex.id] = p.item(text)
            pending.save()
            bar.update(len(part))
        bar.close()

    def generate(
        self,
        model: Any,
        tokenizer: Any,
        prompts: Sequence[list[int]],
        budgets: Sequence[int] | None = None,
    ) -> list[str]:
        """Greedy (or sampled) answers; prompt i gets at most ``budgets[i]`` new tokens.

        A batch generates up to its largest budget and each row is cut at its own: greedy
        decoding of one row does not depend on the others (left padding, tested), so the cut
        row equals what a lone ``generate(max_length=...)`` of that prompt gives.
        """
        import torch

        if budgets is None:
            budgets = [self.lengths(None).budget(len(p), None) for p in prompts]
        device = next(model.parameters()).device
        sample = self.temperature > 0
        options: dict[str, Any] = {"do_sample": sample}
        if sample:
            torch.manual_seed(self.seed)
            options.update(temperature=self.temperature, top_p=self.top_p)
        out_texts = []
        for start in range(0, len(prompts), self.batch_size):
            batch = pad_batch(
                [{"input_ids": p} for p in prompts[start : start + self.batch_size]],
                tokenizer.pad_token_id,
                side="left",
            )
            limits = list(budgets[start : start + self.batch_size])
            input_ids = torch.tensor(batch["input_ids"], device=device)
            with torch.no_grad():
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.tensor(batch["attention_mask"], device=device),
                    max_new_tokens=max(limits),
                    repetition_penalty=self.repetition_penalty,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **options,
                )
            out_texts += [
                tokenizer.decode(row[:limit], skip_special_tokens=True).strip()
                for row, limit in zip(out[:, input_ids.shape[1] :], limits, strict=True)
            ]
        return out_texts


VLLM_MISSING = (
    "generator=vllm needs vLLM, which is not installed: pip install phasedsft[vllm] "
    "(from a checkout: pip install -e '.[vllm]'; a CUDA GPU); or use generator=hf, or "
    "generator=openai with generator.command='vllm serve {model_dir} --port {port}'"
)


def require_vllm() -> None:
    """A plain error, before anything loads, where vLLM is not installed."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise DataError(VLLM_MISSING)


@dataclass
class VLLMGenerator(HFGenerator):
    """vLLM offline inference (``pip install phasedsft[vllm]``, a CUDA GPU).

    One engine per checkpoint, each in its own process (``own_process``, the default): vLLM
    frees its GPU memory only when its process ends, so engines built one after another in
    one process run out of memory.
    """

    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    save_every: int = 64
    own_process: bool = True
    name: str = "vllm"

    def identity(self, lengths: Lengths | None = None) -> dict[str, Any]:
        return {**super().identity(lengths), "backend": "vllm"}

    def prepare(self, checkpoints: Sequence[Checkpoint]) -> None:
        require_vllm()

    def load(self, model_dir: Path) -> tuple[Any, Any]:
        require_vllm()
        try:
            from vllm import LLM
        except ImportError as e:
            raise DataError(
                f"generator=vllm: vLLM is installed but does not import ({type(e).__name__}: {e})"
            ) from e
        from transformers import AutoTokenizer

        llm = LLM(
            model=str(model_dir),
            tokenizer=str(model_dir),
            dtype=self.dtype,
            seed=self.seed,
            gpu_memory_utilization=self.gpu_memory_utilization,
            tensor_parallel_size=self.tensor_parallel_size,
        )
        return llm, AutoTokenizer.from_pretrained(model_dir)

    def context_length(self, model: Any) -> int | None:
        engine = model.llm_engine
        config = getattr(engine, "model_config", None) or engine.vllm_config.model_config
        return int(config.max_model_len)

    def generate(
        self,
        model: Any,
        tokenizer: Any,
        prompts: Sequence[list[int]],
        budgets: Sequence[int] | None = None,
    ) -> list[str]:
        from vllm import SamplingParams

        if budgets is None:
            budgets = [self.lengths(None).budget(len(p), None) for p in prompts]
        params = [
            SamplingParams(
                temperature=self.temperature,
                top_p=self.top_p if self.temperature > 0 else 1.0,
                max_tokens=limit,
                repetition_penalty=self.repetition_penalty,
                seed=self.seed,
            )
            for limit in budgets
        ]
        outs = model.generate([{"prompt_token_ids": list(p)} for p in prompts], params)
        return [o.outputs[0].text.strip() for o in outs]


# ------------------------------------------------------------------ processes of their own


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` that has the kernel send the child SIGTERM when this process
    dies, even by SIGKILL (where no ``finally`` runs). Built before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_signal() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return set_signal


class ProcessGroup:
    """A command in a session of its own: stopped, with every process it started, by
    :meth:`stop` (SIGTERM to the group, SIGKILL after ``stop_timeout`` seconds and for what
    is left), and sent SIGTERM by the kernel if this process dies first (Linux)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        stdout: Any = None,
        env: dict[str, str] | None = None,
        stop_timeout: float = 30.0,
    ):
        self.argv = list(argv)
        self.stop_timeout = stop_timeout
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            env=env,
            start_new_session=True,
            preexec_fn=_parent_death_signal(),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "pid %d did not stop within %gs: killing it", self.pid, self.stop_timeout
                )
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        # what the leader left behind (a worker that outlived it)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


# ------------------------------------------------------------------ OpenAI-compatible servers

REQUESTS_DB = "requests.sqlite"  # generations/<this>: every answer a server sent, as it came
SERVER_LOG = "server.log"  # generations/<this>: what the started servers printed
PLACEHOLDERS = ("model_dir", "port", "host")
PROMPT_FORMATS = ("token_ids", "text")


def _tail(path: Path, start: int, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listed_models(url: str, key: str | None, timeout: float = 5.0) -> list[str]:
    """The model ids ``<url>/models`` lists; raises OSError or ValueError while it cannot."""
    request = urllib.request.Request(f"{url.rstrip('/')}/models")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout) as r:
        body = json.loads(r.read().decode("utf-8"))
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ValueError("not a model list")
    return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id") is not None]


@dataclass
class Server:
    """A server :meth:`OpenAIGenerator.serve` started for one checkpoint."""

    label: str
    url: str
    group: ProcessGroup
    log_path: Path
    models: list[str]

    def stop(self) -> None:
        self.group.stop()
        log.info("%s: stopped its server (pid %d)", self.label, self.group.pid)


class _CompletionsClient:
    """An ``AsyncOpenAI`` client whose ``chat.completions.create`` sends a completion.

    :class:`ChatEndpoint` sends every request as ``client.chat.completions.create(model=,
    messages=, max_tokens=, **options)`` and classifies what comes back (retries, rejected,
    endpoint down, not a completion). Answers from a prompt need ``/v1/completions``: this
    sends ``prompt`` with ``answer_tokens`` as ``max_tokens`` there and hands the reply back
    shaped as a chat completion (``choices[i].message.content`` = the text), so the same
    classification applies to it; the model is the one the server serves (``model``, not the
    endpoint's configured name). Errors of the client pass through untouched.
    """

    def __init__(self, client: Any, model: str):
        self._client, self._model = client, model  # the served model's name
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self._create))

    async def _create(
        self,
        *,
        model: str,
        messages: Any,
        max_tokens: int,
        prompt: str | list[int],
        answer_tokens: int,
        **options: Any,
    ) -> Any:
        resp = await self._client.completions.create(
            model=self._model, prompt=prompt, max_tokens=answer_tokens, **options
        )
        choices = getattr(resp, "choices", None)
        if isinstance(resp, str) or not isinstance(choices, list):
            return resp  # the endpoint's checks say what is wrong with it
        shaped = [
            SimpleNamespace(
                message=SimpleNamespace(content=c.text)
                if isinstance(getattr(c, "text", None), str)
                else None,
                finish_reason=getattr(c, "finish_reason", None),
            )
            for c in choices
        ]
        dump = getattr(resp, "model_dump_json", None)
        return SimpleNamespace(
            choices=shaped,
            usage=getattr(resp, "usage", None),
            model_dump_json=dump if callable(dump) else lambda: repr(resp),
        )


@dataclass
class OpenAIGenerator(ChatEndpoint):
    """Answers from an OpenAI-compatible server (``vllm serve``, SGLang, TGI, llama.cpp).

    Where each checkpoint is served, exactly one of: ``base_url`` (one checkpoint),
    ``base_urls`` (checkpoint label ``<run>/stage_<i>_<name>``, or the path of its stage or
    model directory -> URL) or ``command`` (a server started per checkpoint and stopped after
    it: ``{model_dir}``, ``{port}`` and ``{host}`` are filled in; e.g. ``vllm serve
    {model_dir} --port {port}``). ``prompt_format``: ``token_ids`` sends the prompt ids the
    run's template gives with the tokenizer saved beside the weights, what generator=hf feeds
    the model (vLLM, SGLang, llama.cpp take them); ``text`` sends the template's text for the
    server to tokenize (TGI), which may add its own special tokens. The API key comes from the
    environment variable ``api_key_env`` only (none needed for a local server).
    """

    task: ClassVar[str] = "generation"

    model: str = ""  # "": the first model the server lists at /v1/models
    base_urls: dict[str, str] = field(default_factory=dict)
    command: str | None = None
    host: str = "127.0.0.1"  # where a started server is asked
    start_timeout: float = 900.0  # seconds for a started server to answer /v1/models
    stop_timeout: float = 30.0  # seconds after SIGTERM before SIGKILL
    prompt_format: str = "token_ids"
    context_length: int | None = None  # null: the checkpoint's max_position_embeddings
    max_new_tokens: int | None = None  # as generator=hf: null leaves it to each test set
    max_length: int | None = None
    top_p: float = 1.0  # sent when temperature > 0
    extra_body: dict[str, Any] = field(default_factory=dict)  # sent as is (repetition_penalty...)
    max_tokens: int = 0  # not used: each answer's budget is sent (the test set's lengths)
    parse_retries: int = 2  # asking again when a reply is not a completion
    name: str = "openai"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.base_urls = {str(k): str(v) for k, v in dict(self.base_urls or {}).items()}
        extra = self.extra_body or {}
        if isinstance(extra, DictConfig):
            extra = OmegaConf.to_container(extra, resolve=True)
        self.extra_body = {str(k): v for k, v in dict(extra).items()}
        given = [k for k in ("base_url", "base_urls", "command") if getattr(self, k)]
        if len(given) != 1:
            raise DataError(
                "generator=openai needs exactly one of generator.base_url (the server of the "
                "one checkpoint), generator.base_urls ({<run>/stage_<i>_<name>: <url>, ...}) or "
                "generator.command (a server started per checkpoint, e.g. 'vllm serve "
                "{model_dir} --port {port}')"
                + (f"; given: {', '.join('generator.' + k for k in given)}" if given else "")
            )
        if self.prompt_format not in PROMPT_FORMATS:
            raise DataError(
                f"generator.prompt_format must be one of {list(PROMPT_FORMATS)}, "
                f"not {self.prompt_format!r}"
            )
        if self.command:
            self.command_argv(model_dir="m", port=1)  # a bad template fails before any work

    # ---- settings

    def lengths(self, settings: Any) -> Lengths:
        return lengths_of(settings, self)

    def identity(self, lengths: Lengths | None = None) -> dict[str, Any]:
        """What changes the answers: not where the server runs (the weights are the
        checkpoint's), but how it is asked."""
        ident: dict[str, Any] = {
            "backend": "openai",
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "prompt_format": self.prompt_format,
        }
        if self.context_length is not None:
            ident["context_length"] = self.context_length
        if self.extra_body:
            ident["extra_body"] = self.extra_body
        return {**ident, **(lengths or self.lengths(None)).identity()}

    def request_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"temperature": self.temperature}
        if self.temperature > 0:
            options["top_p"] = self.top_p
        if self.seed is not None:
            options["seed"] = self.seed
        if self.extra_body:
            options["extra_body"] = dict(self.extra_body)
        return options

    def command_argv(self, **values: Any) -> list[str]:
        """``command`` split as a shell would (no shell runs it), placeholders filled in."""
        assert self.command is not None
        try:
            parts = shlex.split(self.command)
        except ValueError as e:
            raise DataError(
                f"generator.command cannot be split into words ({e}): {self.command!r}"
            ) from None
        names = {
            name
            for part in parts
            for _, name, _, _ in string.Formatter().parse(part)
            if name is not None
        }
        unknown = sorted(names - set(PLACEHOLDERS))
        missing = [n for n in ("model_dir", "port") if n not in names]
        if not parts or unknown or missing:
            raise DataError(
                f"generator.command {self.command!r}: "
                + (
                    f"unknown placeholder(s) {['{' + n + '}' for n in unknown]}; "
                    if unknown
                    else ""
                )
                + (f"missing {['{' + n + '}' for n in missing]}; " if missing else "")
                + "it must start a server of {model_dir} on {port} (also known: {host}), "
                "e.g. 'vllm serve {model_dir} --port {port}'"
            )
        values = {"host": self.host, **values}
        return [part.format(**{k: str(v) for k, v in values.items()}) for part in parts]

    # ---- where each checkpoint is served

    def url_for(self, ckpt: Checkpoint) -> str | None:
        """The given URL of ``ckpt``'s server: ``base_url``, or its ``base_urls`` entry."""
        if self.base_url:
            return self.base_url
        wanted = {ckpt.dir.resolve(), ckpt.model_dir.resolve()}
        for key, url in self.base_urls.items():
            if key == ckpt.label or Path(key).expanduser().resolve() in wanted:
                return url
        return None

    def prepare(self, checkpoints: Sequence[Checkpoint]) -> None:
        """Every checkpoint has a server before any generates."""
        labels = [c.label for c in checkpoints]
        if self.base_url and len(checkpoints) > 1:
            raise DataError(
                f"generator.base_url is the server of one checkpoint, but {len(labels)} need "
                f"answers ({', '.join(labels[:4])}{', ...' if len(labels) > 4 else ''}): give "
                "each its URL in generator.base_urls={<label>: <url>, ...}, or let "
                "generator.command start a server per checkpoint"
            )
        if self.base_urls:
            missing = [c.label for c in checkpoints if self.url_for(c) is None]
            if missing:
                raise DataError(
                    f"generator.base_urls has no URL for {missing}; its keys are checkpoint "
                    "labels (<run>/stage_<i>_<name>) or paths of the stage or model directory; "
                    f"given: {sorted(self.base_urls)}"
                )

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None

    def serve(self, ckpt: Checkpoint) -> Server:
        """Start ``command`` for ``ckpt`` and wait until it lists its models at /v1/models.

        Its output goes to ``generations/server.log``. A server that exits, or does not
        answer within ``start_timeout`` seconds, is stopped (with all it started) and is a
        plain error quoting the end of its output; so is Ctrl-C while it starts.
        """
        port = free_port(self.host)
        argv = self.command_argv(model_dir=ckpt.model_dir, port=port)
        url = f"http://{self.host}:{port}/v1"
        log_path = ckpt.dir / "generations" / SERVER_LOG
        log_path.parent.mkdir(parents=True, exist_ok=True)
        shown = self.redact(shlex.join(argv))
        with open(log_path, "ab") as out:
            start = out.tell()
            group = ProcessGroup(argv, stdout=out, stop_timeout=self.stop_timeout)
        try:
            with open(log_path, "ab") as out:
                out.write(
                    f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {ckpt.label}: pid {group.pid} "
                    f"port {port}: {shown}\n".encode()
                )
            log.info("%s: starting its server (pid %d): %s", ckpt.label, group.pid, shown)
            began, key = time.monotonic(), self.api_key()
            while True:
                code = group.proc.poll()
                if code is not None:
                    raise DataError(
                        f"the server for {ckpt.label} exited with code {code} before answering "
                        f"{url}/models (generator.command: {shown}); the end of its output "
                        f"({log_path}):\n{_tail(log_path, start)}"
                    )
                try:
                    models = listed_models(url, key)
                    break
                except (OSError, ValueError):
                    pass
                if time.monotonic() - began > self.start_timeout:
                    raise DataError(
                        f"the server for {ckpt.label} did not answer {url}/models within "
                        f"{self.start_timeout:g} s (generator.start_timeout), so it was stopped "
                        f"(generator.command: {shown}); the end of its output ({log_path}):\n"
                        f"{_tail(log_path, start)}"
                    )
                time.sleep(0.25)
        except BaseException:
            group.stop()
            raise
        log.info(
            "%s: its server answers at %s after %.0f s", ckpt.label, url, time.monotonic() - began
        )
        return Server(ckpt.label, url, group, log_path, models)

    def release(self, loaded: dict[str, Any]) -> None:
        """Stop the server started for the checkpoint (if any); forget its tokenizer."""
        server = loaded.get("server")
        loaded.clear()
        if server is not None:
            server.stop()

    def _connect(self, ckpt: Checkpoint, loaded: dict[str, Any]) -> dict[str, Any]:
        """``loaded`` for ``ckpt``: its tokenizer, context, server URL and model name; a
        server from ``command`` is started once and kept for the checkpoint's other sets."""
        if loaded.get("dir") == ckpt.model_dir:
            return loaded
        self.release(loaded)
        from transformers import AutoConfig, AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(ckpt.model_dir)
        except Exception as e:
            raise DataError(
                f"generator=openai builds each prompt with the tokenizer saved beside the "
                f"weights; it could not be read from {ckpt.model_dir}: {type(e).__name__}: {e}"
            ) from e
        context = self.context_length
        if context is None:
            with contextlib.suppress(Exception):
                context = getattr(
                    AutoConfig.from_pretrained(ckpt.model_dir), "max_position_embeddings", None
                )
        if self.command:
            server = self.serve(ckpt)
            loaded["server"] = server
            url, models = server.url, server.models
        else:
            given = self.url_for(ckpt)
            if given is None:
                raise DataError(f"generator.base_urls has no URL for {ckpt.label}")
            url, models = given, []
            if not self.model:
                try:
                    models = listed_models(given, self.api_key(), timeout=self.timeout)
                except (OSError, ValueError) as e:
                    raise DataError(
                        f"the server for {ckpt.label} at {given} does not list its models at "
                        f"{given.rstrip('/')}/models ({self.redact(f'{type(e).__name__}: {e}')}): "
                        "is it running? (or name the model: generator.model=...)"
                    ) from e
        model = self.model or (models[0] if models else "")
        if not model:
            raise DataError(
                f"the server for {ckpt.label} at {url} lists no model at /v1/models: name the "
                "one it serves with generator.model=..."
            )
        # "dir" last: an error above leaves nothing that looks connected
        loaded.update(tokenizer=tokenizer, context=context, url=url, model=model)
        loaded["dir"] = ckpt.model_dir
        return loaded

    # ---- answers

    def answer(self, pending: Pending) -> None:
        own = pending.loaded is None  # answers_for alone: start and stop the server here
        loaded: dict[str, Any] = {} if pending.loaded is None else pending.loaded
        try:
            self._answer(pending, self._connect(pending.ckpt, loaded))
        finally:
            if own:
                self.release(loaded)

    def _answer(self, pending: Pending, served: dict[str, Any]) -> None:
        ckpt, tokenizer = pending.ckpt, served["tokenizer"]
        as_text = self.prompt_format == "text"
        prompts = pending.prompts(tokenizer, served["context"], truncate=not as_text)
        client = _CompletionsClient(
            replace(self, base_url=served["url"], base_urls={}, command=None).client("generator"),
            served["model"],
        )
        options = self.request_options()

        jobs = []
        for p in prompts:
            sent: str | list[int] = (
                pending.template.prompt_text(p.ex, tokenizer) if as_text else p.ids
            )
            key = sha256_json(
                {"answers": pending.key, "id": p.ex.id, "prompt": sent, "max_tokens": p.budget}
            )
            cost = self.price.cost(p.full, p.budget)
            jobs.append(Job(key, (p, sent), p.full + p.budget, cost))

        async def call(job: Job) -> Result:
            p, sent = job.example
            tally = Tally()
            for _ in range(1 + self.parse_retries):
                try:
                    resp = await self.ask(
                        client, job, [], tally, prompt=sent, answer_tokens=p.budget, **options
                    )
                except Rejected as e:
                    return self.failed(job, p.ex.id, tally, str(e))
                if resp is None:  # not a completion: a failed attempt, asked again
                    continue
                choice = resp.choices[0]
                detail = {"finish_reason": choice.finish_reason}
                text = choice.message.content or ""
                return self._result(job, p.ex.id, tally, "ok", None, detail, text, None)
            return self.failed(job, p.ex.id, tally, f"no completion: {tally.reason}")

        cache = ScoreCache(ckpt.dir / "generations" / REQUESTS_DB)
        stopped: RequestsAborted | None = None
        try:
            stats = self.run_requests(
                jobs, call, cache, f"generate {pending.eval_set} ({ckpt.label})"
            )
        except RequestsAborted as e:
            stats, stopped = e.stats, e
        finally:
            cache.close()
        failed: list[tuple[str, str]] = []
        for job, result in zip(jobs, stats.ordered, strict=True):
            p = job.example[0]
            if result is None:
                continue
            if result.status == "ok":
                pending.done[p.ex.id] = p.item((result.raw or "").strip())
            else:
                failed.append((p.ex.id, result.error or "failed"))
        pending.save()
        where = f"{ckpt.label} on {pending.eval_set}"
        if stopped is not None:
            raise DataError(f"{where}: {stopped}")
        if failed:
            raise DataError(
                f"{where}: {len(failed)} of {len(jobs)} requests failed (first: item "
                f"{failed[0][0]}: {failed[0][1]}); the other answers are saved. Rerun with "
                "generator.retry_failed=true to ask the failed ones again"
            )


# ------------------------------------------------------------------ answers files


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
    return ckpt.dir / "generations" / f"{eval_set.name}.{key}.json", key, lengths, template_cfg


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


def release(generator: Any, loaded: dict[str, Any]) -> None:
    """Let go of what ``generator`` kept for a checkpoint (its model, its server)."""
    if isinstance(generator, Releases):
        generator.release(loaded)
    else:
        loaded.clear()


def checkpoint_answers(
    ckpt: Checkpoint, sets: Sequence[EvalSet], generator: Generator, run_config: DictConfig
) -> list[Answers]:
    """The checkpoint's answers to every set, one after another with what stays loaded
    between them (the model, the server), let go of at the end, also on error or Ctrl-C.
    A generator with ``own_process`` answers in a process of its own
    (:func:`answers_in_own_process`)."""
    if getattr(generator, "own_process", False):
        missing = [es for es in sets if read_answers(ckpt, es, generator, run_config) is None]
        if missing:
            answers_in_own_process(ckpt, missing, generator, run_config)
        out = []
        for es in sets:
            got = read_answers(ckpt, es, generator, run_config)
            if got is None:
                raise DataError(
                    f"generating answers for {ckpt.label} in its own process ended without "
                    f"complete answers to {es.name}"
                )
            out.append(got)
        return out
    loaded: dict[str, Any] = {}
    try:
        return [answers_for(ckpt, es, generator, run_config, loaded) for es in sets]
    finally:
        release(generator, loaded)


# ------------------------------------------------------------------ a process per checkpoint

CHILD_ERROR = "error.txt"  # beside the spec: the child's error in words
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding phasedsft/


def answers_in_own_process(
    ckpt: Checkpoint, sets: Sequence[EvalSet], generator: Generator, run_config: DictConfig
) -> None:
    """Write the checkpoint's answers to ``sets`` from a child process
    (``python -m phasedsft.evaluate.generation <spec>``), which ends when they are written,
    so everything it loaded (a vLLM engine, its GPU memory) goes with it. The answers come
    back through the answers files (resumable as usual). A failure in the child is a plain
    error naming the checkpoint; Ctrl-C or an error here stops the child and all it started.
    """
    spec = {
        "checkpoint": ckpt,
        "sets": list(sets),
        "generator": generator,
        "prompt": OmegaConf.to_container(run_config.prompt, resolve=True),
    }
    with tempfile.TemporaryDirectory(prefix="phasedsft-generate-") as tmp:
        spec_path = Path(tmp) / "spec.pkl"
        spec_path.write_bytes(pickle.dumps(spec))
        paths = [str(PACKAGE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        child = ProcessGroup(
            [sys.executable, "-m", "phasedsft.evaluate.generation", str(spec_path)], env=env
        )
        log.info(
            "%s: generating %s in its own process (pid %d)",
            ckpt.label,
            ", ".join(es.name for es in sets),
            child.pid,
        )
        try:
            code = child.proc.wait()
        finally:
            child.stop()
        if code != 0:
            err = Path(tmp) / CHILD_ERROR
            if err.is_file():
                reason = err.read_text(encoding="utf-8").strip()
            elif code < 0:
                name = signal.Signals(-code).name
                reason = f"it was killed by {name}" + (
                    " (often the out-of-memory killer)" if -code == signal.SIGKILL else ""
                )
            else:
                reason = f"it exited with code {code}"
            raise DataError(
                f"generating answers for {ckpt.label} failed in its own process: {reason}"
            )


def child_main(argv: Sequence[str]) -> int:
    """The child of :func:`answers_in_own_process`: generate what the spec says, exit."""
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
    )
    spec_path = Path(argv[0])
    try:
        spec = pickle.loads(spec_path.read_bytes())
        ckpt, generator = spec["checkpoint"], spec["generator"]
        run_config = OmegaConf.create({"prompt": spec["prompt"]})
        prepare(generator, [ckpt])
        loaded: dict[str, Any] = {}
        try:
            for es in spec["sets"]:
                answers_for(ckpt, es, generator, run_config, loaded)
        finally:
            release(generator, loaded)
    except Exception as e:
        from phasedsft.cli import user_error

        found = user_error(e)
        if found is None:
            traceback.print_exc()
            reason = f"{type(e).__name__}: {e} (its traceback is above)"
        else:
            reason = str(found)
        (spec_path.parent / CHILD_ERROR).write_text(reason, encoding="utf-8")
        return 1
    return 0


if __name__ == "__main__":
    # the module's own copy (not this __main__ one): the spec's classes are pickled from it
    from phasedsft.evaluate.generation import child_main as _child_main

    raise SystemExit(_child_main(sys.argv[1:]))
