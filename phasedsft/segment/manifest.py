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

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phasedsft.io import (
    atomic_write_json,
    canonical_json,
    paused_gc,
    sha256_json,
    sha256_json_large,
)
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
        computed = sha256_json_large(self.content())
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
        shared_ids(obj)
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

    def check_covers(self, examples: Sequence[Example], where: str) -> StageManifest:
        """Check that this manifest stages ``examples``, and fit it to them; returns ``self``.

        The training data must be the data the manifest was made from, or a subset of it (a
        ``dataset.max_examples`` subsample, examples skipped as too long): a subset keeps the
        manifest's stage of each example, and this manifest is narrowed to it in place (see
        :meth:`narrowed_to`). An example the manifest does not hold is an error that says what
        to change.
        """
        staged = {i for stage in self.stages for i in stage}
        ids = [ex.id for ex in examples]
        missing = [i for i in ids if i not in staged]
        if missing:
            raise DataError(
                f"{where}: stage manifest does not match the training data: {len(missing)} of "
                f"the {len(ids)} training examples are not in it (e.g. ids {missing[:3]}), so it "
                "was made from other data. Train on the "
                "data it was made from (the dataset options of the train.py command segment.py "
                "printed, also in its summary.json as train_command), or on a subsample of it "
                "(dataset.max_examples=N); to train on other data, drop segment.manifest "
                "(train.py then segments the data itself) or run segment.py on that data first"
            )
        if len(set(ids)) < len(staged):
            narrowed = self.narrowed_to(examples)
            log.info(
                "%s: training on %d of its %d examples: stages narrowed to them (sizes %s)",
                where,
                len(ids),
                len(staged),
                [len(stage) for stage in narrowed.stages],
            )
            for name in ("stages", "random_stages", "random_equal_stages", "params", "stats"):
                setattr(self, name, getattr(narrowed, name))
            self.data_hash, self.hash = narrowed.data_hash, narrowed.hash
        return self

    def narrowed_to(self, examples: Sequence[Example]) -> StageManifest:
        """This manifest for a subset of its examples (every id must be in it).

        Each example keeps its difficulty stage; the random stages are drawn again over the
        subset with the manifest's seed and the narrowed sizes, so a subset stages exactly as
        ``segment.py`` on that subset with these thresholds would (``params.narrowed_from``
        names the manifest it came from).
        """
        keep = {ex.id for ex in examples}
        order = [ex.id for ex in examples]
        stages = [[i for i in stage if i in keep] for stage in self.stages]
        seed = self.params.get("random_seed", 0)
        rand = random_stages(order, [len(stage) for stage in stages], seed)
        rand_equal = random_stages(order, equal_sizes(len(order), len(stages)), seed)
        staged = sum(len(stage) for stage in self.stages)
        params = {**self.params, "narrowed_from": {"hash": self.hash, "examples": staged}}
        stats = stage_stats(stages, self.thresholds, {ex.id: ex.score for ex in examples})
        return StageManifest(
            stages, rand, rand_equal, list(self.thresholds), params, stats, data_hash(examples)
        )


def stage_stats(
    stages: Sequence[Sequence[str]], thresholds: Sequence[float], scores: dict[str, float | None]
) -> list[dict[str, Any]]:
    """Per stage: its number, score bounds, count and mean score."""
    stats = []
    for i, ids in enumerate(stages, start=1):
        s = [score for x in ids if (score := scores.get(x)) is not None]
        stats.append(
            {
                "stage": i,
                "lower": thresholds[i - 2] if i > 1 else None,
                "upper": thresholds[i - 1] if i <= len(thresholds) else None,
                "count": len(ids),
                "mean_score": sum(s) / len(s) if s else None,
            }
        )
    return stats


def shared_ids(obj: dict[str, Any]) -> None:
    """The random stages of a manifest just read hold the very id strings of its difficulty
    stages (JSON gives each occurrence a string of its own): at a million examples, two
    million strings (about 100 MB) fewer. Content and hash unchanged."""
    stages = obj.get("stages")
    if not isinstance(stages, list) or not all(isinstance(s, list) for s in stages):
        return  # not a manifest's shape: the checks that follow say what is wrong
    memo = {i: i for stage in stages for i in stage if isinstance(i, str)}
    for name in ("random_stages", "random_equal_stages"):
        groups = obj.get(name)
        if isinstance(groups, list) and all(isinstance(g, list) for g in groups):
            obj[name] = [[memo.get(i, i) if isinstance(i, str) else i for i in g] for g in groups]


def data_hash(examples: Sequence[Example], chunk: int = 65536) -> str:
    """``sha256_json([[id, score], ...])`` of the examples, hashed a chunk at a time (the same
    bytes, never the whole list or its JSON text in memory)."""
    h = hashlib.sha256(b"[")
    with paused_gc():  # a million short-lived pairs: no full collections on their account
        for start in range(0, len(examples), chunk):
            part = canonical_json([[ex.id, ex.score] for ex in examples[start : start + chunk]])
            h.update((part[1:-1] if start == 0 else "," + part[1:-1]).encode("utf-8"))
    h.update(b"]")
    return h.hexdigest()


def build_manifest(
    examples: Sequence[Example], segmenter: Segmenter, random_seed: int
) -> StageManifest:
    scores = [float(ex.score) for ex in examples if ex.score is not None]
    if len(scores) != len(examples):
        raise DataError(f"{len(examples) - len(scores)} examples have no difficulty score")
    thresholds = segmenter.thresholds_for(scores)
    stages = split_by_thresholds(examples, thresholds)
    stats = stage_stats(stages, thresholds, {ex.id: ex.score for ex in examples})
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
