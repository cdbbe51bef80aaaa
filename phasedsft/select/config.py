"""The ``selection`` config group's typed schemas (registered by :func:`phasedsft.config.register`).

One dataclass node per rule, each naming its rule class in ``_target_``
(:mod:`phasedsft.select.rules`): a misspelt key or a value of the wrong type fails at compose
time. ``selection=none`` (the default) is no node at all (``conf/selection/none.yaml``), so every run
made before selection existed keeps its name (``NEUTRAL_DEFAULTS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from phasedsft.ranges import ranged

RULES = "phasedsft.select.rules"


@dataclass
class BoundSchema:
    """A filter: keep an example only if ``column`` is >= at_least, > above, <= at_most, < below."""

    column: str = "score"
    at_least: float | None = ranged(None, why="keep column >= this")
    above: float | None = ranged(None, why="keep column > this")
    at_most: float | None = ranged(None, why="keep column <= this")
    below: float | None = ranged(None, why="keep column < this")


@dataclass
class SelectBase:
    _target_: str = ""  # set by each rule
    name: str = ""
    filters: list[BoundSchema] = field(default_factory=list)


@dataclass
class ThresholdSelect(SelectBase):
    _target_: str = f"{RULES}.Threshold"
    name: str = "threshold"
    column: str = "score"
    at_least: float | None = ranged(4.5, why="keep column >= this")
    above: float | None = ranged(None, why="keep column > this")
    at_most: float | None = ranged(None, why="keep column <= this")
    below: float | None = ranged(None, why="keep column < this")


@dataclass
class RankedSelect(SelectBase):
    by: str = "score"  # the score column ranked by
    times: list[str] = field(default_factory=list)  # columns multiplied in (Deita: [quality])
    descending: bool = True  # highest value first


@dataclass
class TopKSelect(RankedSelect):
    _target_: str = f"{RULES}.TopK"
    name: str = "top_k"
    k: int = ranged(1000, ge=1, why="examples kept")


@dataclass
class TopFractionSelect(RankedSelect):
    _target_: str = f"{RULES}.TopFraction"
    name: str = "top_fraction"
    fraction: float = ranged(0.1, gt=0, le=1, why="the share of the data kept")


@dataclass
class TokenBudgetSelect(RankedSelect):
    _target_: str = f"{RULES}.TokenBudget"
    name: str = "token_budget"
    budget: int = ranged(1_000_000, ge=1, why="training tokens kept")
    count: str = "total"  # total: every token fed; target: the tokens in the loss


@dataclass
class DiverseSelect(RankedSelect):
    _target_: str = f"{RULES}.Diverse"
    name: str = "diverse"
    max_similarity: float = ranged(0.9, ge=-1, le=1, why="cosine similarity above which skipped")
    k: int | None = ranged(None, ge=1, why="examples kept; null: as many as pass")
    dims: int = ranged(1024, ge=1, why="hashed embedding dimensions")
    # hashed: TF-IDF of hashed words (no model); model: mean-pooled last hidden states of
    # embed_model (a hub id or local directory; embed_gguf_file for a GGUF), as Deita does
    embedding: str = "hashed"
    embed_model: str | None = None
    embed_gguf_file: str | None = None
    embed_batch_size: int = ranged(16, ge=1, why="texts per forward pass")
    embed_max_tokens: int = ranged(512, ge=1, why="tokens of each example embedded")


@dataclass
class RandomSelect(SelectBase):
    _target_: str = f"{RULES}.Random"
    name: str = "random"
    size: int | None = ranged(None, ge=1, why="examples drawn")
    tokens: int | None = ranged(None, ge=1, why="training tokens drawn")
    match: Any = None  # another selection node: draw as many examples (or tokens) as it keeps
    matching: str = "size"  # size | tokens
    count: str = "total"  # tokens: total (every token fed) | target (the tokens in the loss)
    seed: int = ranged("${seed}", ge=0)


OPTIONS: dict[str, type] = {
    "threshold": ThresholdSelect,
    "top_k": TopKSelect,
    "top_fraction": TopFractionSelect,
    "token_budget": TokenBudgetSelect,
    "diverse": DiverseSelect,
    "random": RandomSelect,
}


def register(cs: Any) -> None:
    """Store one option per rule in the ``selection`` group of ConfigStore ``cs``."""
    for name, node in OPTIONS.items():
        cs.store(group="selection", name=name, node=node)
