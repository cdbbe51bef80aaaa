import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import compose, ref_path

from phasedsft.records import DataError
from phasedsft.segment.methods import (
    Balanced,
    GMMThresholds,
    Jenks,
    KDEValleys,
    ManualThresholds,
    QuantileThresholds,
    optimal_breaks,
    sizes_for,
)

RNG = np.random.default_rng(0)
# GPT-4-like: means of a few 1-5 ratings, so spikes on a 0.25 grid, most of them easy
SPIKY = [
    float(x)
    for x in RNG.choice([1, 1, 1, 1, 1.25, 1.5, 2, 2.25, 2.5, 3, 3.5, 3.75, 4, 4.5, 5], 3000)
]
BIMODAL = [float(x) for x in np.concatenate([RNG.normal(1.5, 0.3, 500), RNG.normal(4.0, 0.3, 500)])]
METHODS = [
    QuantileThresholds(3),
    KDEValleys(3),
    Jenks(3),
    GMMThresholds(3),
    Balanced(ManualThresholds(), 3.0),
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_spikes_never_split_and_no_score_on_a_threshold(method):
    ts = method.thresholds_for(SPIKY)
    assert len(ts) == 2 and ts == sorted(ts)
    assert not set(ts) & set(SPIKY)
    assert sum(sizes_for(SPIKY, ts)) == len(SPIKY) and min(sizes_for(SPIKY, ts)) > 0
    assert method.thresholds_for(SPIKY) == ts  # deterministic


def test_quantile_equal_sizes_on_continuous_scores():
    ts = QuantileThresholds(4).thresholds_for(BIMODAL)
    assert max(sizes_for(BIMODAL, ts)) - min(sizes_for(BIMODAL, ts)) <= 1


def test_kde_and_gmm_find_the_gap_between_two_modes():
    (valley,) = KDEValleys(2).thresholds_for(BIMODAL)
    assert 2.2 < valley < 3.3
    gmm = GMMThresholds(None)
    values, counts = np.unique(BIMODAL, return_counts=True)
    k, bic = gmm.choose_k(values, counts.astype(float))
    assert k == 2 and bic[2] < bic[3]
    (cut,) = gmm.thresholds_for(BIMODAL)
    assert 2.2 < cut < 3.3


def brute_force_cost(x, w, k):
    best = np.inf
    for cuts in itertools.combinations(range(1, len(x)), k - 1):
        bounds = [0, *cuts, len(x)]
        cost = 0.0
        for a, b in itertools.pairwise(bounds):
            m = np.average(x[a:b], weights=w[a:b])
            cost += float((w[a:b] * (x[a:b] - m) ** 2).sum())
        best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(5))
def test_jenks_is_exact(seed):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.choice(np.arange(0, 50, 0.5), 12, replace=False))
    w = rng.integers(1, 20, 12).astype(float)
    for k in (2, 3, 4):
        breaks = optimal_breaks(x, w, k)
        bounds = [0, *(b + 1 for b in breaks), len(x)]
        cost = sum(
            float((w[a:b] * (x[a:b] - np.average(x[a:b], weights=w[a:b])) ** 2).sum())
            for a, b in itertools.pairwise(bounds)
        )
        assert cost == pytest.approx(brute_force_cost(x, w, k))


def test_balanced_keeps_the_ratio_or_says_why():
    ts = Balanced(ManualThresholds([1.5, 4.75]), max_ratio=2.0).thresholds_for(BIMODAL)
    sizes = sizes_for(BIMODAL, ts)
    assert max(sizes) <= 2 * min(sizes)
    spike = [1.0] * 90 + [2.0] * 5 + [3.0] * 5
    with pytest.raises(DataError, match="raise max_ratio"):
        Balanced(ManualThresholds([1.5, 2.5]), max_ratio=2.0).thresholds_for(spike)


@pytest.mark.parametrize("method", [*METHODS[:4]], ids=lambda m: m.name)
def test_too_few_distinct_scores_is_a_clear_error(method):
    with pytest.raises(DataError, match=method.name):
        method.thresholds_for([2.0] * 50)


# ------------------------------------------------------------------ the segment app


def run_app(overrides, tmp_path):
    from phasedsft.segment.run import run

    cfg = compose(
        [
            f"run.root={tmp_path}/segment",
            f"run.cache_dir={tmp_path}/cache",
            "model.tokenizer.vocab_size=300",
            *overrides,
        ],
        config_name="segment",
    )
    return run(cfg)


def test_segment_app_outputs_and_byte_identical_manifest(tmp_path):
    over = ["dataset.source.n=400", "dataset.eval=null", "segment=jenks"]
    s = run_app(over, tmp_path)
    run_dir = Path(s["run_dir"])
    for f in (
        "stage_manifest.json",
        "density.png",
        "table1.md",
        "table1.csv",
        "sensitivity.json",
        "summary.json",
    ):
        assert (run_dir / f).is_file(), f
    first = (run_dir / "stage_manifest.json").read_bytes()
    table = (run_dir / "table1.csv").read_text().splitlines()
    assert table[0] == "stage,count,share,mean_difficulty,mean_tokens" and len(table) == 4
    sens = json.loads((run_dir / "sensitivity.json").read_text())
    assert sens["jenks"]["changed"] == 0 and set(sens) == {
        "paper",
        "quantile",
        "jenks",
        "kde_valleys",
        "gmm",
    }
    run_app(over, tmp_path)
    assert (run_dir / "stage_manifest.json").read_bytes() == first

    # train.py consumes the manifest: same stages, same hash
    from phasedsft.train.run import setup

    cfg = compose(
        [
            "dataset.source.n=400",
            "dataset.eval=null",
            f"segment.manifest={run_dir / 'stage_manifest.json'}",
            "model.tokenizer.vocab_size=300",
            "trainer.max_seq_length=512",
            f"run.root={tmp_path}/runs",
        ]
    )
    st = setup(cfg, tmp_path / "cache")
    assert st.manifest is not None and st.manifest.hash == s["manifest_hash"]


# segment.py on 6,889 real rows
@pytest.mark.integration
def test_segment_app_on_the_authors_stage3_scores(tmp_path):
    path = ref_path("phasedsft_scores", "en-alpaca52k-stage3.jsonl")
    s = run_app(
        [
            "dataset=phasedsft_scored",
            f"dataset.source.path={path}",
            "dataset.source.on_error=skip",
            "dataset.eval=null",
        ],
        tmp_path,
    )
    rows = s["table1"]
    assert [r["count"] for r in rows] == [0, 0, 6880]
    assert round(rows[2]["mean_difficulty"], 2) == 4.25  # paper, Table 1
