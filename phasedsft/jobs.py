"""What every job (score.py, segment.py, train.py) does first: its run directory, its config on
disk, and its examples: loaded by the configured source, then seeded-subsampled.

Shared by the pipeline's steps; imports none of them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from phasedsft import rundir
from phasedsft.data.loaders import Loaded
from phasedsft.io import atomic_write_text
from phasedsft.models import BuildContext
from phasedsft.prompts import AlpacaTemplate
from phasedsft.records import DataError, Example


def run_dir_for(cfg: DictConfig) -> Path:
    """The job's folder: Hydra's output dir when Hydra runs it, else run.root/run.name."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.run.root) / cfg.run.name


def start_job(cfg: DictConfig) -> Path:
    """Create the run directory and write the resolved config into it; return the directory."""
    run_dir = run_dir_for(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / rundir.RUN_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def subsample(examples: Sequence[Example], max_examples: int | None, seed: int) -> list[Example]:
    """A seeded random subset of ``max_examples`` examples, in their original order."""
    if max_examples is None or max_examples >= len(examples):
        return list(examples)
    if max_examples <= 0:
        raise DataError(f"dataset.max_examples must be positive, got {max_examples}")
    keep = set(random.Random(f"subsample-{seed}").sample(range(len(examples)), max_examples))
    return [ex for i, ex in enumerate(examples) if i in keep]


def load_examples(cfg: DictConfig) -> tuple[Loaded, list[Example]]:
    """The configured training data as loaded, and the examples the job uses (subsampled)."""
    loaded: Loaded = instantiate(cfg.dataset.source)
    examples = subsample(loaded.examples, cfg.dataset.max_examples, cfg.dataset.subsample_seed)
    return loaded, examples


def tokenizer_corpus(examples: Sequence[Example]) -> Iterator[str]:
    """Texts a from-scratch tokenizer is trained on: every prompt (Alpaca layout) and output,
    one at a time (never a copy of every text)."""
    template = AlpacaTemplate()
    return (template.prompt_text(ex) + ex.output for ex in examples)


def build_context(cfg: DictConfig, examples: Sequence[Example]) -> BuildContext:
    """What model and tokenizer builders get: the cache dir, the seed, the tokenizer corpus."""
    return BuildContext(Path(cfg.run.cache_dir), cfg.seed, lambda: tokenizer_corpus(examples))


def load_tokenizer(cfg: DictConfig, examples: Sequence[Example]) -> Any:
    return instantiate(cfg.model.tokenizer, context=build_context(cfg, examples))


DEFAULT_CACHE_DIR = "${parent_dir:${run.root}}/.cache"  # score.py's and segment.py's run.cache_dir
LEGACY_CACHE = Path(
    "runs/.cache"
)  # where score.py and segment.py kept it before it followed run.root


def score_cache_dir(cfg: DictConfig, paid: bool) -> Path:
    """score.py's and segment.py's cache: ``run.cache_dir``, unless the scorer is ``paid`` for,
    ``run.cache_dir`` is left at its default (beside ``run.root``) and holds no score cache yet,
    and the one earlier versions wrote under ``./runs/.cache`` does: answers already paid for
    are then read there (the log says so), never bought again. A ``run.cache_dir`` given is
    always the one used."""
    chosen = Path(cfg.run.cache_dir)
    legacy = LEGACY_CACHE / "scores.sqlite"
    fresh = not (chosen / "scores.sqlite").exists()
    run = OmegaConf.to_container(cfg.run, resolve=False)
    if not isinstance(run, dict) or run.get("cache_dir") != DEFAULT_CACHE_DIR:  # given
        return chosen
    if paid and fresh and legacy.exists() and chosen.resolve() != LEGACY_CACHE.resolve():
        logging.getLogger(__name__).warning(
            "using the score cache of earlier versions, %s (it holds answers already paid for); "
            "run.cache_dir=%s to start the cache beside your runs instead",
            LEGACY_CACHE,
            chosen,
        )
        return LEGACY_CACHE
    return chosen
