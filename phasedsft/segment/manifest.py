"""From difficulty scores to stages (the paper's IDS step), and the stage manifest.

Every segmentation method reduces to a list of increasing thresholds; stage ``i``
(1-based) holds the scores in ``[t_{i-1}, t_i)``, with ``t_0 = -inf`` and
``t_k = +inf``, so a score exactly on a threshold goes to the upper stage (paper:
[1, 1.5), [1.5, 3.5), [3.5, 5]). Random ablation stages come in two flavours, both
seeded: ``random_stages`` with the sizes of the difficulty stages, and
``random_equal_stages`` with equal sizes (as many stages as the difficulty split). Both are written to a manifest
(ids per stage + a content hash) that is cached by a key of its inputs and reused.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phasedsft.io import atomic_write_json, sha256_json
from phasedsft.records import DataError, Example, stage_of
from phasedsft.segment.methods import Segmenter

log = logging.getLogger(__name__)

MANIFEST_VERSION = 2


def split_by_thresholds(
    examples: Sequence[Example], thresholds: Sequence[float]
) -> list[list[str]]:
    stages: list[list[str]] = [[] for _ in range(len(thresholds) + 1)]
    for ex in examples:
        if ex.score is None:
            raise DataError(f"example '{ex.id}' has no difficulty score")
        stages[stage_of(ex.score, thresholds) - 1].append(ex.id)
    return stages


def random_stages(ids: Sequence[str], sizes: Sequence[int], seed: int) -> list[list[str]]:
    """Shuffle ``ids`` with ``seed`` and cut them into consecutive stages of ``sizes``."""
    if sum(sizes) != len(ids):
        raise ValueError(f"stage sizes {list(sizes)} do not add up to {len(ids)} examples")
    shuffled = list(ids)
    random.Random(f"random-stages-{seed}").shuffle(shuffled)
    out, start = [], 0
    for size in sizes:
        out.append(shuffled[start : start + size])
        start += size
    return out


@dataclass
class StageManifest:
    """Which example ids are in which stage (difficulty and random), with a content hash."""

    stages: list[list[str]]
    random_stages: list[list[str]]  # same sizes as the difficulty stages
    random_equal_stages: list[list[str]]  # equal sizes
    thresholds: list[float]
    params: dict[str, Any]
    stats: list[dict[str, Any]]
    data_hash: str
    hash: str = ""

    def content(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "stages": self.stages,
            "random_stages": self.random_stages,
            "random_equal_stages": self.random_equal_stages,
            "thresholds": self.thresholds,
            "params": self.params,
            "stats": self.stats,
            "data_hash": self.data_hash,
        }

    def __post_init__(self) -> None:
        computed = sha256_json(self.content())
        if self.hash and self.hash != computed:
            raise DataError("stage manifest hash does not match its content (edited or corrupt)")
        self.hash = computed

    @property
    def n_stages(self) -> int:
        return len(self.stages)

    def to_json(self) -> dict[str, Any]:
        return {**self.content(), "hash": self.hash}

    @classmethod
    def load(cls, path: str | Path) -> StageManifest:
        path = Path(path)
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{path}: cannot read stage manifest: {e}") from None
        if obj.get("version") != MANIFEST_VERSION:
            raise DataError(
                f"{path}: manifest version {obj.get('version')} is not {MANIFEST_VERSION}"
            )
        try:
            return cls(
                stages=obj["stages"],
                random_stages=obj["random_stages"],
                random_equal_stages=obj["random_equal_stages"],
                thresholds=obj["thresholds"],
                params=obj["params"],
                stats=obj["stats"],
                data_hash=obj["data_hash"],
                hash=obj["hash"],
            )
        except KeyError as e:
            raise DataError(f"{path}: stage manifest has no field {e}") from None
        except DataError as e:
            raise DataError(f"{path}: {e}") from None

    def check_covers(self, examples: Sequence[Example], where: str) -> None:
        ids = [i for stage in self.stages for i in stage]
        if sorted(ids) != sorted(ex.id for ex in examples):
            missing = {ex.id for ex in examples} - set(ids)
            extra = set(ids) - {ex.id for ex in examples}
            raise DataError(
                f"{where}: stage manifest does not match the training data "
                f"({len(missing)} ids missing, {len(extra)} unknown ids, e.g. "
                f"{sorted(missing or extra)[:3]})"
            )


def data_hash(examples: Sequence[Example]) -> str:
    return sha256_json([[ex.id, ex.score] for ex in examples])


def build_manifest(
    examples: Sequence[Example], segmenter: Segmenter, random_seed: int
) -> StageManifest:
    scores = [float(ex.score) for ex in examples if ex.score is not None]
    if len(scores) != len(examples):
        raise DataError(f"{len(examples) - len(scores)} examples have no difficulty score")
    thresholds = segmenter.thresholds_for(scores)
    stages = split_by_thresholds(examples, thresholds)
    by_id = {ex.id: ex for ex in examples}
    stats = []
    for i, ids in enumerate(stages, start=1):
        s = [by_id[x].score or 0.0 for x in ids]
        lo = thresholds[i - 2] if i > 1 else None
        hi = thresholds[i - 1] if i <= len(thresholds) else None
        stats.append(
            {
                "stage": i,
                "lower": lo,
                "upper": hi,
                "count": len(ids),
                "mean_score": sum(s) / len(s) if s else None,
            }
        )
    ids = [ex.id for ex in examples]
    rand = random_stages(ids, [len(s) for s in stages], random_seed)
    rand_equal = random_stages(ids, equal_sizes(len(ids), len(stages)), random_seed)
    params = {**segmenter.params(), "random_seed": random_seed}
    return StageManifest(
        stages, rand, rand_equal, list(thresholds), params, stats, data_hash(examples)
    )


def equal_sizes(n: int, k: int) -> list[int]:
    """``k`` sizes adding up to ``n`` that differ by at most one (the larger ones first)."""
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def load_or_build_manifest(
    examples: Sequence[Example], segmenter: Segmenter, random_seed: int, cache_dir: Path
) -> tuple[StageManifest, Path]:
    """The manifest for these scores and this segmentation, built once and then reused."""
    key = sha256_json(
        {
            "version": MANIFEST_VERSION,
            "data": data_hash(examples),
            "params": segmenter.params(),
            "seed": random_seed,
        }
    )[:16]
    path = cache_dir / "manifests" / f"{key}.json"
    if path.exists():
        manifest = StageManifest.load(path)
        log.info("reusing stage manifest %s", path)
    else:
        manifest = build_manifest(examples, segmenter, random_seed)
        atomic_write_json(path, manifest.to_json())
        log.info("wrote stage manifest %s", path)
    return manifest, path
