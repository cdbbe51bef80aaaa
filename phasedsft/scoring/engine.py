"""Run many keyed requests through a bounded pool, with rate limits, a budget and a cache.

``run_jobs`` keeps up to ``concurrency`` calls in flight (a worker pool, so one slow call
never stalls the others), waits on requests- and tokens-per-minute limits, reserves each
call's estimated cost against the budget before sending it, and writes every result to
the cache the moment it arrives. It stops cleanly, and resumably, when the budget is
reached or the endpoint stops answering (:class:`ScoringAborted` names what happened).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from phasedsft.scoring.cache import Result, ScoreCache

log = logging.getLogger(__name__)


class EndpointError(RuntimeError):
    """The endpoint itself failed (unreachable, auth, retries exhausted): stop the run."""


class ScoringAborted(RuntimeError):
    """The run stopped before the end; everything answered so far is in the cache."""

    def __init__(self, message: str, stats: RunStats):
        super().__init__(message)
        self.stats = stats


@dataclass
class Job:
    key: str
    example: Any  # what the call sends: an Example (scorers) or a Pair (judges)
    est_tokens: int = 0
    est_cost: float = 0.0


@dataclass
class RunStats:
    total: int = 0
    cached: int = 0
    done: int = 0
    failed: int = 0
    requests: int = 0
    cost_usd: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
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


async def _run(
    jobs: Sequence[Job],
    call: Callable[[Job], Awaitable[Result]],
    cache: ScoreCache,
    concurrency: int,
    limiter: RateLimiter,
    budget: Budget,
    stats: RunStats,
    desc: str,
) -> None:
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    bar = tqdm(total=stats.total, initial=stats.cached, desc=desc, unit="ex", dynamic_ncols=True)
    stop: list[str] = []

    async def worker() -> None:
        while not stop:
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if not budget.try_reserve(job.est_cost):
                stop.append(f"budget of ${budget.limit_usd:.2f} reached")
                return
            await limiter.acquire(job.est_tokens)
            try:
                result = await call(job)
            except EndpointError as e:
                budget.settle(job.est_cost, 0.0)
                if not stop:
                    stop.append(f"the endpoint failed: {e}")
                return
            budget.settle(job.est_cost, result.cost_usd)
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
) -> RunStats:
    """Answer every job not already in the cache (or cached as failed, with ``retry_failed``)."""
    started = time.time()
    cached = cache.get_many(j.key for j in jobs)
    if retry_failed:
        cached = {k: r for k, r in cached.items() if r.status == "ok"}
    todo = [j for j in jobs if j.key not in cached]
    stats = RunStats(total=len(jobs), cached=len(jobs) - len(todo), results=dict(cached))
    limiter = RateLimiter(requests_per_minute, tokens_per_minute)
    budget = Budget(budget_usd)
    if todo:
        _run_coroutine(_run(todo, call, cache, concurrency, limiter, budget, stats, desc))
    stats.seconds = round(time.time() - started, 2)
    stats.ordered = [stats.results.get(j.key) for j in jobs]
    if stats.stopped:
        left = stats.total - stats.cached - stats.done
        raise ScoringAborted(
            f"scoring stopped: {stats.stopped}. {stats.cached + stats.done} of {stats.total} examples are "
            f"answered and cached ({stats.done} in this run, ${stats.cost_usd:.4f}); {left} remain. "
            "Rerun the same command to continue from here.",
            stats,
        )
    return stats
