"""conf/experiment/: one file per paper experiment; its own command composes, every swept run too."""

from __future__ import annotations

import fnmatch
import itertools
import shlex

import pytest
from conftest import CONF, compose
from omegaconf import OmegaConf

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
    # a multirun sweeps comma lists: compose every combination of the swept values
    fixed = [o for o in overrides if "," not in o]
    axes = [
        [f"{key}={v}" for v in values.split(",")]
        for key, values in (o.split("=", 1) for o in overrides if "," in o)
    ]
    for combo in itertools.product(*axes):
        cfg = compose([*fixed, *combo])
        assert cfg.trainer.deepspeed.zero_optimization.stage == 3
        assert list(cfg.segment.method.thresholds) == [1.5, 3.5]
        # the authors' released scores: the paper's stages exactly
        assert cfg.dataset.name in ("authors_alpaca", "authors_alpaca_cleaned")
        assert cfg.dataset.source.format == "phasedsft_scored"
        assert cfg.trainer.learning_rate == 5e-6  # the paper's hyper-parameters
    # the experiment's own sweep over orderings
    from hydra import compose as hydra_compose

    full = hydra_compose(config_name="train", overrides=fixed, return_hydra_config=True)
    orderings = full.hydra.sweeper.params.ordering.split(",")
    assert "one_off" in orderings
    for ordering in orderings:
        assert compose([*fixed, f"ordering={ordering}"]).ordering.name == ordering


def swept(name: str) -> dict[str, list[str]]:
    """The values each key of an experiment's own command (line 2) sweeps, or is set to."""
    words = shlex.split((CONF / "experiment" / f"{name}.yaml").read_text().splitlines()[1][2:])
    return {k: v.split(",") for k, v in (w.split("=", 1) for w in words[3:] if "=" in w)}


def test_every_table_of_the_paper_has_its_command():
    """Table 2 and Table 3 on Alpaca 52K and Alpaca-cleaned with the three models, Table 4 at
    7B and 13B, Exp 4 at 7B: the authors' released scores, on SLURM."""
    both = ["authors_alpaca", "authors_alpaca_cleaned"]
    three = ["llama2_7b", "llama2_13b", "mistral_7b"]
    for name, models, datasets in (
        ("exp1_phased_vs_one_off", three, both),  # Table 2
        ("exp2_random_stages", three, both),  # Table 3
        ("exp3_permutations", ["llama2_7b", "llama2_13b"], ["authors_alpaca"]),  # Table 4
        ("exp4_stage3_only", ["llama2_7b"], ["authors_alpaca"]),
    ):
        sweep = swept(name)
        assert sweep["model"] == models, name
        assert sweep["dataset"] == datasets, name
        assert sweep["launcher"] == ["slurm"], name


def evaluations(name: str) -> list[list[str]]:
    """An experiment's ``# then: python evaluate.py ...`` lines, as overrides."""
    lines = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()
    return [
        shlex.split(line.removeprefix("# then: "))[2:]
        for line in lines
        if line.startswith("# then: python evaluate.py")
    ]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_says_how_it_is_judged(name):
    commands = evaluations(name)
    assert commands, f"{name}: no '# then: python evaluate.py ...' line"
    for words in commands:
        cfg = compose(words, config_name="evaluate")
        assert cfg.judge.name == "gpt4" and len(cfg.eval_sets) == 6
        assert cfg.baseline in ("one_off", "random_matched")


def test_table3_compares_difficulty_stages_with_random_stages():
    """The random-stage run is the baseline; the phased run of the same data and model is
    judged against it, nothing else, in a report folder of its own."""
    (words,) = [w for w in evaluations("exp2_random_stages") if "baseline=random_matched" in w]
    cfg = compose(words, config_name="evaluate")
    assert cfg.out_dir != compose([], config_name="evaluate").out_dir
    job = ["model=llama2_13b", "dataset=authors_alpaca_cleaned", "launcher=slurm"]
    phased = compose(["+experiment=exp1_phased_vs_one_off", *job, "ordering=1-2-3"])
    random = compose(["+experiment=exp2_random_stages", *job, "ordering=random_matched"])
    one_off = compose(["+experiment=exp2_random_stages", *job, "ordering=one_off"])

    def picked(cfg_run):
        return any(fnmatch.fnmatch(cfg_run.run.name, g) for g in cfg.select)

    assert picked(phased) and picked(random) and not picked(one_off)
    # one group: the two runs differ in their ordering only
    a, b = (OmegaConf.to_container(c, resolve=False) for c in (phased, random))
    for c in (a, b):
        c.pop("ordering"), c.pop("run")
    assert a == b


def test_scores_of_your_own_train_with_the_same_experiments():
    """The second path: a file score.py wrote, through the same experiment files."""
    cfg = compose(
        [
            "+experiment=exp1_phased_vs_one_off",
            "model=llama2_7b",
            "dataset=jsonl",
            "dataset.source.path=/data/scored.jsonl",
        ]
    )
    assert cfg.dataset.source.format == "alpaca" and cfg.scorer.name == "oracle"
    assert cfg.prompt._target_ == "phasedsft.prompts.UserAssistantTemplate"


# ---------------------------------------------------------------- studies beyond the paper

STUDIES = sorted(p.stem for p in (CONF / "experiment").glob("study_*.yaml"))


def test_the_studies_exist():
    assert STUDIES == [
        "study_pacing",
        "study_replay",
        "study_seeds",
        "study_selection",
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
    # a baseline is trained once per seed, not once per option it ignores (#23 item 12); once
    # per data selection (selection=...), which changes what it trains on
    baselines = [
        (compose(job).seed, str(compose(job).selection))
        for job in jobs
        if compose(job).ordering.name == "one_off"
    ]
    assert len(baselines) == len(set(baselines))


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
