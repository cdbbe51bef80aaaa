"""The OpenAI scorer against a real OpenAI-compatible server on loopback.

llama.cpp's server (the ``xllamacpp`` wheel) serves the real SmolLM2-135M-Instruct GGUF.
A model this small rates difficulty poorly: these tests check the machinery (cache,
resume, failures, budget, secrets), not the model's judgement.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT
from helpers.commands import openai_score_cmd, run_score
from helpers.deps import needs
from servers import free_port, start_server, stop_server

pytestmark = pytest.mark.integration
needs("xllamacpp")

FAKE_KEY = "sk-phasedsft-FAKE-KEY-7f3a9c1e5b2d4a6f8e0c"


score_cmd = functools.partial(openai_score_cmd, concurrency=2)


def summary(root: Path) -> dict:
    (path,) = (root / "score").glob("*/summary.json")
    return json.loads(path.read_text())


def cached_rows(root: Path) -> int:
    db = root / "cache" / "scores.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        try:
            return int(con.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def test_scores_two_dozen_examples_then_reruns_from_cache(server, tmp_path):
    cmd = score_cmd(
        tmp_path, server, 24, "scorer.samples=2", "scorer.temperature=1.0", "scorer.logprobs=true"
    )
    run_score(cmd)
    s = summary(tmp_path)
    assert (s["ok"], s["failed"], s["requests"], s["cached"]) == (24, 0, 24, 0)
    (run_dir,) = (tmp_path / "score").iterdir()
    rows = [json.loads(x) for x in (run_dir / "scored.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(1 <= r["score"] <= 5 for r in rows)
    d = rows[0]["score_detail"]
    assert len(d["samples"]) == 2 and d["spread"] >= 0 and 1 <= d["expected"]["task"] <= 5
    assert (run_dir / "histogram.png").stat().st_size > 1000
    assert "failed" not in s["counts"] and sum(s["counts"].values()) == 24
    # the scored file trains directly
    from phasedsft.data.loaders import load_jsonl

    assert len(load_jsonl(str(run_dir / "scored.jsonl")).examples) == 24
    run_score(cmd)
    assert (summary(tmp_path)["requests"], summary(tmp_path)["cached"]) == (0, 24)


def test_a_reply_that_is_not_a_score_is_retried_then_recorded(server, tmp_path):
    run_score(
        score_cmd(
            tmp_path,
            server,
            3,
            "scorer.structured=false",
            "scorer.max_tokens=3",
            "scorer.parse_retries=1",
        )
    )
    s = summary(tmp_path)
    assert (s["ok"], s["failed"], s["requests"]) == (
        0,
        3,
        6,
    )  # each tried twice, never given a score
    (run_dir,) = (tmp_path / "score").iterdir()
    failures = [json.loads(x) for x in (run_dir / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 3 and all(f["reason"].startswith("unparseable reply") for f in failures)
    assert all(len(json.loads(f["raw"])) == 2 and json.loads(f["raw"])[0] for f in failures)
    assert (run_dir / "scored.jsonl").read_text() == ""


def test_client_killed_mid_run_resumes_without_repeating_a_request(server, tmp_path):
    n = 12
    cmd = score_cmd(tmp_path, server, n, "scorer.concurrency=1")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 240
    while cached_rows(tmp_path) < 3 and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = cached_rows(tmp_path)
    assert 3 <= before < n
    run_score(cmd)
    s = summary(tmp_path)
    assert s["cached"] == before and s["requests"] == n - before and s["ok"] == n
    assert cached_rows(tmp_path) == n


def test_server_killed_mid_run_stops_cleanly_and_resumes(tmp_path):
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    srv = start_server(port)
    n = 10
    cmd = score_cmd(
        tmp_path, base_url, n, "scorer.concurrency=1", "scorer.max_retries=1", "scorer.timeout=20"
    )
    client = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 240
        while cached_rows(tmp_path) < 2 and time.time() < deadline:
            time.sleep(0.1)
        stop_server(srv)
        _, err = client.communicate(timeout=120)
        assert client.returncode == 3, err[-3000:]
        assert "the endpoint failed" in err and "Rerun the same command" in err
        assert "Traceback" not in err
        before = cached_rows(tmp_path)
        assert 2 <= before < n
        srv = start_server(port)
        run_score(cmd)
        s = summary(tmp_path)
        assert s["cached"] == before and s["requests"] == n - before and s["ok"] == n
    finally:
        client.kill()
        stop_server(srv)


def test_budget_stops_then_a_rerun_continues(server, tmp_path):
    # at this (made-up) price a request may cost up to ~$0.37 (1 token per prompt byte, the
    # reservation for a model tiktoken does not know) and costs ~$0.14; an item reserves its
    # worst case, 3 requests (1 + parse_retries), ~$1.10, before it starts: $1.5 stops early
    priced = [
        "scorer.price.input_per_1k=0.5",
        "scorer.price.output_per_1k=1.0",
        "scorer.concurrency=1",
    ]
    out = run_score(score_cmd(tmp_path, server, 6, *priced, "scorer.budget_usd=1.5"), check=False)
    assert out.returncode == 3 and "budget of $1.50 reached" in out.stderr
    s = summary(tmp_path)
    assert s["stopped"] and s["cost_usd"] <= 1.5 and 0 < s["ok"] < 6
    before = cached_rows(tmp_path)
    run_score(score_cmd(tmp_path, server, 6, *priced, "scorer.budget_usd=10"))
    s2 = summary(tmp_path)  # a bigger budget continues the same run (same directory)
    assert s2["stopped"] is None
    assert s2["cached"] == before and s2["requests"] == 6 - before


def test_dry_run_estimates_without_any_request(server, tmp_path):
    run_score(score_cmd(tmp_path, server, 5, "dry_run=true", "scorer.price.input_per_1k=0.03"))
    (est,) = (tmp_path / "score").glob("*/estimate.json")
    e = json.loads(est.read_text())
    assert e["to_request"] == 5 and e["est_input_tokens"] > 0 and e["est_cost_usd_upper_bound"] > 0
    assert cached_rows(tmp_path) == 0


def test_api_key_is_never_written(server, tmp_path):
    out = run_score(score_cmd(tmp_path, server, 2), env={"OPENAI_API_KEY": FAKE_KEY})
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in written) and any(
        p.suffix == ".sqlite" for p in written
    )
    assert any(".hydra" in p.parts for p in written)
    leaks = [p for p in written if FAKE_KEY.encode() in p.read_bytes()]
    assert not leaks
    assert FAKE_KEY not in out.stdout + out.stderr
