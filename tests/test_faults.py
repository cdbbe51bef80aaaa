"""Scoring and judging through a fault-injecting proxy (tests/faultproxy.py).

The integration tests put the proxy in front of the real llama.cpp server (the session
``server`` fixture) and run ``score.py`` against it through ``scorer.base_url``: malformed
200 replies, a hard budget with retries, an echoed key, and a summary that adds up. The
other tests use only the proxy's own replies (no server): they run everywhere.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT
from faultproxy import GARBAGE, FaultProxy
from helpers.commands import openai_score_cmd, run_score

from phasedsft.evaluate.judges import OpenAIJudge, Pair
from phasedsft.llm.cache import ScoreCache
from phasedsft.llm.engine import RequestsAborted
from phasedsft.records import Example
from phasedsft.score.api import OpenAIScorer
from phasedsft.score.context import ScoreContext

KEY = "sk-test-SECRET123"
NOWHERE = "http://127.0.0.1:9/v1"  # the proxy's fault modes never reach their upstream


# ------------------------------------------------------------------ helpers


def score_cmd(root: Path, base_url: str, n: int, *extra: str) -> list[str]:
    """One parse retry: a fault mode's unparsable reply fails its example fast."""
    return openai_score_cmd(root, base_url, n, "scorer.parse_retries=1", *extra)


def run_dir(root: Path, n: int) -> Path:
    """The run directory of the run over ``n`` examples (the runs of a test differ in n)."""
    for d in (root / "score").iterdir():
        if json.loads((d / "summary.json").read_text())["examples"] == n:
            return d
    raise AssertionError(f"no run over {n} examples under {root}")


def summary(d: Path) -> dict:
    return json.loads((d / "summary.json").read_text())


def adds_up(d: Path) -> dict:
    """summary.json, checked against itself and against the files beside it."""
    s = summary(d)
    assert s["ok"] + s["failed"] + s["not_scored"] == s["examples"], s
    assert s["cached"] + s["answered_this_run"] + s["not_scored"] == s["examples"], s
    assert len((d / "scored.jsonl").read_text().splitlines()) == s["ok"]
    assert len((d / "failures.jsonl").read_text().splitlines()) == s["failed"]
    assert s["failed_this_run"] <= s["failed"]
    return s


def failures(d: Path) -> list[dict]:
    return [json.loads(x) for x in (d / "failures.jsonl").read_text().splitlines()]


def examples(n: int) -> list[Example]:
    return [Example(str(i), f"Add {i} and {i}.", "", str(2 * i)) for i in range(n)]


# ------------------------------------------------------------------ without a server


def test_malformed_replies_are_failed_attempts_for_scorer_and_judge(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")
    with FaultProxy(NOWHERE, ["garbage", "html", "empty", "out_of_range"], cycle=True) as proxy:
        scorer = OpenAIScorer(model="m", base_url=proxy.base_url, parse_retries=1, concurrency=2)
        stats = scorer.run(examples(4), ScoreContext(cache=cache))
    # every item tried twice, then recorded with its raw replies: no crash, nothing lost
    assert (stats.done, stats.failed, stats.requests) == (4, 4, 8) == (4, 4, proxy.counts.total())
    assert all(proxy.counts[m] == 2 for m in ("garbage", "html", "empty", "out_of_range"))
    kept = json.dumps([(r.error, json.loads(r.raw or "[]")) for r in stats.results.values()])
    assert GARBAGE.decode().replace('"', '\\"') in kept and "502 Bad Gateway" in kept
    assert all((r.error or "").startswith("unparseable reply: ") for r in stats.results.values())
    assert all(len(json.loads(r.raw or "[]")) == 2 for r in stats.results.values())

    with FaultProxy(NOWHERE, ["garbage", "html", "empty"], cycle=True) as proxy:
        judge = OpenAIJudge(model="m", base_url=proxy.base_url, parse_retries=2, concurrency=2)
        run = judge.judge_pairs([Pair("p", "Say hi.", "hi", "hello")], cache)
    assert (run.stats["failed"], run.stats["requests"], proxy.counts.total()) == (2, 6, 6)
    assert [e.split(":")[0] for e in run.reviews[0].errors] == ["ab", "ba"]


def test_an_echoed_key_is_redacted_before_it_is_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cache = ScoreCache(tmp_path / "s.sqlite")
    with FaultProxy(NOWHERE, ["echo_400", "echo_401"]) as proxy:
        scorer = OpenAIScorer(model="m", base_url=proxy.base_url, concurrency=1, max_retries=0)
        with pytest.raises(RequestsAborted) as err:
            scorer.run(examples(2), ScoreContext(cache=cache))
    assert proxy.keys_seen == {KEY}
    (failed,) = err.value.stats.results.values()
    assert KEY not in str(err.value) and KEY not in (failed.error or "")
    assert "AuthenticationError" in str(err.value) and "[REDACTED]" in str(err.value)
    assert "[REDACTED]" in (failed.error or "")
    cache.close()  # seals what it recorded (s.sqlite.sealed/): no key there either
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.parent.name == "s.sqlite.sealed" for p in written)
    assert b"SECRET123" not in b"".join(p.read_bytes() for p in written)


def test_a_stopped_judge_says_judging_stopped(tmp_path):
    cache = ScoreCache(tmp_path / "j.sqlite")
    with FaultProxy(NOWHERE, ["echo_401"], cycle=True) as proxy:
        judge = OpenAIJudge(model="m", base_url=proxy.base_url, concurrency=1, max_retries=0)
        with pytest.raises(RequestsAborted, match=r"^judging stopped: the endpoint failed"):
            judge.judge_pairs([Pair("p", "Say hi.", "hi", "hello")], cache)


# ------------------------------------------------------------------ the real server, via score.py


@pytest.mark.integration
def test_garbage_and_html_200_replies_are_retried_then_recorded(server, tmp_path):
    # one item at a time: items 0 and 1 get a garbage body, then an HTML page; 2 and 3 pass
    with FaultProxy(server, ["garbage", "html", "garbage", "html"]) as proxy:
        run_score(score_cmd(tmp_path, proxy.base_url, 4))
    s = adds_up(run_dir(tmp_path, 4))
    assert (s["ok"], s["failed"], s["not_scored"]) == (2, 2, 0)
    assert s["requests"] == proxy.counts.total() == 6
    rows = failures(run_dir(tmp_path, 4))
    for row in rows:
        first, second = json.loads(row["raw"])
        assert first == GARBAGE.decode() and second.startswith("<!DOCTYPE html>")
        assert row["reason"].startswith("unparseable reply: the reply is not a chat completion")
    assert "failed" in s["counts"]


@pytest.mark.integration
def test_thirty_percent_bad_replies_finish_within_three_runs(server, tmp_path):
    faults = ["garbage", "html", "empty", "out_of_range", "drop", "slow"]
    with FaultProxy(server, rate=0.3, faults=faults, seed=7, slow_s=0.3) as proxy:
        cmd = score_cmd(tmp_path, proxy.base_url, 8, "scorer.parse_retries=2")
        runs = []
        while not runs or (runs[-1]["failed"] and len(runs) < 3):  # at most 3 runs
            run_score([*cmd, "scorer.retry_failed=true"])
            runs.append(adds_up(run_dir(tmp_path, 8)))
    assert runs[-1]["ok"] == 8, runs
    assert proxy.counts.total() - proxy.counts["pass"] > 0  # faults were injected


@pytest.mark.integration
def test_budget_is_a_hard_cap_when_every_reply_fails_to_parse(server, tmp_path):
    # every reply is a well-formed completion with out-of-range scores, reporting the most a
    # request can cost (20 output tokens at $1/1K = $0.02); 3 attempts per item, so an item's
    # worst case is $0.06. $0.13 holds two items whole: both finish (failed), the third never
    # starts. (A budget under $0.06 stops before sending: tests/test_budget.py.)
    with FaultProxy(server, ["out_of_range"], cycle=True, usage=(0, 20)) as proxy:
        cmd = score_cmd(
            tmp_path,
            proxy.base_url,
            3,
            "scorer.parse_retries=2",
            "scorer.concurrency=2",
            "scorer.price.output_per_1k=1.0",
            "scorer.budget_usd=0.13",
        )
        out = run_score(cmd, check=False)
    assert out.returncode == 3 and "budget of $0.13 reached" in out.stderr, out.stderr[-3000:]
    d = run_dir(tmp_path, 3)
    s = summary(d)
    assert proxy.counts.total() * 0.02 <= 0.13 + 1e-9 and s["cost_usd"] <= 0.13 + 1e-9
    # items 0 and 1, each with its two retries, all reserved before item 0 started
    assert s["requests"] == proxy.counts.total() == 6
    assert (s["failed"], s["not_scored"], s["unfinished_kept"]) == (2, 1, 0)
    assert s["cost_usd"] == pytest.approx(s["cost_from_tokens_usd"] + s["cost_unmetered_usd"])
    adds_up(d)
    e = json.loads((d / "estimate.json").read_text())
    assert e["max_requests"] == 9 and e["est_cost_usd_upper_bound"] == pytest.approx(0.18)
    assert "parse_retries" in e["upper_bound"]


@pytest.mark.integration
def test_an_echoed_key_appears_in_no_file(server, tmp_path):
    env = {"OPENAI_API_KEY": KEY}
    with FaultProxy(server, ["echo_400"]) as proxy:  # item 0 rejected, item 1 answered
        first = run_score(score_cmd(tmp_path, proxy.base_url, 2), env)
    (row,) = failures(run_dir(tmp_path, 2))
    assert "SECRET123" not in row["reason"] and "[REDACTED]" in row["reason"]
    with FaultProxy(server, ["echo_401"]) as proxy401:  # a third item: the key is refused
        second = run_score(score_cmd(tmp_path, proxy401.base_url, 3), env, check=False)
    assert second.returncode == 3 and "AuthenticationError" in second.stderr
    assert proxy.keys_seen == proxy401.keys_seen == {KEY}
    assert json.loads((run_dir(tmp_path, 3) / "summary.json").read_text())["stopped"]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "scores.sqlite" for p in written)
    assert [p for p in written if b"SECRET123" in p.read_bytes()] == []
    for out in (first, second):
        assert "SECRET123" not in out.stdout + out.stderr


@pytest.mark.integration
def test_summary_adds_up_after_a_rerun_over_cached_failures(server, tmp_path):
    # item 0: two out-of-range replies (failed); item 1: a 400 (failed); item 2: a dropped
    # connection, sent again by the client, then answered; item 3: answered
    plan = ["out_of_range", "out_of_range", "echo_400", "drop"]
    with FaultProxy(server, plan) as proxy:
        cmd = score_cmd(tmp_path, proxy.base_url, 4)
        run_score(cmd)
        s = summary(run_dir(tmp_path, 4))
        assert (s["ok"], s["failed"]) == (2, 2)
        assert s["requests"] == proxy.counts.total() == 6  # the retry and the 400 counted
        run_score(cmd)
        s2 = summary(run_dir(tmp_path, 4))
    assert (s2["ok"], s2["failed"], s2["not_scored"], s2["cached"]) == (2, 2, 0, 4)
    assert s2["requests"] == 0 and proxy.counts.total() == 6  # nothing asked twice
    assert adds_up(run_dir(tmp_path, 4))["failed_this_run"] == 0
    with sqlite3.connect(tmp_path / "cache" / "scores.sqlite") as con:
        rows = con.execute("SELECT status, requests FROM results ORDER BY requests").fetchall()
    assert sorted(rows) == [("failed", 1), ("failed", 2), ("ok", 1), ("ok", 2)]


@pytest.mark.integration
def test_two_identical_score_runs_at_once_ask_each_item_once(server, tmp_path):
    # every request takes 2 s: the first run is still asking when the second starts
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with FaultProxy(server, ["slow"], cycle=True, slow_s=2.0) as proxy:
        cmd = score_cmd(tmp_path, proxy.base_url, 5)
        first = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 120
        while proxy.counts.total() == 0 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        outs = [p.communicate(timeout=300) for p in (first, second)]
    for p, (_, err) in zip((first, second), outs, strict=True):
        assert p.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert proxy.counts.total() == proxy.counts["slow"] == 5  # not one item asked twice
    s = adds_up(run_dir(tmp_path, 5))
    assert s["ok"] == 5 and s["requests"] + s["cached"] == 5
