"""Money: every paid reply is kept, a budget too small for one item says so first, and the
cost figures add up from tokens and prices.

The replies come from the fault-injecting proxy (tests/faultproxy.py) alone, with no server
behind it: ``good`` is a well-formed completion holding a valid rating, ``empty`` one that
cannot be parsed (both report usage = (100, 10) tokens), ``garbage`` a 200 that is not JSON
(no usage: charged its worst case), ``drop`` a connection closed without a reply (resent,
charged its worst case), ``echo_401`` a refused key (the endpoint stops the run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from helpers import run_command

from phasedsft.evaluate.judges import OpenAIJudge, Pair
from phasedsft.llm.cache import Result, ScoreCache
from phasedsft.llm.cost import Price
from phasedsft.llm.engine import BudgetTooSmall, RequestsAborted
from phasedsft.records import Example
from phasedsft.score.api import OpenAIScorer
from phasedsft.score.context import ScoreContext

NOWHERE = "http://127.0.0.1:9/v1"  # the proxy's own replies never reach an upstream
GOOD = '{"task": 3, "response": 4}'
PRICE = Price(input_per_1k=1.0, output_per_1k=2.0)  # a reply of (100, 10) tokens: $0.12
REPLY_COST = PRICE.cost(100, 10)


def proxy(plan, **kw) -> FaultProxy:
    """``good`` in a plan is the proxy's ``out_of_range`` mode answering a valid rating."""
    modes = ["out_of_range" if m == "good" else m for m in plan]
    then = "out_of_range" if kw.pop("then", "good") == "good" else "garbage"
    return FaultProxy(NOWHERE, modes, then=then, out_of_range_content=GOOD, **kw)


def examples(n: int) -> list[Example]:
    return [Example(str(i), f"Add {i} and {i}.", "", str(2 * i)) for i in range(n)]


def scorer(url: str, **kw) -> OpenAIScorer:
    settings = {
        "model": "m",
        "base_url": url,
        "max_tokens": 10,
        "parse_retries": 1,
        "max_retries": 1,
        "concurrency": 1,
        "price": PRICE,
        **kw,
    }
    return OpenAIScorer(**settings)


def spy_on(s: OpenAIScorer) -> list[dict]:
    """Record the options of every attempt the scorer sends."""
    sent: list[dict] = []
    ask = s.ask

    async def recorded(client, job, messages, tally, **kwargs):
        sent.append({k: kwargs[k] for k in ("temperature", "seed")})
        return await ask(client, job, messages, tally, **kwargs)

    s.ask = recorded  # type: ignore[method-assign]
    return sent


def adds_up(stats) -> None:
    """This run's cost is its tokens x prices plus the worst case of the unmetered requests."""
    from_tokens = PRICE.cost(stats.tokens_in, stats.tokens_out)
    assert stats.cost_usd == pytest.approx(from_tokens + stats.cost_unmetered_usd, abs=1e-12)


# ------------------------------------------------------------------ paid replies are kept


@pytest.mark.parametrize("stopped_by", ["budget", "endpoint"])
def test_a_paid_reply_is_kept_and_the_rerun_continues_after_it(tmp_path, stopped_by):
    cache = ScoreCache(tmp_path / "s.sqlite")
    ctx = ScoreContext(cache=cache)
    est = scorer(NOWHERE).jobs(examples(1))[0].est_cost
    if stopped_by == "budget":
        # the item reserves its worst case (2 attempts); the first request gets no reply and
        # is resent (charged its worst case), the resend's reply cannot be parsed: the parse
        # retry then cannot reserve its worst case, and the run stops with that reply paid
        plan, budget = ["drop", "empty"], 2 * est + REPLY_COST / 2
    else:  # the reply cannot be parsed, and the retry finds the key refused
        plan, budget = ["empty", "echo_401"], None
    with proxy(plan) as p:
        s = scorer(p.base_url, budget_usd=budget, max_retries=1 if stopped_by == "budget" else 0)
        with pytest.raises(RequestsAborted, match="paid replies of 1 of them are kept") as err:
            s.run(examples(1), ctx)
    first = err.value.stats
    assert first.requests == p.counts.total() == 2 and first.unfinished == 1
    assert (first.tokens_in, first.tokens_out) == (100, 10)  # the paid reply is counted
    adds_up(first)
    assert cache.count() == 0  # not an answer...
    (kept,) = cache.partials([s.jobs(examples(1))[0].key]).values()
    assert json.loads(kept.raw or "[]") == [""] and kept.detail == {"attempts": 1}
    assert (kept.requests, kept.tokens_in, kept.cost_usd) == (2, 100, first.cost_usd)

    with proxy([]) as p2:  # ...until the rerun continues after it
        s2 = scorer(p2.base_url, budget_usd=None if budget is None else 10 * est)
        sent = spy_on(s2)
        stats = s2.run(examples(1), ctx)
    assert sent == [{"temperature": 0.7, "seed": 1}]  # the retry, not the first request again
    assert p2.counts.total() == stats.requests == 1 and stats.raw_scores() == [3.5]
    (r,) = stats.results.values()
    assert r.requests == 3 and r.tokens_in == 200 and json.loads(r.raw or "[]") == ["", GOOD]
    assert r.cost_usd == pytest.approx(first.cost_usd + REPLY_COST)
    assert (stats.tokens_in, stats.cost_usd) == (100, pytest.approx(REPLY_COST))  # this run's
    adds_up(stats)
    assert cache.partials([r.key]) == {}


def test_a_budget_that_cannot_finish_one_item_says_so_before_sending(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")
    est = scorer(NOWHERE, parse_retries=2).jobs(examples(3))[0].est_cost
    with proxy([]) as p:
        s = scorer(p.base_url, parse_retries=2, budget_usd=round(2.5 * est, 4))
        with pytest.raises(BudgetTooSmall) as err:
            s.run(examples(3), ScoreContext(cache=cache))
    assert p.counts.total() == 0
    message = str(err.value)
    assert message.startswith(f"scorer.budget_usd={round(2.5 * est, 4):g} cannot finish even one")
    assert "3 requests" in message and "nothing was sent" in message
    with proxy([]) as p, pytest.raises(BudgetTooSmall, match=r"^judge\.budget_usd=0\.001 "):
        judge = OpenAIJudge(model="m", base_url=p.base_url, budget_usd=0.001, price=PRICE)
        judge.judge_pairs([Pair("p", "Say hi.", "hi", "hello")], cache)
    assert p.counts.total() == 0


def test_a_budget_that_finishes_one_item_finishes_it_and_stops_before_the_next(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")
    est = scorer(NOWHERE, parse_retries=2).jobs(examples(3))[0].est_cost
    with proxy(["empty"], then="good") as p:
        s = scorer(p.base_url, parse_retries=2, budget_usd=3 * est + 1e-6)
        with pytest.raises(RequestsAborted, match=r"budget of \$[0-9.]+ reached") as err:
            s.run(examples(3), ScoreContext(cache=cache))
    stats = err.value.stats
    # item 0: an unparseable reply, then its retry: answered; item 1 cannot reserve its
    # worst case next to what item 0 spent, so it never starts
    assert stats.done == 1 and stats.unfinished == 0 and stats.requests == p.counts.total() == 2
    assert stats.cost_usd <= 3 * est + 1e-6
    adds_up(stats)


def test_cost_adds_up_from_tokens_and_prices_with_unmetered_requests(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")
    est = scorer(NOWHERE, parse_retries=2).jobs(examples(4))[0].est_cost
    # item 0: garbage (no usage), good; 1: empty, good; 2: good; 3: garbage x3 (failed)
    plan = ["garbage", "good", "empty", "good", "good", "garbage", "garbage", "garbage"]
    with proxy(plan) as p:
        stats = scorer(p.base_url, parse_retries=2).run(examples(4), ScoreContext(cache=cache))
    assert (stats.done, stats.failed, stats.requests) == (4, 1, 8) == (4, 1, p.counts.total())
    assert (stats.tokens_in, stats.tokens_out) == (400, 40)  # the four replies with usage
    assert stats.cost_unmetered_usd == pytest.approx(4 * est)  # the four garbage replies
    adds_up(stats)
    assert stats.cost_usd == pytest.approx(
        sum(r.cost_usd for r in stats.results.values()), abs=1e-12
    )
    for r in stats.results.values():  # each item's record adds up too
        assert r.cost_usd == pytest.approx(PRICE.cost(r.tokens_in, r.tokens_out) + r.unmetered_usd)


# ------------------------------------------------------------------ failures caused by settings


def test_a_failure_no_request_answered_is_never_the_items_answer(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")
    ctx = ScoreContext(cache=cache)
    # parse_retries=-1 is refused by the config check; called directly, the scorer sends
    # nothing: the run stops, and nothing is cached as the item's answer
    with proxy([]) as p:
        with pytest.raises(RequestsAborted, match="failed without a request sent"):
            scorer(p.base_url, parse_retries=-1).run(examples(2), ctx)
        assert p.counts.total() == 0 and cache.count() == 0
        # a cache an older version poisoned that way: those failures are asked again
        s = scorer(p.base_url)
        for job in s.jobs(examples(2)):
            cache.put(Result(job.key, job.example.id, "openai", "failed", None, {}, "[]", "x"))
        stats = s.run(examples(2), ctx)
    assert stats.raw_scores() == [3.5, 3.5] and p.counts.total() == 2 and stats.cached == 0


# ------------------------------------------------------------------ score.py, end to end


def score_cmd(root: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "score.py",
        "scorer=openai",
        f"scorer.base_url={url}",
        "scorer.model=m",
        "scorer.max_tokens=10",
        "scorer.concurrency=1",
        "scorer.parse_retries=2",
        "scorer.price.input_per_1k=1.0",
        "scorer.price.output_per_1k=2.0",
        "dataset.source.n=4",
        "dataset.eval=null",
        f"run.root={root / 'score'}",
        f"run.cache_dir={root / 'cache'}",
        *extra,
    ]


@pytest.mark.integration  # subprocesses: seconds each
def test_score_py_summary_cost_adds_up_and_a_small_budget_stops_first(tmp_path):
    plan = ["garbage", "good", "empty", "good", "good", "good"]
    with proxy(plan) as p:
        out = run_command(score_cmd(tmp_path, p.base_url), no_traceback=True, timeout=300)
    (run_dir,) = (tmp_path / "score").iterdir()
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["ok"] == 4 and s["requests"] == p.counts.total() == 6
    assert (s["tokens_in"], s["tokens_out"]) == (500, 50)
    assert s["cost_from_tokens_usd"] == pytest.approx((500 * 1.0 + 50 * 2.0) / 1000)
    assert s["cost_usd"] == pytest.approx(s["cost_from_tokens_usd"] + s["cost_unmetered_usd"])
    assert s["cost_unmetered_usd"] > 0 and "worst case of requests" in out.stdout

    with proxy([]) as p:
        out = run_command(
            score_cmd(tmp_path, p.base_url, "scorer.budget_usd=0.01", "dataset.source.n=5"),
            check=False,
            no_traceback=True,
            timeout=300,
        )
    assert out.returncode == 2, out.stderr[-3000:]
    assert "error: scorer.budget_usd=0.01 cannot finish even one item" in out.stderr
    assert p.counts.total() == 0
