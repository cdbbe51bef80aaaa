"""Run an entrypoint that SIGKILLs itself at an exact training step, for the resume tests.

    python tests/killed_at.py STAGE_DIR_NAME STEP train.py [overrides...]

A kill -9 from the outside, timed by watching for a checkpoint, races the training (a tiny
stage can finish between the poll and the kill: the CI failure of
test_killed_run_resumes_to_the_same_final_weights). Here the process kills itself, with the
same SIGKILL (no handler, no cleanup), at the end of optimizer step STEP of the stage whose
directory is STAGE_DIR_NAME: after the checkpoints before it are complete, before the
Trainer saves or logs anything for that step.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

from transformers import TrainerCallback

from phasedsft.train import stage


class KillAt(TrainerCallback):
    def __init__(self, stage_dir: str, step: int):
        self.stage_dir, self.step = stage_dir, step

    def on_step_end(self, args, state, control, **kwargs):
        if Path(args.output_dir).parent.name == self.stage_dir and state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    stage_dir, step, script, *overrides = sys.argv[1:]
    init = stage.CurriculumTrainer.__init__

    def killing_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(KillAt(stage_dir, int(step)))

    stage.CurriculumTrainer.__init__ = killing_init  # type: ignore[method-assign]
    sys.argv = [script, *overrides]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
