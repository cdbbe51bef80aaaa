"""The train -> evaluate contract: a training run directory's layout and what it records.

``train.py`` writes, and ``evaluate.py`` (and the report) read, one directory per run::

    <run>/config.yaml                 the resolved config            RUN_CONFIG
    <run>/run.json                    the run's record                RUN_RECORD
    <run>/stage_manifest.json         the stages' example ids        STAGE_MANIFEST
    <run>/stage_<i>_<name>/           one per stage, 1-based          stage_dir()
        stage.json                    its completion marker (last)    STAGE_RECORD
        model/                        its weights                     MODEL_DIR
        generations/                  evaluate's answers files        GENERATIONS_DIR

``run.json``'s ``stages`` list each planned stage (``index``, ``name``, ``order_sha256``: the
data order its weights were trained on, ...); a run is finished when every one of them has
its ``stage.json`` with ``status: done`` and its ``model/``. ``run.json``'s ``reads`` says
which inputs the run's ordering read (:func:`ordering_reads`: did it read scores, difficulty
stages, does it train in one phase), so a reader knows which settings could not change the
weights (:func:`unread_settings`) without importing the ordering's class. Runs written before
``reads`` existed leave it out; :func:`ordering_reads` of their ordering's class says the same.

This module sits below both steps (shared code): train and evaluate import it, it imports
neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RUN_CONFIG = "config.yaml"
RUN_RECORD = "run.json"
STAGE_MANIFEST = "stage_manifest.json"
STAGE_RECORD = "stage.json"
MODEL_DIR = "model"
GENERATIONS_DIR = "generations"
STAGE_DONE = "done"  # stage.json's status once the stage's weights are saved

# What an ordering reads, as run.json's ``reads`` records it: (key, its value for an ordering
# that does not say, i.e. one assumed to read everything).
READS = (("needs_scores", True), ("needs_stages", True), ("one_phase", False))


def stage_name(index: int, name: str) -> str:
    """A stage directory's name: ``stage_<i>_<name>`` (``i`` 1-based)."""
    return f"stage_{index}_{name}"


def stage_dir(run_dir: Path, index: int, name: str) -> Path:
    return run_dir / stage_name(index, name)


def stage_label(run: str, index: int, name: str) -> str:
    """A checkpoint's label: ``<run>/stage_<i>_<name>``."""
    return f"{run}/{stage_name(index, name)}"


def ordering_reads(ordering: Any) -> dict[str, bool]:
    """What ``ordering`` (an instance or its class) reads, for run.json's ``reads``."""
    return {key: bool(getattr(ordering, key, default)) for key, default in READS}


def unread_settings(reads: dict[str, Any]) -> tuple[str, ...]:
    """The settings (dotted config keys) that cannot change the weights of a run whose
    ordering reads ``reads``: a run that reads no scores trains on the data as it is (its
    scorer changes nothing), one that reads no stages ignores the segmentation, and an
    ordering of one phase has no stage to replay or to continue a schedule from."""
    facts = {key: bool(reads.get(key, default)) for key, default in READS}
    return tuple(
        key
        for key, unread in (
            ("scorer", not facts["needs_scores"]),
            ("segment", not facts["needs_stages"]),
            ("replay", facts["one_phase"]),
            ("trainer.stage_policy", facts["one_phase"]),
        )
        if unread
    )
