"""Statistics across training seeds: one comparison, trained under several seeds.

``python train.py -m seed=0,1,2 ordering=one_off,1-2-3`` trains every ordering under three
seeds; :func:`~.run.groups_of` pairs each candidate with the baseline of its own seed. Where
the same comparison (same candidate ordering against the same baseline ordering, same data,
model and settings but the seed, same test set, same stage) exists under two seeds or more,
:func:`across_seeds` puts their win rates side by side:

- the per-seed win rates, their mean, standard deviation (``ddof=1``), min and max;
- a 95 % Student t-interval over seeds: ``mean +- t(0.975, k - 1) * sd / sqrt(k)`` on the
  ``k`` per-seed win rates (:func:`spread`). It measures how much the figure moves from one
  training seed to another (and, where the test set is drawn with the seed, as the graded
  ``held_out`` set is, from one test draw to another);
- the pooled figure: every seed's items together, W / T / L summed, with a paired bootstrap
  CI over *questions* (a question that every seed's models answered is drawn once, with all
  its verdicts: :func:`~.folding.clustered_bootstrap_ci`). It measures item noise only, for
  these trained models, not seed noise.

A difference is **within seed noise** when the t-interval contains 0 or the per-seed win
rates are not all on the same side of 0 (one seed better, another worse or at parity).

Which runs are the same comparison under another seed: those whose identity (the saved config
but the ordering, :attr:`~.runs.Run.identity`, with the ordering's own settings) is the
same once the seed is set aside: the top-level ``seed`` and every setting named ``*seed*``
whose value is the run's seed (``dataset.subsample_seed: ${seed}`` and the like follow it; a
seed set to a fixed value is compared as it is) (:func:`seed_free`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from phasedsft.evaluate.comparison import Comparison
from phasedsft.evaluate.folding import (
    Judged,
    WinRate,
    clustered_bootstrap_ci,
    item_values,
    summarize,
)

ALL = "all sets"  # the pooled "test set" of a row judged on several sets
SEED_MARK = "<seed>"
LEVEL = 0.95
T_INTERVAL = "Student t, k-1 degrees of freedom, on the per-seed win rates"


def seed_free(identity: Mapping[str, Any]) -> dict[str, Any]:
    """``identity`` with its seed set aside: the top-level ``seed`` removed, and every setting
    whose name contains ``seed`` and whose value is that seed replaced by :data:`SEED_MARK`.
    Two runs are the same experiment under another seed when these are equal."""
    seed = identity.get("seed")

    def walk(node: Any, name: str) -> Any:
        if isinstance(node, Mapping):
            return {str(k): walk(v, str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, name) for v in node]
        if (
            seed is not None
            and "seed" in name.lower()
            and not isinstance(node, bool)
            and isinstance(node, int | float)
            and node == seed
        ):
            return SEED_MARK
        return node

    out = {str(k): walk(v, str(k)) for k, v in identity.items() if k != "seed"}
    return out


@dataclass
class SeedSpread:
    """Per-seed win rates summarized: mean, spread and the t-interval over seeds."""

    k: int
    mean: float
    std: float  # sample standard deviation (ddof=1)
    min: float
    max: float
    t_low: float
    t_high: float
    t_crit: float  # t(1 - (1 - level) / 2, k - 1)
    level: float = LEVEL
    method: str = T_INTERVAL

    @property
    def same_sign(self) -> bool:
        """Every seed on the same side of 0 (all better, or all worse, than the baseline)."""
        return self.min > 0 or self.max < 0

    @property
    def contains_zero(self) -> bool:
        return self.t_low <= 0 <= self.t_high

    @property
    def within_noise(self) -> bool:
        return self.contains_zero or not self.same_sign

    def to_json(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "t_low": self.t_low,
            "t_high": self.t_high,
            "t_crit": self.t_crit,
            "level": self.level,
            "method": self.method,
            "same_sign": self.same_sign,
            "contains_zero": self.contains_zero,
            "within_seed_noise": self.within_noise,
        }


def spread(values: Sequence[float], level: float = LEVEL) -> SeedSpread:
    """Mean, sd (ddof=1), range and the Student t-interval of ``values`` (two or more)."""
    from scipy.stats import t

    if len(values) < 2:
        raise ValueError(f"a spread over seeds needs two values or more, got {len(values)}")
    arr = np.asarray(values, dtype=float)
    k = len(arr)
    mean = float(arr.mean())
    sd = float(arr.std(ddof=1))
    crit = float(t.ppf(1 - (1 - level) / 2, k - 1))
    half = crit * sd / math.sqrt(k)
    return SeedSpread(
        k, mean, sd, float(arr.min()), float(arr.max()), mean - half, mean + half, crit, level
    )


@dataclass
class AcrossSeeds:
    """One comparison (candidate ordering and stage vs the baseline, one test set or all sets
    pooled) under several training seeds."""

    dataset: str  # the group label (of the lowest seed where the labels differ)
    model: str
    ordering: str
    stage_index: int
    n_stages: int
    eval_set: str  # a test set, or ALL
    baseline: str  # the baseline ordering
    seeds: list[int]
    runs: list[str]
    baselines: list[str]  # each seed's baseline run
    per_seed: list[WinRate]  # in seed order
    spread: SeedSpread | None  # None: fewer than two seeds with a figure
    pooled: WinRate  # every seed's items; CI: bootstrap over questions
    items: str  # "same" (every seed judged the same questions), "per seed", or "mixed"

    @property
    def within_noise(self) -> bool | None:
        return None if self.spread is None else self.spread.within_noise

    def verdict(self) -> str:
        s = self.spread
        if s is None:
            return "too few seeds with a figure"
        if s.within_noise:
            reasons = []
            if s.contains_zero:
                reasons.append(f"the {s.level:.0%} t-interval contains 0")
            if not s.same_sign:
                reasons.append(
                    "the seeds disagree in sign"
                    if s.min < 0 < s.max
                    else "every seed at parity"
                    if s.min == s.max == 0
                    else "a seed at parity"
                )
            p = self.pooled
            note = (
                "; the pooled item bootstrap CI alone excludes 0"
                if p.ci_low is not None and p.ci_high is not None and not p.ci_low <= 0 <= p.ci_high
                else ""
            )
            return "within seed noise (" + ", ".join(reasons) + note + ")"
        side = "better" if s.mean > 0 else "worse"
        return f"{side} than {self.baseline} in every seed; the {s.level:.0%} t-interval excludes 0"

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "ordering": self.ordering,
            "stage": self.stage_index,
            "n_stages": self.n_stages,
            "eval_set": self.eval_set,
            "baseline": self.baseline,
            "seeds": self.seeds,
            "per_seed": [
                {"seed": s, "run": r, "baseline_run": b, **w.to_json()}
                for s, r, b, w in zip(
                    self.seeds, self.runs, self.baselines, self.per_seed, strict=True
                )
            ],
            "spread": self.spread.to_json() if self.spread else None,
            "pooled": self.pooled.to_json(),
            "pooled_ci": "paired bootstrap over questions (each seed's items pooled; a question "
            "judged in every seed is resampled as one)",
            "items": self.items,
            "within_seed_noise": self.within_noise,
            "verdict": self.verdict(),
        }


Member = tuple[Comparison, Sequence[Judged]]


def _seeds_key(c: Comparison) -> str:
    """What makes two comparisons the same under another seed: the seed-free identity of the
    candidate run where known (:func:`seed_free`), else its group's label and model."""
    return c.seeds_key if c.seeds_key is not None else f"{c.group[0]}\x00{c.group[1]}"


def _by_seed(members: Sequence[Member]) -> list[Member]:
    seeds = [c.group[2] for c, _ in members]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"one comparison under seeds {seeds}: a seed twice")
    return sorted(members, key=lambda m: m[0].group[2])


def _same_items(per_seed: Sequence[Comparison]) -> bool:
    shas = {c.items_sha for c in per_seed}
    return None not in shas and len(shas) == 1


def _pooled(
    judged_per_comp: Sequence[tuple[Comparison, Sequence[Judged]]],
    same_set: Mapping[str, bool],
    rule: str,
    resamples: int,
    seed: int,
) -> WinRate:
    """Every item of every seed: the figures of :func:`summarize`, and a CI that resamples
    questions (a test set's question judged in every seed is one cluster)."""
    items = [j for _, js in judged_per_comp for j in js]
    win = summarize(items, rule, resamples, seed)
    values: list[float] = []
    clusters: list[tuple[Any, ...]] = []
    for c, js in judged_per_comp:
        for i, v in item_values(js, rule):
            values.append(v)
            where = (c.eval_set, i)
            clusters.append(where if same_set[c.eval_set] else (c.group[2], *where))
    if not values:
        return win
    lo, hi = clustered_bootstrap_ci(values, clusters, resamples, seed)
    return replace(win, ci_low=lo, ci_high=hi)


def _cell(
    members: Sequence[tuple[Comparison, WinRate, list[tuple[Comparison, Sequence[Judged]]]]],
    eval_set: str,
    baseline: str,
    rule: str,
    resamples: int,
    seed: int,
) -> AcrossSeeds:
    """``members``: per seed (in seed order) a comparison standing for the row, the seed's
    figure, and the comparisons (with their items) it pools."""
    first = members[0][0]
    per_set: dict[str, list[Comparison]] = defaultdict(list)
    for _, _, comps in members:
        for c, _ in comps:
            per_set[c.eval_set].append(c)
    same_set = {s: len(cs) == len(members) and _same_items(cs) for s, cs in per_set.items()}
    items = (
        "same" if all(same_set.values()) else "per seed" if not any(same_set.values()) else "mixed"
    )
    figures = [w.win_rate for _, w, _ in members if w.win_rate is not None]
    return AcrossSeeds(
        dataset=first.group[0],
        model=first.group[1],
        ordering=first.ordering,
        stage_index=first.stage_index,
        n_stages=first.n_stages,
        eval_set=eval_set,
        baseline=baseline,
        seeds=[c.group[2] for c, _, _ in members],
        runs=[c.run for c, _, _ in members],
        baselines=[c.baseline for c, _, _ in members],
        per_seed=[w for _, w, _ in members],
        spread=spread(figures) if len(figures) >= 2 else None,
        pooled=_pooled(
            [m for _, _, comps in members for m in comps], same_set, rule, resamples, seed
        ),
        items=items,
    )


def across_seeds(
    comparisons: Sequence[Comparison],
    judged: Sequence[Sequence[Judged]],
    pooled: Mapping[tuple, WinRate],
    baseline: str,
    rule: str = "paper",
    resamples: int = 2000,
    seed: int = 0,
) -> list[AcrossSeeds]:
    """Every comparison that exists under two seeds or more, per test set and (where the rows
    were judged on several sets) for all sets pooled; none with one seed.

    ``judged[i]`` are the items of ``comparisons[i]``; ``pooled`` the per-seed figure of each
    row over all its sets (keyed by :attr:`~.comparison.Comparison.row`, as the table's
    "all sets" column).
    """
    if len(judged) != len(comparisons):
        raise ValueError(f"{len(comparisons)} comparisons but {len(judged)} lists of items")
    cells: dict[tuple, list[Member]] = defaultdict(list)
    rows: dict[tuple, dict[int, list[Member]]] = defaultdict(lambda: defaultdict(list))
    for c, js in zip(comparisons, judged, strict=True):
        row = (_seeds_key(c), c.ordering, c.stage_index, c.n_stages)
        cells[(*row, c.eval_set)].append((c, js))
        rows[row][c.group[2]].append((c, js))
    out: list[AcrossSeeds] = []
    for members in cells.values():
        if len(members) < 2:
            continue
        ordered = _by_seed(members)
        out.append(
            _cell(
                [(c, c.result, [(c, js)]) for c, js in ordered],
                ordered[0][0].eval_set,
                baseline,
                rule,
                resamples,
                seed,
            )
        )
    if len({c.eval_set for c in comparisons}) > 1:
        for per_seed in rows.values():
            if len(per_seed) < 2:
                continue
            ordered_seeds = sorted(per_seed)
            members_all = []
            for s in ordered_seeds:
                comps = sorted(per_seed[s], key=lambda m: m[0].eval_set)
                key = comps[0][0].row
                if key not in pooled:
                    continue
                members_all.append((comps[0][0], pooled[key], list(comps)))
            if len(members_all) >= 2:
                out.append(_cell(members_all, ALL, baseline, rule, resamples, seed))
    return sorted(
        out,
        key=lambda a: (
            a.dataset,
            a.model,
            a.ordering,
            a.stage_index,
            a.eval_set == ALL,
            a.eval_set,
        ),
    )
