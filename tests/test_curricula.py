"""Replay, paced and interleaved curricula (phasedsft/train/curricula.py): pure transforms,
then real runs through train.py with the fed-order audit."""

from __future__ import annotations

import itertools
import json
import sqlite3
import sys
from collections import Counter

import pytest
from conftest import ROOT, TINY, compose
from helpers import run_command, run_dir, stage_dirs

from phasedsft.records import DataError, Example
from phasedsft.segment.manifest import StageManifest
from phasedsft.train.curricula import (
    Interleaved,
    Paced,
    Replay,
    allocate,
    competence,
    merge_evenly,
)
from phasedsft.train.ordering import Phase


def stages(*sizes: int) -> list[Phase]:
    return [
        Phase(f"difficulty-{k}", tuple(f"s{k}-{i}" for i in range(n)))
        for k, n in enumerate(sizes, start=1)
    ]


def test_allocate_splits_in_proportion_within_caps():
    assert allocate(10, [1, 1], [100, 100]) == [5, 5]
    assert allocate(10, [1, 3], [100, 100]) == [2, 8]  # 2.5 / 7.5: the tie goes to the heavier
    assert allocate(10, [1, 1], [2, 100]) == [2, 8]  # a small stage gives what it has
    assert allocate(10, [1, 1], [2, 3]) == [2, 3]  # never more than there is
    assert sum(allocate(7, [1, 2, 4], [50, 50, 50])) == 7


def test_uniform_replay_mixes_earlier_examples_in_proportion():
    phases = Replay(fraction=0.25, seed=0).apply(stages(40, 40, 80), n_examples=160)
    first, second, third = phases
    assert first.ids == stages(40)[0].ids and first.mixture == (("difficulty-1", 40),)
    assert second.mixture == (("difficulty-2", 40), ("difficulty-1", 10))
    assert third.mixture == (("difficulty-3", 80), ("difficulty-1", 10), ("difficulty-2", 10))
    drawn = Counter(i.split("-")[0] for i in third.ids[80:])
    assert drawn == {"s1": 10, "s2": 10} and len(set(third.ids)) == len(third.ids)
    # seeded: the same draw every time, another seed another draw
    assert Replay(fraction=0.25, seed=0).apply(stages(40, 40, 80), 160) == phases
    assert Replay(fraction=0.25, seed=1).apply(stages(40, 40, 80), 160)[2].ids != third.ids


def test_recent_replay_weights_the_last_stage_most():
    third = Replay(fraction=0.3, weighting="recent").apply(stages(100, 100, 100), 300)[2]
    assert third.mixture == (("difficulty-3", 100), ("difficulty-1", 10), ("difficulty-2", 20))


def test_matched_compute_feeds_as_many_examples_as_one_off():
    phases = Replay(fraction=0.5, match_one_off_steps=True).apply(stages(40, 40), 80, 2.0)
    fed = sum(len(p.sequence(2.0, seed=0)) for p in phases)
    assert fed == 2 * 80  # one-off: 80 examples x 2 epochs
    assert [p.fed for p in phases] == [64, 96]  # 160 split 40 : 60 (stage 2 holds 20 replayed)


@pytest.mark.parametrize("n", [60, 61, 77, 120, 121])
def test_matched_compute_is_exact_whatever_the_rounding(n):
    """Per-stage rounding fed 121 against one-off's 120 (#23 item 11): the total is split once."""
    sizes = (n // 3, n // 3, n - 2 * (n // 3))
    for epochs in (1.0, 2.0, 3.0, 1.5):
        phases = Replay(fraction=0.5, match_one_off_steps=True).apply(stages(*sizes), n, epochs)
        fed = [p.sequence(epochs, seed=0) for p in phases]
        assert sum(map(len, fed)) == round(n * epochs), (n, epochs)
        for p, order in zip(phases, fed, strict=True):  # full passes first: no id twice early
            assert len(set(order[: len(p.ids)])) == min(len(p.ids), len(order))


def test_replay_draws_as_it_always_did():
    """Replay's counts kept as before allocate() was fixed: same run name, same examples."""
    from phasedsft.train.curricula import replay_counts

    assert replay_counts(5, [1, 1, 1], [9, 9, 9]) == [3, 1, 1]
    assert replay_counts(10, [1, 3], [100, 100]) == [2, 8]


def test_allocate_gives_the_rest_to_the_largest_remainders():
    # shares 3.5 / 2.333 / 1.167: floors 3 / 2 / 1, the one left to the largest remainder (0.5)
    assert allocate(7, [3.0, 2.0, 1.0], [10, 10, 10]) == [4, 2, 1]
    # shares 1.4 / 1.4 / 4.2: floors 1/1/4, one left: remainders .4/.4/.2 -> the first .4
    assert allocate(7, [1.0, 1.0, 3.0], [10, 10, 10]) == [2, 1, 4]
    # a cap binds: the rest is split among the others
    assert allocate(10, [1.0, 1.0, 8.0], [10, 10, 2]) == [4, 4, 2]
    assert allocate(5, [1.0, 1.0], [1, 1]) == [1, 1]


def test_replay_settings_are_checked():
    with pytest.raises(DataError, match=r"replay.fraction must be in \(0, 1\]"):
        Replay(fraction=0)
    with pytest.raises(DataError, match=r"replay\.weighting must be one of"):
        Replay(weighting="newest")


@pytest.mark.parametrize("pacing", ["linear", "root", "geometric", "step"])
def test_competence_starts_small_grows_and_reaches_everything(pacing):
    values = [competence(pacing, t / 100, 0.2) for t in range(101)]
    assert values[0] == pytest.approx(0.2)
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert values[-1] == 1.0 and values[99] <= 1.0


def scored(n: int) -> list[Example]:
    return [Example(f"e{i}", f"q{i}", "", "a", score=float(i % 5) + 1) for i in range(n)]


def test_paced_order_draws_from_the_easiest_share_so_far():
    examples = scored(100)
    paced = Paced(pacing="linear", start=0.2, full_at=0.5, epochs=2, seed=0)
    (phase,) = paced.phases(examples, None)
    order = phase.planned
    assert phase.name == "paced-linear" and len(order) == 200
    score = {e.id: e.score for e in examples}
    rank = {i: r for r, i in enumerate(phase.ids)}
    assert [score[i] for i in phase.ids] == sorted(score.values())  # ranked easiest first
    for p, i in enumerate(order):
        c = competence("linear", p / 200 / 0.5, 0.2)
        assert rank[i] < max(1, -(-c * 100 // 1))  # within the easiest c share
    assert order[0] in phase.ids[:20]  # at the start: the easiest fifth (score 1) only
    assert max(score[i] for i in order[:10]) <= 2
    assert len(set(order[100:])) > 50  # once competent, drawn from everything
    (anti,) = Paced(pacing="linear", anti=True, epochs=2).phases(examples, None)
    assert anti.name == "paced-linear-anti" and max(score[i] for i in anti.planned[:20]) == 5.0


def test_interleaved_mixes_stages_evenly_keeping_each_order():
    merged = merge_evenly([["a1", "a2", "a3", "a4"], ["b1", "b2"]])
    assert merged == ["a1", "b1", "a2", "a3", "b2", "a4"]
    assert Counter(x[0] for x in merged[:3]) == {"a": 2, "b": 1}

    groups = [[f"x{i}" for i in range(30)], [f"y{i}" for i in range(10)]]
    manifest = StageManifest(groups, groups, groups, [3.0], {}, [], "data")
    (phase,) = Interleaved(epochs=1, seed=0).phases([], manifest)
    order = phase.planned
    assert sorted(order) == sorted(groups[0] + groups[1])
    for start in range(0, 40, 8):  # every window of 8 holds about its share of each stage
        assert Counter(i[0] for i in order[start : start + 8])["y"] == 2


# ---------------------------------------------------------------- real runs


def train(tmp_path, *extra: str):
    cmd = [
        sys.executable,
        "train.py",
        *TINY,
        f"run.root={tmp_path}",
        "trainer.num_train_epochs=1",
        "eval.generate=false",
        *extra,
    ]
    run_command(cmd, no_traceback=True)
    return run_dir(tmp_path, "summary.json")


@pytest.mark.integration
def test_train_py_replays_earlier_stages_and_records_the_mixture(tmp_path):
    run = train(tmp_path, "ordering=1-2", "replay=uniform", "replay.fraction=0.5")
    info = json.loads((run / "run.json").read_text())
    s1, s2 = info["stages"]
    assert "mixture" in s1 and list(s1["mixture"]) == ["difficulty-1"]
    own, replayed = s2["mixture"]["difficulty-2"], s2["mixture"]["difficulty-1"]
    assert replayed == round(0.5 * own) and s2["n_examples"] == own + replayed
    stage1_ids = set((stage_dirs(run)[0] / "data_order.txt").read_text().split())
    fed2 = (stage_dirs(run)[1] / "data_order.txt").read_text().split()
    assert len([i for i in fed2 if i in stage1_ids]) == replayed  # one epoch: each once
    record = json.loads((stage_dirs(run)[1] / "stage.json").read_text())
    assert record["fed_matches_plan"] is True and record["n_examples"] == own + replayed


@pytest.mark.integration
def test_train_py_paced_curriculum_feeds_its_planned_order(tmp_path):
    run = train(tmp_path, "ordering=paced", "ordering.pacing=root")
    (stage,) = stage_dirs(run)
    assert stage.name == "stage_1_paced-root"
    record = json.loads((stage / "stage.json").read_text())
    assert record["fed_matches_plan"] is True and record["n_fed"] == 160
    fed = (stage / "data_order.txt").read_text().split()
    from phasedsft.data.graded import generate_suite

    score = {e.id: e.score for e in generate_suite(160, seed=0).examples}  # TINY's data
    assert len(fed) == 160 and set(fed) <= set(score)
    assert max(score[i] for i in fed[:10]) <= 2  # the first steps: the easiest fifth only
    quarter = len(fed) // 4
    early, late = fed[:quarter], fed[-quarter:]
    assert sum(score[i] for i in early) / quarter < sum(score[i] for i in late) / quarter


@pytest.mark.integration
def test_train_py_interleaved_stages_in_one_phase(tmp_path):
    run = train(tmp_path, "ordering=interleaved")
    (stage,) = stage_dirs(run)
    record = json.loads((stage / "stage.json").read_text())
    assert stage.name == "stage_1_interleaved" and record["fed_matches_plan"] is True
    manifest = json.loads((run / "stage_manifest.json").read_text())
    level = {i: k for k, ids in enumerate(manifest["stages"], start=1) for i in ids}
    fed = (stage / "data_order.txt").read_text().split()
    assert sorted(fed) == sorted(level)  # one epoch: every example once
    first_third = Counter(level[i] for i in fed[: len(fed) // 3])
    assert set(first_third) == {1, 2, 3}  # every stage from the start


@pytest.mark.integration
def test_self_paced_restages_the_rest_by_the_trained_model_and_resumes_exactly(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from phasedsft.llm.cache import ScoreCache
    from phasedsft.score.context import ScoreContext
    from phasedsft.score.local import PerplexityScorer
    from phasedsft.train.curricula import SelfPaced

    run = train(tmp_path, "ordering=self_paced", "trainer.max_steps=3")
    s1, s2, s3 = stage_dirs(run)
    info = json.loads((run / "run.json").read_text())
    manifest = json.loads((run / "stage_manifest.json").read_text())
    first = set((s1 / "data_order.txt").read_text().split())
    assert first == set(manifest["stages"][0])  # stage 1: the easiest by the scorer
    # stages 2 and 3: the rest re-cut by perplexity under stage 1's weights, sizes kept
    from phasedsft.data.graded import generate_suite

    by_id = {e.id: e for e in generate_suite(160, seed=0).examples}
    later = [Phase(f"self-paced-{k}", tuple(manifest["stages"][k - 1])) for k in (2, 3)]
    pool = [by_id[i] for p in later for i in p.ids]
    ctx = ScoreContext(
        cache=ScoreCache(tmp_path / "fresh.sqlite"),  # computed anew, not read from the run's cache
        tokenizer=AutoTokenizer.from_pretrained(s1 / "model"),
        load_model=lambda: AutoModelForCausalLM.from_pretrained(s1 / "model"),
        model_name="check",
    )
    scores = PerplexityScorer().score(pool, ctx)
    expected = SelfPaced().restage(later, {e.id: sc for e, sc in zip(pool, scores, strict=True)})
    for stage, phase in zip((s2, s3), expected, strict=True):
        assert set((stage / "data_order.txt").read_text().split()) == set(phase.ids)
    assert set(expected[0].ids) != set(manifest["stages"][1])  # the model changed the cut
    # re-scored once, after stage 1 (stages 2 and 3); stage 3 alone has nothing to re-cut
    (cache,) = tmp_path.rglob("scores.sqlite")
    with sqlite3.connect(cache) as db:
        (rescored,) = db.execute(
            "SELECT COUNT(*) FROM results WHERE scorer = 'perplexity'"
        ).fetchone()
    assert rescored == len(pool)
    records = [json.loads((s / "stage.json").read_text()) for s in (s1, s2, s3)]
    assert [st["order_sha256"] for st in info["stages"]] == [r["order_sha256"] for r in records]
    assert all(r["fed_matches_plan"] for r in records)
    # a rerun re-stages the same way (cached scores of the same weights): nothing trains again
    stamps = [(s / "stage.json").stat().st_mtime_ns for s in (s1, s2, s3)]
    assert train(tmp_path, "ordering=self_paced", "trainer.max_steps=3") == run
    assert [(s / "stage.json").stat().st_mtime_ns for s in (s1, s2, s3)] == stamps


@pytest.mark.integration
def test_self_paced_with_replay_recuts_each_example_once_and_records_the_mixture(tmp_path):
    """#23 item 8: the re-cut pooled replayed ids with the stage's own (an id fed 4 times in one
    stage, run.json's mixture wrong)."""
    from collections import Counter

    run = train(tmp_path, "ordering=self_paced", "replay=uniform", "replay.fraction=0.5")
    info = json.loads((run / "run.json").read_text())
    stages = stage_dirs(run)
    trained: set[str] = set()
    for k, (stage, record) in enumerate(zip(stages, info["stages"], strict=True)):
        order = (stage / "data_order.txt").read_text().split()
        assert max(Counter(order).values()) == 1, stage.name  # one epoch: each id once
        mixture = record["mixture"]
        own = mixture[record["name"]]
        assert sum(mixture.values()) == record["n_examples"] == len(order)
        if k:  # what replay drew comes from the stages already trained, as they were cut
            assert 0 < len(order) - own == len(set(order) & trained)
        trained |= set(order)


def test_self_paced_needs_a_model_based_rescorer():
    from phasedsft.score.base import OracleScorer
    from phasedsft.train.curricula import SelfPaced

    manifest = StageManifest([["a"], ["b"]], [["a"], ["b"]], [["a"], ["b"]], [3.0], {}, [], "d")
    for rescorer in (None, OracleScorer()):
        with pytest.raises(DataError, match=r"needs ordering\.rescorer, a scorer that runs"):
            SelfPaced(rescorer=rescorer, stages=[1, 2]).phases([], manifest)


def test_self_paced_rescores_before_every_stage_but_a_last_one_alone():
    """#23 item 12: one stage left has no cut to move (its examples are shuffled whatever their
    order); ``rescore_last_stage=true`` is what earlier versions did, under their run names."""
    from phasedsft.train.curricula import SelfPaced

    assert [SelfPaced().rescores(n) for n in (3, 2, 1, 0)] == [True, True, False, False]
    assert SelfPaced(rescore_last_stage=True).rescores(1)
    assert compose(["ordering=self_paced"]).ordering.rescore_last_stage is False
    from omegaconf import OmegaConf

    from phasedsft.config import config_hash

    before = compose(["ordering=self_paced", "ordering.rescore_last_stage=true"])
    assert before.run.name != compose(["ordering=self_paced"]).run.name  # trains differently
    untyped = OmegaConf.create(OmegaConf.to_container(before, resolve=False))
    hashed = config_hash(_root_=untyped)
    del untyped.ordering["rescore_last_stage"]  # a config of the versions before the option
    assert config_hash(_root_=untyped) == hashed


@pytest.mark.parametrize("ordering", ["self_paced", "1-2-3", "one_off", "paced", "interleaved"])
def test_only_self_paced_orderings_restage(ordering):
    """The recipe re-cuts later stages exactly for orderings that implement Restages."""
    from hydra.utils import instantiate

    from phasedsft.train.ordering import Restages

    obj = instantiate(compose([f"ordering={ordering}"]).ordering)
    assert isinstance(obj, Restages) is (ordering == "self_paced")


@pytest.mark.integration
def test_the_documented_matched_replay_sweep_plans(tmp_path):
    """docs/curricula.md: in a multirun that sweeps replay, its keys are set with ++ (Hydra
    composes the shared overrides before a replay option is chosen)."""
    import re

    text = (ROOT / "docs" / "curricula.md").read_text(encoding="utf-8")
    (sweep,) = re.findall(
        r"`-m (replay=uniform,recent \+\+replay\.match_one_off_steps=true)`", text
    )
    out = run_command(
        [sys.executable, "train.py", "-m", *sweep.split(), *TINY, "plan_only=true",
         f"run.root={tmp_path}"],
        no_traceback=True,
    )  # fmt: skip
    assert "plan: 2 jobs, 0 invalid, nothing trained" in out.stdout
