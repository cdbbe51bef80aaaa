"""Orderings: which stages are trained, in which order (the paper's main experiment and ablations).

An ordering turns the stage manifest into a list of :class:`Phase` objects; the
recipe trains one phase after another, each from the previous phase's weights.

- ``OneOff``: all data in one phase (the paper's baseline); needs no scores.
- ``Phased(stages=[1, 2, 3])``: difficulty stages in the given order; any permutation,
  any subset of distinct stages (``[3]`` = stage 3 alone), any number of stages.
- ``RandomPhased``: random stages of equal sizes, or (``sizes="matched"``) of the sizes
  of the difficulty stages.
- ``Sorted``: one phase in ascending difficulty, no stage breaks (classic curriculum).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from omegaconf import MISSING

from phasedsft.config import named_stages, stage_sequences, stages_name
from phasedsft.records import DataError, Example, UserError
from phasedsft.segment.manifest import StageManifest


@dataclass(frozen=True)
class Phase:
    """One training stage of a run: a name, the example ids, and how to order them per epoch."""

    name: str
    ids: tuple[str, ...]
    shuffle: bool = True
    # the whole fed order, fixed by the ordering itself (a paced curriculum), epochs included
    planned: tuple[str, ...] | None = None
    # replay with matched compute: the positions fed over the whole stage (its share of one-off's)
    fed: int | None = None
    mixture: tuple[tuple[str, int], ...] = ()  # replay: (stage, examples) it holds, own first

    def sequence(self, epochs: float, seed: int, reshuffle: bool = True) -> list[str]:
        """The exact order of ids fed to the trainer over ``epochs`` passes.

        Each full pass is a fresh seeded shuffle (``reshuffle``), or the first pass's shuffle
        again (``reshuffle=False``: the authors' code shuffles a stage once and feeds that order
        every epoch), or the fixed order (``shuffle=False``); a fractional epoch takes the first
        part of one more pass. A phase whose ordering planned its whole order feeds that; one with
        a ``fed`` count (replay at one-off's compute) feeds exactly that many, in passes.
        """
        if epochs <= 0:
            raise DataError(f"trainer.num_train_epochs must be positive, got {epochs}")
        if self.planned is not None:
            return list(self.planned)
        if self.fed is not None:  # passes over the stage until exactly its share is fed
            epochs = self.fed / len(self.ids)
        out: list[str] = []
        for epoch in range(math.ceil(epochs)):
            order = list(self.ids)
            if self.shuffle:
                key = epoch if reshuffle else 0
                random.Random(f"{seed}-{self.name}-epoch{key}").shuffle(order)
            if self.fed is not None:
                take = min(len(order), self.fed - len(out))
            elif epoch + 1 <= epochs:
                take = len(order)
            else:
                take = round(len(order) * (epochs - epoch))
            out.extend(order[:take])
        return out


def group_by_length(
    sequence: Sequence[str],
    lengths: Mapping[str, int],
    batch_size: int,
    window_batches: int = 64,
    seed: int = 0,
) -> list[str]:
    """Batches of similar lengths, without changing what is fed or moving it far.

    The planned sequence is cut into windows of ``window_batches`` batches; inside a window the
    ids are sorted by length and cut into batches, and the batches are put back in a seeded
    random order. Every id keeps its multiplicity and stays inside its window, so a stage (the
    curriculum's unit) feeds the same examples, the same number of times; only the padding
    inside each batch shrinks.
    """
    if batch_size < 1 or window_batches < 1:
        raise DataError("group_by_length needs batch_size >= 1 and window_batches >= 1")
    rng = random.Random(f"group-by-length-{seed}")
    size = batch_size * window_batches
    out: list[str] = []
    for start in range(0, len(sequence), size):
        window = sorted(sequence[start : start + size], key=lambda i: -lengths[i])
        batches = [window[b : b + batch_size] for b in range(0, len(window), batch_size)]
        rng.shuffle(batches)
        out.extend(i for batch in batches for i in batch)
    return out


def _check_stages(
    stages: Sequence[int], source: Sequence[Sequence[str]], manifest: StageManifest, what: str
) -> None:
    for s in stages:
        if not 1 <= s <= len(source):
            raise DataError(
                f"ordering asks for {what} stage {s}, but the segmentation has {manifest.n_stages} "
                f"stages (thresholds {manifest.thresholds})"
            )
        if not source[s - 1]:
            raise DataError(
                f"{what} stage {s} is empty under thresholds {manifest.thresholds}; "
                "choose other thresholds or another ordering"
            )


def check_stages(name: str, stages: Sequence[int] | None) -> None:
    """Refuse stages that a run would be misnamed by: a stage given twice, or stages other than
    those the ordering's name spells (``ordering=1-2-3 'ordering.stages=[3,2,1]'``). A run is
    named, summarized and evaluated by its ordering's name, and the same training must not run
    under two names (two run directories, two rows of one comparison)."""
    if stages is None:
        return
    seq = [int(s) for s in stages]
    repeated = sorted({s for s in seq if seq.count(s) > 1})
    if repeated:
        raise UserError(
            f"ordering.stages={seq} trains stage {', '.join(map(str, repeated))} more than once: "
            "each stage is trained once per run (more passes over a stage: "
            "trainer.num_train_epochs; earlier stages again within later ones: replay=uniform)"
        )
    spelled = named_stages(name)
    if spelled is None or spelled == tuple(seq) or not seq:
        return
    right = stages_name(seq)
    listed = ",".join(map(str, seq))
    choose = (
        f"ordering={right}"
        if tuple(seq) in stage_sequences()
        else f"ordering=phased 'ordering.stages=[{listed}]' ordering.name={right}"
    )
    raise UserError(
        f"the ordering is named {name} (stages {', '.join(map(str, spelled))}) but "
        f"ordering.stages={seq}: a run is named, summarized and evaluated by its ordering's "
        f"name, so choose the ordering by name: {choose}"
    )


def paced_name(pacing: str, anti: bool) -> str:
    """The name of a paced curriculum (``paced-root``), anti-curricula suffixed (``-anti``)."""
    return f"paced-{pacing}" + ("-anti" if anti else "")


def check_paced_name(name: str, pacing: str, anti: bool) -> None:
    """A paced ordering named by a pacing (``paced-*``) must train that pacing, in that direction:
    evaluate and the growth curves label runs by it (a custom ``ordering.name`` is left alone)."""
    expected = paced_name(pacing, anti)
    if name.startswith("paced-") and name != expected:
        raise UserError(
            f"the ordering is named {name} but trains ordering.pacing={pacing}, "
            f"ordering.anti={str(anti).lower()}: a run is named, summarized and evaluated by its "
            f"ordering's name; choose the ordering by name: ordering={expected}"
        )


def check_ordering(node: Any) -> None:
    """:func:`check_stages` on an ``ordering`` config node (any ordering with ``stages``); a paced
    curriculum's name checked against its pacing and direction (:func:`check_paced_name`)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig) and str(node.get("_target_", "")).endswith(".Paced"):
        check_paced_name(str(node.name), str(node.pacing), bool(node.anti))
    if (
        not isinstance(node, DictConfig)
        or "stages" not in node
        or OmegaConf.is_missing(node, "stages")
    ):
        return
    check_stages(str(node.get("name", "")), node.stages)


@dataclass
class OneOff:
    """All examples at once, shuffled each epoch (the paper's one-off baseline)."""

    name: str = "one_off"
    needs_scores: ClassVar[bool] = False
    needs_stages: ClassVar[bool] = False
    # one phase: a stage policy or replay changes nothing (evaluate's baseline ignores them)
    one_phase: ClassVar[bool] = True

    def phases(self, examples: Sequence[Example], manifest: StageManifest | None) -> list[Phase]:
        return [Phase("all", tuple(ex.id for ex in examples))]


@dataclass
class Phased:
    """Difficulty stages in the given order, e.g. ``[1, 2, 3]``, ``[3, 2, 1]`` or ``[3]``."""

    stages: list[int] = field(default_factory=lambda: [1, 2, 3])
    name: str = "phased"
    needs_scores: ClassVar[bool] = True
    needs_stages: ClassVar[bool] = True
    # in a run (phasedsft.train.orderings): ordering=phased needs ordering.stages given
    bound: ClassVar[dict[str, Any]] = {"stages": MISSING}

    def __post_init__(self) -> None:
        check_stages(self.name, self.stages)

    def phases(self, examples: Sequence[Example], manifest: StageManifest | None) -> list[Phase]:
        assert manifest is not None
        if not self.stages:
            raise DataError("ordering.stages is empty")
        _check_stages(self.stages, manifest.stages, manifest, "difficulty")
        return [Phase(f"difficulty-{s}", tuple(manifest.stages[s - 1])) for s in self.stages]


@dataclass
class RandomPhased:
    """Random stages (equal sizes, or ``matched`` to the difficulty stages), trained in order."""

    stages: list[int] | None = None
    sizes: str = "equal"
    name: str = "random"
    needs_scores: ClassVar[bool] = True
    needs_stages: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_stages(self.name, self.stages)

    def phases(self, examples: Sequence[Example], manifest: StageManifest | None) -> list[Phase]:
        assert manifest is not None
        if self.sizes not in ("equal", "matched"):
            raise DataError(f"ordering.sizes must be 'equal' or 'matched', got {self.sizes!r}")
        stages = self.stages or list(range(1, manifest.n_stages + 1))
        source = manifest.random_equal_stages if self.sizes == "equal" else manifest.random_stages
        _check_stages(stages, source, manifest, "random")
        return [Phase(f"random-{s}", tuple(source[s - 1])) for s in stages]


@dataclass
class Sorted:
    """One phase in ascending difficulty (ties in a seeded random order), every epoch."""

    seed: int = 0
    name: str = "sorted"
    bound: ClassVar[dict[str, Any]] = {"seed": "${seed}"}  # in a run: the run's seed
    needs_scores: ClassVar[bool] = True
    needs_stages: ClassVar[bool] = False
    # one phase: a stage policy or replay changes nothing (evaluate's baseline ignores them)
    one_phase: ClassVar[bool] = True

    def phases(self, examples: Sequence[Example], manifest: StageManifest | None) -> list[Phase]:
        tiebreak = random.Random(f"sorted-{self.seed}")
        keyed = [(ex.score, tiebreak.random(), ex.id) for ex in examples]
        if any(k[0] is None for k in keyed):
            raise DataError("ordering=sorted needs a difficulty score for every example")
        return [Phase("sorted", tuple(k[2] for k in sorted(keyed)), shuffle=False)]


@runtime_checkable
class Ordering(Protocol):
    """What the recipe asks of an ordering (``ordering._target_``): its ``name`` (the run is
    named by it), whether it ``needs_scores`` and ``needs_stages`` (a stage manifest), and its
    ``phases``: the stages to train, in order."""

    name: str
    needs_scores: bool
    needs_stages: bool

    def phases(
        self, examples: Sequence[Example], manifest: StageManifest | None
    ) -> list[Phase]: ...


def rescores_now(ordering: Restages, stages_left: int) -> bool:
    """Whether ``ordering`` re-scores and re-cuts the ``stages_left`` stages still to come now:
    its ``rescores(stages_left)`` where it says (``self_paced``), else whenever any are left."""
    rescores = getattr(ordering, "rescores", None)
    return bool(rescores(stages_left)) if callable(rescores) else stages_left > 0


def checked_ordering(obj: Any) -> Ordering:
    """``obj`` if it implements :class:`Ordering`; else a plain error naming what it lacks."""
    if isinstance(obj, Ordering):
        return obj
    missing = [m for m in ("name", "needs_scores", "needs_stages", "phases") if not hasattr(obj, m)]
    raise UserError(
        f"ordering {type(obj).__name__} lacks {', '.join(missing)}: an ordering class has a "
        "name, needs_scores and needs_stages, and phases(examples, manifest) -> list[Phase] "
        "(see phasedsft/train/orderings.py)"
    )


@runtime_checkable
class Restages(Protocol):
    """An ordering that re-cuts the stages still to come after each stage (``self_paced``):
    ``rescorer`` scores them with the weights just trained, ``restage`` cuts them again."""

    rescorer: Any

    def restage(self, later: Sequence[Phase], scores: Mapping[str, float]) -> list[Phase]: ...
