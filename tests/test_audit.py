"""The data-order audit: every rank logs what it fed, rank 0 checks the union against the plan,
and a stage fed out of order fails (on every rank) before it is marked done."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
from conftest import ROOT, TINY

from phasedsft.train.audit import AuditError, FedLog, FeedShape, audit_fed, fed_log_path
from phasedsft.train.stage import STAGE_FILE, SequenceDataset

# ------------------------------------------------------------------ how ranks share a pass


def test_feed_shape_is_what_two_gloo_ranks_fed():
    """Measured on 2 gloo ranks: 60 planned items, 8 per rank and micro-batch."""
    steps = FeedShape(n_planned=60, ranks=2, batch_size=8).steps()
    assert len(steps) == 4 and all(len(s) == 16 for s in steps)
    assert steps[0] == list(range(16))
    # the last global batch is evened out with the first positions of the pass again
    assert steps[3] == [*range(48, 60), 0, 1, 2, 3]
    # gradient accumulation 2, 7 per micro-batch: 5 micro-batches per rank, the last step has 1
    steps = FeedShape(60, ranks=2, batch_size=7, grad_accum=2).steps()
    assert [len(s) for s in steps] == [28, 28, 14]
    assert steps[2] == [*range(56, 60), *range(10)]


def test_feed_shape_of_one_process_pads_nothing():
    steps = FeedShape(60, ranks=1, batch_size=7, grad_accum=2).steps()
    assert [len(s) for s in steps] == [14, 14, 14, 14, 4]
    assert [p for s in steps for p in s] == list(range(60))
    assert FeedShape(60, ranks=2, batch_size=8, drop_last=True).pass_positions() == list(range(48))
    # fewer items than one global batch: the padding cycles through the plan
    assert FeedShape(3, ranks=2, batch_size=4).pass_positions() == [0, 1, 2, 0, 1, 2, 0, 1]


# ------------------------------------------------------------------ audit_fed on written logs

SEQ = [f"ex{i:02d}" for i in range(30)]


def round_robin(tmp_path: Path, shape: FeedShape, n_steps: int) -> dict[int, FedLog]:
    """Logs as accelerate's sampler writes them: global micro-batch j*ranks + r goes to rank r."""
    logs = {r: FedLog(fed_log_path(tmp_path, r), SEQ, r) for r in range(shape.ranks)}
    for k in range(n_steps):
        step = shape.steps()[k % len(shape.steps())]
        for i in range(0, len(step), shape.batch_size):
            logs[(i // shape.batch_size) % shape.ranks].record(k, step[i : i + shape.batch_size])
    return logs


@pytest.mark.parametrize(
    ("ranks", "batch", "accum", "steps"),
    [(1, 4, 1, 8), (2, 4, 1, 4), (2, 4, 1, 9), (2, 3, 2, 7), (3, 4, 1, 5)],
)
def test_the_planned_feed_passes(tmp_path, ranks, batch, accum, steps):
    shape = FeedShape(len(SEQ), ranks, batch, accum)
    result = audit_fed(round_robin(tmp_path, shape, steps), shape, steps)
    assert result.ok and result.problem is None
    assert result.n_fed == sum(len(shape.steps()[k % len(shape.steps())]) for k in range(steps))


def test_the_padding_is_counted(tmp_path):
    shape = FeedShape(len(SEQ), ranks=2, batch_size=4)  # 30 -> 32: two duplicates per pass
    result = audit_fed(round_robin(tmp_path, shape, 8), shape, 8)  # two whole passes
    assert result.ok and result.n_fed == 64 and result.n_padding == 4
    assert result.record()["fed_matches_plan"] is True


def test_which_rank_fed_an_item_of_a_step_does_not_matter(tmp_path):
    shape = FeedShape(len(SEQ), ranks=2, batch_size=4)
    logs = {r: FedLog(fed_log_path(tmp_path, r), SEQ, r) for r in (0, 1)}
    logs[0].record(0, [7, 6, 5, 4])  # step 0 is positions 0..7: any split of them feeds the same
    logs[1].record(0, [0, 1, 2, 3])
    assert audit_fed(logs, shape, 1).ok


def test_an_item_fed_at_another_step_fails_naming_both(tmp_path):
    shape = FeedShape(len(SEQ), ranks=2, batch_size=4)
    logs = {r: FedLog(fed_log_path(tmp_path, r), SEQ, r) for r in (0, 1)}
    logs[0].record(0, [0, 1, 2, 3])
    logs[1].record(0, [4, 5, 6, 9])  # 9 belongs to step 1
    logs[0].record(1, [8, 7, 10, 11])
    logs[1].record(1, [12, 13, 14, 15])
    result = audit_fed(logs, shape, 2)
    assert not result.ok
    assert result.problem == (
        "optimizer step 0: planned position 7 (data_order.txt line 8, id ex07) was not fed; "
        "position 9 (data_order.txt line 10, id ex09) was fed instead, by rank 1 "
        "(fed_ids.rank1.jsonl)"
    )


def test_missing_and_surplus_steps_fail(tmp_path):
    shape = FeedShape(len(SEQ), ranks=2, batch_size=4)
    logs = round_robin(tmp_path, shape, 3)
    result = audit_fed(logs, shape, 4)
    assert result.problem == "optimizer step 3: nothing was fed, the plan feeds 8 items"
    result = audit_fed(logs, shape, 2)
    assert result.problem is not None
    assert result.problem.startswith("optimizer step 2: position 16 (data_order.txt line 17")
    assert result.problem.endswith("but the plan ends before this step")
    (tmp_path / "lost").mkdir()
    lost = round_robin(tmp_path / "lost", shape, 2)  # then rank 1 loses its last micro-batch
    lines = lost[1].path.read_text().splitlines()
    lost[1].path.write_text("\n".join(lines[:-1]) + "\n")
    assert audit_fed(lost, shape, 2).problem == (
        "optimizer step 1: planned position 12 (data_order.txt line 13, id ex12) was not fed"
    )


def test_truncate_keeps_the_steps_before_the_resume_step_on_every_rank(tmp_path):
    shape = FeedShape(len(SEQ), ranks=2, batch_size=4)
    logs = round_robin(tmp_path, shape, 4)
    with open(logs[1].path, "a") as f:
        f.write('{"step": 3, "posit')  # torn by kill -9 mid-write
    for log in logs.values():
        log.truncate(2)
        assert {r["step"] for r in log.records()} == {0, 1}
    assert audit_fed(logs, shape, 2).ok
    for k in (2, 3):  # the resumed run feeds steps 2 and 3 again
        step = shape.steps()[k]
        logs[0].record(k, step[:4])
        logs[1].record(k, step[4:])
    assert audit_fed(logs, shape, 4).ok


# ------------------------------------------------------------------ one process, for real


@pytest.fixture
def tiny_stage(tiny_tokenizer, tmp_path):
    """A 40-example stage of a tiny Llama (5 steps of 8) and the call that trains it."""
    return helpers.tiny_stage(
        tiny_tokenizer, tmp_path / "stage_1_difficulty-1", "trainer.save_steps=100"
    )


def test_a_stage_fed_as_planned_is_done(tiny_stage):
    spec, train = tiny_stage
    spec.dir.mkdir(parents=True)
    stale = fed_log_path(spec.dir, 1)  # left by an earlier attempt on two ranks: not this record
    stale.write_text('{"step": 0, "positions": [39], "ids": ["ex39"]}\n')
    record = train()
    assert record["fed_matches_plan"] is True and record["n_fed"] == 40
    assert record["fed_padding"] == 0 and not stale.exists()
    assert json.loads((spec.dir / STAGE_FILE).read_text())["fed_matches_plan"] is True


def test_a_reordered_stage_fails_and_is_not_marked_done(tiny_stage, monkeypatch):
    spec, train = tiny_stage
    read = SequenceDataset.__getitem__
    swap = {2: 30, 30: 2}  # step 0 and step 3
    monkeypatch.setattr(SequenceDataset, "__getitem__", lambda self, i: read(self, swap.get(i, i)))
    with pytest.raises(AuditError) as e:
        train()
    assert str(e.value).startswith(
        "stage 1 (difficulty-1): the data fed differs from the plan at optimizer step 0: "
        "planned position 2 (data_order.txt line 3, id ex02) was not fed; "
        "position 30 (data_order.txt line 31, id ex30) was fed instead, by rank 0 (fed_ids.jsonl). "
        f"In {spec.dir}: the plan data_order.txt, what was fed fed_ids.jsonl. The stage is not "
        "marked done"
    )
    assert not (spec.dir / STAGE_FILE).exists() and not (spec.dir / "model").exists()


# ------------------------------------------------------------------ two ranks over gloo

SETTINGS = [
    *TINY,
    "trainer.use_cpu=true",
    "trainer.num_train_epochs=1",
    "eval.generate=false",
    "eval.after_each_stage=false",
]

REORDER = '''"""train.py with plan positions 2 and 40 of every stage swapped in what the Trainer reads."""
import runpy
import sys

from phasedsft.train import stage as training

read = training.SequenceDataset.__getitem__
swap = {2: 40, 40: 2}  # optimizer steps 0 and 2 at 8 per rank on 2 ranks
training.SequenceDataset.__getitem__ = lambda self, i: read(self, swap.get(i, i))
sys.argv[0] = TRAIN
runpy.run_path(TRAIN, run_name="__main__")
'''


def torchrun(script: Path, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # --standalone: the rendezvous binds a free port itself (a port picked here and bound later
    # could be taken meanwhile by another launch or server: a race under parallel test runs)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(script), *SETTINGS, f"run.root={root}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_two_ranks_feed_the_plan_between_them(tmp_path):
    # 2 stages of 60 and 49 items; 6 steps of 16 pass each stage's end (padded) and wrap around
    out = torchrun(ROOT / "train.py", tmp_path, "ordering=1-2", "trainer.max_steps=6")
    assert out.returncode == 0, out.stderr[-3000:]
    [run] = [p for p in tmp_path.iterdir() if (p / "summary.json").is_file()]
    stages = sorted(run.glob("stage_*_*/"))
    assert len(stages) == 2
    for st in stages:
        record = json.loads((st / STAGE_FILE).read_text())
        plan = (st / "data_order.txt").read_text().split()
        n, padded = len(plan), -(-len(plan) // 16) * 16
        assert record["fed_matches_plan"] is True and record["global_step"] == 6
        assert record["fed_padding"] == padded - n and record["n_fed"] == 96
        logs = {r: FedLog(fed_log_path(st, r), plan).records() for r in (0, 1)}
        for k in range(6):  # global step k feeds global batch k of the (padded, cyclic) plan
            batch = [(k * 16 + i) % padded % n for i in range(16)]
            fed = [rec for r in (0, 1) for rec in logs[r] if rec["step"] == k]
            assert sorted(p for rec in fed for p in rec["positions"]) == sorted(batch)
            assert [i for rec in fed for i in rec["ids"]] == [
                plan[p] for rec in fed for p in rec["positions"]
            ]
            # as measured: the sampler deals micro-batches round-robin, rank 0 the first
            assert [rec["positions"] for rec in logs[0] if rec["step"] == k] == [batch[:8]]
            assert [rec["positions"] for rec in logs[1] if rec["step"] == k] == [batch[8:]]


@pytest.mark.integration
def test_two_ranks_fed_out_of_order_fail_plainly(tmp_path):
    script = tmp_path / "reordered_train.py"
    script.write_text(f"TRAIN = {str(ROOT / 'train.py')!r}\n{REORDER}")
    out = torchrun(script, tmp_path / "runs", "ordering=only-1", "trainer.max_steps=3")
    assert out.returncode != 0
    message = (
        "error: stage 1 (difficulty-1): the data fed differs from the plan at optimizer step 0: "
        "planned position 2 (data_order.txt line 3, id "
    )
    assert "AuditError" not in out.stderr, out.stderr[-3000:]  # in plain words, no traceback
    exits = dict(
        re.findall(r"rank\s*: (\d) \(local_rank[^\n]*\n\s*exitcode\s*: (-?\d+)", out.stderr)
    )
    # plain_errors' code 2; once one rank has exited, torchrun ends the other with SIGTERM (-15),
    # which may come before that rank's own exit (it has already said why, counted above)
    assert set(exits) == {"0", "1"} and "2" in exits.values(), out.stderr[-3000:]
    assert set(exits.values()) <= {"2", "-15"}, out.stderr[-3000:]
    # every rank that ended by itself said why, in plain words
    said = out.stderr.count(message)
    assert said >= max(1, list(exits.values()).count("2")), out.stderr[-3000:]
    [stage] = (tmp_path / "runs").glob("*/stage_1_difficulty-1")
    assert not (stage / STAGE_FILE).exists() and not (stage / "ranks").exists()
    assert fed_log_path(stage, 0).is_file() and fed_log_path(stage, 1).is_file()
