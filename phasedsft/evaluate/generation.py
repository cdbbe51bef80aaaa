"""Answers to a test set from any checkpoint a training run wrote, saved and resumable.

A training run directory holds one ``stage_<i>_<name>/model`` per finished stage (see
:mod:`phasedsft.train.run`); :func:`discover_runs` finds them, and :func:`answers_for` writes
``stage_<i>_<name>/generations/<set>.<key>.json`` with the answers, using the run's own
prompt template and the tokenizer saved beside the weights. The file is rewritten
atomically every few batches; rerunning continues after the last saved batch. The key
hashes the generator's settings, the test set's content and the weights' data order, so
changing any of them writes a new file instead of mixing answers.

Backends (``generator`` config group): :class:`HFGenerator` (transformers, batched with
left padding, greedy by default) and :class:`VLLMGenerator` (vLLM, when installed).

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

import fnmatch
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from phasedsft.config import (
    NON_SEMANTIC_KEYS,
    NON_SEMANTIC_SCORER_KEYS,
    current_target,
    with_first_targets,
    without_neutral_options,
)
from phasedsft.evaluate.sets import EvalSet
from phasedsft.io import atomic_write_json, sha256_json
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
        return self.dir / "model"

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
        """Parts of the identity this run's ordering does not read: a one-off run trains on the
        data as it is, so its scorer and segmentation settings do not change its weights."""
        target = self.config.ordering.get("_target_")
        if not target:
            return ()  # unknown ordering class: assume it reads everything
        from hydra.utils import get_class

        cls = get_class(current_target(str(target)))
        return tuple(
            key
            for key, needed in (
                ("scorer", getattr(cls, "needs_scores", True)),
                ("segment", getattr(cls, "needs_stages", True)),
            )
            if not needed
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


@dataclass
class HFGenerator:
    """transformers ``generate``: batched, left-padded, greedy unless ``temperature > 0``.

    ``max_new_tokens`` / ``max_length``: ``None`` leaves the length to each test set
    (:meth:`lengths`); a value applies to every set.
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
    name: str = "hf"

    def identity(self, lengths: Lengths | None = None) -> dict[str, Any]:
        """What changes the answers; ``lengths``: a test set's (default: :meth:`lengths` of none)."""
        keep = ("temperature", "top_p", "repetition_penalty", "seed")
        ident = {"backend": "hf", **{k: getattr(self, k) for k in keep}}
        return {**ident, **(lengths or self.lengths(None)).identity()}

    def lengths(self, settings: Any) -> Lengths:
        """A test set's lengths, where this generator leaves them open (module docstring)."""
        given = length_settings(settings)
        ours = {k: getattr(self, k) for k in LENGTH_KEYS if getattr(self, k) is not None}
        merged = {**given, **ours}
        if not given and not ours:
            return Lengths()  # nobody says: DEFAULT_MAX_NEW_TOKENS
        return Lengths(merged.get("max_new_tokens"), merged.get("max_length"))

    @property
    def chunk(self) -> int:
        return self.batch_size * max(1, self.save_every)

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


@dataclass
class VLLMGenerator(HFGenerator):
    """vLLM offline inference (``pip install vllm``, a CUDA GPU): one engine per checkpoint."""

    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    save_every: int = 64
    name: str = "vllm"

    def identity(self, lengths: Lengths | None = None) -> dict[str, Any]:
        return {**super().identity(lengths), "backend": "vllm"}

    def load(self, model_dir: Path) -> tuple[Any, Any]:
        try:
            from vllm import LLM
        except ImportError as e:
            raise DataError(
                "generator=vllm needs vLLM: pip install vllm (CUDA GPU); or use generator=hf"
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
        return int(model.llm_engine.model_config.max_model_len)

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


def answers_for(
    ckpt: Checkpoint,
    eval_set: EvalSet,
    generator: HFGenerator,
    run_config: DictConfig,
    loaded: dict[str, Any] | None = None,
) -> Answers:
    """The checkpoint's answers to the set: read if complete, else generated (resuming).

    ``generator`` is applied with the set's own lengths (:meth:`HFGenerator.lengths`).
    """
    lengths = generator.lengths(eval_set.generation)
    template = instantiate(run_config.prompt)
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
    path = ckpt.dir / "generations" / f"{eval_set.name}.{key}.json"
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
        "generator": {**asdict(generator), **generator.identity(lengths)},
        "prompt": template_cfg,
    }
    todo = [ex for ex in eval_set.items if ex.id not in done]
    if todo:
        if loaded is None or loaded.get("dir") != ckpt.model_dir:
            model, tokenizer = generator.load(ckpt.model_dir)
            if loaded is not None:
                loaded.clear()
                loaded.update(dir=ckpt.model_dir, model=model, tokenizer=tokenizer)
        else:
            model, tokenizer = loaded["model"], loaded["tokenizer"]
        limit = generator.context_length(model)
        # the prompt keeps its last tokens where it and the promised answer exceed the context
        room = None if limit is None else limit - (lengths.max_new_tokens or 1)
        if room is not None and room < 8:
            raise DataError(
                f"max_new_tokens={lengths.max_new_tokens} leaves no room for a prompt in "
                f"{ckpt.label}'s context of {limit} tokens"
            )
        prompts = {ex.id: _prompt_ids(ex, template, tokenizer) for ex in todo}
        # longest first: similar lengths share a batch (less padding), memory peaks early
        todo.sort(key=lambda ex: -len(prompts[ex.id]))
        started = time.time()
        bar = tqdm(
            total=len(eval_set.items),
            initial=len(done),
            desc=f"generate {eval_set.name}",
            unit="item",
        )
        for start in range(0, len(todo), generator.chunk):
            chunk = todo[start : start + generator.chunk]
            ids = []
            for ex in chunk:
                p = prompts[ex.id]
                ids.append(p[-room:] if room is not None and len(p) > room else p)
            budgets = [lengths.budget(len(p), limit) for p in ids]
            texts = generator.generate(model, tokenizer, ids, budgets)
            for ex, p, text, budget in zip(chunk, ids, texts, budgets, strict=True):
                done[ex.id] = {
                    "id": ex.id,
                    "instruction": ex.instruction,
                    "input": ex.input,
                    "output": text,
                    "prompt_tokens": len(p),
                    "prompt_truncated": len(p) < len(prompts[ex.id]),
                    "max_answer_tokens": budget,
                }
            atomic_write_json(path, {**header, "complete": False, "items": list(done.values())})
            bar.update(len(chunk))
        bar.close()
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
