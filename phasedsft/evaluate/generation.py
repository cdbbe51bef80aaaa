"""Answers to a test set from any checkpoint a training run wrote: the backends.

The evaluate step's generation is in four rooms: :mod:`.runs` finds finished training runs
and their checkpoints (``stage_<i>_<name>/model``, see :mod:`phasedsft.rundir`);
:mod:`.answers` writes ``stage_<i>_<name>/generations/<set>.<key>.json`` (:func:`answers_for`:
resumable, keyed by the generator's settings, the test set's content and the weights' data
order), using the run's own prompt template and the tokenizer saved beside the weights;
:mod:`.servers` starts and stops processes and servers; :mod:`.completions` is the OpenAI
completions backend. This module holds the local backends and the process per checkpoint,
and re-exports the others' names (the ``generator`` configs name
``phasedsft.evaluate.generation.<class>``).

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

import logging
import os
import pickle
import signal
import sys
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from phasedsft.evaluate.answers import (
    DEFAULT_MAX_NEW_TOKENS,
    FORMAT_VERSION,
    LENGTH_KEYS,
    Answers,
    Generator,
    Lengths,
    Pending,
    Prepares,
    Prompt,
    Releases,
    _answers_file,
    _prompt_ids,
    answers_for,
    kept_model,
    length_settings,
    lengths_of,
    prepare,
    read_answers,
    release,
    set_hash,
)
from phasedsft.evaluate.completions import (
    PLACEHOLDERS,
    PROMPT_FORMATS,
    REQUESTS_DB,
    OpenAIGenerator,
    _CompletionsClient,
)
from phasedsft.evaluate.runs import (
    IDENTITY_SKIP,
    TRAINER_BOOKKEEPING_KEYS,
    Checkpoint,
    Run,
    discover_runs,
    read_run,
)
from phasedsft.evaluate.servers import (
    SERVER_LOG,
    ProcessGroup,
    Server,
    _parent_death_signal,
    free_port,
    listed_models,
    log_tail,
)
from phasedsft.evaluate.sets import EvalSet
from phasedsft.prompts import pad_batch
from phasedsft.records import DataError

log = logging.getLogger(__name__)

# moved to .answers, .completions, .runs and .servers; re-exported for code that imports
# them from here
__all__ = [
    "CHILD_ERROR",
    "DEFAULT_MAX_NEW_TOKENS",
    "FORMAT_VERSION",
    "IDENTITY_SKIP",
    "LENGTH_KEYS",
    "PACKAGE_ROOT",
    "PLACEHOLDERS",
    "PROMPT_FORMATS",
    "REQUESTS_DB",
    "SERVER_LOG",
    "TRAINER_BOOKKEEPING_KEYS",
    "VLLM_MISSING",
    "Answers",
    "Checkpoint",
    "Generator",
    "HFGenerator",
    "Lengths",
    "OpenAIGenerator",
    "Pending",
    "Prepares",
    "ProcessGroup",
    "Prompt",
    "Releases",
    "Run",
    "Server",
    "VLLMGenerator",
    "_CompletionsClient",
    "_answers_file",
    "_parent_death_signal",
    "_prompt_ids",
    "answers_for",
    "answers_in_own_process",
    "checkpoint_answers",
    "child_main",
    "discover_runs",
    "free_port",
    "kept_model",
    "length_settings",
    "lengths_of",
    "listed_models",
    "log_tail",
    "prepare",
    "read_answers",
    "read_run",
    "release",
    "require_vllm",
    "set_hash",
]


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
    raise SystemExit(child_main(sys.argv[1:]))
