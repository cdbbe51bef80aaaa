"""Run identity never depends on where code lives (tests/identity_fixture.py says why).

The fixture holds run names, score/judge cache keys, stage-manifest file names and the
comparison identity, written by the code as it stood before the reorganisation into one
folder per pipeline step; a value that changes means a user's run would start over, or a
cached GPT-4 answer would be paid again.
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from helpers import run_command, run_dir, run_dirs
from identity_fixture import FIXTURE, current

LEGACY_RUN = [
    "dataset.source.n=60",
    "dataset.eval.n=8",
    "model.tokenizer.vocab_size=300",
    "model.loader.hidden_size=16",
    "model.loader.intermediate_size=32",
    "model.loader.num_hidden_layers=1",
    "model.loader.num_attention_heads=2",
    "model.loader.num_key_value_heads=2",
    "trainer.per_device_train_batch_size=8",
    "trainer.max_steps=2",
    "eval.max_new_tokens=4",
    "ordering=1-2",
]  # + run.root=tests/fixtures/run_v1 run.cache_dir=tests/fixtures/run_v1/cache


@pytest.fixture(scope="module")
def now() -> dict:
    return current()


@pytest.mark.parametrize("part", ["run_names", "cache_keys", "manifests", "comparison"])
def test_identity_is_what_it_was_before_the_code_moved(now, part):
    before = json.loads(FIXTURE.read_text())
    assert now[part] == before[part]


@pytest.mark.integration
def test_a_run_made_before_the_move_resumes_after_it(tmp_path):
    root = tmp_path / "run_v1"
    shutil.copytree(FIXTURE.parent / "run_v1", root)
    run = run_dir(root)
    stamps = {p: p.stat().st_mtime_ns for p in run.glob("stage_*/stage.json")}
    out = run_command(
        [
            sys.executable,
            "train.py",
            *LEGACY_RUN,
            f"run.root={root}",
            f"run.cache_dir={root / 'cache'}",
        ],
        timeout=600,
    )
    log = out.stdout + out.stderr
    assert run_dirs(root) == [run]
    assert log.count("already done: skipping") == 2, log[-3000:]
    assert "reusing stage manifest" in log
    assert {p: p.stat().st_mtime_ns for p in run.glob("stage_*/stage.json")} == stamps
    assert not list(run.glob("stage_*/checkpoints"))


def test_a_config_saved_before_the_move_is_read_through_the_new_modules():
    from omegaconf import OmegaConf

    from phasedsft.config import current_target, first_target
    from phasedsft.evaluate.generation import Run

    run = run_dir(FIXTURE.parent / "run_v1")
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.ordering._target_ == "phasedsft.ordering.Phased"  # as the old code wrote it
    assert current_target(saved.ordering._target_) == "phasedsft.train.ordering.Phased"
    assert (
        first_target("phasedsft.segment.methods.ManualThresholds")
        == "phasedsft.stages.ManualThresholds"
    )
    old = Run(run, saved, [])
    now = Run(
        run,
        OmegaConf.merge(saved, {"ordering": {"_target_": "phasedsft.train.ordering.Phased"}}),
        [],
    )
    assert old.unused == now.unused and old.identity == now.identity


def test_a_new_option_renames_no_run_at_its_neutral_value_and_every_run_otherwise():
    from conftest import compose

    default = compose([]).run.name
    assert compose(["trainer.packing=false"]).run.name == default
    assert compose(["trainer.packing=true"]).run.name != default
    assert compose(["trainer.packing_max_tokens=4096"]).run.name != default
