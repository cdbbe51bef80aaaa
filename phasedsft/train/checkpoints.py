"""Which Trainer checkpoint a stage resumes from, and which ones to delete.

A ``checkpoint-N`` directory counts only once its manifest (:mod:`phasedsft.checksums`) is
written: the Trainer's files, every rank's, synced, then the manifest, last. A stage resumes
from the newest checkpoint that matches its manifest (sizes, then sha256 of every file); the
newer ones that do not are passed over and named with their problem. A checkpoint without a
manifest (its writer was killed before the end, or it was written by a version before
manifests) is passed over the same way. Pure functions of the file system; the Trainer wiring
is in :mod:`phasedsft.train.stage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phasedsft.checksums import MANIFEST, verify


def checkpoint_step(path: Path) -> int | None:
    """N of a ``checkpoint-N`` directory, else None."""
    prefix, _, n = path.name.rpartition("-")
    return int(n) if prefix == "checkpoint" and n.isdigit() else None


def checkpoint_dirs(checkpoints: Path) -> list[Path]:
    """The ``checkpoint-N`` directories under ``checkpoints``, newest (highest N) first."""
    if not checkpoints.is_dir():
        return []
    found = [d for d in checkpoints.iterdir() if d.is_dir() and checkpoint_step(d) is not None]
    return sorted(found, key=lambda d: -(checkpoint_step(d) or 0))


@dataclass(frozen=True)
class Resume:
    """Where a stage resumes: the newest checkpoint that verifies (``None``: from the stage's
    start), and the newer ones that did not, each with its problem."""

    checkpoint: Path | None
    rejected: tuple[tuple[str, str], ...] = ()

    @property
    def step(self) -> int:
        if self.checkpoint is None:
            return 0
        return checkpoint_step(self.checkpoint) or 0

    def record(self) -> list[dict[str, str]]:
        """What ``stage.json`` keeps of the checkpoints passed over."""
        return [{"checkpoint": name, "problem": why} for name, why in self.rejected]

    def message(self, what: str) -> str | None:
        """``<what>: checkpoint-6 fails verification (model.safetensors: ...); resuming from
        checkpoint-4`` when a checkpoint was passed over, else None."""
        if not self.rejected:
            return None
        failed = "; ".join(f"{name} fails verification ({why})" for name, why in self.rejected)
        then = (
            f"resuming from {self.checkpoint.name}"
            if self.checkpoint is not None
            else "no checkpoint verifies: training the stage from its start"
        )
        return f"{what}: {failed}; {then}"


def choose_resume(checkpoints: Path) -> Resume:
    """The newest ``checkpoint-N`` under ``checkpoints`` that matches its manifest; the newer
    ones that do not, passed over with their problem."""
    rejected: list[tuple[str, str]] = []
    for d in checkpoint_dirs(checkpoints):
        problem = verify(d)
        if problem is None:
            return Resume(d, tuple(rejected))
        rejected.append((d.name, str(problem)))
    return Resume(None, tuple(rejected))


def superseded(checkpoints: Path, newest: Path, keep: int | None) -> list[Path]:
    """Checkpoints to delete once ``newest`` has its manifest: those after it (left by a run
    that resumed from an earlier one: they failed verification, or are redone), those before
    it without a manifest (never completely written), and, with ``keep`` (the Trainer's
    ``save_total_limit``), the ones with a manifest beyond the newest ``keep``."""
    step = checkpoint_step(newest) or 0
    out, kept = [], 0
    for d in checkpoint_dirs(checkpoints):
        later = (checkpoint_step(d) or 0) > step
        unsealed = not (d / MANIFEST).is_file()
        beyond = keep is not None and keep > 0 and kept >= keep
        if d != newest and (later or unsealed or beyond):
            out.append(d)
        else:
            kept += 1
    return out
