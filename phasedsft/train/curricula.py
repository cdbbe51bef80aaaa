"""Curricula beyond the paper's stages (``docs/curricula.md``): replay of earlier stages, paced
(continuous) curricula, interleaved stages.

Each is a pure transform from examples (or the ordering's phases) to phases, so every one goes
through the same planned order, fed-order audit, resume and per-stage checkpoints as the
paper's orderings.

- :class:`Replay` (``replay=uniform|recent``, composes with any ordering): each stage after the
  first also trains on ``round(fraction x its size)`` examples drawn from the stages before it,
  uniformly over their examples or weighted towards the most recent stage; with
  ``match_one_off_steps`` the passes over each stage shrink so the run feeds as many examples
  as one-off over the same data (matched compute).
- :class:`Paced` (``ordering=paced``): competence-based pacing, after Platanios et al. 2019
  (NAACL, "Competence-based curriculum learning for neural machine translation": linear and
  root competence) and Hacohen & Weinshall 2019 (ICML, "On the power of curriculum learning in
  training deep networks": exponential and fixed-step pacing). At fed position ``p`` of ``P``
  the example is drawn uniformly from the easiest ``c(p / P)`` share of the data; ``anti``
  draws from the hardest share instead (anti-curriculum).
- :class:`Interleaved` (``ordering=interleaved``): the difficulty stages mixed evenly through
  one phase (each epoch a fresh seeded shuffle of each stage, merged in proportion), the
  "interleaved" schedule of the human-learning literature; "blocked" is the paper's stages.
- :class:`SelfPaced` (``ordering=self_paced``): the stages still to come re-staged after each
  stage by the model being trained.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from phasedsft.records import DataError, Example
from phasedsft.segment.manifest import StageManifest
from phasedsft.train.ordering import Phase, Phased

WEIGHTINGS = ("uniform", "recent")
PACINGS = ("linear", "root", "geometric", "step")


def replay_counts(n: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """``n`` split in proportion to ``weights``, none above its cap, as replay has always drawn:
    the floors of the shares first, then the shares of what is left recomputed, and where they
    all floor to 0 one to the largest such share (the heaviest open pool, not the largest
    remainder of the first split: :func:`allocate` does that). Kept so that replay runs made
    before :func:`allocate` was fixed draw the same examples under the same run name."""
    counts = [0] * len(weights)
    left = min(n, sum(caps))
    while left > 0:
        open_ = [i for i in range(len(weights)) if counts[i] < caps[i] and weights[i] > 0]
        if not open_:
            break
        total = sum(weights[i] for i in open_)
        shares = {i: left * weights[i] / total for i in open_}
        floors = {i: min(int(shares[i]), caps[i] - counts[i]) for i in open_}
        given = sum(floors.values())
        if given == 0:  # hand out one at a time, biggest remainder first
            best = max(open_, key=lambda i: (shares[i] - int(shares[i]), weights[i], -i))
            floors[best] = 1
            given = 1
        for i, f in floors.items():
            counts[i] += f
        left -= given
    return counts


def allocate(n: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """``n`` split in proportion to ``weights``, none above its cap (Hamilton's largest
    remainders): pools whose share reaches their cap get the cap and the rest is split again
    among the others; then each gets the floor of its share, and the units left over go one
    each to the largest remainders (ties: the heavier pool, then the earlier)."""
    counts = [0] * len(weights)
    left = min(n, sum(caps))
    open_ = [i for i in range(len(weights)) if weights[i] > 0 and caps[i] > 0]
    while left > 0 and open_:
        total = sum(weights[i] for i in open_)
        share = {i: left * weights[i] / total for i in open_}
        capped = [i for i in open_ if share[i] >= caps[i] - counts[i]]
        if capped:
            for i in capped:
                left -= caps[i] - counts[i]
                counts[i] = caps[i]
            open_ = [i for i in open_ if i not in capped]
            continue
        floors = {i: math.floor(share[i]) for i in open_}
        for i in open_:
            counts[i] += floors[i]
        rest = left - sum(floors.values())
        by_remainder = sorted(open_, key=lambda i: (floors[i] - share[i], -weights[i], i))
        for i in by_remainder[:rest]:
            counts[i] += 1
        left = 0
    return counts


@dataclass
class Replay:
    """Each later stage mixed with a ``fraction`` of earlier stages' examples (see module doc)."""

    fraction: float = 0.2
    weighting: str = (
        "uniform"  # uniform over earlier examples | recent: each stage twice the one before
    )
    match_one_off_steps: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise DataError(f"replay.fraction must be in (0, 1], got {self.fraction}")
        if self.weighting not in WEIGHTINGS:
            raise DataError(f"replay.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")

    def apply(self, phases: Sequence[Phase], n_examples: int, epochs: float = 1.0) -> list[Phase]:
        """``phases`` with earlier stages' examples mixed in; with ``match_one_off_steps``, the
        positions one-off feeds (``n_examples`` x ``epochs``) split over the stages by their
        sizes (largest remainders), so the run feeds exactly as many as one-off."""
        rng = random.Random(f"replay-{self.seed}")
        out = [replace(phases[0], mixture=((phases[0].name, len(phases[0].ids)),))]
        for k, phase in enumerate(phases[1:], start=1):
            own = set(phase.ids)
            pools = [sorted(set(p.ids) - own) for p in phases[:k]]
            if self.weighting == "uniform":
                weights = [float(len(pool)) for pool in pools]
            else:
                weights = [2.0**j for j in range(k)]
            counts = replay_counts(
                round(self.fraction * len(phase.ids)), weights, [len(p) for p in pools]
            )
            drawn = [rng.sample(pool, c) for pool, c in zip(pools, counts, strict=True)]
            earlier = [(phases[j].name, c) for j, c in enumerate(counts) if c]
            mixture = ((phase.name, len(phase.ids)), *earlier)
            ids = phase.ids + tuple(i for part in drawn for i in part)
            out.append(replace(phase, ids=ids, mixture=mixture))
        if self.match_one_off_steps:
            total = round(n_examples * epochs)
            sizes = [len(p.ids) for p in out]
            fed = allocate(total, [float(n) for n in sizes], [total] * len(out))
            out = [replace(p, fed=n) for p, n in zip(out, fed, strict=True)]
        return out


def competence(pacing: str, t: float, start: float, growth: float = 2.0, steps: int = 4) -> float:
    """The share of the data available at training progress ``t`` in [0, 1] (1 from ``t = 1``)."""
    if t >= 1:
        return 1.0
    if pacing == "linear":
        return min(1.0, start + (1 - start) * t)
    if pacing == "root":
        return min(1.0, math.sqrt(start**2 + (1 - start**2) * t))
    if pacing == "geometric":
        increments = max(1, math.ceil(math.log(1 / start) / math.log(growth)))
        return min(1.0, start * growth ** math.floor(t * increments))
    if pacing == "step":
        return min(1.0, start + (1 - start) * math.floor(t * steps) / steps)
    raise DataError(f"ordering.pacing must be one of {PACINGS}, got {pacing!r}")


def ranked_by_difficulty(examples: Sequence[Example], seed: int, hardest_first: bool) -> list[str]:
    tiebreak = random.Random(f"ranked-{seed}")
    keyed = [(ex.score, tiebreak.random(), ex.id) for ex in examples]
    if any(k[0] is None for k in keyed):
        raise DataError("a paced curriculum needs a difficulty score for every example")
    keyed.sort(key=lambda k: (-k[0] if hardest_first else k[0], k[1]))  # type: ignore[operator]
    return [k[2] for k in keyed]


@dataclass
class Paced:
    """One phase, paced: the easiest ``c(t)`` share of the data at progress ``t`` (module doc)."""

    pacing: str = "linear"
    start: float = 0.2  # c(0): the share of the data available at the first step
    full_at: float = 0.5  # the share of training after which every example is available
    growth: float = 2.0  # geometric: factor per increment
    steps: int = 4  # step: increments of the available share
    anti: bool = False  # hardest first (anti-curriculum)
    epochs: float = 2.0  # fed positions = epochs x examples (trainer.num_train_epochs)
    seed: int = 0
    name: str = "paced"
    # in a run (phasedsft.train.orderings): named by its pacing, the run's epochs and seed
    bound: ClassVar[dict[str, Any]] = {
        "name": "paced-${.pacing}",
        "epochs": "${trainer.num_train_epochs}",
        "seed": "${seed}",
    }
    needs_scores: ClassVar[bool] = True
    needs_stages: ClassVar[bool] = False
    # one phase: a stage policy or replay changes nothing (evaluate's baseline ignores them)
    one_phase: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.pacing not in PACINGS:
            raise DataError(f"ordering.pacing must be one of {PACINGS}, got {self.pacing!r}")
        if not 0 < self.start <= 1 or not 0 < self.full_at <= 1:
            raise DataError("ordering.start and ordering.full_at must be in (0, 1]")
        if self.growth <= 1 or self.steps < 1:
            raise DataError("ordering.growth must be > 1 and ordering.steps >= 1")

    def phases(self, examples: Sequence[Example], manifest: StageManifest | None) -> list[Phase]:
        ranked = ranked_by_difficulty(examples, self.seed, self.anti)
        n = len(ranked)
        total = max(1, round(self.epochs * n))
        rng = random.Random(f"paced-{self.seed}")
        order = []
        for p in range(total):
            c = competence(
                self.pacing, p / total / self.full_at, self.start, self.growth, self.steps
            )
            order.append(ranked[rng.randrange(max(1, math.ceil(c * n)))])
        name = f"paced-{self.pacing}" + ("-anti" if self.anti else "")
        return [Phase(name, tuple(ranked), shuffle=False, planned=tuple(order))]


@dataclass
class Interleaved:
    """The difficulty stages mixed evenly through one phase (see module doc)."""

    stages: list[int] | None = None  # default: every stage
    epochs: float = 2.0
    reshuffle: bool = True  # each epoch a fresh shuffle of each stage
    seed: int = 0
    name: str = "interleaved"
    # in a run (phasedsft.train.orderings): the run's epochs and seed
    bound: ClassVar[dict[str, Any]] = {"epochs": "${trainer.num_train_epochs}", "seed": "${seed}"}
    needs_scores: ClassVar[bool] = True
    needs_stages: ClassVar[bool] = True
    # one phase: a stage policy or replay changes nothing (evaluate's baseline ignores them)
    one_phase: ClassVar[bool] = True

    def phases(self, examples: Sequence[Example], manifest: StageManifest | None) -> list[Phase]:
        assert manifest is not None
        stages = self.stages or list(range(1, manifest.n_stages + 1))
        parts = [Phase(f"difficulty-{s}", tuple(manifest.stages[s - 1])) for s in stages]
        if any(not p.ids for p in parts):
            raise DataError(f"ordering=interleaved: a stage is empty under {manifest.thresholds}")
        sequences = [p.sequence(self.epochs, self.seed, self.reshuffle) for p in parts]
        order = merge_evenly(sequences)
        ids = tuple(i for p in parts for i in p.ids)
        return [Phase(self.name, ids, shuffle=False, planned=tuple(order))]


def merge_evenly(sequences: Sequence[Sequence[str]]) -> list[str]:
    """One sequence taking from each in proportion to its length, each one's order kept."""
    taken = [0] * len(sequences)
    out: list[str] = []
    total = sum(len(s) for s in sequences)
    for _ in range(total):
        # next: the sequence whose next item sits earliest in its own even spread
        k = min(
            (i for i, s in enumerate(sequences) if taken[i] < len(s)),
            key=lambda i: ((taken[i] + 0.5) / len(sequences[i]), i),
        )
        out.append(sequences[k][taken[k]])
        taken[k] += 1
    return out


@dataclass
class SelfPaced:
    """The paper's stages, re-staged by the model being trained (``ordering=self_paced``).

    Stage 1 is the easiest stage by the configured scorer (as ``1-2-3``). After each stage the
    examples of the stages still to come are scored again by ``rescorer`` with the weights just
    trained (a model-based scorer: ``perplexity``, ``ifd``), ranked (ties kept in the earlier
    order) and cut into the remaining stages with their sizes unchanged: what the current model
    finds easiest comes next (a self-paced curriculum, after Kumar et al. 2010). The scores are
    cached under the stage's weights, so a resumed run re-stages exactly as the first did.
    """

    rescorer: Any = None  # a scorer with uses_model (instantiated from its config node)
    stages: list[int] = field(default_factory=lambda: [1, 2, 3])
    name: str = "self_paced"
    # False: the last stage is fed as cut (re-scoring it would only re-seed its shuffle)
    rescore_last_stage: bool = False
    # in a run (phasedsft.train.orderings): the scorer the trained weights re-score the stages
    # to come with, a config node (docs/curricula.md)
    bound: ClassVar[dict[str, Any]] = {
        "rescorer": {
            "_target_": "phasedsft.score.local.PerplexityScorer",
            "batch_size": 8,
            "name": "perplexity",
        }
    }
    needs_scores: ClassVar[bool] = True
    needs_stages: ClassVar[bool] = True

    def phases(self, examples: Sequence[Example], manifest: StageManifest | None) -> list[Phase]:
        assert manifest is not None
        if self.rescorer is None or not getattr(self.rescorer, "uses_model", False):
            raise DataError(
                "ordering=self_paced needs ordering.rescorer, a scorer that runs the model "
                "(e.g. /scorer@ordering.rescorer=perplexity)"
            )
        phased = Phased(stages=list(self.stages)).phases(examples, manifest)
        return [replace(p, name=f"self-paced-{k}") for k, p in enumerate(phased, start=1)]

    def rescores(self, stages_left: int) -> bool:
        """Re-score before each stage but the last alone (unless ``rescore_last_stage``): one
        stage left has no cut to move, and its examples are shuffled whatever their order."""
        return stages_left > 1 or (stages_left == 1 and self.rescore_last_stage)

    def restage(self, later: Sequence[Phase], scores: Mapping[str, float]) -> list[Phase]:
        """``later`` re-cut by ``scores`` (lower: easier), each phase keeping its size."""
        pool = [i for p in later for i in p.ids]
        position = {i: k for k, i in enumerate(pool)}
        ranked = sorted(pool, key=lambda i: (scores[i], position[i]))
        out, start = [], 0
        for p in later:
            out.append(replace(p, ids=tuple(ranked[start : start + len(p.ids)])))
            start += len(p.ids)
        return out
