"""trainer/stage_policy=reset|continue|carry: the learning rate and optimizer state at stage
boundaries, and a killed run resumed to the same weights under each policy."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose
from helpers import expected_lrs, logged_lrs, run_command, run_dir, stage_dirs, weights

STEPS = 6  # per stage
SETTINGS = [
    *TINY,
    "ordering=1-2",
    f"trainer.max_steps={STEPS}",
    "trainer.logging_steps=1",
    "trainer.save_steps=3",
    "trainer.keep_checkpoints=true",
    "eval.generate=false",
    "eval.after_each_stage=false",
]
POLICIES = {
    "reset": ["trainer/stage_policy=reset"],
    "continue": ["trainer/stage_policy=continue"],
    "carry": ["trainer/stage_policy=carry"],
    "no_rewarmup": ["trainer.stage_policy.warmup_each_stage=false"],
}


def train_cmd(root: Path, policy: str) -> list[str]:
    return [sys.executable, "train.py", *SETTINGS, *POLICIES[policy], f"run.root={root}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for policy in POLICIES:
        root = tmp_path_factory.mktemp(policy)
        run_command(train_cmd(root, policy), no_traceback=True)
        out[policy] = run_dir(root, "summary.json")
    return out


def adam_step(checkpoint: Path) -> float:
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)["state"]
    return float(next(iter(state.values()))["step"])


@pytest.mark.integration
def test_reset_restarts_schedule_and_optimizer_every_stage(runs):
    s1, s2 = stage_dirs(runs["reset"])
    assert logged_lrs(s1) == logged_lrs(s2) == pytest.approx(expected_lrs(STEPS, 1, 1e-3))
    assert adam_step(s2 / "checkpoints" / "checkpoint-3") == 3  # a fresh optimizer
    assert not (s1 / "optimizer_state.pt").exists()


@pytest.mark.integration
def test_continue_spans_one_schedule(runs):
    s1, s2 = stage_dirs(runs["continue"])
    # one warmup (10 % of all 12 steps: 2) and one cosine decay across both stages
    assert logged_lrs(s1) + logged_lrs(s2) == pytest.approx(expected_lrs(2 * STEPS, 2, 1e-3))
    assert adam_step(s2 / "checkpoints" / "checkpoint-3") == 3  # a fresh optimizer
    record = json.loads((s2 / "stage.json").read_text())
    assert record["continuity"] == {
        "warmup": True,
        "span": [STEPS, 2 * STEPS],
        "optimizer_from": None,
    }


@pytest.mark.integration
def test_carry_keeps_moments_but_restarts_the_schedule(runs):
    s1, s2 = stage_dirs(runs["carry"])
    assert logged_lrs(s1) == logged_lrs(s2) == pytest.approx(expected_lrs(STEPS, 1, 1e-3))
    assert adam_step(s2 / "checkpoints" / "checkpoint-3") == STEPS + 3
    saved = torch.load(s1 / "optimizer_state.pt", weights_only=True)
    assert float(next(iter(saved["state"].values()))["step"]) == STEPS
    assert not (s2 / "optimizer_state.pt").exists()  # the last stage has no next one
    # the carried moments changed the training: not the weights reset gives
    reset_w = weights(stage_dirs(runs["reset"])[1] / "model")
    carry_w = weights(s2 / "model")
    assert any(not torch.equal(reset_w[k], carry_w[k]) for k in reset_w)


@pytest.mark.integration
def test_without_rewarmup_later_stages_start_at_the_peak(runs):
    s1, s2 = stage_dirs(runs["no_rewarmup"])
    assert logged_lrs(s1) == pytest.approx(expected_lrs(STEPS, 1, 1e-3))
    assert logged_lrs(s2) == pytest.approx(expected_lrs(STEPS, 0, 1e-3))
    assert logged_lrs(s2)[0] == 1e-3


@pytest.mark.integration
@pytest.mark.parametrize(("policy", "step"), [("continue", 4), ("carry", 2)])
def test_killed_run_resumes_to_the_same_weights(runs, tmp_path, policy, step):
    """continue: killed after stage 2's checkpoint-3 (resumes from it); carry: killed before
    stage 2's first checkpoint (stage 2 restarts, from stage 1's saved optimizer state)."""
    cmd = train_cmd(tmp_path, policy)
    killed = subprocess.run(
        [sys.executable, "tests/killed_at.py", "stage_2_difficulty-2", str(step), *cmd[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_command(cmd, no_traceback=True)
    run = run_dir(tmp_path, "summary.json")
    assert run.name == runs[policy].name
    record = json.loads((run / "stage_2_difficulty-2" / "stage.json").read_text())
    assert record["resumed_from"] == ("checkpoint-3" if step > 3 else None)
    a = weights(runs[policy] / "stage_2_difficulty-2" / "model")
    b = weights(run / "stage_2_difficulty-2" / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert logged_lrs(run / "stage_2_difficulty-2")[-1] == pytest.approx(
        logged_lrs(runs[policy] / "stage_2_difficulty-2")[-1]
    )


def test_the_paper_policy_renames_no_run(tmp_path):
    plain = compose([f"run.root={tmp_path}"])
    named = compose([f"run.root={tmp_path}", "trainer/stage_policy=reset"])
    assert plain.run.name == named.run.name
    other = compose([f"run.root={tmp_path}", "trainer/stage_policy=continue"])
    assert other.run.name != plain.run.name


def test_carried_optimizer_state_with_deepspeed_is_a_plain_error(tmp_path):
    from phasedsft.records import UserError
    from phasedsft.train.run import continuities

    cfg = compose([f"run.root={tmp_path}", "trainer/stage_policy=carry", "trainer/deepspeed=zero3"])
    with pytest.raises(UserError, match="carried does not work with DeepSpeed"):
        continuities(cfg, None, [])
