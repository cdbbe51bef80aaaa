"""A full disk: ``error: no space left on <path>``, exit 2, nothing answered lost, and a rerun
after freeing space continues.

Each test mounts a small tmpfs (needs root: skipped, with the reason, where mounting is not
allowed) and fills it to the brim with a filler file at the moment it wants the disk full.
The scoring replies come from the fault-injecting proxy (tests/faultproxy.py), no server.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, TINY
from faultproxy import FaultProxy
from helpers import run_command

from phasedsft.cli import user_error
from phasedsft.llm.cache import ScoreCache
from phasedsft.nospace import NoSpace, is_no_space
from phasedsft.records import Example
from phasedsft.score.api import OpenAIScorer
from phasedsft.score.context import ScoreContext

NOWHERE = "http://127.0.0.1:9/v1"
GOOD = '{"task": 3, "response": 4}'


@pytest.fixture
def small_disk(tmp_path):
    """``mount(size)``: a fresh tmpfs of that size (``"2m"``) under ``tmp_path``; unmounted after."""
    mounted: list[Path] = []

    def mount(size: str, name: str = "disk") -> Path:
        where = tmp_path / name
        where.mkdir()
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not allowed here: {out.stderr.strip() or out}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the disk holding ``folder`` to the brim; the filler file, to delete to free it."""
    filler = folder / "filler"
    with open(filler, "ab", buffering=0) as out:
        chunk = b"\0" * 65536
        while True:
            try:
                out.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return filler


def good_proxy(**kw) -> FaultProxy:
    return FaultProxy(NOWHERE, [], then="out_of_range", out_of_range_content=GOOD, **kw)


def examples(n: int) -> list[Example]:
    return [Example(str(i), f"Add {i} and {i}.", "", str(2 * i)) for i in range(n)]


def test_every_way_a_write_finds_the_disk_full_is_a_plain_error():
    full = [
        OSError(errno.ENOSPC, "No space left on device", "/data/runs/x/model.safetensors"),
        sqlite3.OperationalError("database or disk is full"),
        RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
        RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0"),
        Exception(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        ),
    ]
    for e in full:
        assert is_no_space(e), e
        try:  # wrapped, as Hydra's instantiate or the Trainer may wrap it
            raise RuntimeError("wrapped") from e
        except RuntimeError as wrapped:
            found = user_error(wrapped)
        assert isinstance(found, NoSpace) and str(found).startswith("no space left on "), found
    assert "on /data/runs/x" in str(user_error(full[0])) or "on /" in str(user_error(full[0]))
    assert not is_no_space(OSError(errno.EACCES, "Permission denied"))

    def save(obj, f):  # the path is read from the failing call's arguments
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    try:
        save(None, "/tmp/some/run/checkpoint-5/optimizer.pt")
    except RuntimeError as e:
        assert str(user_error(e)).startswith("no space left on /tmp")


def test_a_full_disk_keeps_the_answer_in_hand_and_a_rerun_continues(small_disk):
    disk = small_disk("2m")
    cache = ScoreCache(disk / "scores.sqlite")
    assert (disk / "scores.sqlite.reserve").stat().st_size == cache.reserve_bytes
    sent: list[str] = []
    with good_proxy() as p:
        s = OpenAIScorer(model="m", base_url=p.base_url, concurrency=1, max_tokens=10)
        ask = s.ask

        async def filling(client, job, messages, tally, **kwargs):
            sent.append(job.key)
            if len(sent) == 3:  # the disk fills up while item 2's request is in flight
                fill(disk)
            return await ask(client, job, messages, tally, **kwargs)

        s.ask = filling  # type: ignore[method-assign]
        with pytest.raises(NoSpace) as err:
            s.run(examples(5), ScoreContext(cache=cache))
        message = str(err.value)
        assert message.startswith(f"no space left on {disk}"), message
        assert "3 of 5 items are answered and cached" in message
        assert p.counts.total() == 3 and cache.count() == 3  # item 2's answer is kept too
        assert not (disk / "scores.sqlite.reserve").exists()  # it went into the reserve
        cache.close()  # (closing checkpoints SQLite's log, which frees a little: fill it again)

        # still full: the next run says so before it sends anything
        fill(disk)
        with pytest.raises(NoSpace, match="nothing was sent"):
            ScoreCache(disk / "scores.sqlite")
        assert p.counts.total() == 3

        (disk / "filler").unlink()  # space freed: the rerun asks only the rest
        s.ask = ask  # type: ignore[method-assign]
        again = ScoreCache(disk / "scores.sqlite")
        stats = s.run(examples(5), ScoreContext(cache=again))
    assert (stats.cached, stats.done, stats.requests) == (3, 2, 2) and p.counts.total() == 5
    assert stats.raw_scores() == [3.5] * 5
    assert (disk / "scores.sqlite.reserve").exists()


def score_cmd(url: str, cache_dir: Path, root: Path) -> list[str]:
    return [
        sys.executable,
        "score.py",
        "scorer=openai",
        f"scorer.base_url={url}",
        "scorer.model=m",
        "scorer.max_tokens=10",
        "scorer.concurrency=1",
        "dataset.source.n=4",
        "dataset.eval=null",
        f"run.root={root}",
        f"run.cache_dir={cache_dir}",
    ]


def results_in(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return int(con.execute("SELECT COUNT(*) FROM results").fetchone()[0])


@pytest.mark.integration  # subprocesses: seconds each
def test_score_py_on_a_full_disk_says_so_keeps_every_answer_and_continues(small_disk, tmp_path):
    disk = small_disk("2m")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with good_proxy() as good, FaultProxy(good.base_url, ["pass", "slow"], slow_s=4) as p:
        cmd = score_cmd(p.base_url, disk, tmp_path / "score")
        run = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        while p.counts.total() < 2 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        fill(disk)  # while item 1's (slow) reply is on its way
        _, err = run.communicate(timeout=300)
        assert run.returncode == 2 and "Traceback" not in err, err[-3000:]
        assert f"error: no space left on {disk}" in err, err[-3000:]
        assert p.counts.total() == 2 and results_in(disk / "scores.sqlite") == 2

        # still full (the exiting run's SQLite log freed a little: fill that too): stopped
        # before anything is sent
        fill(disk)
        out = run_command(cmd, check=False, no_traceback=True, timeout=300)
        assert out.returncode == 2 and f"error: no space left on {disk}" in out.stderr
        assert p.counts.total() == 2

        (disk / "filler").unlink()
        run_command(cmd, no_traceback=True, timeout=300)
    (run_dir,) = (tmp_path / "score").iterdir()
    s = json.loads((run_dir / "summary.json").read_text())
    assert (s["ok"], s["cached"], s["requests"]) == (4, 2, 2) and p.counts.total() == 4


@pytest.mark.integration  # trains a tiny model: a minute
def test_train_py_on_a_full_disk_is_a_plain_error_and_a_rerun_finishes(small_disk, tmp_path):
    disk = small_disk("600k")
    cmd = [
        sys.executable,
        "train.py",
        *TINY,
        f"run.root={disk}",
        f"run.cache_dir={tmp_path / 'cache'}",
    ]
    out = run_command(cmd, check=False, no_traceback=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    assert f"error: no space left on {disk}" in out.stderr, out.stderr[-3000:]
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    run_command(cmd, no_traceback=True, timeout=600)
    (summary,) = disk.glob("*/summary.json")
    assert json.loads(summary.read_text())
