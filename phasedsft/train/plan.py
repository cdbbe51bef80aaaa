"""Preview a sweep before paying for it: ``python train.py -m <overrides> plan_only=true``.

Every job of the sweep is composed and set up exactly as training would set it up (data
loaded, encoded, scored where scoring costs nothing, segmented, ordered) and then stops: it
prints its ordering, stage sizes, optimizer steps and the tokens each stage has in the loss
(target tokens, after truncation, over one pass of its examples), and trains nothing
(``inspect=N`` also prints N examples per stage with those tokens marked: :mod:`.inspect`).
At the end of a multirun :class:`PlanReport` prints one table of all jobs and exits with
code 1 if any job is invalid (a single run ends with ``error: ...`` and exit code 2, as any
run would).
"""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from phasedsft import rundir

PLAN_KEY = "plan"


def world_size_for(cfg: DictConfig) -> int:
    """Processes the job will train on: the SLURM launcher's tasks, else this environment's."""
    from hydra.core.hydra_config import HydraConfig

    from phasedsft.distributed import world_size

    if HydraConfig.initialized():
        launcher = HydraConfig.get().launcher
        tasks, nodes = launcher.get("tasks_per_node"), launcher.get("nodes")
        if isinstance(tasks, int) and isinstance(nodes, int):
            return tasks * nodes
    return world_size()


def stage_steps(n_fed: int, tcfg: Any, world: int) -> int:
    """Optimizer steps the Trainer will take over ``n_fed`` planned items (its own arithmetic)."""
    if tcfg.max_steps > 0:
        return int(tcfg.max_steps)
    batches = math.ceil(n_fed / (tcfg.per_device_train_batch_size * world))
    return max(math.ceil(batches / tcfg.gradient_accumulation_steps), 1)


def _record(cfg: DictConfig, run_dir: Path, **fields: Any) -> dict[str, Any]:
    return {
        PLAN_KEY: True,
        "run_dir": str(run_dir),
        "ordering": cfg.ordering.name,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "stages": [],
        "total_steps": 0,
        "target_tokens": 0,
        "note": None,
        "error": None,
        **fields,
    }


@dataclass(frozen=True)
class StagePlan:
    """One stage of a plan, in training order."""

    name: str
    examples: int
    fed: int  # items the Trainer iterates over all epochs: planned examples, or packed rows
    tokens: int  # tokens of its examples, as encoded (truncated), one pass
    target_tokens: int  # those the loss is on (labels != -100)


def plan_record(
    cfg: DictConfig, run_dir: Path, stages: Sequence[StagePlan], note: str | None
) -> dict[str, Any]:
    world = world_size_for(cfg)
    rows = [
        {
            "name": s.name,
            "examples": s.examples,
            "fed": s.fed,
            "steps": stage_steps(s.fed, cfg.trainer, world),
            "tokens": s.tokens,
            "target_tokens": s.target_tokens,
        }
        for s in stages
    ]
    return _record(
        cfg,
        run_dir,
        world_size=world,
        stages=rows,
        total_steps=sum(r["steps"] for r in rows),
        target_tokens=sum(r["target_tokens"] for r in rows),
        note=note,
    )


def invalid_record(cfg: DictConfig, run_dir: Path, error: BaseException) -> dict[str, Any]:
    return _record(cfg, run_dir, error=str(error))


def format_plan(rec: dict[str, Any]) -> str:
    head = f"{rec['ordering']:<14} {rec['dataset']}/{rec['model']}"
    if rec["error"]:
        return f"{head}: INVALID: {rec['error']}"
    stages = ", ".join(
        f"{s['name']} {s['examples']} ex / {s['steps']} steps / "
        f"{s['target_tokens']} target tokens (of {s['tokens']})"
        for s in rec["stages"]
    )
    text = f"{head}: {stages} | {rec['total_steps']} steps on {rec['world_size']} process(es)"
    if rec["stages"]:
        text += f", {rec['target_tokens']} target tokens"
    return text + (f" ({rec['note']})" if rec["note"] else "")


def discard_fresh_run_dir(run_dir: Path, existed: bool) -> None:
    """A plan writes nothing: remove the directory Hydra created for it (never a real run's)."""
    if not existed and run_dir.is_dir() and not (run_dir / rundir.RUN_RECORD).exists():
        shutil.rmtree(run_dir, ignore_errors=True)


class PlanReport(Callback):
    """Collects the plans of a multirun's jobs; prints them and fails the sweep on any invalid one."""

    def __init__(self) -> None:
        self.plans: list[dict[str, Any]] = []

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        try:
            value = job_return.return_value
        except Exception:  # a failed job: Hydra reports it itself
            return
        if isinstance(value, dict) and value.get(PLAN_KEY):
            self.plans.append(value)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.plans:
            return
        bad = [p for p in self.plans if p["error"]]
        print(f"\nplan: {len(self.plans)} jobs, {len(bad)} invalid, nothing trained", flush=True)
        for i, p in enumerate(self.plans):
            print(f"  #{i} {format_plan(p)}", flush=True)
        if bad:
            print(f"error: {len(bad)} of {len(self.plans)} jobs are invalid", file=sys.stderr)
            raise SystemExit(1)
