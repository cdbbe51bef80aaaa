"""conf/experiment/: one file per paper experiment; its own command composes, every swept run too."""

from __future__ import annotations

import shlex

import pytest
from conftest import CONF, compose

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_the_four_paper_experiments_exist():
    assert EXPERIMENTS == [
        "exp1_phased_vs_one_off",
        "exp2_random_stages",
        "exp3_permutations",
        "exp4_stage3_only",
    ]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_command_composes_for_every_swept_run(name):
    lines = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"  # Hydra reads the package only from the first lines
    command = lines[1].removeprefix("# ")
    words = shlex.split(command)
    assert words[:4] == ["python", "train.py", "-m", f"+experiment={name}"], command
    overrides = [w.replace("SCORED.jsonl", "/data/scored.jsonl") for w in words[3:]]
    # a multirun sweeps comma lists; compose each value of each swept key
    fixed = [o for o in overrides if "," not in o]
    swept = [o for o in overrides if "," in o]
    for o in swept:
        key, values = o.split("=", 1)
        for v in values.split(","):
            cfg = compose([*fixed, f"{key}={v}"])
            assert cfg.trainer.deepspeed.zero_optimization.stage == 3
            assert list(cfg.segment.method.thresholds) == [1.5, 3.5]
            assert cfg.dataset.source.path == "/data/scored.jsonl"
            assert cfg.trainer.learning_rate == 5e-6  # the paper's hyper-parameters
    # the experiment's own sweep over orderings
    from hydra import compose as hydra_compose

    full = hydra_compose(config_name="train", overrides=fixed, return_hydra_config=True)
    orderings = full.hydra.sweeper.params.ordering.split(",")
    assert "one_off" in orderings
    for ordering in orderings:
        assert compose([*fixed, f"ordering={ordering}"]).ordering.name == ordering
