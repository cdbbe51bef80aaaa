"""Every numeric option has a declared range, and a value outside it stops the job first.

The ranges are declared beside the code that reads each option (``phasedsft.ranges``) and
checked by ``phasedsft.config_check.check_config`` before any job does anything (every
entrypoint, through ``cli.plain_errors``): ``error: <key>=<value>: <why>``, exit 2. The
walk below covers the composed config of every entrypoint under every option of its groups.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass
from functools import cache
from typing import Annotated, ClassVar

import pytest
from conftest import compose
from helpers import run_command
from omegaconf import OmegaConf

from phasedsft.config_check import ConfigError, check_config, numeric_options
from phasedsft.ranges import Range, ranged, ranges_of, show_value

# the groups of each entrypoint whose every option is composed and walked
GROUPS = {
    "train": [
        "model",
        "dataset",
        "prompt",
        "scorer",
        "segment",
        "ordering",
        "trainer",
        "judge",
        "logger",
        "launcher",
        "replay",
        "selection",
        "publish",
        "trainer/deepspeed",
        "trainer/peft",
        "trainer/stage_policy",
    ],
    # the groups these share with train.py are walked there: only their own config here
    "score": [],
    "segment": [],
    "evaluate": ["generator", "eval_set"],
}
# Config groups the walk leaves out, each with why (every other group must be in GROUPS:
# test_every_config_group_is_walked finds the groups in conf/ and the ConfigStore itself)
NOT_WALKED = {
    "experiment": "presets that only choose the options of the walked groups",
    "experiment/base": "presets that only choose the options of the walked groups",
    "study_arm": "presets that only choose the options of the walked groups",
    "llm": "included by the scorer and judge options (walked there), never chosen alone",
    "trainer/for_model": "chosen by the model option (walked with it), never chosen alone",
}
# Options whose numbers are another program's own config, passed to it as is (it checks them)
NOT_OURS = {
    "trainer.deepspeed.": "DeepSpeed's own config (its fields are DeepSpeed's to check)",
}
# What some options need to compose at all
NEEDS = {
    "ordering=phased": ["ordering.stages=[2,1]"],
    "model=hf": ["model.path=org/some-model"],
    "dataset=file": ["dataset.source.path=data.json"],
    "dataset=jsonl": ["dataset.source.path=data.jsonl"],
    "dataset=alpaca_json": ["dataset.source.path=data.json"],
    "dataset=messages": ["dataset.source.path=data.jsonl"],
    "dataset=sharegpt": ["dataset.source.path=data.json"],
    "dataset=prompt_completion": ["dataset.source.path=data.jsonl"],
    "publish=hub": ["publish.repo_id=me/x"],
    "publish=dir": ["publish.root=/tmp/x"],
}


@cache
def group_options(group: str) -> list[str]:
    from hydra.core.global_hydra import GlobalHydra

    compose([])
    found = sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    if group == "ordering":  # the generated permutations are alike: one of each length
        return [o for o in found if not o[0].isdigit() and not o.startswith("only")] + [
            "only-3",
            "3-1",
            "1-2-3",
            "4-1-2-3",
        ]
    return found


def overrides_for(group: str, option: str) -> list[str]:
    choice = f"{group}={option}"
    return [choice, *NEEDS.get(choice, [])]


@cache
def composed(job: str, overrides: tuple[str, ...]):
    cfg = compose(list(overrides), job)
    OmegaConf.set_readonly(cfg, False)
    return cfg


@cache
def every_numeric_option() -> list[tuple[str, tuple[str, ...], str, object, Range | None]]:
    """(job, overrides, key, value, range) for each numeric option, first config holding it."""
    seen: dict[str, tuple] = {}
    for job, groups in GROUPS.items():
        # the i-th option of every group at once: each option composed at least once, in as
        # few compositions as the largest group has options
        rounds = max((len(group_options(g)) for g in groups), default=0)
        for i in range(-1, rounds):  # -1: the job's defaults
            overrides: list[str] = []
            for g in groups if i >= 0 else ():
                opts = group_options(g)
                overrides += overrides_for(g, opts[i % len(opts)])
            cfg = composed(job, tuple(overrides))
            for key, value, rng in numeric_options(cfg):
                # an option is one thing whatever the job or group option: one case per key
                seen.setdefault(_generic(key), (job, tuple(overrides), key, value, rng))
    return sorted(seen.values(), key=lambda c: (c[0], c[2]))


def _generic(key: str) -> str:
    """``eval_sets.koala.max_items`` and ``eval_sets.vicuna.max_items`` are one option."""
    parts = key.split(".")
    if parts[0] in ("eval_sets", "compare") and len(parts) > 2:
        parts[1] = "*"
    return ".".join(parts)


def ours(key: str) -> bool:
    return not any(key.startswith(prefix) for prefix in NOT_OURS)


CASES = [c for c in every_numeric_option() if ours(c[2])]
IDS = [f"{job}:{key}" for job, _, key, _, _ in CASES]


def _all_groups(parent: str = "") -> set[str]:
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    found: set[str] = set()
    for name in loader.list_groups(parent):
        group = f"{parent}/{name}" if parent else name
        found |= {group} | _all_groups(group)
    return found


def test_every_config_group_is_walked():
    """A group added later is walked, or left out here by name with why: no hand list drifts."""
    compose([])
    walked = {g for groups in GROUPS.values() for g in groups}
    # hydra/*: Hydra's own settings (and conf/hydra/dirs, the run directory's name)
    found = {g for g in _all_groups() if g != "hydra" and not g.startswith("hydra/")}
    missing = sorted(found - walked - set(NOT_WALKED))
    assert not missing, f"config groups neither walked nor in NOT_WALKED: {missing}"
    assert not (walked & set(NOT_WALKED))


def test_the_walk_finds_the_options_the_issue_names():
    keys = {key for _, _, key, _, _ in CASES}
    for expected in [
        "scorer.concurrency",
        "scorer.parse_retries",
        "scorer.max_retries",
        "scorer.requests_per_minute",
        "scorer.max_tokens",
        "scorer.budget_usd",
        "scorer.price.input_per_1k",
        "trainer.learning_rate",
        "judge.budget_usd",
        "segment.method.thresholds",
        "thresholds",  # score.py's histogram lines
        "generator.batch_size",
        "ordering.stages",
        "selection.k",
        "selection.fraction",
        "bootstrap",
    ]:
        assert expected in keys, expected
    assert len(CASES) > 100


@pytest.mark.parametrize(("job", "overrides", "key", "value", "rng"), CASES, ids=IDS)
def test_every_numeric_option_declares_a_range_that_refuses_a_bad_value(
    job, overrides, key, value, rng
):
    assert rng is not None, f"{job}.py {key} (={value}) declares no range (phasedsft.ranges)"
    cfg = copy.deepcopy(composed(job, overrides))
    check_config(cfg)  # as composed: in range
    bad = rng.bad_value()
    if isinstance(value, dict):
        bad_value: object = {**value, next(iter(value), "max_new_tokens"): bad}
    elif isinstance(value, list):
        bad_value = [*value[:-1], bad] if value else [bad]
    else:
        bad_value = bad
    OmegaConf.update(cfg, key, bad_value, merge=False)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    message = str(err.value)
    assert message.startswith(f"{key}="), message
    assert f"must be {rng.text()}" in message, message
    if rng.why:
        assert f"({rng.why})" in message


def test_messages_name_the_key_the_value_and_why():
    cases = {
        ("score", "scorer=openai", "scorer.concurrency=0"): (
            "scorer.concurrency=0: must be >= 1 (requests in flight at once)"
        ),
        ("score", "scorer=openai", "scorer.parse_retries=-1"): (
            "scorer.parse_retries=-1: must be >= 0 (requests after an unparseable reply)"
        ),
        ("score", "scorer=openai", "scorer.requests_per_minute=0"): (
            "scorer.requests_per_minute=0: must be > 0 (null: no limit)"
        ),
        ("train", "trainer.max_steps=0", "seed=0"): (
            "trainer.max_steps=0: must be >= 1, or -1 (optimizer steps per stage; -1: epochs decide)"
        ),
        ("evaluate", "judge=gpt4", "judge.budget_usd=-5"): (
            "judge.budget_usd=-5: must be > 0 (this run's spending cap in USD; null: none)"
        ),
        ("train", "trainer.learning_rate=-1", "seed=0"): (
            "trainer.learning_rate=-1: must be > 0 (the optimizer's peak step size)"
        ),
    }
    for (job, *overrides), message in cases.items():
        with pytest.raises(ConfigError) as err:
            check_config(compose(overrides, job))
        assert str(err.value) == message


@pytest.mark.parametrize(
    ("job", "overrides", "message"),
    [
        (
            "train",
            ["segment.method.thresholds=[0.5,3.5]"],
            "segment.method.thresholds=[0.5, 3.5]: 0.5 is outside the scores' range 1-5",
        ),
        (
            "segment",
            ["segment.method.thresholds=[1.5,7]"],
            "segment.method.thresholds=[1.5, 7]: 7 is outside the scores' range 1-5",
        ),
        ("train", ["segment=balanced", "segment.method.method.thresholds=[1,3]"], "1 is outside"),
        ("segment", ["compare.paper.thresholds=[1.5,6]"], "compare.paper.thresholds=[1.5, 6]"),
        ("score", ["thresholds=[0,3.5]"], "thresholds=[0, 3.5]: 0 is outside"),
    ],
)
def test_thresholds_outside_the_score_range_are_named_by_value(job, overrides, message):
    with pytest.raises(ConfigError, match="would be empty") as err:
        check_config(compose(overrides, job))
    assert message in str(err.value)


def test_thresholds_follow_the_datas_own_scale():
    # a source whose scale is 1-10: a threshold at 7 is fine there
    data = ["dataset=jsonl", "dataset.source.path=x.jsonl"]
    check_config(
        compose([*data, "dataset.source.score_range=[1,10]", "segment.method.thresholds=[3,7]"])
    )
    with pytest.raises(ConfigError, match="7 is outside the scores' range 1-5"):
        check_config(compose([*data, "segment.method.thresholds=[3,7]"]))
    cfg = compose([*data, "dataset.source.score_range=null", "segment.method.thresholds=[-3,70]"])
    check_config(cfg)  # any number: nothing to check against


@dataclass
class Field:
    a: int = ranged(1, ge=1, why="a")


def fn(b: Annotated[float, Range(gt=0)] = 1.0) -> None: ...


class Attr:
    RANGES: ClassVar[dict[str, Range]] = {"c": Range(le=5)}


def test_declarations_beside_the_code():
    assert ranges_of(Field)["a"].problem(0) == "must be >= 1 (a)"
    assert ranges_of(fn)["b"].problem(0) == "must be > 0"
    assert ranges_of(Attr)["c"].problem(6) == "must be <= 5"
    assert Range().problem(math.nan) == "must be a finite number"
    assert Range(gt=0).problem(math.inf) is None  # an unbounded cap is a cap
    assert Range(ge=1).problem(None) is None and Range(ge=1).problem("silverman") is None
    assert show_value(1e-5) == "1e-05" and show_value([1.0, 2.5]) == "[1, 2.5]"


@pytest.mark.integration  # a subprocess: seconds
def test_a_bad_value_stops_the_job_before_it_does_anything(tmp_path):
    out = run_command(
        [
            sys.executable,
            "train.py",
            "trainer.learning_rate=-1",
            f"run.root={tmp_path / 'runs'}",
        ],
        check=False,
        no_traceback=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "error: trainer.learning_rate=-1: must be > 0 (the optimizer's peak step size)" in (
        out.stderr
    )
    # no stage folder, no cache, nothing written but Hydra's own record
    written = (
        [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
        if (tmp_path / "runs").exists()
        else []
    )
    assert all(".hydra" in p.parts or p.suffix == ".log" for p in written), written
    assert not list(tmp_path.rglob("stage_*"))
