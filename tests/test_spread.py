"""Data-parallel scoring (phasedsft/score/spread.py): each rank scores a disjoint share of the
examples, and the merged result is a one-process run's.

Unit: two ranks as two threads with their own cache connections, meeting at a barrier.
Integration: ``torchrun --nproc_per_node 2 score.py`` against one process; a two-rank self-paced
training run (its re-scoring split between the ranks). The SLURM job of two tasks is in
test_slurm.py (it needs the cluster).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import ClassVar

import pytest
from conftest import ROOT, TINY
from helpers import stage_dirs

from phasedsft.llm.cache import Result, ScoreCache, cache_key
from phasedsft.records import Example
from phasedsft.score.context import ScoreContext
from phasedsft.score.local import run_batched
from phasedsft.score.spread import Ranks, merged_counts, spread_run


def examples(n: int) -> list[Example]:
    return [Example(f"ex{i}", f"instruction {i}", "", "x" * (i + 1)) for i in range(n)]


@dataclass
class CountingScorer:
    """A 'local model' scorer that counts what it computes (every call, every example)."""

    computed: list[str]
    name: str = "counting"
    uses_model: ClassVar[bool] = True
    costs_nothing: ClassVar[bool] = False

    def run(self, exs, ctx):
        def compute(batch, keys):
            self.computed.extend(ex.id for ex in batch)
            return [
                Result(k, ex.id, self.name, "ok", float(len(ex.output)))
                for ex, k in zip(batch, keys, strict=True)
            ]

        return run_batched(self.name, {"scorer": self.name}, exs, ctx, compute, 4)

    def finalize(self, raw):
        return raw

    def score(self, exs, ctx):
        return self.finalize(self.run(exs, ctx).raw_scores())

    def estimate(self, exs, ctx):
        return None

    def secrets(self):
        return ()


def test_shares_are_disjoint_and_cover_every_example():
    exs = examples(11)
    shares = [Ranks(r, 3).share(exs) for r in range(3)]
    ids = [ex.id for share in shares for ex in share]
    assert sorted(ids) == sorted(ex.id for ex in exs) and len(ids) == len(set(ids))
    assert Ranks().share(exs) == exs


def test_two_ranks_compute_each_example_once_and_both_read_the_whole(tmp_path):
    exs = examples(18)
    computed: list[str] = []
    meet = threading.Barrier(2)
    out: dict[int, tuple] = {}

    def rank(r: int) -> None:
        ctx = ScoreContext(cache=ScoreCache(tmp_path / "scores.sqlite"))
        out[r] = spread_run(CountingScorer(computed), exs, ctx, Ranks(r, 2), meet.wait)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(computed) == sorted(ex.id for ex in exs)  # each once, by one rank
    for r in (0, 1):
        whole, own = out[r]
        assert own.done == 9  # its share
        assert whole.raw_scores() == [float(len(ex.output)) for ex in exs]  # all, in order
    merged = merged_counts(out[0][0], [{"done": 9, "failed": 0, "requests": 0}] * 2)
    assert merged.done == 18 and merged.cached == 0


def test_a_share_nobody_recorded_is_scored_by_the_reader(tmp_path):
    """Correctness never rests on the meeting: a rank whose partner never wrote scores the rest."""
    exs = examples(6)
    computed: list[str] = []
    ctx = ScoreContext(cache=ScoreCache(tmp_path / "scores.sqlite"))
    whole, own = spread_run(CountingScorer(computed), exs, ctx, Ranks(0, 2), lambda: None)
    assert own.done == 3 and whole.done == 3  # the other three, read as missing, scored here
    assert sorted(computed) == sorted(ex.id for ex in exs)
    key = cache_key({"scorer": "counting"}, exs[1])
    assert ctx.cache.get_many([key])[key].score == 2.0


def test_a_scorer_that_costs_nothing_is_not_split_even_with_a_tokenizer(tmp_path):
    """scorer=length needs the tokenizer (uses_model) but computes at once, caching nothing:
    split, each rank's share would be counted again on top of the whole (summary.json would
    not add up)."""
    from phasedsft.score.base import LengthScorer
    from phasedsft.score.spread import splits

    assert LengthScorer.uses_model and LengthScorer.costs_nothing
    assert not splits(LengthScorer())
    assert splits(CountingScorer([]))


def test_a_scorer_without_a_model_is_not_split(tmp_path):
    from phasedsft.score.base import OracleScorer

    exs = [Example(f"ex{i}", "q", "", "a", score=2.0) for i in range(4)]
    ctx = ScoreContext(cache=ScoreCache(tmp_path / "scores.sqlite"))
    whole, own = spread_run(OracleScorer(), exs, ctx, Ranks(1, 2), lambda: None)
    assert own is None and len(whole.ordered) == 4


# ------------------------------------------------------------ real processes


def score_cmd(root, *launcher: str) -> list[str]:
    return [
        *launcher,
        "score.py",
        "scorer=ifd",
        "model=tiny",
        "dataset.source.n=40",
        "dataset.eval=null",
        f"run.root={root}",
        f"run.cache_dir={root}/cache",
    ]


def scored(root) -> list[dict]:
    (path,) = root.rglob("scored.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_scores(one: list[dict], many: list[dict]) -> None:
    assert [r["id"] for r in one] == [r["id"] for r in many]  # same ids, same order
    for a, b in zip(one, many, strict=True):
        assert b["score_detail"]["raw"] == pytest.approx(a["score_detail"]["raw"], rel=1e-5)
        assert b["score"] == a["score"]


@pytest.mark.integration
def test_torchrun_two_ranks_score_what_one_process_does(tmp_path):
    run = dict(cwd=ROOT, capture_output=True, text=True, timeout=300)
    one = subprocess.run(score_cmd(tmp_path / "one", sys.executable), **run)
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    two = subprocess.run(score_cmd(tmp_path / "two", *torchrun, "--nproc_per_node", "2"), **run)
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_scores(scored(tmp_path / "one"), scored(tmp_path / "two"))
    for r in (0, 1):  # each rank scored its half
        assert f"rank {r} of 2 scores 20 of 40 examples" in two.stdout + two.stderr
    (summary,) = (tmp_path / "two").rglob("summary.json")
    summary = json.loads(summary.read_text())
    assert summary["ranks"] == 2 and summary["answered_this_run"] == 40 and summary["cached"] == 0


@pytest.mark.integration
def test_two_ranks_of_a_self_paced_run_split_its_rescoring(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "train.py",
        *TINY,
        "ordering=self_paced",
        "trainer.max_steps=3",
        "trainer.use_cpu=true",
        "eval.generate=false",
        f"run.root={tmp_path}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    logs = out.stdout + out.stderr
    shares = [line for line in logs.splitlines() if " of 2 scores " in line]
    assert any("rank 0 of 2 scores" in s for s in shares)
    assert any("rank 1 of 2 scores" in s for s in shares)
    (run,) = {p.parent for p in tmp_path.rglob("run.json")}
    stages = stage_dirs(run)
    assert len(stages) == 3
    for st in stages:  # both ranks fed the same re-cut stages (rank 0 checked every rank's log)
        assert json.loads((st / "stage.json").read_text())["fed_matches_plan"] is True


def test_a_local_scorer_runs_on_this_ranks_gpu(monkeypatch):
    from phasedsft.score import local

    assert local.scoring_device(cuda=True, env={"LOCAL_RANK": "3"}) == "cuda:3"
    assert local.scoring_device(cuda=True, env={}) == "cuda:0"
    assert local.scoring_device(cuda=False, env={"LOCAL_RANK": "3"}) == "cpu"

    class Placed:  # a model its loader placed (device_map): left where it is
        def __init__(self):
            self.hf_device_map = {"": 1}

    monkeypatch.setattr(local, "scoring_device", lambda: "cuda:1")
    model = Placed()
    assert local.on_scoring_device(model) is model
