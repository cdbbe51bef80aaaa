"""The train -> evaluate contract (phasedsft.rundir): what a finished run records is what
evaluate reads, and it says the same as the ordering's class did."""

from __future__ import annotations

import pytest
from conftest import compose
from omegaconf import OmegaConf

from phasedsft import rundir
from phasedsft.evaluate.runs import Run

ORDERINGS = ["one_off", "1-2-3", "random", "sorted", "paced", "interleaved", "self_paced"]


def as_before(cls) -> tuple[str, ...]:
    """What evaluate derived from the ordering's class before run.json recorded it."""
    return tuple(
        key
        for key, unread in (
            ("scorer", not getattr(cls, "needs_scores", True)),
            ("segment", not getattr(cls, "needs_stages", True)),
            ("replay", getattr(cls, "one_phase", False)),
            ("trainer.stage_policy", getattr(cls, "one_phase", False)),
        )
        if unread
    )


@pytest.mark.parametrize("ordering", ORDERINGS)
def test_the_record_says_what_the_class_said(ordering, tmp_path):
    from hydra.utils import get_class, instantiate

    cfg = compose([f"ordering={ordering}"])
    cls = get_class(cfg.ordering._target_)
    recorded = rundir.ordering_reads(instantiate(cfg.ordering))
    assert rundir.unread_settings(recorded) == as_before(cls)
    old = Run(tmp_path, cfg, [])  # a run from before run.json's ``reads``
    assert old.unused == as_before(cls)


def test_evaluate_reads_the_record_without_the_orderings_class(tmp_path):
    config = OmegaConf.create({"ordering": {"_target_": "nowhere.Gone", "name": "gone"}})
    reads = {"needs_scores": False, "needs_stages": False, "one_phase": True}
    run = Run(tmp_path, config, [], reads)
    assert run.unused == ("scorer", "segment", "replay", "trainer.stage_policy")


def test_the_layout_names():
    assert rundir.stage_name(2, "difficulty-2") == "stage_2_difficulty-2"
    assert rundir.stage_label("run-a", 1, "all") == "run-a/stage_1_all"
    assert (rundir.RUN_RECORD, rundir.STAGE_RECORD, rundir.MODEL_DIR) == (
        "run.json",
        "stage.json",
        "model",
    )
