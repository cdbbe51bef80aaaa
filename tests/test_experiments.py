"""conf/experiment/: one file per paper experiment; its own command composes, every swept run too."""

from __future__ import annotations

import shlex

import pytest
from conftest import CONF, compose

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("exp*.yaml"))  # the paper's


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


# ---------------------------------------------------------------- studies beyond the paper

STUDIES = sorted(p.stem for p in (CONF / "experiment").glob("study_*.yaml"))


def test_the_studies_exist():
    assert STUDIES == [
        "study_pacing",
        "study_replay",
        "study_seeds",
        "study_stage_policies",
    ]


def study_jobs(name: str) -> list[list[str]]:
    """Every job of a study's own sweep (line 2 of its file), as overrides."""
    import itertools

    import yaml

    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    words = shlex.split(text.splitlines()[1].removeprefix("# ").split("(")[0])
    assert words == ["python", "train.py", "-m", f"+experiment={name}"], words
    params = yaml.safe_load(text)["hydra"]["sweeper"]["params"]
    axes = [[f"{k}={v}" for v in str(vs).split(",")] for k, vs in params.items()]
    return [[f"+experiment={name}", *combo] for combo in itertools.product(*axes)]


@pytest.mark.parametrize("name", STUDIES)
def test_study_composes_for_every_swept_run(name):
    jobs = study_jobs(name)
    names = set()
    for job in jobs:
        cfg = compose(job)
        names.add(cfg.run.name)
        assert cfg.trainer.learning_rate == 1e-3  # the offline default's (tiny) trainer
    assert len(names) == len(jobs)  # every job its own run directory


@pytest.mark.integration
def test_every_study_runs_on_the_offline_default(tmp_path):
    """Each study's multirun, shrunk (few steps, no generation): one finished run per job."""
    import json
    import sys

    from helpers import run_command, run_dirs

    small = [
        "dataset.source.n=60",
        "dataset.eval.n=10",
        "model.tokenizer.vocab_size=300",
        "model.loader.hidden_size=32",
        "model.loader.intermediate_size=64",
        "model.loader.num_hidden_layers=1",
        "trainer.max_steps=1",
        "eval.generate=false",
        "eval.after_each_stage=false",
    ]
    for name in STUDIES:
        root = tmp_path / name
        run_command(
            [sys.executable, "train.py", "-m", f"+experiment={name}", *small, f"run.root={root}"],
            no_traceback=True,
        )
        runs = run_dirs(root, "summary.json")
        assert len(runs) == len(study_jobs(name)), name
        for run in runs:
            summary = json.loads((run / "summary.json").read_text())
            assert all(s["fed_matches_plan"] for s in summary["per_stage"]), run
