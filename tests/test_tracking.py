"""logger=wandb for real, in offline mode: the run file holds config, stage plan and metrics, no secret;
logger=tensorboard for real: event files per stage and across stages."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import TINY
from helpers import run_command, run_dir
from helpers.deps import needs

pytestmark = pytest.mark.integration

SECRETS = {"OPENAI_API_KEY": "sk-phasedsft-FAKE-OPENAI-5d41402abc4b2a76", "WANDB_API_KEY": "f" * 40}


def test_wandb_offline_run_holds_stage_metrics_and_resumes_the_same_run(tmp_path):
    needs("wandb")
    cmd = [
        sys.executable,
        "train.py",
        "logger=wandb",
        *TINY,
        f"run.root={tmp_path}",
        "trainer.max_steps=6",
        "ordering=1-2",
    ]
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", **SECRETS}
    run_command(cmd, env=env)
    run = run_dir(tmp_path, "summary.json")
    [offline] = list((run / "wandb").glob("offline-run-*"))
    [record_file] = list(offline.glob("run-*.wandb"))
    data = record_file.read_bytes()
    stage2 = json.loads(next(run.glob("stage_2_*/stage.json")).read_text())
    for expected in [
        b"graded-tiny-s0",  # group: the sweep
        b"tiny-1-2-s0",  # name: model / ordering / seed
        b"stage/eval_all_loss",  # per-stage metrics
        b"stage_2/order_sha256",
        stage2["order_sha256"].encode(),  # the data-order hash itself
        b"train/loss",  # the Trainer's own callback
        b"learning_rate",  # the config
    ]:
        assert expected in data, expected

    # rerun (as a requeued job would): same W&B run id, resumed
    run_command(cmd, env=env)
    ids = {p.name.rsplit("-", 1)[-1] for p in (run / "wandb").glob("offline-run-*")}
    assert len(ids) == 1 and len(list((run / "wandb").glob("offline-run-*"))) >= 1

    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        content = path.read_bytes()
        for name, secret in SECRETS.items():
            assert secret.encode() not in content, f"{name} leaked into {path}"


def test_tensorboard_holds_each_stage_steps_and_the_curve_across_stages(tmp_path):
    needs("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cmd = [
        sys.executable,
        "train.py",
        "logger=tensorboard",
        *TINY,
        f"run.root={tmp_path}",
        "trainer.max_steps=6",
        "ordering=1-2",
        "eval.generate=false",
    ]
    run_command(cmd, env=SECRETS, no_traceback=True)
    run = run_dir(tmp_path, "summary.json")
    logs = run / "tensorboard"
    assert sorted(p.name for p in logs.iterdir()) == [
        "stage_1_difficulty-1",
        "stage_2_difficulty-2",
        "stages",
    ]

    def scalars(path):
        acc = EventAccumulator(str(path))
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    for stage in ("stage_1_difficulty-1", "stage_2_difficulty-2"):
        steps = scalars(logs / stage)
        assert [s for s, _ in steps["train/loss"]] == [2, 4, 6]  # every logging_steps, per stage
        assert "train/learning_rate" in steps
    across = scalars(logs / "stages")
    records = [json.loads(p.read_text()) for p in sorted(run.glob("stage_*_*/stage.json"))]
    level1 = across["stage/eval_level1_loss"]
    assert [s for s, _ in level1] == [r["index"] for r in records] == [1, 2]
    assert [v for _, v in level1] == pytest.approx(
        [r["metrics"]["eval"]["eval_level1_loss"] for r in records], rel=1e-6
    )
    # no secret in anything TensorBoard wrote (it records the Trainer's arguments as text)
    for f in logs.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not any(v.encode() in data for v in SECRETS.values()), f


def test_evaluate_adds_win_rates_to_the_training_runs_wandb_run(tmp_path):
    needs("wandb")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", **SECRETS}
    run_command(
        [
            sys.executable,
            "train.py",
            "-m",
            "ordering=one_off,1-2",
            "logger=wandb",
            *TINY,
            f"run.root={tmp_path}",
            "trainer.max_steps=3",
            "eval.generate=false",
        ],
        env=env,
    )
    out = run_command(
        [sys.executable, "evaluate.py", f"sweep_dir={tmp_path}", f"out_dir={tmp_path}/evaluation"],
        env=env,
        no_traceback=True,
    )
    summary = json.loads((tmp_path / "evaluation" / "summary.json").read_text())
    [phased] = [p for p in tmp_path.iterdir() if p.name.startswith("graded-tiny-1-2-")]
    assert summary["wandb_runs_updated"] == [phased.name], out.stdout[-2000:]
    offline = sorted((phased / "wandb").glob("offline-run-*"))
    assert len(offline) == 2  # the training run, then the same run resumed by evaluate.py
    from phasedsft.io import stable_run_id

    data = next(offline[-1].glob("run-*.wandb")).read_bytes()
    assert stable_run_id(phased).encode() in data
    assert b"winrate/held_out/stage_2_vs_one_off" in data
    assert not any(v.encode() in data for v in SECRETS.values())
