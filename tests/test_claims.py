"""Avoidable duplicate spending: per-item claims in the shared SQLite cache, and judged pairs
whose two orders show the judge the same prompt.

Claims are tested with real processes sharing one cache file (spawned): they split the items
and never both ask one; a dead holder's claim is free at once, a live one's until its ttl.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import sqlite3
import time
from types import SimpleNamespace

import pytest

from phasedsft.llm.cache import HOST, Claim, Result, ScoreCache
from phasedsft.llm.engine import Job, run_jobs

CTX = mp.get_context("spawn")  # no fork of a parent that may run threads (torch, tokenizers)


def result(key: str, status: str = "ok", who: str = "") -> Result:
    # a failure answers its item only when a request was sent (one given up before never does)
    score = 3.0 if status == "ok" else None
    return Result(key, who or key, "test", status, score, requests=1)


# ------------------------------------------------------------------ worker processes


def _ask_all(path: str, keys: list[str], barrier, out, delay: float) -> None:
    """Score ``keys`` as an engine would: claim, 'ask' (sleep), put; skip busy keys, then
    come back to them until each is done here or elsewhere."""
    cache = ScoreCache(path)
    asked: list[str] = []
    barrier.wait()
    todo = list(keys)
    while todo:
        later = []
        for key in todo:
            c = cache.try_claim(key, ttl=60)
            if c.state == "granted":
                time.sleep(delay)  # the request in flight
                cache.put(result(key, who=cache.owner))
                asked.append(key)
            elif c.state == "busy":
                later.append(key)
        if later:
            time.sleep(0.02)
        todo = later
    out.put(asked)


def _engine_run(path: str, n: int, barrier, out, delay: float) -> None:
    """``run_jobs`` over ``n`` items on a shared cache: report what this process asked and got."""
    asked: list[str] = []

    async def call(job):
        asked.append(job.key)
        await asyncio.sleep(delay)  # the request in flight
        return Result(job.key, job.example, "test", "ok", 3.0, requests=1)

    cache = ScoreCache(path)
    barrier.wait()
    jobs = [Job(f"k{i:02d}", f"item{i}") for i in range(n)]
    stats = run_jobs(jobs, call, cache, concurrency=2, claim_poll_s=0.05)
    out.put(
        {
            "asked": asked,
            "got": [r.key if r else None for r in stats.ordered],
            "counts": (stats.total, stats.cached, stats.done, stats.waited_for, stats.requests),
        }
    )


def _open_fresh_caches(folder: str, rounds: int, barrier, out) -> None:
    """Open ``rounds`` new cache files, each at the same moment as the other process."""
    errors = []
    for i in range(rounds):
        barrier.wait()
        try:
            ScoreCache(os.path.join(folder, f"c{i}.sqlite")).close()
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    out.put(errors)


def _claim_then(path: str, keys: list[str], ttl: float, claimed, leave, how: str) -> None:
    cache = ScoreCache(path)
    assert cache.claim(keys, ttl=ttl) == keys
    claimed.set()
    if how == "die":
        os._exit(0)  # no release, no put: as kill -9 would leave it
    leave.wait(30)


# ------------------------------------------------------------------ claims


def test_two_processes_opening_a_new_cache_at_once_both_succeed(tmp_path):
    # the ranks of a multi-GPU run open the run's cache together: switching a new file to WAL
    # ignored SQLite's busy timeout, and one rank died of "database is locked" (a quarter of
    # the rounds here before the fix; the one-off ZeRO-3 + LoRA failure)
    barrier, out = CTX.Barrier(2), CTX.Queue()
    procs = [
        CTX.Process(target=_open_fresh_caches, args=(str(tmp_path), 40, barrier, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    errors = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert errors == [[], []]


def test_two_processes_split_the_items_and_never_ask_one_twice(tmp_path):
    path = str(tmp_path / "scores.sqlite")
    ScoreCache(path).close()
    keys = [f"k{i:02d}" for i in range(40)]
    barrier, out = CTX.Barrier(2), CTX.Queue()
    procs = [CTX.Process(target=_ask_all, args=(path, keys, barrier, out, 0.05)) for _ in range(2)]
    for p in procs:
        p.start()
    asked = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    # every item asked exactly once over both processes, and both did part of the work
    assert sorted(asked[0] + asked[1]) == keys
    assert asked[0] and asked[1]
    cache = ScoreCache(path)
    assert set(cache.get_many(keys)) == set(keys)
    assert cache.claims() == {}  # put() ended every claim


def test_two_engine_runs_on_one_cache_ask_each_item_once_and_both_get_every_answer(tmp_path):
    # what two identical score.py runs at once (or a sweep scoring inline) do: run_jobs over
    # the same items in two processes, started together
    path = str(tmp_path / "scores.sqlite")
    ScoreCache(path).close()
    n = 20
    barrier, out = CTX.Barrier(2), CTX.Queue()
    procs = [CTX.Process(target=_engine_run, args=(path, n, barrier, out, 0.1)) for _ in range(2)]
    for p in procs:
        p.start()
    runs = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    keys = [f"k{i:02d}" for i in range(n)]
    assert sorted(runs[0]["asked"] + runs[1]["asked"]) == keys  # each item asked once in all
    for run in runs:
        assert run["got"] == keys  # ...and each process has every answer, in order
        total, cached, done, waited_for, requests = run["counts"]
        assert cached + done == total == n and requests == done == len(run["asked"])
        assert waited_for <= cached
    assert ScoreCache(path).claims() == {}


def test_a_repeated_item_in_one_run_is_asked_once(tmp_path):
    calls: list[str] = []

    async def call(job):
        calls.append(job.key)
        await asyncio.sleep(0.05)
        return Result(job.key, job.example, "test", "ok", 3.0, requests=1)

    jobs = [Job("a", "1"), Job("b", "2"), Job("a", "3"), Job("c", "4")]
    cache = ScoreCache(tmp_path / "s.sqlite")
    stats = run_jobs(jobs, call, cache, concurrency=4, claim_poll_s=0.01)
    assert sorted(calls) == ["a", "b", "c"] and stats.requests == 3
    assert (stats.total, stats.done, stats.cached, stats.waited_for) == (4, 3, 1, 1)
    assert [r.key for r in stats.ordered if r] == ["a", "b", "a", "c"]


def test_a_failed_call_releases_its_claim(tmp_path):
    async def call(job):
        raise RuntimeError("boom")

    cache = ScoreCache(tmp_path / "s.sqlite")
    with pytest.raises(Exception, match="unexpected RuntimeError: boom"):
        run_jobs([Job("a", "1")], call, cache)
    assert cache.claims() == {}  # another process may ask it at once


def test_a_dead_holders_claim_is_free_at_once(tmp_path):
    path = str(tmp_path / "scores.sqlite")
    claimed, leave = CTX.Event(), CTX.Event()
    p = CTX.Process(target=_claim_then, args=(path, ["a", "b"], 3600, claimed, leave, "die"))
    p.start()
    assert claimed.wait(60)
    p.join(30)  # reaped: its pid is gone
    cache = ScoreCache(path)
    assert cache.claims()["a"]["stale"] and cache.claims()["a"]["pid"] == p.pid
    assert cache.claim(["a", "b"]) == ["a", "b"]  # an hour's ttl left, but the holder is dead


def test_a_live_holders_claim_holds_until_its_ttl(tmp_path):
    path = str(tmp_path / "scores.sqlite")
    claimed, leave = CTX.Event(), CTX.Event()
    p = CTX.Process(target=_claim_then, args=(path, ["a"], 1.5, claimed, leave, "wait"))
    p.start()
    try:
        assert claimed.wait(60)
        cache = ScoreCache(path)
        assert cache.try_claim("a") == Claim("busy")
        assert cache.claim(["a", "b"]) == ["b"]
        time.sleep(1.6)  # the holder lives on but its claim has expired
        assert cache.try_claim("a") == Claim("granted")
    finally:
        leave.set()
        p.join(30)


def test_claims_from_another_host_count_until_they_expire(tmp_path):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    now = time.time()
    with sqlite3.connect(cache.path) as db:  # pid 1 of another host: no pid check there
        db.executemany(
            "INSERT INTO claims VALUES (?,?,?,?,?,?)",
            [
                ("live", "node7:1:x", "node7", 1, now, now + 600),
                ("expired", "node7:1:x", "node7", 1, now - 700, now - 100),
            ],
        )
    assert HOST != "node7"
    assert cache.claim(["live", "expired", "new"]) == ["expired", "new"]


def test_answered_keys_are_done_and_claims_are_reentrant(tmp_path):
    cache = ScoreCache(tmp_path / "scores.sqlite")
    cache.put(result("ok"))
    cache.put(result("failed", "failed"))
    start = time.time()
    done = cache.try_claim("ok")
    assert done.state == "done" and done.result is not None and done.result.score == 3.0
    assert cache.try_claim("failed").state == "done"  # a failed answer is an answer...
    # ...except for a retry_failed run, for failures recorded before it started
    assert cache.claim(["ok", "failed"], since=start + 1) == ["failed"]
    other = ScoreCache(tmp_path / "scores.sqlite")
    assert other.try_claim("failed", since=start + 1) == Claim("busy")
    # the holder claims again (renews), then gives the claim up: free for the other
    assert cache.claim(["failed"], since=start + 1) == ["failed"]
    cache.release(["failed"])
    assert other.claim(["failed"], since=start + 1) == ["failed"]
    # a failure recorded by the other process during this run is an answer, not a retry
    other.put(result("failed", "failed"))
    assert cache.try_claim("failed", since=start - 1).state == "done"
    assert other.claims() == {}
    assert cache.claim([]) == []


# ------------------------------------------------------------------ identical prompts, once


class FakeCompletions:
    def __init__(self, reply: str = "8 6"):
        self.calls: list[dict] = []
        self.reply = reply

    async def create(self, **kwargs):
        self.calls.append(kwargs)
        return SimpleNamespace(
            choices=[SimpleNamespace(message=SimpleNamespace(content=self.reply))],
            usage=SimpleNamespace(prompt_tokens=100, completion_tokens=2),
        )


@pytest.mark.parametrize("reply", ["8 6", "7 7"])
def test_a_pair_with_identical_answers_is_sent_once_and_folds_to_a_tie(
    tmp_path, monkeypatch, reply
):
    from phasedsft.evaluate.judges import OpenAIJudge, Pair
    from phasedsft.evaluate.winrate import TIE, fold, judge_item

    same = Pair("same", "Say hi.", "Hello!", "Hello!")
    differ = Pair("differ", "Say hi.", "Hello!", "Hi.")
    judge = OpenAIJudge(name="openai", base_url="http://127.0.0.1:9/v1")
    fake = FakeCompletions(reply)
    monkeypatch.setattr(
        judge, "client", lambda role: SimpleNamespace(chat=SimpleNamespace(completions=fake))
    )
    run = judge.judge_pairs([same, differ], ScoreCache(tmp_path / "j.sqlite"))
    # both orders of `same` show the judge the same prompt: one request, its reply in both
    assert len(fake.calls) == 3 and run.stats["requests"] == 3
    assert run.reviews[0].review_ab == run.reviews[0].review_ba == reply
    assert run.reviews[1].review_ab == run.reviews[1].review_ba == reply
    judged = judge_item(same.id, run.reviews[0].review_ab, run.reviews[0].review_ba)
    assert all(fold(*judged.verdicts(), rule) == TIE for rule in ("paper", "fastchat"))
    assert judge.estimate([same, differ], ScoreCache(tmp_path / "e.sqlite"))["requests"] == 3
