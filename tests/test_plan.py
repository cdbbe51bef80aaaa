"""plan_only=true: a sweep is previewed (orderings, stage sizes, steps) without training anything."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import ROOT
from helpers import run_command

from phasedsft.train.plan import stage_steps

SMALL = ["dataset.source.n=200", "dataset.eval.n=10", "model.tokenizer.vocab_size=300"]


def readme_command(marker: str) -> list[str]:
    """The README's command line that contains ``marker``, as argv words after ``train.py``."""
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("python train.py") and marker in line:
            words = shlex.split(line.split("#")[0])
            return words[2:]
    raise AssertionError(f"README has no 'python train.py' line with {marker!r}")


def plan(args: list[str], tmp_path, check: bool = True) -> subprocess.CompletedProcess:
    return run_command(
        [sys.executable, "train.py", *args, "plan_only=true", *SMALL, f"run.root={tmp_path}"],
        timeout=300,
        check=check,
    )


@pytest.mark.integration  # a subprocess of its own: seconds, not milliseconds
def test_readme_permutation_sweep_plans_exactly_the_six_orders_of_three_stages(tmp_path):
    args = readme_command("every permutation")
    proc = plan(args, tmp_path)
    jobs = re.findall(r"^  #\d+ (\S+)", proc.stdout, re.M)
    assert sorted(jobs) == ["1-2-3", "1-3-2", "2-1-3", "2-3-1", "3-1-2", "3-2-1"], proc.stdout
    assert "0 invalid, nothing trained" in proc.stdout
    # a plan writes no run: no stage directory, no run.json anywhere
    assert not list(tmp_path.rglob("run.json")) and not list(tmp_path.rglob("stage_*"))


@pytest.mark.integration  # a subprocess of its own: seconds, not milliseconds
def test_invalid_job_fails_the_plan_and_names_the_reason(tmp_path):
    proc = plan(["-m", "ordering=1-2-3,1-2-4"], tmp_path, check=False)
    assert proc.returncode == 1
    assert "1 of 2 jobs are invalid" in proc.stderr
    assert re.search(r"1-2-4 .*INVALID: ordering asks for difficulty stage 4", proc.stdout)
    assert re.search(r"1-2-3 .*difficulty-1 \d+ ex / \d+ steps", proc.stdout)


@pytest.mark.integration  # a subprocess of its own: seconds, not milliseconds
def test_single_invalid_plan_ends_like_any_run(tmp_path):
    proc = plan(["ordering=only-4"], tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ordering asks for")
    assert "Traceback" not in proc.stderr


def test_step_count_is_the_trainers_arithmetic():
    t = SimpleNamespace(max_steps=-1, per_device_train_batch_size=16, gradient_accumulation_steps=1)
    assert stage_steps(2 * 30_300, t, world=8) == 474  # Alpaca stage 1, 2 epochs, 8 GPUs
    assert stage_steps(100, t, world=1) == 7
    t.gradient_accumulation_steps = 4
    assert stage_steps(100, t, world=1) == 2  # ceil(7 batches / 4)
    t.max_steps = 3
    assert stage_steps(10**6, t, world=8) == 3
