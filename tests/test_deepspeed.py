"""DeepSpeed ZeRO-3 for real on CPU: two processes over gloo (torchrun), phased over two stages.

Facts this relies on: ``DS_ACCELERATOR=cpu``, ``OMP_NUM_THREADS=1``, ``trainer.use_cpu=true``;
the first use compiles DeepSpeed's shared-memory op (about a minute), cached in
``TORCH_EXTENSIONS_DIR``. Success is judged by the per-rank completion markers each stage
writes, not only by the exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY
from helpers import expected_lrs, logged_lrs, run_command, run_dir, stage_dirs, weights
from helpers.deps import needs

needs("deepspeed")
pytestmark = pytest.mark.integration

SETTINGS = [
    *TINY,
    "trainer/deepspeed=zero3",
    "trainer.use_cpu=true",
    "trainer.learning_rate=1e-2",
    "trainer.max_steps=8",
    "trainer.save_steps=2",
    "ordering=1-2",
    "eval.generate=false",
]


def env() -> dict[str, str]:
    ext = os.environ.get("TORCH_EXTENSIONS_DIR") or str(ROOT / ".cache" / "torch_extensions")
    return {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "TORCH_EXTENSIONS_DIR": ext,
        "TOKENIZERS_PARALLELISM": "false",
    }


def torchrun(root: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # the rendezvous binds a free port itself: no port race, none reused
        "--nproc_per_node",
        "2",
        "train.py",
        *SETTINGS,
        f"run.root={root}",
        *extra,
    ]


def assert_all_ranks_finished(run: Path, stages: int = 2, log: str = "") -> None:
    for st in stage_dirs(run)[:stages]:
        ranks = {p.stem: json.loads(p.read_text()) for p in (st / "ranks").glob("*.json")}
        assert set(ranks) == {"0", "1"}, (st, ranks, log[-3000:])
        assert all(r["status"] == "done" and r["world_size"] == 2 for r in ranks.values())
        assert json.loads((st / "stage.json").read_text())["status"] == "done"


def train(root: Path, *extra: str) -> Path:
    """Train under ``root`` with torchrun; judged by the per-rank markers, then the exit code."""
    out = run_command(torchrun(root, *extra), env=env(), timeout=1200, check=False)
    run = run_dir(root)
    assert_all_ranks_finished(run, log=out.stderr)
    assert out.returncode == 0, out.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    return train(tmp_path_factory.mktemp("zero3"))


def test_zero3_two_ranks_train_two_stages(uninterrupted):
    run = uninterrupted
    stages = stage_dirs(run)
    assert [s.name for s in stages] == ["stage_1_difficulty-1", "stage_2_difficulty-2"]
    w1, w2 = weights(stages[0] / "model"), weights(stages[1] / "model")
    # whole (gathered) weights were saved, not rank shards, and stage 2 changed them
    assert w1["model.embed_tokens.weight"].shape[1] == 32
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    record = json.loads((stages[1] / "stage.json").read_text())
    assert record["global_step"] == 8 and record["first_logged_loss"] is not None


def test_zero3_killed_mid_stage_resumes_to_the_same_weights(uninterrupted, tmp_path):
    # each rank SIGKILLs itself at the end of stage 2's step 5: checkpoint-4 is complete, step 5
    # is lost (watching for a checkpoint and killing from outside races the end of the stage)
    cmd = torchrun(tmp_path)
    script = cmd.index("train.py")
    cmd[script:script] = ["tests/killed_at.py", "stage_2_difficulty-2", "5"]
    try:
        killed = run_command(cmd, env=env(), timeout=900, check=False)
        assert "Signal 9 (SIGKILL)" in killed.stderr, killed.stderr[-3000:]
    finally:
        # torchrun's workers run in sessions of their own: leave none behind
        subprocess.run(["pkill", "-9", "-f", f"run.root={tmp_path}"])
        while subprocess.run(["pgrep", "-f", f"run.root={tmp_path}"], capture_output=True).stdout:
            time.sleep(0.1)
    run = run_dir(tmp_path)
    assert not (run / "stage_2_difficulty-2" / "stage.json").exists()

    assert train(tmp_path) == run
    record = json.loads((run / "stage_2_difficulty-2" / "stage.json").read_text())
    assert record["resumed_from"] == "checkpoint-4"
    a = weights(uninterrupted / "stage_2_difficulty-2" / "model")
    b = weights(run / "stage_2_difficulty-2" / "model")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_zero3_with_lora_saves_and_reloads_adapters(tmp_path):
    check_adapters(train(tmp_path, "trainer/peft=lora", "trainer.peft.r=4"))


def check_adapters(run: Path) -> None:
    """Each stage: adapter/ reloads onto the base to exactly the merged model/ it saved."""
    from omegaconf import OmegaConf
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from phasedsft.models import BuildContext, scratch_llama

    cfg = OmegaConf.load(run / "config.yaml")
    stages = stage_dirs(run)
    adapters = [load_file(str(s / "adapter" / "adapter_model.safetensors")) for s in stages]
    assert all(k for k in adapters[0] if "lora_" in k)
    assert any(not torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    tok_dir = stages[0] / "model"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    loader = {k: v for k, v in OmegaConf.to_container(cfg.model.loader).items() if k != "_target_"}
    for st in stages:
        base = scratch_llama(
            BuildContext(Path(cfg.run.cache_dir), cfg.seed, list), tokenizer, **loader
        )
        base_weights = {k: v.clone() for k, v in base.state_dict().items()}
        merged = (
            PeftModel.from_pretrained(base, str(st / "adapter")).merge_and_unload().state_dict()
        )
        saved = AutoModelForCausalLM.from_pretrained(st / "model").state_dict()
        for k, v in saved.items():
            torch.testing.assert_close(merged[k], v, rtol=0, atol=1e-6)
        # only the LoRA targets moved; everything else is the base model
        changed = {k for k in saved if not torch.equal(saved[k], base_weights[k])}
        assert changed and all(any(t in k for t in cfg.model.lora_target_modules) for k in changed)


def test_zero3_continues_one_schedule_across_stages(tmp_path):
    """trainer/stage_policy=continue under ZeRO-3 (the paper's setting): DeepSpeed takes the
    Trainer's scheduler, so the stages follow one warmup + cosine over all 16 steps."""
    run = train(tmp_path, "trainer/stage_policy=continue", "trainer.logging_steps=1")
    s1, s2 = stage_dirs(run)
    assert logged_lrs(s1) + logged_lrs(s2) == pytest.approx(expected_lrs(16, 2, 1e-2))
