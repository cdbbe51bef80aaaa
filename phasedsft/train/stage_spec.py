"""What one stage of a run is, as the recipe plans it and :func:`~phasedsft.train.stage.train_stage`
trains it: its examples, its fed order, its directory, and how it follows the stage before.
Plain data, no torch: ``train.py plan_only`` plans with it without importing the training stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from phasedsft.io import sha256_lines


@dataclass(frozen=True)
class Continuity:
    """How one stage continues from the one before (``trainer.stage_policy``).

    ``span``: (optimizer steps of the stages before this one, steps of all stages): the stage
    follows one schedule spanning every stage, from where the previous stage left it.
    ``optimizer_from``: the previous stage's final optimizer state (its moments) to start from.
    ``keep_optimizer``: save this stage's final optimizer state for the next stage.
    """

    warmup: bool = True
    span: tuple[int, int] | None = None
    optimizer_from: Path | None = None
    keep_optimizer: bool = False


@dataclass
class StageSpec:
    index: int  # 1-based position in the run
    name: str  # e.g. difficulty-3, random-1, all, sorted
    ids: Sequence[str]  # the stage's examples
    sequence: Sequence[str]  # the planned fed order (epochs unrolled)
    dir: Path
    packs: Sequence[Sequence[int]] | None = None  # trainer.packing: the rows, as plan positions
    continuity: Continuity = Continuity()  # trainer.stage_policy: how it follows the stage before

    @property
    def order_hash(self) -> str:
        return sha256_lines(self.sequence)
