"""Helpers shared by the test modules: run a command as the tests do, find runs, read weights.

``run_command`` runs a command from the repository root with text output captured, the given
environment variables merged over ``os.environ`` and a timeout; it asserts the exit code is 0
(and, when asked, that no traceback was printed), with the end of stderr in the message.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conftest import ROOT

if TYPE_CHECKING:
    import torch

TIMEOUT_S = 1200  # only there to end a hung command: the slowest tiny sweep takes minutes


def run_command(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str | None] | None = None,
    timeout: float = TIMEOUT_S,
    check: bool = True,
    no_traceback: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in the repository root, output captured as text.

    ``env`` is merged over ``os.environ`` (a value of None removes that variable).
    ``check``: assert the exit code is 0. ``no_traceback``: assert stderr holds no traceback.
    Both messages end with the last 3000 characters of stderr.
    """
    merged = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    out = subprocess.run(
        list(cmd), cwd=ROOT, capture_output=True, text=True, env=merged, timeout=timeout
    )
    if no_traceback:
        assert "Traceback" not in out.stderr, out.stderr[-3000:]
    if check:
        assert out.returncode == 0, (
            f"exit {out.returncode}: {' '.join(map(str, cmd))}\n"
            f"--- stdout (end) ---\n{out.stdout[-2000:]}\n--- stderr (end) ---\n{out.stderr[-3000:]}"
        )
    return out


def run_dirs(root: Path, marker: str = "run.json") -> list[Path]:
    """The run directories directly under ``root``: those holding ``marker``, sorted.

    ``run.json`` marks a run that has started; ``summary.json`` one that has finished.
    """
    return sorted(p for p in root.iterdir() if (p / marker).is_file())


def run_dir(root: Path, marker: str = "run.json") -> Path:
    """The one run directory under ``root`` (see ``run_dirs``); fails unless there is exactly one."""
    runs = run_dirs(root, marker)
    assert len(runs) == 1, f"expected one run holding {marker} under {root}, found {runs}"
    return runs[0]


def stage_dirs(run: Path) -> list[Path]:
    """A run's stage directories (``stage_<i>_<name>/``) in stage order."""
    return sorted(run.glob("stage_*_*/"), key=lambda p: int(p.name.split("_")[1]))


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model_dir/model.safetensors``, by name."""
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def tiny_stage(tokenizer: Any, stage_dir: Path, *overrides: str) -> tuple[Any, Callable[[], dict]]:
    """A real 40-example stage of a 1-layer Llama (items of 6-13 tokens, 3 prompt tokens each)
    and the call that trains it with ``train_stage``, under the TINY trainer settings plus
    ``overrides``: the stage the audit and packing tests train."""
    import torch
    from conftest import TINY, compose
    from transformers import LlamaConfig, LlamaForCausalLM

    from phasedsft.prompts import IGNORE_INDEX, Encoded
    from phasedsft.train.stage import StageInputs, StageSpec, train_stage

    g = torch.Generator().manual_seed(0)
    encoded = {}
    for i in range(40):
        n = int(torch.randint(6, 14, (1,), generator=g))
        ids = torch.randint(3, len(tokenizer), (n,), generator=g).tolist()
        encoded[f"ex{i:02d}"] = Encoded(ids, [IGNORE_INDEX] * 3 + ids[3:])
    sequence = sorted(encoded)

    def load_model() -> Any:
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id,
        )
        return LlamaForCausalLM(config)

    tcfg = compose([*TINY, "trainer.use_cpu=true", *overrides]).trainer
    spec = StageSpec(1, "difficulty-1", sequence, sequence, stage_dir)
    inputs = StageInputs(load_model, tokenizer, encoded, {}, tcfg, 0, [])
    return spec, lambda: train_stage(spec, inputs)


def logged_lrs(stage: Path) -> list[float]:
    """The learning rate the Trainer logged at each logging step of a finished stage."""
    history = json.loads((stage / "stage.json").read_text())["log_history"]
    return [h["learning_rate"] for h in history if "learning_rate" in h]


def expected_lrs(total: int, warmup: int, lr: float) -> list[float]:
    """Cosine with linear warmup, as logged after each step (transformers' formula)."""
    out = []
    for step in range(total):
        if step < warmup:
            out.append(lr * step / max(1, warmup))
        else:
            progress = (step - warmup) / max(1, total - warmup)
            out.append(lr * 0.5 * (1.0 + math.cos(math.pi * progress)))
    return out
