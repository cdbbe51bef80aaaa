"""A lab's own dataset options live in its own folder, and work like the packaged ones.

``examples/lab_conf/dataset/*.yaml`` is such a folder: ``--config-dir`` or
``hydra.searchpath=[file://DIR]`` adds it to the options ``dataset=`` can name; each option
composes against the dataset schema (a misspelt key is an error at compose time, naming the
file and the key), and the keys of its ``source`` are checked against what it calls
(``phasedsft.config_check``) before a job does anything.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import ROOT, compose
from helpers import run_command
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from phasedsft.config_check import ConfigError, check_targets

LAB = ROOT / "examples" / "lab_conf"
LAB_OPTIONS = sorted(p.stem for p in (LAB / "dataset").glob("*.yaml"))
SIZES = {"lab_qa": (30, [6, 12, 12]), "lab_chats": (12, [3, 5, 4])}


def searchpath(folder: Path) -> str:
    return f"hydra.searchpath=[file://{folder}]"


def bad_option(tmp_path: Path, body: str) -> Path:
    """A user's config folder holding one dataset option, ``dataset=bad``."""
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / "bad.yaml").write_text(
        "defaults:\n  - file\n  - _self_\nname: bad\n" + body, encoding="utf-8"
    )
    return tmp_path / "conf"


def test_the_example_folder_holds_the_documented_options():
    assert LAB_OPTIONS == ["lab_chats", "lab_qa"]


@pytest.mark.parametrize("option", LAB_OPTIONS)
def test_each_lab_option_composes_checks_and_loads_its_data(option):
    cfg = compose([searchpath(LAB), f"dataset={option}"])
    assert cfg.dataset.name == option and cfg.dataset.max_examples is None
    check_targets(cfg)
    loaded = instantiate(cfg.dataset.source)
    n, _ = SIZES[option]
    assert len(loaded.examples) == n and all(ex.score is not None for ex in loaded.examples)
    assert not loaded.skips.summary()["skipped"]


def test_a_lab_option_is_the_packaged_one_it_starts_from_plus_what_it_sets():
    lab = compose([searchpath(LAB), "dataset=lab_qa"]).dataset
    packaged = compose(["dataset=file", f"dataset.source.path={lab.source.path}"]).dataset
    assert {**packaged.source} == {**lab.source}
    assert packaged.name == "lab_qa"  # the file's name, which the option also sets


def test_a_misspelt_key_fails_at_compose_time_naming_the_file_and_the_key(tmp_path):
    conf = bad_option(tmp_path, "max_exmaples: 3\nsource:\n  path: x.jsonl\n")
    with pytest.raises(ConfigCompositionException) as e:
        compose([searchpath(conf), "dataset=bad"])
    assert "In 'dataset/bad'" in str(e.value)
    assert "Key 'max_exmaples' not in 'DatasetConfig'" in str(e.value)
    conf_typed = bad_option(tmp_path / "typed", "max_examples: ten\nsource:\n  path: x.jsonl\n")
    with pytest.raises(ConfigCompositionException, match="Value 'ten' of type 'str' could not"):
        compose([searchpath(conf_typed), "dataset=bad"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "source:\n  path: x.jsonl\n  fromat: messages\n",
            "dataset.source.fromat: phasedsft.data.loaders.load_data takes no argument 'fromat' "
            "(did you mean format? it takes: path, format,",
        ),
        (
            "source:\n  pth: x.jsonl\n",
            "dataset.source.path is not set: add dataset.source.path=data/train.jsonl",
        ),
    ],
)
def test_a_misspelt_source_key_is_named_before_the_job_runs(tmp_path, body, message):
    cfg = compose([searchpath(bad_option(tmp_path, body)), "dataset=bad"])
    with pytest.raises(ConfigError) as e:
        check_targets(cfg)
    assert str(e.value).startswith(message), str(e.value)


def plan_line(stdout: str) -> str:
    return next(ln for ln in stdout.splitlines() if ln.startswith("plan: "))


def stage_sizes(plan: str) -> list[int]:
    return [int(n) for n in re.findall(r"difficulty-\d+ (\d+) ex", plan)]


@pytest.mark.integration  # subprocesses: seconds, not milliseconds
@pytest.mark.parametrize("how", ["--config-dir", "hydra.searchpath"])
def test_train_py_plans_on_a_lab_option_either_way(tmp_path, how):
    flag = (
        ["--config-dir", "examples/lab_conf"]
        if how == "--config-dir"
        else ["hydra.searchpath=[file://examples/lab_conf]"]
    )
    out = run_command(
        [
            sys.executable,
            "train.py",
            *flag,
            "dataset=lab_qa",
            "plan_only=true",
            f"run.root={tmp_path}",
        ],
        timeout=300,
        no_traceback=True,
    )
    plan = plan_line(out.stdout)
    assert "lab_qa/tiny" in plan and stage_sizes(plan) == SIZES["lab_qa"][1], plan


@pytest.mark.integration  # a subprocess of its own
def test_a_misspelt_key_in_a_users_file_is_a_plain_error(tmp_path):
    conf = bad_option(tmp_path, "max_exmaples: 3\nsource:\n  path: x.jsonl\n")
    out = run_command(
        [
            sys.executable,
            "train.py",
            "--config-dir",
            str(conf),
            "dataset=bad",
            "plan_only=true",
            f"run.root={tmp_path / 'runs'}",
        ],
        timeout=300,
        check=False,
        no_traceback=True,
    )
    assert out.returncode != 0
    assert (
        "In 'dataset/bad'" in out.stderr
        and "Key 'max_exmaples' not in 'DatasetConfig'" in out.stderr
    )
    assert not (tmp_path / "runs").exists()  # stopped at compose time: nothing ran


@pytest.mark.integration  # a subprocess of its own
def test_a_misspelt_source_key_in_a_users_file_is_a_plain_error(tmp_path):
    conf = bad_option(tmp_path, "source:\n  pth: examples/lab_conf/data/lab_qa.jsonl\n")
    out = run_command(
        [
            sys.executable,
            "train.py",
            "--config-dir",
            str(conf),
            "dataset=bad",
            "plan_only=true",
            f"run.root={tmp_path / 'runs'}",
        ],
        timeout=300,
        check=False,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith("error: dataset.source.path is not set: add dataset.source.path=")
    )
