"""The SLURM path on a real one-node cluster (launch/slurm_local/start.sh): sbatch via submitit.

Skipped, with the reason, when no cluster answers; CI starts one (.ci/run).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY
from helpers import run_command, run_dir, run_dirs, stage_dirs

pytestmark = pytest.mark.integration

SMALL = ["launcher=slurm_local", *TINY, "eval.generate=false"]


def cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(autouse=True)
def _needs_cluster():
    if not cluster_up():
        pytest.skip("no SLURM cluster answers (start one: sudo launch/slurm_local/start.sh)")


def train_cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "train.py", "-m", *SMALL, f"run.root={root}", *extra]


def done(stage: Path) -> dict:
    return json.loads((stage / "stage.json").read_text())


def sacct_state(job_id: str) -> str:
    """The job's final state; accounting may lag behind the job's end (empty, RUNNING...)."""
    state = ""
    for _ in range(150):
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True
        )
        state = out.stdout.split()[0] if out.stdout.strip() else ""
        if state and state not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED"):
            return state
        time.sleep(0.2)
    return state


def test_sweep_of_two_orderings_runs_as_slurm_jobs(tmp_path):
    run_command(train_cmd(tmp_path, "ordering=1-2-3,3-2-1", "trainer.max_steps=8"), timeout=900)
    runs = run_dirs(tmp_path, "summary.json")
    assert [r.name.split("-s0-")[0] for r in runs] == ["graded-tiny-1-2-3", "graded-tiny-3-2-1"]
    for run in runs:
        stages = stage_dirs(run)
        assert len(stages) == 3
        for st in stages:
            assert done(st)["status"] == "done"
            assert (st / "model" / "model.safetensors").is_file()
        job = json.loads((run / "run.json").read_text())["job"]
        assert job["slurm"]["job_id"], "the run did not execute inside a SLURM job"
        assert sacct_state(job["slurm"]["job_id"]) == "COMPLETED"
    order = [d.name for d in stage_dirs(runs[1])]
    assert order == ["stage_1_difficulty-3", "stage_2_difficulty-2", "stage_3_difficulty-1"]


def test_two_tasks_of_one_job_train_as_two_ranks(tmp_path):
    run_command(
        train_cmd(
            tmp_path,
            "ordering=1-2",
            "trainer.max_steps=6",
            "trainer.use_cpu=true",
            "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.mem_gb=8",
        ),
        timeout=900,
    )
    run = run_dir(tmp_path, "summary.json")
    assert json.loads((run / "run.json").read_text())["job"]["world_size"] == 2
    for st in stage_dirs(run):
        record = done(st)
        # each optimizer step took a micro-batch on each of the two ranks; all ranks' logs count
        assert record["global_step"] == 6 and record["n_fed"] == 6 * 16
        assert record["fed_matches_plan"] is True  # rank 0 checked the union of every rank's log


def test_cancelled_job_relaunched_resumes_mid_stage(tmp_path):
    cmd = train_cmd(
        tmp_path,
        "ordering=1-2",
        # long enough that stage 2 cannot finish inside SLURM's KillWait (5 s here): submitit
        # bypasses the SIGTERM of scancel, so the job runs on until the SIGKILL that follows
        "trainer.max_steps=1200",
        "trainer.save_steps=50",
        "trainer.logging_steps=2",
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 600
        ckpt = None
        while time.time() < deadline and ckpt is None:
            # cancel right after stage 2's first complete checkpoint: most of its 1200 steps remain
            # (checkpoints rotate: look for any, not one by name)
            found = list(tmp_path.glob("*/stage_2_*/checkpoints/checkpoint-*/trainer_state.json"))
            ckpt = found[0].parent if found else None
            assert not list(tmp_path.glob("*/stage_2_*/stage.json")), (
                "stage 2 ended before a cancel"
            )
            time.sleep(0.1)
        assert ckpt is not None, "stage 2 never wrote a checkpoint"
        run = ckpt.parents[2]
        job_id = json.loads((run / "run.json").read_text())["job"]["slurm"]["job_id"]
        subprocess.run(["scancel", job_id], check=True)
        # what matters is that the job died mid-stage and that a relaunch resumes it: once
        # accounting says so, the submitting process (which only watches the job) is stopped
        # rather than waited for (submitit notices a cancellation late, through accounting)
        state = sacct_state(job_id)
        for _ in range(300):  # and its processes are gone (it leaves the queue after KillWait)
            queued = ["squeue", "-h", "-j", job_id, "-o", "%T"]
            if not subprocess.run(queued, capture_output=True, text=True).stdout.strip():
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert state.startswith("CANCELLED")
    assert not (run / "stage_2_difficulty-2" / "stage.json").exists()
    stage1 = done(run / "stage_1_difficulty-1")

    run_command(cmd, timeout=900)
    assert done(run / "stage_1_difficulty-1") == stage1  # finished stage: not trained again
    stage2 = done(run / "stage_2_difficulty-2")
    assert stage2["resumed_from"] and stage2["resumed_from"].startswith("checkpoint-")
    assert int(stage2["resumed_from"].split("-")[1]) >= 4
    assert stage2["global_step"] == 1200 and stage2["fed_matches_plan"] is True
    relaunched = json.loads((run / "run.json").read_text())["job"]["slurm"]["job_id"]
    assert relaunched != job_id


def test_a_preview_of_a_slurm_sweep_runs_here_and_queues_nothing(tmp_path):
    """plan_only=true with a SLURM launcher: the plan is made in this process (its table printed
    here), no job reaches the cluster (sacct shows none new)."""

    def jobs() -> set[str]:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-S", "now-1days", "-o", "JobID"],
            capture_output=True,
            text=True,
            check=True,
        )
        return set(out.stdout.split())

    before = jobs()
    out = run_command(train_cmd(tmp_path, "ordering=1-2-3,one_off", "plan_only=true"))
    assert "plan: 2 jobs, 0 invalid, nothing trained" in out.stdout
    assert "nothing is queued" in out.stdout + out.stderr
    assert jobs() == before
    assert not list(tmp_path.rglob(".submitit"))
