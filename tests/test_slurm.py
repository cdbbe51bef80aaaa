"""The SLURM path on a real cluster (launch/slurm_local/start.sh): sbatch via submitit.

Skipped, with the reason, when no cluster answers; CI starts one (.ci/run) of two nodes
(``SLURM_NODES=2``: psft-n1 and psft-n2, each slurmd in a network and UTS namespace of its own on
this machine). The one-node tests run on either; the two-node tests (ZeRO-3 across the nodes,
a cancelled two-node job relaunched, data-parallel scoring over ``srun``) skip, with the reason,
on a one-node cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY
from helpers import run_command, run_dir, run_dirs, stage_dirs, weights
from helpers.deps import needs

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


# ------------------------------------------------- two nodes on this machine (SLURM_NODES=2)

NODES = ("psft-n1", "psft-n2")
# per stage: scancel's SIGTERM makes the stage save a checkpoint after the step in progress and
# stop (test_sigterm.py), so stage 2 needs only enough steps left after its first checkpoint
STEPS = 30
TWO_NODE_ZERO3 = [
    "hydra.launcher.nodes=2",
    "hydra.launcher.tasks_per_node=1",
    "trainer/deepspeed=zero3",
    "trainer.use_cpu=true",
    "trainer.learning_rate=1e-2",
    f"trainer.max_steps={STEPS}",
    "trainer.save_steps=10",
    "ordering=1-2",
]
PROBE = ROOT / "tests" / "probes"  # sitecustomize.py: which task writes which file


def node_states() -> dict[str, str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True)
    return dict(line.split()[:2] for line in out.stdout.splitlines() if line.strip())


@pytest.fixture
def two_nodes() -> None:
    states = node_states()
    if not all(states.get(n, "").rstrip("*") in ("idle", "mixed", "allocated") for n in NODES):
        pytest.skip(
            f"needs the two-node cluster (sudo SLURM_NODES=2 launch/slurm_local/start.sh); "
            f"nodes now: {states}"
        )


def node_addr(node: str) -> str:
    out = subprocess.run(
        ["scontrol", "show", "node", node], capture_output=True, text=True, check=True
    ).stdout
    return re.search(r"NodeAddr=(\S+)", out).group(1)


def zero3_env(**extra: str) -> dict[str, str]:
    ext = os.environ.get("TORCH_EXTENSIONS_DIR") or str(ROOT / ".cache" / "torch_extensions")
    return {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "TORCH_EXTENSIONS_DIR": ext,
        "TOKENIZERS_PARALLELISM": "false",
        **extra,
    }


def job_logs(root: Path, job_id: str) -> dict[int, str]:
    """Each task's stdout + stderr of a submitit job, by task."""
    folder = root / ".submitit" / job_id
    return {
        t: "".join((folder / f"{job_id}_{t}_log.{ext}").read_text() for ext in ("out", "err"))
        for t in (0, 1)
    }


def job_nodes(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "NodeList"], capture_output=True, text=True
    )
    return out.stdout.strip()


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory) -> dict:
    """One uninterrupted two-node ZeRO-3 run (two stages), every file write of its tasks logged."""
    if not all(
        node_states().get(n, "").rstrip("*") in ("idle", "mixed", "allocated") for n in NODES
    ):
        pytest.skip("needs the two-node cluster (sudo SLURM_NODES=2 launch/slurm_local/start.sh)")
    needs("deepspeed")
    root = tmp_path_factory.mktemp("two_nodes")
    writes = tmp_path_factory.mktemp("writes")
    env = zero3_env(
        PYTHONPATH=os.pathsep.join(filter(None, [str(PROBE), os.environ.get("PYTHONPATH")])),
        PHASEDSFT_WRITES_LOG=str(writes),
        PHASEDSFT_WRITES_UNDER=str(root),
    )
    started = time.time()
    run_command(train_cmd(root, *TWO_NODE_ZERO3), env=env, timeout=900)
    run = run_dir(root, "summary.json")
    job_id = json.loads((run / "run.json").read_text())["job"]["slurm"]["job_id"]
    events = [
        line.split(" ", 3)
        for log in writes.glob("*.log")
        for line in log.read_text().splitlines()
        if line.split(" ", 2)[1] != "-"  # the tasks', not the submitting process's
    ]
    return {
        "root": root,
        "run": run,
        "job_id": job_id,
        "writes": [(host, int(task), event, Path(path)) for host, task, event, path in events],
        "seconds": time.time() - started,
    }


def test_two_nodes_train_a_two_stage_zero3_run_with_ranks_across_them(two_nodes, two_node_run):
    run, job_id = two_node_run["run"], two_node_run["job_id"]
    assert job_nodes(job_id) == "psft-n[1-2]" and sacct_state(job_id) == "COMPLETED"
    stages = stage_dirs(run)
    assert [s.name for s in stages] == ["stage_1_difficulty-1", "stage_2_difficulty-2"]
    for st in stages:
        record = done(st)
        assert record["global_step"] == STEPS and record["fed_matches_plan"] is True
        ranks = {p.stem: json.loads(p.read_text()) for p in (st / "ranks").glob("*.json")}
        assert set(ranks) == {"0", "1"}
        assert all(r["status"] == "done" and r["world_size"] == 2 for r in ranks.values())
    cfg = (run / "config.yaml").read_text()
    assert re.search(r"zero_optimization:\n\s+stage: 3", cfg), "not trained under ZeRO-3"
    w1, w2 = weights(stages[0] / "model"), weights(stages[1] / "model")
    assert w1["model.embed_tokens.weight"].shape[1] == 32  # whole weights, gathered from 2 ranks
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)

    # each task derived its rank from SLURM; MASTER_ADDR is the first node of the job's node list,
    # resolved to that node's own address (its NodeAddr), on both nodes: not loopback
    addr = node_addr("psft-n1")
    assert not addr.startswith("127.")
    logs = job_logs(two_node_run["root"], job_id)
    for task, node in enumerate(NODES):
        expected = (
            f"ranks from SLURM: rank {task} of 2 (local 0 of 1) on {node}, "
            f"MASTER_ADDR=psft-n1 ({addr})"
        )
        assert expected in logs[task], logs[task][-3000:]


def test_each_node_writes_its_own_cache_file(two_nodes, two_node_run):
    """Per-node scratch is per node: the score cache (run.cache_dir, on the shared filesystem)
    holds one live SQLite file per node, each written only by that node's task."""
    cache = two_node_run["root"] / ".cache"
    first = (cache / "scores.sqlite.host").read_text().strip()
    assert first in NODES
    (other,) = set(NODES) - {first}
    assert sorted(p.name for p in cache.glob("scores*.sqlite")) == sorted(
        ["scores.sqlite", f"scores.{other}.sqlite"]
    )
    live = {"scores.sqlite": first, f"scores.{other}.sqlite": other}
    for host, _task, _event, path in two_node_run["writes"]:
        if path.name in live:
            assert host == live[path.name], (host, path)


def test_run_level_files_are_written_once_by_rank_0(two_nodes, two_node_run):
    run = two_node_run["run"]
    per_rank = re.compile(r"(fed_ids\.rank\d+\.jsonl|ranks/\d+\.json|train\.log|\.hydra/.*)$")
    written: dict[Path, set[int]] = {}
    for _host, task, _event, path in two_node_run["writes"]:
        rel = path.relative_to(run) if path.is_relative_to(run) else None
        # a name starting with "." is a temporary one, renamed into place (the rename counts)
        if rel and not per_rank.search(str(rel)) and not path.name.startswith("."):
            written.setdefault(rel, set()).add(task)
    assert {Path("run.json"), Path("config.yaml"), Path("summary.json")} <= set(written)
    assert {p: t for p, t in written.items() if t != {0}} == {}
    assert json.loads((run / "run.json").read_text())["job"]["host"] == "psft-n1"


def test_two_node_job_cancelled_mid_stage_relaunched_ends_with_the_same_weights(
    two_nodes, two_node_run, tmp_path
):
    cmd = train_cmd(tmp_path, *TWO_NODE_ZERO3)
    env = zero3_env()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 600
        ckpt = None
        while time.time() < deadline and ckpt is None:
            found = list(tmp_path.glob("*/stage_2_*/checkpoints/checkpoint-*/trainer_state.json"))
            ckpt = found[0].parent if found else None
            assert not list(tmp_path.glob("*/stage_2_*/stage.json")), (
                "stage 2 ended before a cancel"
            )
            assert proc.poll() is None, proc.stdout.read()[-3000:] if proc.stdout else ""
            time.sleep(0.1)
        assert ckpt is not None, "stage 2 never wrote a checkpoint"
        run = ckpt.parents[2]
        job_id = json.loads((run / "run.json").read_text())["job"]["slurm"]["job_id"]
        # ZeRO-3 across the two nodes: each rank saved its own shard of the optimizer state
        shards = {p.name for p in ckpt.glob("global_step*/*optim_states.pt")}
        subprocess.run(["scancel", job_id], check=True)
        state = sacct_state(job_id)
        for _ in range(300):
            queued = ["squeue", "-h", "-j", job_id, "-o", "%T"]
            if not subprocess.run(queued, capture_output=True, text=True).stdout.strip():
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert state.startswith("CANCELLED") and job_nodes(job_id) == "psft-n[1-2]"
    assert len(shards) == 2 and all("zero_pp_rank_" in s for s in shards), shards
    assert not (run / "stage_2_difficulty-2" / "stage.json").exists()

    run_command(cmd, env=env, timeout=900)
    stage2 = done(run / "stage_2_difficulty-2")
    assert stage2["resumed_from"] and stage2["resumed_from"].startswith("checkpoint-")
    assert 10 <= int(stage2["resumed_from"].split("-")[1]) < STEPS
    assert stage2["global_step"] == STEPS and stage2["fed_matches_plan"] is True
    assert json.loads((run / "run.json").read_text())["job"]["slurm"]["job_id"] != job_id
    a = weights(two_node_run["run"] / "stage_2_difficulty-2" / "model")
    b = weights(run / "stage_2_difficulty-2" / "model")
    assert run.name == two_node_run["run"].name and a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


# ------------------------------------------------- data-parallel scoring over SLURM tasks


def score_cmd(root: Path) -> list[str]:
    return [
        "score.py",
        "scorer=ifd",
        "model=tiny",
        "dataset.source.n=40",
        "dataset.eval=null",
        f"run.root={root}",
        f"run.cache_dir={root}/cache",
    ]


def scored(root: Path) -> list[dict]:
    (path,) = root.rglob("scored.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_srun_two_tasks_score_what_one_process_does(tmp_path):
    """``srun -n 2 score.py``: a SLURM job of two tasks (one per node on the two-node cluster,
    both on the one node otherwise) scores disjoint halves; the merged scored.jsonl is the
    one-process run's. Across nodes, the shared cache is one live file per host plus each
    host's sealed segments."""
    states = node_states()
    nodes = 2 if all(states.get(n, "").rstrip("*") in ("idle", "mixed") for n in NODES) else 1
    one = run_command([sys.executable, *score_cmd(tmp_path / "one")], timeout=300)
    srun = ["srun", "-N", str(nodes), "-n", "2", "--cpus-per-task=1", "--mem=4G"]
    two = run_command([*srun, sys.executable, *score_cmd(tmp_path / "two")], timeout=300)
    a, b = scored(tmp_path / "one"), scored(tmp_path / "two")
    assert [r["id"] for r in a] == [r["id"] for r in b]  # same ids, same order
    for x, y in zip(a, b, strict=True):
        assert y["score_detail"]["raw"] == pytest.approx(x["score_detail"]["raw"], rel=1e-5)
        assert y["score"] == x["score"]
    logs = one.stdout + one.stderr, two.stdout + two.stderr
    for r in (0, 1):
        assert f"rank {r} of 2 scores 20 of 40 examples" in logs[1]
    (summary,) = (tmp_path / "two").rglob("summary.json")
    summary = json.loads(summary.read_text())
    assert summary["ranks"] == 2 and summary["answered_this_run"] == 40
    if nodes == 2:
        for task, node in enumerate(NODES):
            assert f"rank {task} of 2 (local 0 of 1) on {node}, MASTER_ADDR=psft-n1" in logs[1]
        cache = tmp_path / "two" / "cache"
        first = (cache / "scores.sqlite.host").read_text().strip()
        (other,) = set(NODES) - {first}
        assert (cache / f"scores.{other}.sqlite").is_file()
        sealed = {p.name.split(".")[0] for p in (cache / "scores.sqlite.sealed").iterdir()}
        assert sealed == {"psft-n1", "psft-n2"}  # each host's rows, sealed for the other
