"""Finished training runs and their checkpoints, as evaluate reads them from disk.

A training run directory (:mod:`phasedsft.rundir`: ``run.json``, ``config.yaml``, one
``stage_<i>_<name>/`` per stage with its ``stage.json`` completion marker and ``model/``
weights) is a :class:`Run` once every planned stage is done; :func:`discover_runs` finds the
finished ones under a sweep directory.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from phasedsft.checksums import require_verified
from phasedsft.identity import (
    COMPARISON_SKIP,
    comparison_identity,
    current_target,
)
from phasedsft.identity import (
    TRAINER_BOOKKEEPING_KEYS as TRAINER_BOOKKEEPING_KEYS,  # its old home
)
from phasedsft.records import DataError
from phasedsft.rundir import (
    MODEL_DIR,
    RUN_CONFIG,
    RUN_RECORD,
    STAGE_DONE,
    STAGE_RECORD,
    ordering_reads,
    stage_dir,
    stage_label,
    unread_settings,
)

log = logging.getLogger(__name__)

IDENTITY_SKIP = COMPARISON_SKIP  # its old name here (phasedsft.identity)


@dataclass
class Checkpoint:
    run: str  # run directory name
    index: int  # 1-based stage position
    stage: str  # stage name (difficulty-2, random-1, all, ...)
    n_stages: int
    dir: Path  # stage directory
    order_sha256: str  # the data order the weights were trained on

    @property
    def model_dir(self) -> Path:
        """The stage's weights, checked against their manifest the first time this process
        asks (``error: <dir>: <file> does not match its manifest ...`` if they do not)."""
        model_dir = self.dir / MODEL_DIR
        if model_dir.is_dir():
            require_verified(model_dir, self.dir, once=True)
        return model_dir

    @property
    def final(self) -> bool:
        return self.index == self.n_stages

    @property
    def label(self) -> str:
        return stage_label(self.run, self.index, self.stage)


@dataclass
class Run:
    dir: Path
    config: DictConfig
    checkpoints: list[Checkpoint]
    reads: dict[str, Any] | None = None  # run.json's ``reads`` (phasedsft.rundir); None: older
    # evaluate.py across_selections=true: the selection is compared like the ordering (a run
    # is labelled ``<ordering>+<selection>``, and runs differing only in it are one group)
    across_selections: bool = False

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def selection(self) -> str | None:
        """The name of the selection rule the run trained on (``selection=...``), if any."""
        node = self.config.get("selection")
        return str(node.get("name") or "selection") if node else None

    @property
    def ordering(self) -> str:
        """The ordering's name; under ``across_selections``, ``+<selection>`` when it selected."""
        name = str(self.config.ordering.name)
        if self.across_selections and self.selection is not None:
            return f"{name}+{self.selection}"
        return name

    @property
    def group(self) -> tuple[str, str, int]:
        """(dataset name, model name, seed): the readable part of :attr:`identity`."""
        return (str(self.config.dataset.name), str(self.config.model.name), int(self.config.seed))

    @property
    def identity(self) -> dict[str, Any]:
        """What makes runs comparable: the whole saved config but the ordering
        (:func:`phasedsft.identity.comparison_identity`).

        The data (the whole ``dataset`` node: source, ``max_examples``, ``subsample_seed``),
        the model, the seed, the prompt template, the trainer's hyper-parameters, and the
        scorer and segmentation as configured.
        """
        saved = OmegaConf.to_container(self.config, resolve=True)
        assert isinstance(saved, dict)
        ident = comparison_identity({str(k): v for k, v in saved.items()})
        if self.across_selections:
            ident.pop("selection", None)  # compared, like the ordering: not what groups runs
        return ident

    @property
    def unused(self) -> tuple[str, ...]:
        """Parts of the identity (dotted keys) this run's ordering does not read: a one-off run
        trains on the data as it is, so its scorer and segmentation settings do not change its
        weights; an ordering of one phase has no stage to replay or to continue a schedule from,
        so replay and the stage policy change nothing either. What the run recorded
        (run.json's ``reads``); for a run from before that record, its ordering's class."""
        if self.reads is not None:
            return unread_settings(self.reads)
        target = self.config.ordering.get("_target_")
        if not target:
            return ()  # unknown ordering class: assume it reads everything
        from hydra.utils import get_class

        return unread_settings(ordering_reads(get_class(current_target(str(target)))))

    @property
    def final(self) -> Checkpoint:
        return self.checkpoints[-1]


def read_run(run_dir: Path) -> Run | None:
    """A finished training run (every planned stage has its completion marker), else None."""
    info_path, cfg_path = run_dir / RUN_RECORD, run_dir / RUN_CONFIG
    if not info_path.is_file() or not cfg_path.is_file():
        return None
    info = json.loads(info_path.read_text(encoding="utf-8"))
    config = OmegaConf.load(cfg_path)
    assert isinstance(config, DictConfig)
    stages = info.get("stages", [])
    checkpoints = []
    for st in stages:
        where = stage_dir(run_dir, st["index"], st["name"])
        marker = where / STAGE_RECORD
        if not marker.is_file() or not (where / MODEL_DIR).is_dir():
            return None
        done = json.loads(marker.read_text(encoding="utf-8"))
        if done.get("status") != STAGE_DONE:
            return None
        checkpoints.append(
            Checkpoint(
                run_dir.name, st["index"], st["name"], len(stages), where, st["order_sha256"]
            )
        )
    reads = info.get("reads")
    return (
        Run(run_dir, config, checkpoints, reads if isinstance(reads, dict) else None)
        if checkpoints
        else None
    )


def discover_runs(sweep_dir: str | Path, select: Sequence[str] = ("*",)) -> list[Run]:
    """Finished runs directly under ``sweep_dir`` whose names match one of the ``select`` globs."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise DataError(f"sweep_dir not found: {root} (the training runs' run.root)")
    runs, unfinished = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if not any(fnmatch.fnmatch(d.name, pattern) for pattern in select):
            continue
        run = read_run(d)
        if run is not None:
            runs.append(run)
        elif (d / RUN_RECORD).is_file():
            unfinished.append(d.name)
    if unfinished:
        log.warning("left out %d unfinished runs: %s", len(unfinished), ", ".join(unfinished))
    if not runs:
        raise DataError(
            f"no finished training run under {root} matching {list(select)}"
            + (f" ({len(unfinished)} unfinished)" if unfinished else "")
        )
    return runs
