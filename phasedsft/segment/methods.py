"""Threshold methods for segmenting difficulty scores into k >= 2 stages (the paper's IDS step).

Every method returns increasing thresholds; :mod:`phasedsft.segment.manifest` turns them into stages
(a score on a threshold goes to the upper stage). The data-driven methods put every
threshold at the midpoint between two adjacent distinct scores, so no score ever sits on
one of their thresholds and the same scores always give the same cut.

Discrete spikes (many items at exactly 1.0 or 3.5, as GPT-4 scores have) are never split:
a stage boundary can only fall between distinct values. How each method treats them:

- ``QuantileThresholds``: cuts at the midpoints nearest to the equal-size cut points, so
  stages are as equal as the spikes allow.
- ``KDEValleys``: minima of a Gaussian KDE (``bandwidth``: scipy's rule or a factor);
  spikes become peaks and the valleys fall between them.
- ``Jenks``: optimal 1-D k-means (exact dynamic programming over the distinct values,
  weighted by their counts), so a spike is one heavy point.
- ``GMMThresholds``: a 1-D Gaussian mixture fitted by EM on the weighted distinct values
  (a variance floor keeps a spike from collapsing a component); k by BIC when not given;
  thresholds where the most probable component changes.
- ``Balanced``: any of these, with its thresholds moved towards the equal-size ones just
  enough that the largest stage is at most ``max_ratio`` times the smallest.

A method that cannot make the stages asked for (fewer distinct scores than stages, a
flat density) raises :class:`DataError` saying why.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from phasedsft.ranges import Range, ranged
from phasedsft.records import DataError

__all__ = [
    "Balanced",
    "GMMThresholds",
    "Jenks",
    "KDEValleys",
    "ManualThresholds",
    "QuantileThresholds",
]


class Segmenter(Protocol):
    """A segmentation method: scores in, increasing thresholds out."""

    name: str

    def thresholds_for(self, scores: Sequence[float]) -> list[float]: ...

    def params(self) -> dict[str, Any]: ...


@dataclass
class ManualThresholds:
    """Thresholds given by hand (paper: 1.5 and 3.5, read off the KDE/CDF of the scores)."""

    # inside the scores' range (checked with the config: phasedsft.config_check.check_thresholds)
    thresholds: list[float] = field(
        default_factory=lambda: [1.5, 3.5], metadata={"range": Range(why="stage boundaries")}
    )
    name: str = "manual"

    def __post_init__(self) -> None:
        ts = [float(t) for t in self.thresholds]
        if not ts:
            raise DataError("segment.thresholds is empty: give at least one threshold")
        if any(b <= a for a, b in itertools.pairwise(ts)):
            raise DataError(f"segment.thresholds must be strictly increasing, got {ts}")
        self.thresholds = ts

    def thresholds_for(self, scores: Sequence[float]) -> list[float]:
        return list(self.thresholds)

    # Segmenter protocol
    def params(self) -> dict[str, Any]:
        return {"method": self.name, "thresholds": list(self.thresholds)}


def distinct(scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and their counts."""
    values, counts = np.unique(np.asarray(scores, dtype=float), return_counts=True)
    if values.size == 0:
        raise DataError("no scores to segment")
    return values, counts.astype(float)


def midpoint_after(values: np.ndarray, i: int) -> float:
    """Threshold between distinct value ``i`` and ``i + 1``."""
    return float((values[i] + values[i + 1]) / 2)


def _need(values: np.ndarray, k: int, method: str) -> None:
    if k < 2:
        raise DataError(f"segment {method}: k must be at least 2, got {k}")
    if values.size < k:
        raise DataError(
            f"segment {method}: {k} stages need at least {k} distinct scores, the data has {values.size}"
        )


def stages_of(scores: Sequence[float] | np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """:func:`~phasedsft.records.stage_of` of every score at once (1-based, ties go up)."""
    edges = np.asarray(thresholds, dtype=float)
    return np.searchsorted(edges, np.asarray(scores, dtype=float), side="right") + 1


def sizes_for(scores: Sequence[float], thresholds: Sequence[float]) -> list[int]:
    counts = np.bincount(stages_of(scores, thresholds) - 1, minlength=len(thresholds) + 1)
    return [int(n) for n in counts]


@dataclass
class QuantileThresholds:
    """Stages of (nearly) equal size."""

    k: int = ranged(3, ge=2, why="stages")
    name: str = "quantile"

    def thresholds_for(self, scores: Sequence[float]) -> list[float]:
        values, counts = distinct(scores)
        _need(values, self.k, self.name)
        below = np.cumsum(counts)[:-1]  # examples at or below each candidate cut
        n, chosen = counts.sum(), []
        last = -1
        for j in range(1, self.k):
            target = n * j / self.k
            candidates = np.arange(last + 1, values.size - 1 - (self.k - 1 - j))
            i = int(candidates[np.argmin(np.abs(below[candidates] - target))])
            chosen.append(i)
            last = i
        return [midpoint_after(values, i) for i in chosen]

    def params(self) -> dict[str, Any]:
        return {"method": self.name, "k": self.k}


@dataclass
class KDEValleys:
    """Thresholds at the lowest minima of a Gaussian KDE of the scores (all minima if k is None)."""

    k: int | None = ranged(3, ge=2, why="stages; null: every valley")
    # scipy's bw_method: None (Scott), "silverman", or a number
    bandwidth: Any = field(
        default=None, metadata={"range": Range(gt=0, why="the KDE's bandwidth factor")}
    )
    grid: int = ranged(512, ge=3, why="points the KDE is evaluated at")
    name: str = "kde_valleys"

    def density(
        self, scores: Sequence[float], bandwidth: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return self._density(*distinct(scores), bandwidth)

    def _density(
        self, values: np.ndarray, counts: np.ndarray, bandwidth: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        from scipy.stats import gaussian_kde

        if values.size < 2:
            raise DataError(
                f"segment {self.name}: all scores are equal ({values[0]}): no density to cut"
            )
        bw = self.bandwidth if bandwidth is None else bandwidth
        kde = gaussian_kde(values, bw_method=bw, weights=counts)
        pad = 0.05 * (values[-1] - values[0])
        xs = np.linspace(values[0] - pad, values[-1] + pad, self.grid)
        return xs, kde(xs)

    def valleys(self, scores: Sequence[float]) -> tuple[list[int], np.ndarray, np.ndarray, Any]:
        """Density minima inside the data's range, and the bandwidth used.

        With ``bandwidth=None`` and a ``k``, Scott's bandwidth is narrowed step by step (x0.75)
        until the density has ``k - 1`` valleys: spiky scores need it.
        """
        from scipy.stats import gaussian_kde

        values, counts = distinct(scores)
        bw: Any = self.bandwidth
        if bw is None and values.size >= 2:
            bw = float(gaussian_kde(values, weights=counts).factor)
        xs, ys, minima = np.zeros(0), np.zeros(0), []
        for _ in range(40):
            xs, ys = self._density(values, counts, bw)  # the distinct values, found once
            minima = [i for i in range(1, len(xs) - 1) if ys[i] < ys[i - 1] and ys[i] <= ys[i + 1]]
            minima = [i for i in minima if values[0] < xs[i] < values[-1]]
            if self.bandwidth is not None or self.k is None or len(minima) >= self.k - 1:
                break
            bw *= 0.75
        return minima, xs, ys, bw

    def thresholds_for(self, scores: Sequence[float]) -> list[float]:
        values, _ = distinct(scores)
        minima, xs, ys, _ = self.valleys(scores)
        if self.k is not None:
            _need(values, self.k, self.name)
            if len(minima) < self.k - 1:
                raise DataError(
                    f"segment {self.name}: the density has {len(minima)} valleys, {self.k - 1} are needed "
                    f"for k={self.k}; lower segment.method.bandwidth or use another method"
                )
            minima = sorted(sorted(minima, key=lambda i: ys[i])[: self.k - 1])
        if not minima:
            raise DataError(f"segment {self.name}: the density has no valley; lower the bandwidth")
        return _snap(values, [float(xs[i]) for i in minima], self.name)

    def params(self) -> dict[str, Any]:
        return {"method": self.name, "k": self.k, "bandwidth": self.bandwidth, "grid": self.grid}


def _snap(values: np.ndarray, cuts: Sequence[float], method: str) -> list[float]:
    """The midpoint cut that puts exactly the same scores on each side as ``cut`` does.

    Scores equal to a cut go to the upper stage, so a cut ``c`` separates the largest value
    below ``c`` from the smallest value at or above it.
    """
    out = set()
    for c in cuts:
        i = int(np.clip(np.searchsorted(values, c, side="left"), 1, values.size - 1))
        out.add(midpoint_after(values, i - 1))
    if len(out) < len(cuts):
        raise DataError(f"segment {method}: two thresholds fall between the same two scores")
    return sorted(out)


@dataclass
class Jenks:
    """Optimal 1-D k-means (Jenks natural breaks): exact dynamic programming on distinct values."""

    k: int = ranged(3, ge=2, why="stages")
    name: str = "jenks"

    def thresholds_for(self, scores: Sequence[float]) -> list[float]:
        values, w = distinct(scores)
        _need(values, self.k, self.name)
        return [midpoint_after(values, i) for i in optimal_breaks(values, w, self.k)]

    def params(self) -> dict[str, Any]:
        return {"method": self.name, "k": self.k}


def optimal_breaks(x: np.ndarray, w: np.ndarray, k: int) -> list[int]:
    """Indices i such that clusters end after x[i]: minimum weighted within-cluster squares.

    Divide-and-conquer DP (the optimal split point is monotone for 1-D k-means), each step a
    vectorised minimum: O(k n log n) for n distinct values.
    """
    n = x.size
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cx = np.concatenate([[0.0], np.cumsum(w * x)])
    cxx = np.concatenate([[0.0], np.cumsum(w * x * x)])

    def cost(j: np.ndarray, i: int) -> np.ndarray:  # points j..i-1 (0-based, half-open)
        sw, sx, sxx = cw[i] - cw[j], cx[i] - cx[j], cxx[i] - cxx[j]
        return np.asarray(sxx - sx * sx / np.maximum(sw, 1e-300))

    prev = np.array([cost(np.array([0]), i)[0] if i > 0 else 0.0 for i in range(n + 1)])
    arg = np.zeros((k, n + 1), dtype=int)
    for layer in range(1, k):
        cur = np.full(n + 1, np.inf)
        stack = [(layer + 1, n, layer, n - 1)]
        while stack:
            lo, hi, olo, ohi = stack.pop()
            if lo > hi:
                continue
            mid = (lo + hi) // 2
            js = np.arange(olo, min(mid - 1, ohi) + 1)
            vals = prev[js] + cost(js, mid)
            b = int(np.argmin(vals))
            cur[mid], arg[layer, mid] = vals[b], js[b]
            stack.append((lo, mid - 1, olo, int(js[b])))
            stack.append((mid + 1, hi, int(js[b]), ohi))
        prev = cur
    breaks, i = [], n
    for layer in range(k - 1, 0, -1):
        j = int(arg[layer, i])
        breaks.append(j - 1)
        i = j
    return sorted(breaks)


@dataclass
class GMMThresholds:
    """A 1-D Gaussian mixture (EM on weighted distinct values); k by BIC when k is None."""

    k: int | None = ranged(None, ge=2, why="stages; null: chosen by BIC")
    k_max: int = ranged(6, ge=2, why="the most stages BIC may choose")
    # times the score range squared
    var_floor: float = ranged(1e-3, gt=0, why="the smallest variance of a component")
    iterations: int = ranged(200, ge=1, why="EM iterations")
    max_points: int = ranged(2000, ge=2, why="distinct scores fitted at most")
    name: str = "gmm"

    def fit(
        self, values: np.ndarray, w: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        n = w.sum()
        floor = self.var_floor * max((values[-1] - values[0]) ** 2, 1e-12)
        qs = np.interp(
            (np.arange(k) + 0.5) / k, np.cumsum(w) / n, values
        )  # quantile initialisation
        mu, var, pi = (
            qs.astype(float),
            np.full(k, max(np.average((values - values.mean()) ** 2, weights=w), floor)),
            np.full(k, 1 / k),
        )
        ll = -np.inf
        for _ in range(self.iterations):
            logp = -0.5 * ((values[:, None] - mu) ** 2 / var + np.log(2 * np.pi * var)) + np.log(pi)
            top = logp.max(1, keepdims=True)
            norm = top[:, 0] + np.log(np.exp(logp - top).sum(1))
            resp = np.exp(logp - norm[:, None]) * w[:, None]
            nk = resp.sum(0) + 1e-12
            mu = (resp * values[:, None]).sum(0) / nk
            var = np.maximum((resp * (values[:, None] - mu) ** 2).sum(0) / nk, floor)
            pi = nk / n
            new_ll = float((w * norm).sum())
            if abs(new_ll - ll) < 1e-8 * max(1.0, abs(new_ll)):
                ll = new_ll
                break
            ll = new_ll
        return mu, var, pi, ll

    def choose_k(self, values: np.ndarray, w: np.ndarray) -> tuple[int, dict[int, float]]:
        n, bic = w.sum(), {}
        for k in range(2, min(self.k_max, values.size) + 1):
            *_, ll = self.fit(values, w, k)
            bic[k] = (3 * k - 1) * math.log(n) - 2 * ll
        return min(bic, key=lambda k: bic[k]), bic

    def thresholds_for(self, scores: Sequence[float]) -> list[float]:
        values, w = distinct(scores)
        # EM runs on the distinct values (weighted); beyond max_points of them (continuous
        # scores), on a weighted histogram of max_points bins. Labels use every distinct value.
        fx, fw = values, w
        if values.size > self.max_points:
            fw, edges = np.histogram(values, bins=self.max_points, weights=w)
            fx, fw = ((edges[:-1] + edges[1:]) / 2)[fw > 0], fw[fw > 0]
        if self.k is None:
            if values.size < 2:
                raise DataError(f"segment {self.name}: all scores are equal: nothing to cut")
            k, _ = self.choose_k(fx, fw)
        else:
            _need(values, self.k, self.name)
            k = self.k
        mu, var, pi, _ = self.fit(fx, fw, k)
        logp = -0.5 * ((values[:, None] - mu) ** 2 / var + np.log(2 * np.pi * var)) + np.log(pi)
        labels = logp.argmax(1)
        cuts = [
            midpoint_after(values, i) for i in range(values.size - 1) if labels[i] != labels[i + 1]
        ]
        if not cuts:
            raise DataError(
                f"segment {self.name}: the fitted components do not separate the scores"
            )
        return cuts

    def params(self) -> dict[str, Any]:
        return {"method": self.name, "k": self.k, "k_max": self.k_max, "var_floor": self.var_floor}


@dataclass
class Balanced:
    """Another method's thresholds, moved towards equal-size ones until max/min size <= max_ratio."""

    method: Any = field(default_factory=ManualThresholds)
    max_ratio: float = ranged(3.0, ge=1, why="the largest stage over the smallest")
    steps: int = ranged(20, ge=1, why="moves towards equal-size thresholds")
    name: str = "balanced"

    def thresholds_for(self, scores: Sequence[float]) -> list[float]:
        base = list(self.method.thresholds_for(scores))
        equal = QuantileThresholds(k=len(base) + 1).thresholds_for(scores)
        values, _ = distinct(scores)
        for step in range(self.steps + 1):
            a = step / self.steps
            cuts = _snap(
                values, [(1 - a) * b + a * e for b, e in zip(base, equal, strict=True)], self.name
            )
            sizes = sizes_for(scores, cuts)
            if min(sizes) > 0 and max(sizes) <= self.max_ratio * min(sizes):
                return cuts
        raise DataError(
            f"segment {self.name}: no thresholds keep every stage within {self.max_ratio}x of the "
            f"smallest (equal-size stages are {sizes_for(scores, equal)}: spikes in the scores); raise max_ratio"
        )

    def params(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "base": self.method.params(),
            "max_ratio": self.max_ratio,
            "steps": self.steps,
        }
