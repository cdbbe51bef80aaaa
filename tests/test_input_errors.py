"""Bad input and Ctrl-C end a job in plain words: `error: ...` (exit 2) / `interrupted: ...` (130)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import ROOT, ref_path

from phasedsft.cli import user_error
from phasedsft.records import DataError


def test_a_user_error_wrapped_by_a_library_is_found():
    from hydra.errors import InstantiationException

    try:
        try:
            raise DataError("data.jsonl:3: missing field 'output'")
        except DataError as e:
            raise InstantiationException("Error in call to target 'load_jsonl'") from e
    except InstantiationException as wrapped:
        assert str(user_error(wrapped)) == "data.jsonl:3: missing field 'output'"
    assert user_error(ValueError("a bug")) is None


def test_data_error_inside_instantiate_is_a_plain_error(tmp_path):
    """The authors' own scored file has empty outputs (first at line 2161): a located error."""
    scored = ref_path("phasedsft_scores", "en-alpaca52k-stage3.jsonl")
    proc = subprocess.run(
        [
            sys.executable,
            "segment.py",
            "dataset=phasedsft_scored",
            f"dataset.source.path={scored}",
            f"run.root={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "en-alpaca52k-stage3.jsonl:2161: empty output" in last
    assert "Error executing job" not in proc.stderr and "Traceback" not in proc.stderr
    assert "dataset.source.on_error=skip" in last and "eval_sets.<name>.source.on_error" in last


def test_ctrl_c_says_what_was_kept_and_exits_130(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "train.py",
            "dataset.source.n=400",
            "model.tokenizer.vocab_size=300",
            "trainer.max_steps=100000",
            f"run.root={tmp_path}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.time() + 240
        seen = ""
        assert proc.stdout is not None
        while time.time() < deadline:  # training has started: the stage plan is logged
            line = proc.stdout.readline()
            seen += line
            if "stages: 1:difficulty-1" in line or not line:
                break
        assert "stages: 1:difficulty-1" in seen, seen[-2000:]
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest[-2000:]
    assert "interrupted: everything finished so far is kept" in rest
    assert "Traceback" not in rest
