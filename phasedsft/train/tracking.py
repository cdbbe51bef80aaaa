"""Experiment tracking beside the run directory's own JSON files (``logger`` config group).

:class:`WandbTracker` opens one W&B run per training run, named and grouped from the config,
with a stable id derived from the run directory: a requeued or relaunched job continues the
same W&B run. It logs the resolved config (which never holds secrets: API keys are read from
the environment only), the stage plan with each stage's data-order hash, and per-stage results;
the Trainer's own W&B callback (``report_to: [wandb]``) logs loss and learning rate as it trains.

:class:`TensorBoardTracker` writes the same per-stage results under ``<run_dir>/tensorboard/
stages`` (step = stage index: held-out loss per level across stages reads as a forgetting
curve); the Trainer's TensorBoard callback writes each stage's steps under
``<run_dir>/tensorboard/<stage directory>`` (:func:`tensorboard_dir`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phasedsft.io import stable_run_id
from phasedsft.records import DataError


class NullTracker:
    def start(self, config: dict[str, Any], run_dir: Path, run_info: dict[str, Any]) -> None:
        pass

    def stage_done(self, record: dict[str, Any]) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


def tensorboard_dir(stage_dir: Path) -> Path:
    """Where the Trainer's TensorBoard callback writes a stage's steps: one TensorBoard run per
    stage, all of a training run's under ``<run_dir>/tensorboard``."""
    return stage_dir.parent / "tensorboard" / stage_dir.name


def stage_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a finished stage's record worth a curve across stages."""
    values: dict[str, float] = {}
    for key in ("first_logged_loss", "last_logged_loss", "global_step", "n_examples", "n_fed"):
        if isinstance(record.get(key), int | float) and not isinstance(record.get(key), bool):
            values[f"stage/{key}"] = record[key]
    for key, value in record.get("metrics", {}).get("eval", {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values[f"stage/{key}"] = value
    return values


@dataclass
class TensorBoardTracker(NullTracker):
    """Per-stage results as TensorBoard scalars (``logger=tensorboard``)."""

    def start(self, config: dict[str, Any], run_dir: Path, run_info: dict[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise DataError(
                "logger=tensorboard needs tensorboard: pip install tensorboard (or .[tensorboard])"
            ) from e
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard" / "stages"))
        stages = "\n".join(
            f"{st['index']}. {st['name']} ({st['n_examples']} examples)"
            for st in run_info.get("stages", [])
        )
        self.writer.add_text("stages", stages or "(none)")

    def stage_done(self, record: dict[str, Any]) -> None:
        for key, value in stage_scalars(record).items():
            self.writer.add_scalar(key, value, record["index"])
        self.writer.flush()

    def finish(self, summary: dict[str, Any]) -> None:
        for key, value in (summary.get("final_accuracy") or {}).items():
            self.writer.add_scalar(f"final/{key}/accuracy", value["accuracy"], 0)
        self.writer.close()


@dataclass
class WandbTracker(NullTracker):
    project: str = "phasedsft"
    entity: str | None = None
    group: str | None = None
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str | None = None  # online | offline | disabled; None: WANDB_MODE, else online

    def __post_init__(self) -> None:
        if self.mode not in (None, "online", "offline", "disabled"):
            raise DataError(
                f"logger.tracker.mode must be online, offline, disabled or null; got {self.mode!r}"
            )

    def start(self, config: dict[str, Any], run_dir: Path, run_info: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as e:
            raise DataError("logger=wandb needs wandb: pip install wandb (or .[wandb])") from e
        self.wandb = wandb
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            group=self.group,
            name=self.name or run_dir.name,
            tags=list(self.tags),
            mode=self.mode,  # type: ignore[arg-type]  # checked in __post_init__
            id=stable_run_id(run_dir),
            resume="allow",
            dir=str(run_dir),
            config={**config, "run_dir": str(run_dir), "stages": run_info["stages"]},
        )
        self.run.summary["run_dir"] = str(run_dir)
        self.run.summary["git"] = run_info.get("git", {}).get("sha")

    def stage_done(self, record: dict[str, Any]) -> None:
        i = record["index"]
        self.run.log({"stage": i, **stage_scalars(record)})
        self.run.summary[f"stage_{i}/name"] = record["name"]
        self.run.summary[f"stage_{i}/order_sha256"] = record["order_sha256"]
        self.run.summary[f"stage_{i}/fed_matches_plan"] = record.get("fed_matches_plan")

    def finish(self, summary: dict[str, Any]) -> None:
        if summary.get("final_accuracy"):
            for key, value in summary["final_accuracy"].items():
                self.run.summary[f"final/{key}/accuracy"] = value["accuracy"]
        self.run.summary["wall_seconds"] = summary.get("wall_seconds")
        self.run.finish()
