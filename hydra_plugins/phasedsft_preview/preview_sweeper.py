"""Hydra's basic sweeper, except that a preview (``plan_only=true``, ``inspect=N``) runs every
job of the sweep in the launching process, whatever launcher is configured: a preview of a SLURM
sweep queues nothing, and its table is printed where the command was typed.

The jobs still see the configured launcher's settings (``hydra.launcher.nodes``,
``tasks_per_node``), so the plan counts the steps of the processes they would train on. It lives
here because Hydra instantiates sweepers only from the ``hydra_plugins`` package.
"""

import logging
from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)
PREVIEW_KEYS = ("plan_only", "inspect")  # train.py options that set a job up and train nothing


@dataclass
class PreviewSweeperConf:
    _target_: str = "hydra_plugins.phasedsft_preview.preview_sweeper.PreviewSweeper"
    max_batch_size: Any = None
    params: Any = None


ConfigStore.instance().store(group="hydra/sweeper", name="phasedsft", node=PreviewSweeperConf)


def is_preview(config: DictConfig) -> bool:
    return any(bool(config.get(key)) for key in PREVIEW_KEYS)


class PreviewSweeper(BasicSweeper):
    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if is_preview(config) and not isinstance(self.launcher, BasicLauncher):
            configured = type(self.launcher).__name__
            launcher = BasicLauncher()
            launcher.setup(hydra_context=hydra_context, task_function=task_function, config=config)
            self.launcher = launcher
            log.info("preview: every job runs here, nothing is queued (launcher %s)", configured)
