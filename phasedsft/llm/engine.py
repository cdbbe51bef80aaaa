"""Run many keyed requests through a bounded pool, with rate limits, a budget and a cache.

``run_jobs`` keeps up to ``concurrency`` calls in flight (a worker pool, so one slow call
never stalls the others) and writes every result to the cache the moment it arrives. Each
job gets an :class:`Account`: every HTTP request the call sends (parse retries and retries
of failed requests included) first waits on the requests- and tokens-per-minute limits and
reserves its worst-case cost against the budget, then settles what it cost. The run stops
cleanly, and resumably, when the next request would pass the budget, the endpoint stops
answering or a call fails unexpectedly (:class:`RequestsAborted` names what happened).

Processes that share one cache file never ask the same item twice: before a job's call
starts, the worker claims its key in the cache (:meth:`ScoreCache.try_claim`). An item that
another live process has in flight is *busy*: it is set aside and looked at again every
``claim_poll_s`` seconds until that process has recorded it (then its result is used, as
a cached one) or let it go (then this process asks it). A call that fails or is cut off
releases its claim; the result's ``put`` ends it otherwise.

Every text the endpoint sent back (error messages, raw replies) goes through :func:`redact`
before it is cached, logged or shown: the configured API key and anything shaped like a
bearer token or an ``sk-...`` key never reach a file.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from phasedsft.llm.cache import Result, ScoreCache

log = logging.getLogger(__name__)


REDACTED = "[REDACTED]"
_TOKEN_SHAPES = (
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{12,}"),  # an Authorization header's value
    re.compile(r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{6,}"),  # OpenAI-style secret keys (sk-, sk-proj-)
)


def redact(text: str | None, secrets: Iterable[str | None] = ()) -> str | None:
    """``text`` without the ``secrets`` (the configured API keys) and anything key-shaped.

    The one function every error text and raw reply goes through before it is cached,
    written, logged or shown: a server that echoes the key it was sent (in a 401 or 400
    body, or a 200 error page) must not put the key on disk.
    """
    if not text:
        return text
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    text = _TOKEN_SHAPES[0].sub("Bearer " + REDACTED, text)
    return _TOKEN_SHAPES[1].sub(REDACTED, text)


class EndpointError(RuntimeError):
    """The endpoint itself failed (unreachable, auth, retries exhausted): stop the run."""


class OutOfBudget(RuntimeError):
    """The next request's worst-case cost would take this run's spend past ``budget_usd``."""


class RequestsAborted(RuntimeError):
    """A scoring or judging run stopped before the end; everything answered so far is cached."""

    def __init__(self, message: str, stats: RunStats):
        super().__init__(message)
        self.stats = stats


@dataclass
class Job:
    key: str
    example: Any  # what the call sends: an Example (scorers) or a Pair (judges)
    est_tokens: int = 0  # one request's estimated tokens (prompt + max_tokens), for pacing
    est_cost: float = 0.0  # one request's worst-case cost (a call may send several)
    account: Account | None = field(default=None, repr=False, compare=False)  # set by run_jobs


@dataclass
class RunStats:
    total: int = 0
    cached: int = 0
    done: int = 0
    failed: int = 0
    requests: int = 0  # every HTTP request sent: retries and rejected ones included
    cost_usd: float = 0.0  # this run's spend, also on items left unanswered
    tokens_in: int = 0
    tokens_out: int = 0
    waited_for: int = 0  # of ``cached``: recorded meanwhile by another process (or a repeat here)
    stopped: str | None = None
    seconds: float = 0.0
    results: dict[str, Result] = field(default_factory=dict)
    ordered: list[Result | None] = field(default_factory=list)  # aligned with the examples

    def summary(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k not in ("results", "ordered")}

    def raw_scores(self) -> list[float | None]:
        return [r.score if r is not None and r.status == "ok" else None for r in self.ordered]


class RateLimiter:
    """Sliding one-minute window over requests and tokens (either limit may be None)."""

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        window: float = 60.0,
    ):
        self.rpm, self.tpm, self.span = requests_per_minute, tokens_per_minute, window
        self.window: collections.deque[tuple[float, int]] = collections.deque()
        self.lock = asyncio.Lock()

    async def acquire(self, tokens: int) -> None:
        if self.rpm is None and self.tpm is None:
            return
        async with self.lock:
            while True:
                now = time.monotonic()
                while self.window and now - self.window[0][0] >= self.span:
                    self.window.popleft()
                used = sum(t for _, t in self.window)
                ok_r = self.rpm is None or len(self.window) < self.rpm
                ok_t = self.tpm is None or used + tokens <= self.tpm or not self.window
                if ok_r and ok_t:
                    self.window.append((now, tokens))
                    return
                await asyncio.sleep(max(0.01, self.span - (now - self.window[0][0])))


@dataclass
class Budget:
    """A hard cap on what this run spends; each call's estimate is reserved before it is sent."""

    limit_usd: float | None = None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0

    def try_reserve(self, est: float) -> bool:
        if self.limit_usd is not None and self.spent_usd + self.reserved_usd + est > self.limit_usd:
            return False
        self.reserved_usd += est
        return True

    def settle(self, est: float, actual: float) -> None:
        self.reserved_usd -= est
        self.spent_usd += actual


@dataclass
class Account:
    """One job's requests in this run: each reserves its worst case before it is sent.

    A call sends every HTTP request between :meth:`begin` (waits on the rate limits;
    :class:`OutOfBudget` when the budget cannot hold one more worst case) and :meth:`end`
    (what the request cost: its usage, or the worst case when that is unknown). The
    engine reserves the first request before the call starts (``prepaid``), so a job that
    cannot afford even one request is never started.
    """

    budget: Budget
    limiter: RateLimiter
    est_cost: float
    est_tokens: int
    requests: int = 0  # begun
    ended: int = 0
    spent: float = 0.0
    prepaid: bool = False

    def prepay(self) -> bool:
        self.prepaid = self.budget.try_reserve(self.est_cost)
        return self.prepaid

    async def begin(self) -> None:
        if self.prepaid:
            self.prepaid = False
        else:
            if not self.budget.try_reserve(self.est_cost):
                raise OutOfBudget(budget_message(self.budget, self.est_cost))
            await self.limiter.acquire(self.est_tokens)
        self.requests += 1

    def end(self, cost: float) -> None:
        self.ended += 1
        self.spent += cost
        self.budget.settle(self.est_cost, cost)

    def close(self, fallback_cost: float = 0.0) -> None:
        """Release what is still reserved once the call is over.

        A request begun and never ended is charged its worst case (it may have been
        billed). A call that sent nothing through the account (a custom call) is charged
        ``fallback_cost``, what its result says it cost, against the prepaid reservation.
        """
        while self.ended < self.requests:
            self.end(self.est_cost)
        if self.prepaid:
            self.prepaid = False
            cost = fallback_cost if self.requests == 0 else 0.0
            self.spent += cost
            self.budget.settle(self.est_cost, cost)


def budget_message(budget: Budget, est: float) -> str:
    return (
        f"budget of ${budget.limit_usd:.2f} reached (${budget.spent_usd:.4f} spent, "
        f"${budget.reserved_usd:.4f} reserved for requests in flight; the next request "
        f"may cost up to ${est:.4f})"
    )


CLAIM_POLL_S = 1.0  # how often an item another process has in flight is looked at again


async def _run(
    jobs: Sequence[Job],
    call: Callable[[Job], Awaitable[Result]],
    cache: ScoreCache,
    concurrency: int,
    limiter: RateLimiter,
    budget: Budget,
    stats: RunStats,
    desc: str,
    secrets: Sequence[str | None],
    since: float | None,
    claim_poll_s: float,
) -> None:
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    busy: list[Job] = []  # in flight in another process: looked at again later
    asking: set[str] = set()  # keys in flight here (a claim is re-entrant for its owner)
    bar = tqdm(total=stats.total, initial=stats.cached, desc=desc, unit="ex", dynamic_ncols=True)
    stop: list[str] = []

    def halt(reason: str) -> None:
        if not stop:
            stop.append(reason)

    async def next_job() -> Job | None:
        """The next job to look at; once only busy ones are left, wait for them."""
        while not stop:
            try:
                return queue.get_nowait()
            except asyncio.QueueEmpty:
                if not busy:
                    return None
            await asyncio.sleep(claim_poll_s)
            while busy:
                queue.put_nowait(busy.pop(0))
        return None

    async def worker() -> None:
        while not stop:
            job = await next_job()
            if job is None:
                return
            if job.key in asking:  # the same item twice in this run: wait for the first
                busy.append(job)
                continue
            claim = cache.try_claim(job.key, since=since)
            if claim.state == "busy":
                busy.append(job)
                continue
            if claim.state == "done":  # another process recorded it meanwhile: as if cached
                assert claim.result is not None
                stats.results[job.key] = claim.result
                stats.cached += 1
                stats.waited_for += 1
                bar.update(1)
                continue
            account = Account(budget, limiter, job.est_cost, job.est_tokens)
            if not account.prepay():
                cache.release([job.key])
                halt(budget_message(budget, job.est_cost))
                return
            job.account = account
            asking.add(job.key)
            try:
                await limiter.acquire(job.est_tokens)
                result = await call(job)
            except BaseException as e:  # the item stays unanswered (not cached): a rerun asks again
                cache.release([job.key])  # another process may ask it now
                account.close()
                if not isinstance(e, Exception):  # Ctrl-C, cancellation: not ours to swallow
                    raise
                stats.requests += account.requests
                stats.cost_usd += account.spent
                if isinstance(e, OutOfBudget):
                    halt(str(e))
                elif isinstance(e, EndpointError):
                    halt(f"the endpoint failed: {redact(str(e), secrets)}")
                else:  # a bug or an unforeseen reply: stop cleanly, keep the answers in flight
                    halt(f"unexpected {type(e).__name__}: {redact(str(e), secrets)}")
                return
            finally:
                job.account = None
                asking.discard(job.key)
            account.close(result.cost_usd)
            if account.requests:  # the account is the record of what was sent and spent
                result.requests, result.cost_usd = account.requests, account.spent
            result.error = redact(result.error, secrets)
            result.raw = redact(result.raw, secrets)
            cache.put(result)
            stats.results[job.key] = result
            stats.done += 1
            stats.failed += result.status != "ok"
            stats.requests += result.requests
            stats.cost_usd += result.cost_usd
            stats.tokens_in += result.tokens_in
            stats.tokens_out += result.tokens_out
            bar.update(1)
            bar.set_postfix(spent=f"${stats.cost_usd:.4f}", failed=stats.failed, refresh=False)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        bar.close()
    if stop:
        stats.stopped = stop[0]


def _run_coroutine(coro: Any) -> None:
    """``asyncio.run``, also from code that already runs an event loop (a notebook cell)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def run_jobs(
    jobs: Sequence[Job],
    call: Callable[[Job], Awaitable[Result]],
    cache: ScoreCache,
    *,
    concurrency: int = 16,
    requests_per_minute: float | None = None,
    tokens_per_minute: float | None = None,
    budget_usd: float | None = None,
    retry_failed: bool = False,
    desc: str = "score",
    secrets: Sequence[str | None] = (),
    claim_poll_s: float = CLAIM_POLL_S,
    task: str = "scoring",
) -> RunStats:
    """Answer every job not already in the cache (or cached as failed, with ``retry_failed``).

    ``secrets`` (the API key in use) are redacted, with anything key-shaped, from every error
    text and raw reply before it is cached or shown (:func:`redact`). An item another
    process sharing the cache has in flight, or a repeat of a key in flight here, is waited
    for, not asked again (see the module doc).
    """
    started = time.time()
    cached = cache.get_many(j.key for j in jobs)
    if retry_failed:
        cached = {k: r for k, r in cached.items() if r.status == "ok"}
    todo = [j for j in jobs if j.key not in cached]
    stats = RunStats(total=len(jobs), cached=len(jobs) - len(todo), results=dict(cached))
    limiter = RateLimiter(requests_per_minute, tokens_per_minute)
    budget = Budget(budget_usd)
    since = started if retry_failed else None  # failures recorded before this run are asked again
    if todo:
        _run_coroutine(
            _run(
                todo,
                call,
                cache,
                concurrency,
                limiter,
                budget,
                stats,
                desc,
                secrets,
                since,
                claim_poll_s,
            )
        )
    stats.seconds = round(time.time() - started, 2)
    stats.ordered = [stats.results.get(j.key) for j in jobs]
    if stats.stopped:
        left = stats.total - stats.cached - stats.done
        raise RequestsAborted(
            f"{task} stopped: {stats.stopped}. {stats.cached + stats.done} of {stats.total} items are "
            f"answered and cached ({stats.done} in this run, ${stats.cost_usd:.4f}); {left} remain. "
            "Rerun the same command to continue from here.",
            stats,
        )
    return stats
