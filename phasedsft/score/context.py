"""What a scorer gets besides the examples: the cache, and (for local LMs) a tokenizer and model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from phasedsft.llm.cache import ScoreCache
from phasedsft.models import BuildContext


@dataclass
class ScoreContext:
    cache: ScoreCache
    tokenizer: Any = None
    load_model: Callable[[], Any] | None = None
    model_name: str | None = None


def score_context(cfg: DictConfig, cache_dir: Path, tokenizer: Any) -> ScoreContext:
    """The shared score cache, plus the configured model for scorers that run a local LM."""
    build = BuildContext(cache_dir=cache_dir, seed=cfg.seed, corpus=list)
    return model_context(ScoreCache(cache_dir / "scores.sqlite"), tokenizer, build, cfg)


def model_context(
    cache: ScoreCache, tokenizer: Any, build: BuildContext, cfg: DictConfig
) -> ScoreContext:
    """``cache``, with the configured model (``cfg.model``) loaded on first use."""
    return ScoreContext(
        cache=cache,
        tokenizer=tokenizer,
        load_model=lambda: instantiate(cfg.model.loader, context=build, tokenizer=tokenizer),
        model_name=cfg.model.name,
    )


def weights_context(
    cache: ScoreCache, tokenizer: Any, load_model: Callable[[], Any], name: str
) -> ScoreContext:
    """``cache``, with trained weights (``load_model``) named ``name`` in its keys, so scores
    of other weights are never taken for theirs (self_paced re-scores with each stage's)."""
    return ScoreContext(cache=cache, tokenizer=tokenizer, load_model=load_model, model_name=name)
