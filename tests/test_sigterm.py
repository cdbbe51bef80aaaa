"""SIGTERM during training (#22 item 7): what SLURM sends before a time limit or a preemption.

The stage finishes the step in progress, saves a verified checkpoint, says so and exits with
code 143, not marked done; the same command (a requeue) resumes from that checkpoint to the
weights of a run never stopped. Under submitit, its preemption signal (USR2) is handled the
same way and then handed to submitit's own handler, which requeues the job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, TINY
from helpers import run_command, run_dir, weights
from helpers.deps import needs

from phasedsft.checksums import verify
from phasedsft.train.stage import EXIT_REQUEUE, StopAtStepEnd, StopRequest

# ------------------------------------------------------------------ the handler, with real signals


def test_sigterm_sets_a_stop_request_and_the_handler_is_put_back():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread at once
        assert stop.signum == signal.SIGTERM and stop.name == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # a second one changes nothing
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_submitits_preemption_signal_is_held_then_handed_to_submitit(monkeypatch):
    called = []
    monkeypatch.setenv("SUBMITIT_FOLDER", "/tmp/job")  # inside a submitit job
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    previous = signal.signal(signal.SIGUSR2, lambda s, f: called.append(s))
    try:
        with StopRequest() as stop:
            assert StopRequest.signals() == [signal.SIGTERM, signal.SIGUSR2]
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.signum == signal.SIGUSR2 and called == []  # held until the save
            stop.hand_over()  # submitit's handler: it requeues the job and exits
            assert called == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_outside_submitit_only_sigterm_is_caught(monkeypatch):
    monkeypatch.delenv("SUBMITIT_FOLDER", raising=False)
    assert StopRequest.signals() == [signal.SIGTERM]


def test_the_step_after_a_signal_saves_and_stops_training():
    stop = StopRequest()
    votes = []
    callback = StopAtStepEnd(stop, lambda flag: votes.append(flag) or flag)
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    callback.on_step_end(None, SimpleNamespace(global_step=3), control)
    assert not control.should_save and callback.stopped_at is None
    stop.signum = signal.SIGTERM
    callback.on_step_end(None, SimpleNamespace(global_step=4), control)
    assert control.should_save and control.should_training_stop and callback.stopped_at == 4
    assert votes == [False, True]  # every rank votes each step: a save is collective


# ------------------------------------------------------------------ a real run, a real SIGTERM


def train_cmd(root: Path) -> list[str]:
    return [
        sys.executable,
        "train.py",
        *TINY,
        f"run.root={root}",
        "trainer.save_steps=2",
        "ordering=2-1",
        "eval.generate=false",
    ]


@pytest.mark.integration
def test_sigterm_saves_a_verified_checkpoint_and_the_rerun_resumes_to_the_same_weights(tmp_path):
    """SIGTERM during step 3 of stage 2: step 3 finishes, checkpoint-3 is saved and verifies,
    exit 143; the rerun resumes from checkpoint-3 and ends with the uninterrupted weights.
    On the way: damaged weights of the finished stage 1 stop the rerun plainly (exit 2)."""
    env = {"PYTHONUNBUFFERED": "1"}
    cmd = train_cmd(tmp_path / "a")
    term_at = ["tests/killed_at.py", "TERM", "stage_2_difficulty-1", "3"]
    stopped = subprocess.run(
        [sys.executable, *term_at, *cmd[1:]],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert stopped.returncode == EXIT_REQUEUE, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert (
        "SIGTERM: saved checkpoint-3 (verified); exiting for requeue (the same command resumes)"
        in stopped.stderr
    )
    run = run_dir(tmp_path / "a")
    stage2 = run / "stage_2_difficulty-1"
    assert not (stage2 / "stage.json").exists()  # not marked done
    assert verify(stage2 / "checkpoints" / "checkpoint-3") is None
    assert (
        json.loads((stage2 / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())[
            "global_step"
        ]
        == 3
    )

    # stage 2 starts from stage 1's weights: damaged, they stop the run before any training
    stage1_weights = run / "stage_1_difficulty-2" / "model" / "model.safetensors"
    intact = stage1_weights.read_bytes()
    damaged = bytearray(intact)
    middle = slice(len(intact) // 2, len(intact) // 2 + 4096)
    damaged[middle] = bytes(b ^ 0xFF for b in intact[middle])  # 4 KB flipped, size unchanged
    stage1_weights.write_bytes(bytes(damaged))
    refused = run_command(cmd, env=env, check=False, no_traceback=True)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert (
        f"error: {stage1_weights.parent}: model.safetensors does not match its manifest (bytes "
        in refused.stderr
    )
    assert f"rerun the stage: delete {run / 'stage_1_difficulty-2'}" in refused.stderr
    stage1_weights.write_bytes(intact)

    run_command(cmd, env=env, no_traceback=True)
    run_command(train_cmd(tmp_path / "b"), env=env)
    clean = run_dir(tmp_path / "b")
    assert clean.name == run.name
    resumed = json.loads((stage2 / "stage.json").read_text())
    uninterrupted = json.loads((clean / "stage_2_difficulty-1" / "stage.json").read_text())
    assert resumed["resumed_from"] == "checkpoint-3" and uninterrupted["resumed_from"] is None
    assert resumed["checkpoints_failed_verification"] == []
    assert resumed["fed_matches_plan"] and resumed["fed_sha256"] == uninterrupted["fed_sha256"]
    wa, wb = weights(stage2 / "model"), weights(clean / "stage_2_difficulty-1" / "model")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


def torchrun(root: Path, zero3: bool, *before_script: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *before_script,
        "train.py",
        *TINY,
        f"run.root={root}",
        "trainer.use_cpu=true",
        "trainer.max_steps=6",
        "trainer.save_steps=2",
        "ordering=only-1",
        "eval.generate=false",
        *(["trainer/deepspeed=zero3"] if zero3 else []),
    ]


@pytest.mark.integration
@pytest.mark.parametrize("zero3", [False, True], ids=["ddp", "zero3"])
def test_sigterm_to_one_rank_of_two_stops_both_after_the_same_step(tmp_path, zero3):
    """Only rank 1 gets SIGTERM (during step 3): the ranks agree at the end of the step, both
    save checkpoint-3 (every rank's files under one manifest: RNG states, ZeRO-3's shards)
    and exit 143; the rerun resumes from it to the weights of an uninterrupted two-rank run."""
    env = {"OMP_NUM_THREADS": "1"}
    if zero3:
        needs("deepspeed")
        ext = os.environ.get("TORCH_EXTENSIONS_DIR") or str(ROOT / ".cache" / "torch_extensions")
        env.update(DS_ACCELERATOR="cpu", TORCH_EXTENSIONS_DIR=ext)
    term_at = ("tests/killed_at.py", "TERM@1", "stage_1_difficulty-1", "3")
    stopped = run_command(torchrun(tmp_path / "a", zero3, *term_at), env=env, check=False)
    assert "SIGTERM: saved checkpoint-3 (verified); exiting for requeue" in stopped.stderr
    assert stopped.stderr.count("exitcode  : 143") == 2, stopped.stderr[-3000:]  # both ranks
    stage = run_dir(tmp_path / "a") / "stage_1_difficulty-1"
    assert not (stage / "stage.json").exists()
    ckpt = stage / "checkpoints" / "checkpoint-3"
    assert verify(ckpt) is None
    files = set(json.loads((ckpt / "manifest.json").read_text())["files"])
    assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors"} <= files
    if zero3:
        assert {
            f"global_step3/zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt"
            for r in (0, 1)
            for kind in ("model", "optim")
        } <= files
    else:
        assert "optimizer.pt" in files

    run_command(torchrun(tmp_path / "a", zero3), env=env)
    run_command(torchrun(tmp_path / "b", zero3), env=env)
    clean = run_dir(tmp_path / "b") / "stage_1_difficulty-1"
    record = json.loads((stage / "stage.json").read_text())
    assert record["resumed_from"] == "checkpoint-3" and record["fed_matches_plan"]
    wa, wb = weights(stage / "model"), weights(clean / "model")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
