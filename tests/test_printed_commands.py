"""The command segment.py prints runs as printed, and a subsample of its data trains too.

``segment.py`` prints (and writes into summary.json as ``train_command``) the ``train.py``
command that trains on its stage manifest: this job's options that choose the data, its
scores and the model (and a lab's ``--config-dir``), then ``segment.manifest=...``. Training
on a subsample of that data (``dataset.max_examples=N``) keeps each example's stage; other
data is an error that says what to change.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from helpers import run_command

from phasedsft.records import DataError, Example
from phasedsft.segment.manifest import build_manifest
from phasedsft.segment.methods import ManualThresholds, QuantileThresholds
from phasedsft.segment.run import carried, train_command, train_note

MARKER = "train on it: "


def scored(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    return [
        Example(
            id=f"ex-{i}", instruction=f"q{i}", input="", output=f"a{i}", score=rng.randint(1, 5)
        )
        for i in range(n)
    ]


# ------------------------------------------------------------------ a subsample of the manifest


@pytest.mark.parametrize("method", [ManualThresholds(), QuantileThresholds(k=3)])
def test_a_subsample_stages_as_segmenting_it_with_the_manifests_thresholds_would(method):
    everything = scored(60)
    full = build_manifest(everything, method, random_seed=4)
    subset = [ex for i, ex in enumerate(everything) if i % 3]  # kept in their order
    narrowed = full.narrowed_to(subset)
    again = build_manifest(subset, ManualThresholds(full.thresholds), random_seed=4)
    assert narrowed.stages == again.stages
    assert narrowed.random_stages == again.random_stages
    assert narrowed.random_equal_stages == again.random_equal_stages
    assert narrowed.stats == again.stats and narrowed.data_hash == again.data_hash
    assert narrowed.params["narrowed_from"] == {"hash": full.hash, "examples": 60}
    assert narrowed.thresholds == full.thresholds and narrowed.hash != full.hash


def test_check_covers_narrows_a_subset_in_place_and_leaves_the_same_data_alone():
    everything = scored(30)
    full = build_manifest(everything, ManualThresholds(), random_seed=0)
    same = build_manifest(everything, ManualThresholds(), random_seed=0)
    assert same.check_covers(list(reversed(everything)), "m.json") is same
    assert same.hash == full.hash
    subset = everything[:10]
    assert same.check_covers(subset, "m.json") is same
    assert sorted(i for stage in same.stages for i in stage) == sorted(ex.id for ex in subset)
    assert same.hash == full.narrowed_to(subset).hash


def test_examples_the_manifest_does_not_hold_are_an_error_that_says_what_to_change():
    m = build_manifest(scored(10), ManualThresholds(), random_seed=0)
    other = [*scored(10)[:5], Example(id="new-1", instruction="q", input="", output="a", score=2)]
    with pytest.raises(DataError) as e:
        m.check_covers(other, "runs/segment/x/stage_manifest.json")
    msg = str(e.value)
    assert msg.startswith(
        "runs/segment/x/stage_manifest.json: stage manifest does not match the training data: "
        "1 of the 6 training examples are not in it (e.g. ids ['new-1'])"
    )
    assert "train_command" in msg and "dataset.max_examples=N" in msg
    assert "drop segment.manifest" in msg and "run segment.py on that data first" in msg


@pytest.mark.parametrize(
    ("override", "kept"),
    [
        ("dataset=jsonl", True),
        ("dataset.source.path=a b.jsonl", True),
        ("+dataset.source.on_error=skip", True),
        ("dataset.max_examples=100", True),
        ("scorer=length", True),
        ("model=hf", True),
        ("model.path=x/y", True),
        ("seed=3", True),
        ("segment=jenks", False),
        ("segment.method.k=4", False),
        ("run.root=/tmp/x", False),
        ("plot_bandwidth=0.3", False),
        ("compare.paper.thresholds=[2]", False),
        ("trainer=tiny", False),
    ],
)
def test_the_options_carried_into_the_training_command(override, kept):
    assert carried(override) is kept


def test_conversations_get_the_chat_prompt_and_a_model_that_has_a_chat_template():
    m = Path("runs/segment/x/stage_manifest.json")
    assert train_command(m) == f"python train.py segment.manifest={m}"
    assert train_command(m, conversations=True, chat_template=True) == (
        f"python train.py prompt=chat segment.manifest={m}"
    )
    assert train_command(m, conversations=True, chat_template=False) == (
        f"python train.py model=smollm2_135m prompt=chat segment.manifest={m}"
    )
    assert "model=smollm2_135m offline" in train_note(True, False)
    assert "conversations" not in train_note(True, True) + train_note(False, False)


# ------------------------------------------------------------------ the printed command, run


def printed(stdout: str) -> str:
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith(MARKER)]
    return line[len(MARKER) :]


def as_argv(command: str, *extra: str) -> list[str]:
    words = shlex.split(command)
    assert words[:2] == ["python", "train.py"], command
    return [sys.executable, *words[1:], *extra]


def plan_sizes(stdout: str) -> list[int]:
    (plan,) = [ln for ln in stdout.splitlines() if ln.startswith("plan: ")]
    return [int(n) for n in re.findall(r"difficulty-\d+ (\d+) ex", plan)]


def segment(tmp_path: Path, *args: str) -> tuple[str, dict]:
    out = run_command(
        [sys.executable, "segment.py", *args, f"run.root={tmp_path / 'seg'}"],
        timeout=300,
        no_traceback=True,
    )
    (summary,) = (tmp_path / "seg").glob("*/summary.json")
    result = json.loads(summary.read_text())
    assert printed(out.stdout) == result["train_command"]
    return result["train_command"], result


def train_plan(tmp_path: Path, command: str, *extra: str, check: bool = True):
    return run_command(
        as_argv(command, *extra, "plan_only=true", f"run.root={tmp_path / 'train'}"),
        timeout=300,
        check=check,
        no_traceback=True,
    )


@pytest.mark.integration  # subprocesses: seconds each
def test_segment_prints_a_training_command_that_runs_as_printed(tmp_path):
    data = tmp_path / "my data" / "scored.jsonl"  # a space: the command must quote it
    data.parent.mkdir()
    rows = (ROOT / "examples" / "lab_conf" / "data" / "lab_qa.jsonl").read_text().splitlines()
    # a column no format uses: kept out of training, and said so in summary.json
    data.write_text("".join(json.dumps({**json.loads(r), "origin": "lab"}) + "\n" for r in rows))
    command, result = segment(
        tmp_path, "dataset=jsonl", f"dataset.source.path={data}", "seed=3", "segment=jenks"
    )
    assert result["data"]["unused_fields"] == {"origin": 30}
    manifest = result["stage_manifest"]
    assert shlex.split(command)[2:] == [
        "dataset=jsonl",
        f"dataset.source.path={data}",
        "seed=3",
        f"segment.manifest={manifest}",
    ]
    sizes = [row["count"] for row in result["table1"]]

    # as printed: the manifest's stages
    assert plan_sizes(train_plan(tmp_path, command).stdout) == sizes
    # a subsample of the same data: each example keeps its stage
    sub = train_plan(tmp_path, command, "dataset.max_examples=12")
    assert sum(plan_sizes(sub.stdout)) == 12 and len(plan_sizes(sub.stdout)) == len(sizes)
    assert "training on 12 of its 30 examples" in sub.stdout + sub.stderr
    # other data (the dataset options dropped): a plain error that says what to change
    other = train_plan(tmp_path, f"python train.py segment.manifest={manifest}", check=False)
    assert other.returncode == 2
    last = other.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {manifest}: stage manifest does not match the training data")
    assert "dataset.max_examples=N" in last and "drop segment.manifest" in last


@pytest.mark.integration  # subprocesses: seconds each
def test_the_printed_command_keeps_a_labs_config_dir(tmp_path):
    command, result = segment(tmp_path, "--config-dir", "examples/lab_conf", "dataset=lab_qa")
    words = shlex.split(command)
    assert words[2:4] == ["--config-dir=examples/lab_conf", "dataset=lab_qa"]
    sizes = [row["count"] for row in result["table1"]]
    assert plan_sizes(train_plan(tmp_path, command).stdout) == sizes == [6, 12, 12]
    sub = train_plan(tmp_path, command, "dataset.max_examples=20", "ordering=random_matched")
    (plan,) = [ln for ln in sub.stdout.splitlines() if ln.startswith("plan: ")]
    assert sum(int(n) for n in re.findall(r"random-\d+ (\d+) ex", plan)) == 20


@pytest.mark.integration  # subprocesses: seconds each (the GGUF tokenizer)
def test_the_printed_command_for_conversations_names_a_chat_model(tmp_path):
    command, result = segment(tmp_path, "--config-dir", "examples/lab_conf", "dataset=lab_chats")
    assert shlex.split(command)[2:6] == [
        "--config-dir=examples/lab_conf",
        "dataset=lab_chats",
        "model=smollm2_135m",
        "prompt=chat",
    ]
    sizes = [row["count"] for row in result["table1"]]
    assert plan_sizes(train_plan(tmp_path, command).stdout) == sizes == [3, 5, 4]
