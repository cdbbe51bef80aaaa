from collections import Counter

import pytest

from phasedsft.records import DataError, Example, UserError
from phasedsft.segment.manifest import build_manifest
from phasedsft.segment.methods import ManualThresholds
from phasedsft.train.ordering import OneOff, Phase, Phased, RandomPhased, Sorted

EXAMPLES = [
    Example(f"e{i}", "q", "", "a", score=s) for i, s in enumerate([1, 1, 1, 1, 2, 2, 3, 4, 5, 5])
]
MANIFEST = build_manifest(EXAMPLES, ManualThresholds(), random_seed=0)
STAGE = {1: {"e0", "e1", "e2", "e3"}, 2: {"e4", "e5", "e6"}, 3: {"e7", "e8", "e9"}}


def test_one_off_is_all_data_in_one_phase():
    (phase,) = OneOff().phases(EXAMPLES, None)
    assert phase.name == "all" and set(phase.ids) == {e.id for e in EXAMPLES}


@pytest.mark.parametrize("stages", [[1, 2, 3], [3, 2, 1], [2, 1, 3], [3], [1, 3]])
def test_permutations_and_single_stages(stages):
    phases = Phased(stages=stages).phases(EXAMPLES, MANIFEST)
    assert [p.name for p in phases] == [f"difficulty-{s}" for s in stages]
    assert [set(p.ids) for p in phases] == [STAGE[s] for s in stages]


@pytest.mark.parametrize(("sizes", "expected"), [("equal", [4, 3, 3]), ("matched", [4, 3, 3])])
def test_random_stages_cover_the_data_but_not_by_difficulty(sizes, expected):
    phases = RandomPhased(sizes=sizes).phases(EXAMPLES, MANIFEST)
    assert [p.name for p in phases] == ["random-1", "random-2", "random-3"]
    assert [len(p.ids) for p in phases] == expected
    assert sorted(i for p in phases for i in p.ids) == sorted(e.id for e in EXAMPLES)
    assert [set(p.ids) for p in phases] != [STAGE[1], STAGE[2], STAGE[3]]


def test_random_equal_versus_matched_sizes():
    ex = [Example(f"x{i}", "q", "", "a", score=1.0 if i < 8 else 4.0) for i in range(12)]
    m = build_manifest(ex, ManualThresholds([1.5, 3.5]), 0)  # difficulty stages: 8 / 0 / 4
    assert [len(p.ids) for p in RandomPhased(sizes="equal").phases(ex, m)] == [4, 4, 4]
    assert [len(p.ids) for p in RandomPhased(stages=[1, 3], sizes="matched").phases(ex, m)] == [
        8,
        4,
    ]
    with pytest.raises(DataError, match="sizes must be"):
        RandomPhased(sizes="big").phases(ex, m)


def test_sorted_is_one_ascending_pass():
    (phase,) = Sorted(seed=0).phases(EXAMPLES, None)
    by_id = {e.id: e.score for e in EXAMPLES}
    scores = [by_id[i] for i in phase.ids]
    assert scores == sorted(scores) and not phase.shuffle
    assert phase.sequence(2, seed=0) == list(phase.ids) * 2


def test_any_number_of_stages():
    ex = [Example(f"x{i}", "q", "", "a", score=1 + i % 5) for i in range(25)]
    m = build_manifest(ex, ManualThresholds([1.5, 2.5, 3.5, 4.5]), 0)
    phases = Phased(stages=[5, 4, 3, 2, 1]).phases(ex, m)
    assert [len(p.ids) for p in phases] == [5] * 5
    assert [len(p.ids) for p in RandomPhased().phases(ex, m)] == [5] * 5


def test_bad_stage_requests_are_explained():
    with pytest.raises(DataError, match="segmentation has 3 stages"):
        Phased(stages=[1, 4]).phases(EXAMPLES, MANIFEST)
    empty = build_manifest(EXAMPLES, ManualThresholds([1.5, 1.7, 3.5]), 0)
    with pytest.raises(DataError, match="stage 2 is empty"):
        Phased(stages=[1, 2, 3, 4]).phases(EXAMPLES, empty)


def test_epochs_are_seeded_shuffles_of_the_stage():
    phase = Phase("difficulty-1", tuple(f"e{i}" for i in range(20)))
    seq = phase.sequence(2, seed=0)
    assert len(seq) == 40 and Counter(seq) == Counter({f"e{i}": 2 for i in range(20)})
    assert sorted(seq[:20]) == sorted(phase.ids) and seq[:20] != seq[20:]
    assert seq == phase.sequence(2, seed=0) and seq != phase.sequence(2, seed=1)
    assert len(phase.sequence(1.5, seed=0)) == 30
    with pytest.raises(DataError):
        phase.sequence(0, seed=0)


def test_group_by_length_keeps_the_data_and_windows_and_shrinks_padding():
    import random

    from phasedsft.train.ordering import group_by_length

    rng = random.Random(0)
    ids = [f"e{i}" for i in range(200)]
    lengths = {i: rng.randint(10, 500) for i in ids}
    planned = Phase("s", tuple(ids)).sequence(2.0, seed=1)  # two shuffled epochs
    grouped = group_by_length(planned, lengths, batch_size=8, window_batches=10, seed=1)
    assert Counter(grouped) == Counter(planned)  # same examples, same multiplicity
    size = 8 * 10
    for start in range(0, len(planned), size):  # nothing leaves its window
        assert Counter(grouped[start : start + size]) == Counter(planned[start : start + size])

    def padded(order):
        return sum(8 * max(lengths[i] for i in order[b : b + 8]) for b in range(0, len(order), 8))

    assert padded(grouped) < 0.75 * padded(planned)
    assert grouped == group_by_length(planned, lengths, 8, 10, seed=1)  # seeded
    assert grouped != group_by_length(planned, lengths, 8, 10, seed=2)


def test_group_by_length_is_off_in_the_paper_recipe_and_changes_the_run():
    from conftest import compose

    assert compose(["trainer=paper", "model=llama2_7b"]).trainer.group_by_length is False
    a = compose([]).run.name
    b = compose(["trainer.group_by_length=true"]).run.name
    assert a != b  # a different feed order is a different run


def test_shuffle_once_feeds_the_first_shuffle_every_epoch():
    """trainer.shuffle=once (the authors' code: one seeded sample, DataLoader shuffle=False)."""
    phase = Phase("difficulty-1", tuple(f"e{i}" for i in range(20)))
    seq = phase.sequence(2.5, seed=0, reshuffle=False)
    assert seq[:20] == seq[20:40] == phase.sequence(1, seed=0)
    assert seq[40:] == seq[:10] and list(phase.ids) != seq[:20]


def test_paper_trainer_shuffles_once_and_planned_order_follows_it():
    from conftest import compose

    from phasedsft.train.run import planned_order

    cfg = compose(["model=llama2_7b"])
    assert cfg.trainer.shuffle == "once"
    phase = Phase("difficulty-2", tuple(f"e{i}" for i in range(10)))
    order = planned_order(cfg, phase, {})
    assert order[:10] == order[10:] and sorted(order[:10]) == sorted(phase.ids)
    every = compose(["model=llama2_7b", "trainer.shuffle=every_epoch"])
    assert planned_order(every, phase, {})[:10] != planned_order(every, phase, {})[10:]


# ------------------------------------------------------------------ a name says what it trains


def test_a_generated_ordering_is_named_by_its_stages_and_keeps_its_name():
    from conftest import compose

    from phasedsft.config import named_stages, stage_sequences, stages_name
    from phasedsft.train.ordering import check_ordering

    for seq in stage_sequences():  # every option of the group: its name spells its stages
        assert named_stages(stages_name(seq)) == seq
        Phased(name=stages_name(seq), stages=list(seq))  # accepted as it is
    for option in ("1-2-3", "3-2-1", "only-3", "2-4"):
        cfg = compose([f"ordering={option}"])
        check_ordering(cfg.ordering)
        assert cfg.ordering.name == option and stages_name(cfg.ordering.stages) == option
    # restating an option's own stages changes nothing: the same run, the same directory
    assert compose(["ordering.stages=[1,2,3]"]).run.name == compose([]).run.name
    assert [named_stages(n) for n in ("phased", "random", "one_off", "self_paced")] == [None] * 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["ordering.stages=[3,2,1]"],
            "the ordering is named 1-2-3 (stages 1, 2, 3) but ordering.stages=[3, 2, 1]: a run is "
            "named, summarized and evaluated by its ordering's name, so choose the ordering by "
            "name: ordering=3-2-1",
        ),
        (
            ["ordering=only-3", "ordering.stages=[1]"],
            "choose the ordering by name: ordering=only-1",
        ),
        (
            ["ordering=phased", "ordering.stages=[5,4,3,2,1]", "ordering.name=1-2-3"],
            "ordering=phased 'ordering.stages=[5,4,3,2,1]' ordering.name=5-4-3-2-1",
        ),
        (
            ["ordering.stages=[1,1,2]"],
            "ordering.stages=[1, 1, 2] trains stage 1 more than once: each stage is trained once "
            "per run (more passes over a stage: trainer.num_train_epochs; earlier stages again "
            "within later ones: replay=uniform)",
        ),
        (["ordering=phased", "ordering.stages=[2,3,2]"], "trains stage 2 more than once"),
        (["ordering=random", "ordering.stages=[2,2]"], "trains stage 2 more than once"),
        (["ordering=self_paced", "ordering.stages=[1,2,2]"], "trains stage 2 more than once"),
        (["ordering=interleaved", "ordering.stages=[3,3]"], "trains stage 3 more than once"),
        # the anti-curriculum is not the curriculum (#23 item 9), nor one pacing another
        (
            ["ordering=paced", "ordering.pacing=root", "ordering.anti=true"],
            "the ordering is named paced-root but trains ordering.pacing=root, ordering.anti=true"
            ": a run is named, summarized and evaluated by its ordering's name; choose the "
            "ordering by name: ordering=paced-root-anti",
        ),
        (["ordering=paced-root-anti", "ordering.anti=false"], "ordering=paced-root"),
        (["ordering=paced-root-anti", "ordering.pacing=step"], "ordering=paced-step-anti"),
    ],
)
def test_stages_a_name_contradicts_or_repeats_are_refused_by_name(overrides, message):
    from conftest import compose
    from hydra.utils import instantiate

    from phasedsft.records import UserError
    from phasedsft.train.ordering import check_ordering

    cfg = compose(overrides)
    with pytest.raises(UserError) as refused:
        check_ordering(cfg.ordering)
    assert message in str(refused.value)
    if cfg.ordering._target_.endswith(("Phased", "RandomPhased")):  # the classes refuse it too
        with pytest.raises(Exception) as wrapped:
            instantiate(cfg.ordering)
        from phasedsft.cli import user_error

        assert message in str(user_error(wrapped.value))


def test_stages_that_match_their_name_or_a_name_that_spells_none_are_trained():
    from conftest import compose

    from phasedsft.train.ordering import check_ordering

    for overrides in (
        ["ordering=phased", "ordering.stages=[5,4,3,2,1]"],  # named "phased": says no stages
        ["ordering=phased", "ordering.stages=[3,1]", "ordering.name=3-1"],
        ["ordering=random", "ordering.stages=[2,1]"],
        ["ordering=self_paced", "ordering.stages=[3,2,1]"],
        ["ordering=one_off"],
        ["ordering=paced-linear"],
        ["ordering=paced-root-anti"],
        ["ordering=paced", "ordering.pacing=step"],  # named paced-step by its pacing
        ["ordering=paced", "ordering.anti=true", "ordering.name=mine"],  # a name of one's own
    ):
        check_ordering(compose(overrides).ordering)
    assert [p.name for p in Phased(stages=[3, 1]).phases(EXAMPLES, MANIFEST)] == [
        "difficulty-3",
        "difficulty-1",
    ]


@pytest.mark.integration
def test_train_py_refuses_a_contradicting_override_before_writing_anything(tmp_path):
    import sys

    from helpers import run_command

    out = run_command(
        [sys.executable, "train.py", "ordering.stages=[3,2,1]", f"run.root={tmp_path}"],
        check=False,
        no_traceback=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "error: the ordering is named 1-2-3 (stages 1, 2, 3) but ordering.stages=[3, 2, 1]" in (
        out.stderr
    )
    assert "choose the ordering by name: ordering=3-2-1" in out.stderr
    assert list(tmp_path.iterdir()) == []  # no run directory named 1-2-3 left behind


# ------------------------------------------------------------------ declared once (#24 item 3)


def test_every_ordering_option_is_its_class_with_the_runs_bindings():
    """Each option's node has exactly its class's fields, at the class's defaults except those
    the class says a run binds (``bound``) and those its variant sets; composed and
    instantiated, each kind of ordering is an :class:`Ordering`."""
    import dataclasses

    from conftest import compose
    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf

    from phasedsft.train.ordering import checked_ordering
    from phasedsft.train.orderings import options

    variants = {"name", "pacing", "anti", "stages", "sizes"}
    kinds = {}
    for name, node in options().items():
        cfg = OmegaConf.structured(node)
        cls = get_class(cfg._target_)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(cfg) - {"_target_"} == set(fields), name
        for key, f in fields.items():
            if key in getattr(cls, "bound", {}) or key in variants:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert cfg[key] == default, (name, key)
        kinds.setdefault(cls, name)
    assert len(kinds) == 7
    for name in kinds.values():
        extra = ["ordering.stages=[1,2]"] if name == "phased" else []
        cfg = compose([f"ordering={name}", *extra])
        assert checked_ordering(instantiate(cfg.ordering)).name == cfg.ordering.name


def test_a_class_that_is_not_an_ordering_is_refused_in_plain_words():
    from phasedsft.train.ordering import checked_ordering

    class Shuffled:
        name = "shuffled"

    with pytest.raises(
        UserError, match=r"ordering Shuffled lacks needs_scores, needs_stages, phases"
    ):
        checked_ordering(Shuffled())
