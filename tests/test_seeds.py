"""Statistics across training seeds (phasedsft.evaluate.seeds): the numbers on constructed
inputs, then a real 3-seed tiny sweep judged by evaluate.py (integration)."""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from phasedsft.evaluate.report import Comparison, write_tables
from phasedsft.evaluate.seeds import ALL, across_seeds, spread
from phasedsft.evaluate.winrate import (
    bootstrap_ci,
    clustered_bootstrap_ci,
    item_values,
    judge_item,
    summarize,
)

REVIEWS = {  # A's outcome -> the two reviews (A shown first, then B shown first)
    "win": ("1 0", "0 1"),
    "tie": ("1 1", "1 1"),
    "lose": ("0 1", "1 0"),
    "unparsed": ("no scores here", "0 1"),
    "void": ("8 0", "0 8"),  # a zero score: void for the authors' script, a win for ours
}


def items(outcomes: str | list[str], prefix: str = "q") -> list:
    """Judged items from outcome names ("win tie lose ...")."""
    names = outcomes.split() if isinstance(outcomes, str) else outcomes
    return [judge_item(f"{prefix}{i}", *REVIEWS[o]) for i, o in enumerate(names)]


# ------------------------------------------------------------------ the t-interval over seeds


def test_spread_is_the_student_t_interval_of_the_per_seed_win_rates():
    values = [2.0, 4.0, 6.0]
    s = spread(values)
    # by hand: mean 4, sd 2, t(0.975, 2) = 4.302652729749464, half-width t * 2 / sqrt(3)
    assert (s.k, s.mean, s.std, s.min, s.max) == (3, 4.0, 2.0, 2.0, 6.0)
    assert s.t_crit == pytest.approx(4.302652729749464, rel=1e-12)
    assert s.t_low == pytest.approx(4 - 4.302652729749464 * 2 / math.sqrt(3), rel=1e-12)
    assert (s.t_low, s.t_high) == (
        pytest.approx(-0.968275, abs=1e-6),
        pytest.approx(8.968275, abs=1e-6),
    )

    rng = np.random.default_rng(3)
    for k in (2, 3, 5, 10):
        v = list(rng.normal(2.0, 4.0, size=k))
        s = spread(v)
        lo, hi = stats.t.interval(0.95, k - 1, loc=np.mean(v), scale=stats.sem(v))
        assert (s.t_low, s.t_high) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
        assert s.std == pytest.approx(statistics.stdev(v), rel=1e-12)
        assert s.t_crit == pytest.approx(stats.t.ppf(0.975, k - 1), rel=1e-12)
    # two seeds: t(0.975, 1) = 12.706...: two seeds say little
    assert spread([1.0, 3.0]).t_crit == pytest.approx(12.706204736174698, rel=1e-12)
    with pytest.raises(ValueError, match="two values or more"):
        spread([1.0])


@pytest.mark.parametrize(
    ("values", "within", "same_sign", "contains_zero"),
    [
        ([3.0, 5.0, 4.0], False, True, False),  # better in every seed, interval above 0
        ([-3.0, -5.0, -4.0], False, True, False),  # worse in every seed
        ([1.0, 9.0], True, True, True),  # same sign, but two seeds: the interval spans 0
        ([3.0, -1.0, 4.0], True, False, True),
        ([10.0] * 9 + [-0.5], True, False, False),  # interval above 0, one seed below: noise
        ([0.0, 2.0, 3.0], True, False, True),  # a seed at parity
        ([0.0, 0.0, 0.0], True, False, True),
    ],
)
def test_within_seed_noise(values, within, same_sign, contains_zero):
    s = spread(values)
    assert (s.within_noise, s.same_sign, s.contains_zero) == (within, same_sign, contains_zero)


# ------------------------------------------------------------------ the pooled bootstrap


def test_clustered_bootstrap_over_singletons_is_the_paired_bootstrap():
    rng = np.random.default_rng(0)
    values = list(rng.choice([0.0, 0.5, 1.0], size=57))
    assert clustered_bootstrap_ci(values, list(range(57)), 500, seed=4) == pytest.approx(
        bootstrap_ci(values, 500, seed=4), abs=1e-9
    )


def test_a_question_judged_under_every_seed_is_drawn_as_one():
    rng = np.random.default_rng(1)
    values = list(rng.choice([0.0, 0.5, 1.0], size=40))
    three = values * 3  # three seeds' models, the same verdict on each question
    clusters = list(range(40)) * 3
    clustered = clustered_bootstrap_ci(three, clusters, 1000, seed=2)
    # the three copies add no information: the CI is that of the 40 questions
    assert clustered == pytest.approx(bootstrap_ci(values, 1000, seed=2), abs=1e-9)
    # resampling the 120 values as if independent claims ~sqrt(3) more precision
    lo, hi = bootstrap_ci(three, 1000, seed=2)
    assert (hi - lo) < 0.7 * (clustered[1] - clustered[0])
    with pytest.raises(ValueError, match="cluster names"):
        clustered_bootstrap_ci([1.0, 0.0], [0], 10)


@pytest.mark.parametrize("rule", ["paper", "fastchat", "authors"])
def test_item_values_are_what_summarize_counts(rule):
    judged = items("win win tie lose unparsed void tie win lose void")
    values = item_values(judged, rule)
    w = summarize(judged, rule, 50)
    assert len(values) == w.n
    assert 100 * np.mean([v for _, v in values]) - 50 == pytest.approx(w.win_rate)
    assert [i for i, _ in values] == (
        list(range(10)) if rule == "authors" else [0, 1, 2, 3, 5, 6, 7, 8, 9]
    )


# ------------------------------------------------------------------ comparisons under seeds


def comparison(seed, outcomes, eval_set="koala", stage=3, ordering="1-2-3", same=True, **kw):
    judged = items(outcomes)
    c = Comparison(
        ("graded", "tiny", seed),
        ordering,
        f"graded-tiny-{ordering}-s{seed}",
        stage,
        3,
        eval_set,
        f"graded-tiny-one_off-s{seed}",
        summarize(judged, "paper", 300, 0),
        seeds_key=kw.get("key", "k"),
        items_sha=eval_set if same else f"{eval_set}-{seed}",
    )
    return c, judged


SEEDS = {
    0: ("win win tie lose win", "win lose lose"),
    1: ("win tie tie lose tie", "lose lose tie"),
    2: ("win win win win lose", "tie win lose"),
}


def seed_sweep(same_koala=True):
    comps = []
    for seed, (koala, vicuna) in SEEDS.items():
        comps.append(comparison(seed, koala, "koala", same=same_koala))
        comps.append(comparison(seed, vicuna, "vicuna", same=False))
    return [c for c, _ in comps], [j for _, j in comps]


def pooled_by_row(comps, judged):
    rows: dict[tuple, list] = {}
    for c, js in zip(comps, judged, strict=True):
        rows.setdefault(c.row, []).extend(js)
    return {k: summarize(v, "paper", 300, 0) for k, v in rows.items()}


def test_the_same_comparison_under_three_seeds():
    comps, judged = seed_sweep()
    pooled = pooled_by_row(comps, judged)
    cells = {a.eval_set: a for a in across_seeds(comps, judged, pooled, "one_off", "paper", 300)}
    assert list(cells) == ["koala", "vicuna", ALL]
    koala = cells["koala"]
    assert koala.seeds == [0, 1, 2]
    assert koala.baselines == [f"graded-tiny-one_off-s{s}" for s in (0, 1, 2)]
    per_seed = [c.result.win_rate for c in comps if c.eval_set == "koala"]
    assert [w.win_rate for w in koala.per_seed] == per_seed == [20.0, 0.0, 30.0]
    s = koala.spread
    assert s is not None
    assert s.mean == pytest.approx(np.mean(per_seed))
    assert s.std == pytest.approx(statistics.stdev(per_seed))
    lo, hi = stats.t.interval(0.95, 2, loc=np.mean(per_seed), scale=stats.sem(per_seed))
    assert (s.t_low, s.t_high) == (pytest.approx(lo), pytest.approx(hi))
    assert koala.within_noise and "within seed noise" in koala.verdict()
    # pooled: every seed's items; W/T/L summed
    p = koala.pooled
    assert (p.wins, p.ties, p.losses, p.n) == (8, 4, 3, 15)
    assert p.win_rate == pytest.approx(100 * (8 + 2) / 15 - 50)
    # koala: the same five questions in every seed, each drawn once with its three verdicts
    assert koala.items == "same"
    values = [v for js in judged[0::2] for _, v in item_values(js, "paper")]
    assert (p.ci_low, p.ci_high) == pytest.approx(
        clustered_bootstrap_ci(values, [0, 1, 2, 3, 4] * 3, 300, 0)
    )
    # vicuna: other items under each seed: every item its own draw (the plain bootstrap)
    vicuna = cells["vicuna"]
    assert vicuna.items == "per seed"
    v = vicuna.pooled
    plain = summarize([j for js in judged[1::2] for j in js], "paper", 300, 0)
    assert (v.ci_low, v.ci_high) == pytest.approx((plain.ci_low, plain.ci_high))
    # all sets: each seed's pooled figure (the table's "all sets" column)
    every = cells[ALL]
    assert [w.win_rate for w in every.per_seed] == [pooled[c.row].win_rate for c in comps[0::2]]
    assert every.pooled.n == 24 and every.items == "mixed"
    assert every.spread is not None
    assert every.spread.mean == pytest.approx(np.mean([w.win_rate for w in every.per_seed]))


def test_better_in_every_seed_beyond_seed_noise():
    made = [comparison(s, o) for s, o in ((0, "win win tie"), (1, "win win lose"), (2, "win tie"))]
    comps, judged = [c for c, _ in made], [j for _, j in made]
    [cell] = across_seeds(comps, judged, {}, "one_off", "paper", 300)
    assert [w.win_rate for w in cell.per_seed] == pytest.approx(
        [100 * 2.5 / 3 - 50, 100 * 2 / 3 - 50, 25.0]
    )
    assert cell.within_noise is False
    assert cell.verdict() == "better than one_off in every seed; the 95% t-interval excludes 0"


def test_what_is_not_the_same_comparison_stays_apart():
    comps, judged = [], []
    for c, j in (
        comparison(0, "win tie", stage=1),
        comparison(1, "tie tie", stage=1),
        comparison(0, "win win", stage=2),  # stage 2 only under seed 0
        comparison(0, "lose tie", ordering="3-2-1"),
        comparison(1, "lose lose", ordering="3-2-1", key="other"),  # another experiment
    ):
        comps.append(c)
        judged.append(j)
    cells = across_seeds(comps, judged, {}, "one_off", "paper", 300)
    assert [(a.ordering, a.stage_index, a.seeds) for a in cells] == [("1-2-3", 1, [0, 1])]


def test_one_seed_reports_nothing_across_seeds(tmp_path):
    comps, judged = seed_sweep()
    one = [i for i, c in enumerate(comps) if c.group[2] == 0]
    comps, judged = [comps[i] for i in one], [judged[i] for i in one]
    pooled = pooled_by_row(comps, judged)
    assert across_seeds(comps, judged, pooled, "one_off") == []
    (tmp_path / "seeds.csv").write_text("left by an earlier evaluation\n")
    text = write_tables(tmp_path, comps, pooled, "one_off", across=[])
    assert "Across seeds" not in text
    assert not (tmp_path / "seeds.csv").exists()


def test_without_a_seeds_key_the_group_label_decides():
    comps, judged = [], []
    for seed, label in ((0, "graded"), (1, "graded"), (2, "alpaca")):
        c, j = comparison(seed, "win tie lose", key=None)
        c.group = (label, "tiny", seed)
        comps.append(c)
        judged.append(j)
    [cell] = across_seeds(comps, judged, {}, "one_off", "paper", 300)
    assert (cell.dataset, cell.seeds) == ("graded", [0, 1])


def test_tables_and_csv_carry_the_figures(tmp_path):
    comps, judged = seed_sweep()
    pooled = pooled_by_row(comps, judged)
    cells = across_seeds(comps, judged, pooled, "one_off", "paper", 300)
    text = write_tables(tmp_path, comps, pooled, "one_off", across=cells)
    section = text.split("## Across seeds")[1].split("\n\n")[2]
    lines = [line for line in section.splitlines() if line.startswith("| graded")]
    assert len(lines) == 3
    assert "s0 +20.0, s1 +0.0, s2 +30.0" in lines[0] and "within seed noise" in lines[0]
    with (tmp_path / "seeds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["eval_set"] for r in rows] == ["koala", "vicuna", ALL]
    for row, a in zip(rows, cells, strict=True):
        assert row["seeds"] == "0 1 2"
        assert [float(x) for x in row["per_seed_win_rates"].split()] == [
            w.win_rate for w in a.per_seed
        ]
        assert a.spread is not None
        assert float(row["mean"]) == pytest.approx(a.spread.mean)
        assert float(row["t_low"]) == pytest.approx(a.spread.t_low)
        assert float(row["pooled_ci_high"]) == pytest.approx(a.pooled.ci_high)
        assert int(row["pooled_n"]) == a.pooled.n
        assert row["within_seed_noise"] == str(a.within_noise)
        assert row["verdict"] == a.verdict()
    as_json = json.loads(json.dumps([a.to_json() for a in cells]))
    assert as_json[0]["spread"]["method"].startswith("Student t, k-1 degrees of freedom")
    assert [s["seed"] for s in as_json[0]["per_seed"]] == [0, 1, 2]


# ------------------------------------------------------------------ a real sweep, three seeds


def digits_test_set(path: Path, n: int = 150) -> Path:
    """Known-answer items whose answers are one digit, in the Self-Instruct layout: the tiny
    models, sampling, hit some of them by chance (greedy, they answer nothing at all)."""
    from phasedsft.data.graded import generate_suite

    chosen = [e for e in generate_suite(1500, seed=7, split="test").examples if len(e.output) == 1]
    lines = [
        json.dumps(
            {
                "id": e.id,
                "instruction": e.instruction,
                "instances": [{"input": e.input, "output": e.output}],
                "motivation_app": e.meta["task"],
            }
        )
        for e in chosen[:n]
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def seed_sweep_dir(tmp_path_factory) -> Path:
    """`python train.py -m seed=0,1,2 ordering=one_off,1-2-3`, tiny."""
    from conftest import TINY
    from helpers import run_command

    root = tmp_path_factory.mktemp("seeds")
    run_command(
        [
            sys.executable,
            "train.py",
            "-m",
            "seed=0,1,2",
            "ordering=one_off,1-2-3",
            *TINY,
            f"run.root={root}",
            "trainer.max_steps=12",
            "trainer.learning_rate=1e-2",
            "eval.generate=false",
            "eval.after_each_stage=false",
        ]
    )
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.integration
def test_a_three_seed_sweep_is_summarized_across_seeds(seed_sweep_dir, tmp_path):
    from helpers import run_command

    from phasedsft.evaluate.winrate import read_replay

    root = seed_sweep_dir
    out = tmp_path / "eval"
    args = [
        sys.executable,
        "evaluate.py",
        f"sweep_dir={root}",
        f"out_dir={out}",
        "eval_set=[held_out,self_instruct]",
        f"eval_sets.self_instruct.source.path={digits_test_set(tmp_path / 'digits.jsonl')}",
        "generator.max_new_tokens=2",
        "generator.temperature=1.0",
        "bootstrap=500",
    ]
    run_command(args)
    table = read_csv(out / "table.csv")
    rows = read_csv(out / "seeds.csv")
    summary = json.loads((out / "summary.json").read_text())
    # 1-2-3's final weights on held_out, self_instruct and all sets, each under seeds 0, 1, 2
    assert [(r["stage"], r["eval_set"]) for r in rows] == [
        ("3", "held_out"),
        ("3", "self_instruct"),
        ("3", ALL),
    ]
    assert len(summary["across_seeds"]) == len(rows)
    spreads = []
    for row, full in zip(rows, summary["across_seeds"], strict=True):
        assert row["seeds"] == "0 1 2" and row["ordering"] == "1-2-3"
        per_seed = [
            r
            for r in table
            if (r["ordering"], r["stage"], r["eval_set"])
            == ("1-2-3", row["stage"], row["eval_set"])
        ]
        per_seed.sort(key=lambda r: int(r["seed"]))
        assert [r["seed"] for r in per_seed] == ["0", "1", "2"]
        assert len({r["baseline"] for r in per_seed}) == 3  # each seed its own one_off run
        rates = [float(r["win_rate"]) for r in per_seed]
        assert [float(x) for x in row["per_seed_win_rates"].split()] == pytest.approx(rates)
        # the across-seed figures, from the per-seed rows of table.csv
        assert float(row["mean"]) == pytest.approx(np.mean(rates))
        assert float(row["std"]) == pytest.approx(np.std(rates, ddof=1), abs=1e-9)
        assert (float(row["min"]), float(row["max"])) == (min(rates), max(rates))
        if np.std(rates) > 0:
            lo, hi = stats.t.interval(0.95, 2, loc=np.mean(rates), scale=stats.sem(rates))
        else:
            lo = hi = float(np.mean(rates))
        assert (float(row["t_low"]), float(row["t_high"])) == (
            pytest.approx(lo, abs=1e-9),
            pytest.approx(hi, abs=1e-9),
        )
        noise = lo <= 0 <= hi or not (min(rates) > 0 or max(rates) < 0)
        assert row["within_seed_noise"] == str(noise) == str(full["within_seed_noise"])
        side = "better" if np.mean(rates) > 0 else "worse"
        assert row["verdict"].startswith("within seed noise" if noise else f"{side} than one_off")
        # pooled: the per-seed counts summed
        for k in ("wins", "ties", "losses", "n"):
            assert int(row[f"pooled_{k}"]) == sum(int(r[k]) for r in per_seed), k
        assert float(row["pooled_win_rate"]) == pytest.approx(
            100 * (int(row["pooled_wins"]) + int(row["pooled_ties"]) / 2) / int(row["pooled_n"])
            - 50
        )
        assert full["pooled"]["win_rate"] == pytest.approx(float(row["pooled_win_rate"]))
        spreads.append(float(row["std"]))
        # the pooled CI, from the written reviews: the digits set is the same 150 questions in
        # every seed (one draw each); held_out is drawn with each run's seed (one draw per item)
        if row["eval_set"] == ALL:
            continue
        assert row["items"] == ("same" if row["eval_set"] == "self_instruct" else "per seed")
        values, clusters = [], []
        for r in per_seed:
            folder = out / "comparisons" / r["eval_set"]
            [replay] = folder.glob(f"{r['run']}__stage_{r['stage']}_*.jsonl")
            for i, v in item_values(read_replay(replay), "paper"):
                values.append(v)
                clusters.append(i if row["items"] == "same" else (r["seed"], i))
        assert (float(row["pooled_ci_low"]), float(row["pooled_ci_high"])) == pytest.approx(
            clustered_bootstrap_ci(values, clusters, 500, 0)
        )
    # sampled answers hit some digits: the seeds do not all agree, so the figures compared
    # above are more than zeros
    assert max(spreads) > 0
    md = (out / "table.md").read_text()
    section = md.split("## Across seeds")[1].split("\n\n")[2]
    assert len([line for line in section.splitlines() if line.startswith("| graded | tiny |")]) == 3

    # One seed (select narrows the sweep): nothing across seeds, and the seeds.csv of the
    # evaluation before is gone
    run_command([*args, "select=[*-s1-*]"])
    assert {r["seed"] for r in read_csv(out / "table.csv")} == {"1"}
    assert "Across seeds" not in (out / "table.md").read_text()
    assert not (out / "seeds.csv").exists()
    assert json.loads((out / "summary.json").read_text())["across_seeds"] == []
