"""Run an entrypoint that signals itself at an exact training step, for the resume tests.

    python tests/killed_at.py [TERM[@R]] STAGE_DIR_NAME STEP train.py [overrides...]

A kill -9 from the outside, timed by watching for a checkpoint, races the training (a tiny
stage can finish between the poll and the kill: the CI failure of
test_killed_run_resumes_to_the_same_final_weights). Here the process kills itself, with the
same SIGKILL (no handler, no cleanup), at the end of optimizer step STEP of the stage whose
directory is STAGE_DIR_NAME: after the checkpoints before it are complete, before the
Trainer saves or logs anything for that step.

``TERM`` sends a real SIGTERM instead (what SLURM sends before a time limit or a
preemption), at the start of optimizer step STEP: the run's handler lets that step finish,
saves checkpoint-STEP and exits for requeue. ``TERM@R``: only rank R (of a torchrun job)
signals itself; the others learn of it from it. (No ``--option``: torchrun would take it for
one of its own, even after the script.)
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
    def __init__(
        self,
        stage_dir: str,
        step: int,
        sig: signal.Signals = signal.SIGKILL,
        rank: int | None = None,
    ):
        self.stage_dir, self.step, self.sig, self.rank = stage_dir, step, sig, rank

    def here(self, args, state, step: int) -> bool:
        if self.rank is not None and args.process_index != self.rank:
            return False
        return Path(args.output_dir).parent.name == self.stage_dir and state.global_step == step

    def on_step_begin(self, args, state, control, **kwargs):
        if self.sig != signal.SIGKILL and self.here(args, state, self.step - 1):
            os.kill(os.getpid(), self.sig)  # during step STEP (global_step counts steps done)

    def on_step_end(self, args, state, control, **kwargs):
        if self.sig == signal.SIGKILL and self.here(args, state, self.step):
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    argv = sys.argv[1:]
    sig, only = signal.SIGKILL, None
    if not argv[0].startswith("stage_"):  # TERM or TERM@R
        name, _, at = argv.pop(0).partition("@")
        sig = signal.Signals[f"SIG{name.upper().removeprefix('SIG')}"]
        only = int(at) if at else None
    stage_dir, step, script, *overrides = argv
    init = stage.CurriculumTrainer.__init__

    def killing_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(KillAt(stage_dir, int(step), sig, only))

    stage.CurriculumTrainer.__init__ = killing_init  # type: ignore[method-assign]
    sys.argv = [script, *overrides]
    # as `python train.py` would: the script's folder first on the path (the repository's
    # hydra_plugins/ are found from there), not tests/
    sys.path[0] = str(Path(script).resolve().parent)
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
