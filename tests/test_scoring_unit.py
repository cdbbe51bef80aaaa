"""Scoring machinery without a server: parsing, logprob expectation, cache, engine, budget, agreement."""

import asyncio
import json
import math

import pytest

from phasedsft.llm.cache import Result, ScoreCache, cache_key
from phasedsft.llm.cost import Price, count_tokens
from phasedsft.llm.engine import (
    Budget,
    EndpointError,
    Job,
    RateLimiter,
    RequestsAborted,
    redact,
    run_jobs,
)
from phasedsft.records import Example
from phasedsft.score.agree import agreement
from phasedsft.score.agree import main as agree_main
from phasedsft.score.base import rank_to_scale
from phasedsft.score.prompt import (
    PROMPT_VERSION,
    ParseError,
    combine,
    expected_scores,
    messages,
    parse_reply,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"task": 3, "response": 4}', (3.0, 4.0)),
        ('Sure! {\n  "task": 2,\n  "response": 5\n} Hope that helps', (2.0, 5.0)),
        ('{"task": "3", "response": "1"}', (3.0, 1.0)),
        ("task: 4, response: 2", (4.0, 2.0)),
        ('{"task": 2.5, "response": 3.5}', (2.5, 3.5)),
    ],
)
def test_parse_reply(text, expected):
    assert parse_reply(text) == expected


@pytest.mark.parametrize(
    "text", ["", "   ", "It is hard.", '{"task": 9, "response": 1}', '{"task": 3}', None]
)
def test_unparseable_replies_raise(text):
    with pytest.raises(ParseError):
        parse_reply(text)


def test_prompt_is_versioned_and_names_both_dimensions():
    msgs = messages(Example("1", "Add.", "1 2", "3"))
    assert PROMPT_VERSION and msgs[0]["role"] == "system"
    assert "[Input]\n1 2" in msgs[1]["content"] and '"task"' in msgs[1]["content"]
    assert "[Input]" not in messages(Example("1", "Say hi.", "", "hi"))[1]["content"]


def test_combine_rules():
    assert combine("mean", 2, 4) == 3 and combine("max", 2, 4) == 4 and combine("task", 2, 4) == 2
    with pytest.raises(ValueError, match="unknown combine rule"):
        combine("median", 1, 2)


def tok(token, alts):
    return {"token": token, "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in alts]}


def test_expected_scores_from_logprobs():
    tokens = [
        tok('{"', []),
        tok("task", []),
        tok('":', []),
        tok(" ", []),
        tok("3", [("3", 0.5), ("4", 0.25), ("x", 0.2), ("5", 0.05)]),
        tok(', "', []),
        tok("response", []),
        tok('":', []),
        tok(" ", []),
        tok("2", [("2", 0.6), ("1", 0.4)]),
        tok("}", []),
    ]
    task, response = expected_scores(tokens)
    assert task == pytest.approx((3 * 0.5 + 4 * 0.25 + 5 * 0.05) / 0.8)
    assert response == pytest.approx(2 * 0.6 + 1 * 0.4)
    assert expected_scores([tok("hello", [])]) is None


def test_rank_to_scale():
    assert rank_to_scale([10.0, 30.0, 20.0]) == [1.0, 5.0, 3.0]
    assert rank_to_scale([1.0, 1.0, 2.0, None]) == [2.0, 2.0, 5.0, None]
    assert rank_to_scale([7.0]) == [3.0]


def test_cost_and_token_counts():
    assert Price(0.03, 0.06).cost(1000, 500) == pytest.approx(0.06)
    assert count_tokens("abcdefgh", "no-such-model") == 2  # approximate without a tiktoken encoding


def test_cache_roundtrip_and_keys(tmp_path):
    ex = Example("a", "q", "", "out")
    ident = {"scorer": "openai", "model": "m", "prompt": PROMPT_VERSION}
    key = cache_key(ident, ex)
    assert key == cache_key(ident, Example("other-id", "q", "", "out"))  # content, not id
    assert key != cache_key({**ident, "model": "m2"}, ex)
    assert key != cache_key(ident, Example("a", "q", "", "out!"))
    cache = ScoreCache(tmp_path / "s.sqlite")
    cache.put(Result(key, "a", "openai", "ok", 3.5, {"task": 3}, "raw", None, 0.01, 10, 2, 1))
    again = ScoreCache(tmp_path / "s.sqlite").get_many([key, "missing"])
    assert list(again) == [key] and again[key].score == 3.5 and again[key].detail == {"task": 3}


def jobs(n, cost=0.0):
    return [Job(f"k{i}", Example(str(i), "q", "", f"o{i}"), 10, cost) for i in range(n)]


def test_engine_caches_every_result_and_skips_them_on_rerun(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")
    calls = []

    async def call(job):
        calls.append(job.key)
        await asyncio.sleep(0.001 * (int(job.example.id) % 3))
        ok = job.example.id != "3"
        return Result(
            job.key, job.example.id, "t", "ok" if ok else "failed", 2.0 if ok else None, requests=1
        )

    stats = run_jobs(jobs(8), call, cache, concurrency=3)
    assert sorted(calls) == sorted(f"k{i}" for i in range(8)) and stats.requests == 8
    assert stats.failed == 1 and stats.raw_scores() == [2.0, 2.0, 2.0, None, 2.0, 2.0, 2.0, 2.0]
    calls.clear()
    again = run_jobs(jobs(10), call, cache, concurrency=3)
    assert sorted(calls) == ["k8", "k9"] and again.cached == 8 and again.requests == 2


def test_budget_stops_cleanly_and_resumably(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")

    async def call(job):
        return Result(job.key, job.example.id, "t", "ok", 1.0, cost_usd=0.08, requests=1)

    # each call is estimated at $0.10 and costs $0.08: a third would risk $0.26 > $0.25
    with pytest.raises(RequestsAborted, match=r"budget of \$0.25 reached.*2 of 6 items") as err:
        run_jobs(jobs(6, cost=0.1), call, cache, concurrency=1, budget_usd=0.25)
    assert err.value.stats.cost_usd == pytest.approx(0.16) and cache.count() == 2
    stats = run_jobs(jobs(6, cost=0.1), call, cache, concurrency=1, budget_usd=1.0)
    assert stats.cached == 2 and stats.done == 4


def test_endpoint_failure_stops_the_run_keeping_what_was_answered(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")

    async def call(job):
        if int(job.example.id) >= 2:
            raise EndpointError("APIConnectionError: connection refused")
        return Result(job.key, job.example.id, "t", "ok", 1.0, requests=1)

    with pytest.raises(RequestsAborted, match="the endpoint failed: APIConnectionError") as err:
        run_jobs(jobs(5), call, cache, concurrency=1)
    assert "Rerun the same command" in str(err.value) and cache.count() == 2


def test_budget_reservations():
    b = Budget(1.0)
    assert b.try_reserve(0.6) and not b.try_reserve(0.6)
    b.settle(0.6, 0.1)
    assert b.try_reserve(0.6) and b.spent_usd == pytest.approx(0.1)
    assert Budget(None).try_reserve(1e9)


def test_agreement(tmp_path, capsys):
    a = {"1": 1.0, "2": 2.0, "3": 4.0, "4": 5.0}
    b = {"1": 1.2, "2": 1.9, "3": 3.6, "4": 3.0, "5": 2.0}
    r = agreement(a, b, [1.5, 3.5])
    assert r["n_common"] == 4 and r["only_in_b"] == 1
    assert r["stage_confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert r["same_stage"] == 0.75 and r["spearman"] == pytest.approx(0.8)
    fa, fb = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    fa.write_text(
        "".join(
            json.dumps({"id": k, "score": str(v), "data": ["q", "a"]}) + "\n" for k, v in a.items()
        )
    )
    fb.write_text(
        "".join(
            json.dumps({"id": k, "instruction": "q", "output": "a", "score": v}) + "\n"
            for k, v in b.items()
        )
    )
    assert agree_main([str(fa), str(fb), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stage_confusion"] == r["stage_confusion"]


def test_rate_limiter_holds_requests_and_tokens_to_the_window():
    import time

    async def times(limiter, tokens, n):
        t0, out = time.monotonic(), []
        for _ in range(n):
            await limiter.acquire(tokens)
            out.append(time.monotonic() - t0)
        return out

    # 2 requests per 0.3 s window: the 3rd and 4th wait for the window to move
    t = asyncio.run(times(RateLimiter(2, None, window=0.3), 1, 4))
    assert t[1] < 0.1 and t[2] >= 0.29 and t[3] >= 0.29
    # 100 tokens per window, 60 per request: every request after the first waits
    t = asyncio.run(times(RateLimiter(None, 100, window=0.2), 60, 3))
    assert t[0] < 0.05 and t[1] >= 0.19 and t[2] >= 0.39
    t = asyncio.run(times(RateLimiter(None, None), 10**9, 50))  # no limits: no waiting
    assert t[-1] < 0.05


def test_retry_failed_asks_again_only_for_failures(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")
    calls = []

    async def flaky(job):
        calls.append(job.key)
        ok = job.example.id != "1" or len(calls) > 3
        return Result(
            job.key, job.example.id, "t", "ok" if ok else "failed", 1.0 if ok else None, requests=1
        )

    assert run_jobs(jobs(3), flaky, cache, concurrency=1).failed == 1
    assert run_jobs(jobs(3), flaky, cache, concurrency=1).requests == 0  # failures stay cached
    again = run_jobs(jobs(3), flaky, cache, concurrency=1, retry_failed=True)
    assert again.requests == 1 and again.failed == 0 and calls[-1] == "k1"


def test_engine_runs_inside_a_running_event_loop(tmp_path):
    async def call(job):
        return Result(job.key, job.example.id, "t", "ok", 1.0, requests=1)

    async def notebook_cell():
        return run_jobs(jobs(2), call, ScoreCache(tmp_path / "s.sqlite"))

    assert asyncio.run(notebook_cell()).done == 2


def test_redact_removes_the_configured_key_and_anything_key_shaped():
    text = (
        "401: Incorrect API key provided: my-own-key-123. Authorization: Bearer abc.DEF-123456 "
        "also sk-proj-AbC_123-xyz; the words sk-tiny, the bearer of news"
    )
    out = redact(text, ["my-own-key-123", None])
    assert out == (
        "401: Incorrect API key provided: [REDACTED]. Authorization: Bearer [REDACTED] "
        "also [REDACTED]; the words sk-tiny, the bearer of news"
    )
    assert redact(None) is None and redact("no secret here") == "no secret here"


def test_every_request_reserves_its_worst_case_retries_included(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")
    sent = []

    async def call(job):  # three attempts per item, each through the job's account
        for _ in range(3):
            await job.account.begin()
            sent.append(job.key)
            job.account.end(0.1)  # each costs its worst case
        return Result(job.key, job.example.id, "t", "failed", None)

    with pytest.raises(RequestsAborted, match=r"budget of \$0.25 reached") as err:
        run_jobs(jobs(3, cost=0.1), call, cache, concurrency=2, budget_usd=0.25)
    stats = err.value.stats
    assert len(sent) == 2 and stats.requests == 2 and stats.cost_usd == pytest.approx(0.2)
    assert cache.count() == 0  # no item got all its attempts: none is recorded


def test_an_unexpected_error_stops_the_run_cleanly_and_keeps_the_rest(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")

    async def call(job):
        if job.example.id == "2":
            raise AttributeError("'str' object has no attribute 'usage' (sk-abcdefgh1234)")
        return Result(job.key, job.example.id, "t", "ok", 1.0, requests=1)

    with pytest.raises(RequestsAborted, match="unexpected AttributeError") as err:
        run_jobs(jobs(5), call, cache, concurrency=1)
    assert cache.count() == 2 and "sk-abcdefgh1234" not in str(err.value)


def test_the_engine_redacts_what_it_caches(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")

    async def call(job):
        return Result(
            job.key, "0", "t", "failed", None, {}, '["key=k-12345"]', "400: k-12345", requests=1
        )

    run_jobs(jobs(1), call, cache, secrets=["k-12345"])
    (r,) = cache.get_many(["k0"]).values()
    assert (r.raw, r.error) == ('["key=[REDACTED]"]', "400: [REDACTED]")


def test_a_summary_that_does_not_add_up_is_refused():
    from phasedsft.score.report import SummaryMismatch, check_summary

    good = {
        "examples": 5,
        "ok": 2,
        "failed": 2,
        "not_scored": 1,
        "counts": {"3.0": 2, "failed": 2},
        "cached": 3,
        "answered_this_run": 1,
        "failed_this_run": 0,
    }
    check_summary(good)
    for bad in ({"failed": 0}, {"cached": 4}, {"failed_this_run": 3}, {"counts": {"3.0": 2}}):
        with pytest.raises(SummaryMismatch, match="does not add up"):
            check_summary({**good, **bad})


@pytest.mark.parametrize(
    "reply",
    [
        '{"task": 10, "response": 30}',
        '{"task": 4.9, "response": 5.9}',
        '{"task": 3, "response": 10}',
        "task: 0, response: 3",
        "task = 5.5; response = 2",
    ],
)
def test_out_of_range_ratings_are_parse_failures_never_scores(reply):
    from phasedsft.score.prompt import ParseError, parse_reply

    with pytest.raises(ParseError, match="out of 1-5"):
        parse_reply(reply)


@pytest.mark.parametrize(
    "reply", ['{"task": true, "response": 3}', '{"task": 2, "response": false}']
)
def test_boolean_ratings_are_parse_failures(reply):
    """json's true is no rating (float(True) would read it as 1)."""
    with pytest.raises(ParseError):
        parse_reply(reply)
