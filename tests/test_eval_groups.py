"""evaluate.py's groups of comparable runs, from each run's saved config (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import compose
from omegaconf import OmegaConf

from phasedsft.evaluate.generation import discover_runs
from phasedsft.evaluate.run import groups_of, seeds_key_of
from phasedsft.records import DataError

STAGES = {
    "one_off": ["all"],
    "1-2-3": ["difficulty-1", "difficulty-2", "difficulty-3"],
    "paced-linear": ["phase-1", "phase-2"],
}


def fake_run(root: Path, overrides: list[str], name: str | None = None) -> str:
    """A finished run as train.py leaves it: config.yaml, run.json, stage markers, model dirs."""
    cfg = compose(overrides)
    run_dir = root / (name or str(cfg.run.name))
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    stages = STAGES[str(cfg.ordering.name)]
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "stages": [
                    {"index": i, "name": s, "order_sha256": f"{run_dir.name}-{i}"}
                    for i, s in enumerate(stages, start=1)
                ]
            }
        )
    )
    for i, s in enumerate(stages, start=1):
        (run_dir / f"stage_{i}_{s}" / "model").mkdir(parents=True)
        (run_dir / f"stage_{i}_{s}" / "stage.json").write_text('{"status": "done"}')
    return run_dir.name


def summary(groups) -> dict[tuple, tuple[str, list[str]]]:
    return {g: (base.name, sorted(r.name for r in cands)) for g, (base, cands) in groups.items()}


def test_datasets_and_subsample_sizes_of_one_sweep_each_get_their_own_baseline(tmp_path):
    # python train.py -m dataset=alpaca,alpaca_cleaned ordering=one_off,1-2-3 scorer=length
    # (the alpaca one-off trained on its own, without naming the scorer it does not read)
    a_base = fake_run(tmp_path, ["dataset=alpaca", "ordering=one_off"])
    a_123 = fake_run(tmp_path, ["dataset=alpaca", "ordering=1-2-3", "scorer=length"])
    c_base = fake_run(tmp_path, ["dataset=alpaca_cleaned", "ordering=one_off", "scorer=length"])
    c_123 = fake_run(tmp_path, ["dataset=alpaca_cleaned", "ordering=1-2-3", "scorer=length"])
    # python train.py -m dataset.max_examples=100,200 ordering=one_off,1-2-3
    size = {
        (n, o): fake_run(tmp_path, [f"dataset.max_examples={n}", f"ordering={o}"])
        for n in (100, 200)
        for o in ("one_off", "1-2-3")
    }
    groups = groups_of(discover_runs(tmp_path), "one_off")
    assert summary(groups) == {
        ("alpaca", "tiny", 0): (a_base, [a_123]),
        ("alpaca_cleaned", "tiny", 0): (c_base, [c_123]),
        ("graded [max_examples=100]", "tiny", 0): (size[100, "one_off"], [size[100, "1-2-3"]]),
        ("graded [max_examples=200]", "tiny", 0): (size[200, "one_off"], [size[200, "1-2-3"]]),
    }


def test_a_scorer_sweep_shares_one_one_off_baseline_and_stays_apart(tmp_path):
    base = fake_run(tmp_path, ["ordering=one_off"])
    oracle = fake_run(tmp_path, ["ordering=1-2-3"])
    length = fake_run(tmp_path, ["ordering=1-2-3", "scorer=length"])
    assert summary(groups_of(discover_runs(tmp_path), "one_off")) == {
        ("graded [scorer=length]", "tiny", 0): (base, [length]),
        ("graded [scorer=oracle]", "tiny", 0): (base, [oracle]),
    }


def test_what_the_baseline_reads_must_match(tmp_path):
    base = fake_run(tmp_path, ["ordering=one_off", "trainer.learning_rate=0.01"])
    fake_run(tmp_path, ["ordering=1-2-3"])
    # another learning rate is another experiment: the 1-2-3 run has no baseline (left out)
    assert summary(groups_of(discover_runs(tmp_path), "one_off")) == {
        ("graded", "tiny", 0): (base, [])
    }
    # two one-off runs that differ only in what a one-off run does not read: which one?
    fake_run(tmp_path, ["ordering=one_off", "scorer=length"])
    fake_run(tmp_path, ["ordering=one_off", "segment=quantile"])
    with pytest.raises(DataError, match=r"match 2 runs with ordering=one_off"):
        groups_of(discover_runs(tmp_path), "one_off")


def test_no_baseline_at_all_is_a_plain_error(tmp_path):
    fake_run(tmp_path, ["ordering=1-2-3"])
    with pytest.raises(
        DataError, match="no group of runs has a baseline run with ordering=one_off"
    ):
        groups_of(discover_runs(tmp_path), "one_off")


def test_a_seed_sweep_pairs_each_seed_with_its_own_baseline(tmp_path):
    # python train.py -m seed=0,1,2 ordering=one_off,1-2-3
    names = {
        (s, o): fake_run(tmp_path, [f"seed={s}", f"ordering={o}"])
        for s in (0, 1, 2)
        for o in ("one_off", "1-2-3")
    }
    groups = groups_of(discover_runs(tmp_path), "one_off")
    assert summary(groups) == {
        ("graded", "tiny", s): (names[s, "one_off"], [names[s, "1-2-3"]]) for s in (0, 1, 2)
    }


def keys(tmp_path, *configs: list[str]) -> list[str]:
    """seeds_key_of each run made from ``configs``, in that order."""
    made = [fake_run(tmp_path, c, name=f"run{i}") for i, c in enumerate(configs)]
    by_name = {r.name: r for r in discover_runs(tmp_path)}
    return [seeds_key_of(by_name[n]) for n in made]


def test_the_same_experiment_under_another_seed_has_the_same_seeds_key(tmp_path):
    # the seed and what follows it (dataset.source.seed, dataset.eval.seed, subsample_seed,
    # segment.random_seed: ${seed}; a paced ordering's seed) set aside
    k = keys(
        tmp_path,
        ["seed=0", "ordering=1-2-3"],
        ["seed=7", "ordering=1-2-3"],
        ["seed=0", "ordering=paced"],
        ["seed=2", "ordering=paced"],
        ["seed=0", "ordering=1-2-3", "dataset.max_examples=100"],
        ["seed=1", "ordering=1-2-3", "dataset.max_examples=100"],
    )
    assert k[0] == k[1]
    assert k[2] == k[3] != k[0]  # the ordering's own settings count
    assert k[4] == k[5] != k[0]
    assert k[2] != k[4]


def test_a_seed_set_to_a_fixed_value_is_compared_as_it_is(tmp_path):
    k = keys(
        tmp_path,
        ["seed=0", "ordering=1-2-3", "dataset.subsample_seed=5"],
        ["seed=1", "ordering=1-2-3", "dataset.subsample_seed=5"],
        ["seed=1", "ordering=1-2-3", "dataset.subsample_seed=6"],
        ["seed=1", "ordering=1-2-3"],  # subsample_seed follows the seed (1)
    )
    assert k[0] == k[1]
    assert len({k[1], k[2], k[3]}) == 3
