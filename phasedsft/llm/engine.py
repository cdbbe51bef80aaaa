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

**Money.** A job starts only when the budget holds its whole worst case (``max_requests``
requests, 1 + parse_retries, at ``est_cost`` each), so a started item can finish; a run whose
budget cannot finish even one item says so before it sends anything (:class:`BudgetTooSmall`).
**Every paid reply is kept**: when an item's call stops before its answer (the budget, the
endpoint, an interruption), what it got back is recorded as the item's *partial* record
(:meth:`ScoreCache.put_partial`: raw replies, attempts, tokens, cost), counted in this run's
figures, and the next run continues the item from there instead of sending its first request
again. Each request's cost is its usage times the prices; a request whose reply reports no
usage (or never came) is charged its worst case, counted apart as ``cost_unmetered_usd``, so
``cost_usd == price(tokens_in, tokens_out) + cost_unmetered_usd``.

A failure recorded without a single request sent says nothing about the item (a setting made
the call give up before asking): it is never cached as the item's answer, and one cached by an
older version is asked again. A cache write that finds the disk full stops the run with
:class:`~phasedsft.nospace.NoSpace` (the answer in hand is still written, into the space the
cache keeps in reserve: :class:`~phasedsft.llm.cache.ScoreCache`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from tqdm.auto import tqdm

from phasedsft.llm.cache import Result, ScoreCache, is_answer
from phasedsft.nospace import NoSpace
from phasedsft.records import UserError

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


class BudgetTooSmall(UserError):
    """The budget cannot pay for even one item's worst case: said before anything is sent."""


class RequestsAborted(RuntimeError):
    """A scoring or judging run stopped before the end; everything answered so far is cached."""

    def __init__(self, message: str, stats: RunStats):
        super().__init__(message)
        self.stats = stats


@dataclass
class Tally:
    """What one item's requests sent and got back: every raw reply, the attempts made, the
    tokens the replies reported, and the reason the last attempt failed (for the record when
    every attempt fails). ``attempts`` and ``raws`` carry over from a kept partial record
    (:meth:`resumed`); tokens and requests are this run's."""

    raws: list[str | None] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    requests: int = 0  # HTTP requests sent in this run (resends included)
    reason: str = ""
    attempts: int = 0  # replies asked for (parse retries), earlier runs' included
    item: str | None = None  # the item's id, for its partial record
    source: str = ""  # the scorer's or judge's name, for its partial record

    @classmethod
    def resumed(cls, partial: Result | None, item: str | None = None, source: str = "") -> Tally:
        """A tally that continues ``partial`` (an earlier run's kept replies), or a new one."""
        tally = cls(item=item, source=source)
        if partial is not None:
            tally.raws = list(raws_of(partial))
            tally.attempts = int(partial.detail.get("attempts", len(tally.raws)))
            tally.reason = partial.error or ""
        return tally


def raws_of(r: Result) -> list[str | None]:
    """The raw replies a failed or partial record keeps (a JSON list)."""
    try:
        raws = json.loads(r.raw) if r.raw else []
    except ValueError:
        return [r.raw]
    return raws if isinstance(raws, list) else [r.raw]


@dataclass
class Job:
    key: str
    example: Any  # what the call sends: an Example (scorers) or a Pair (judges)
    est_tokens: int = 0  # one request's estimated tokens (prompt + max_tokens), for pacing
    est_cost: float = 0.0  # one request's worst-case cost (a call may send several)
    max_requests: int = 1  # the most requests the call sends in the worst case (1 + parse_retries)
    account: Account | None = field(default=None, repr=False, compare=False)  # set by run_jobs
    tally: Tally | None = field(default=None, repr=False, compare=False)  # set by the call
    resume: Result | None = field(default=None, repr=False, compare=False)  # a kept partial

    def remaining(self) -> int:
        """Requests left in the worst case: ``max_requests`` less a kept partial's attempts."""
        done = int(self.resume.detail.get("attempts", 0)) if self.resume is not None else 0
        return max(1, self.max_requests - done)

    def worst_case(self) -> float:
        return self.est_cost * self.remaining()


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
    # of cost_usd: requests whose reply reported no usage (or never came), at their worst case
    cost_unmetered_usd: float = 0.0
    unfinished: int = 0  # items stopped before their answer: their paid replies kept (partial)
    waited_for: int = 0  # of ``cached``: recorded meanwhile by another process (or a repeat here)
    stopped: str | None = None
    disk_full: NoSpace | None = None  # the run stopped because the cache's disk is full
    seconds: float = 0.0
    results: dict[str, Result] = field(default_factory=dict)
    # aligned with the examples: a list, or (computed scorers) :class:`ComputedResults`
    ordered: Sequence[Result | None] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        skip = ("results", "ordered", "disk_full")
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def raw_scores(self) -> list[float | None]:
        if isinstance(self.ordered, ComputedResults):
            return list(self.ordered.scores)
        return [r.score if r is not None and r.status == "ok" else None for r in self.ordered]


class ComputedResults(Sequence[Result]):
    """The results of a scorer computed at once (no request, nothing cached), one per example,
    made when read: what a list of ``Result(id, id, scorer, "ok" | "failed", score)`` holds,
    without an object (and its ``detail`` dict) per example kept alive."""

    __slots__ = ("ids", "scorer", "scores")

    def __init__(self, ids: Sequence[str], scorer: str, scores: Sequence[float | None]):
        if len(ids) != len(scores):
            raise ValueError(f"{len(scores)} scores for {len(ids)} examples")
        self.ids, self.scorer, self.scores = ids, scorer, scores

    def __len__(self) -> int:
        return len(self.scores)

    def _at(self, i: int) -> Result:
        s = self.scores[i]
        return Result(self.ids[i], self.ids[i], self.scorer, "ok" if s is not None else "failed", s)

    @overload
    def __getitem__(self, i: int) -> Result: ...
    @overload
    def __getitem__(self, i: slice) -> list[Result]: ...
    def __getitem__(self, i: int | slice) -> Result | list[Result]:
        if isinstance(i, slice):
            return [self._at(k) for k in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(i)
        return self._at(i % n if n else i)

    def __iter__(self) -> Iterator[Result]:
        return (self._at(k) for k in range(len(self)))


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

    The engine reserves the job's whole worst case before its call starts (:meth:`prepay`:
    ``remaining`` requests), so a started item can always finish its parse retries; a job the
    budget cannot hold whole is never started. A call sends every HTTP request between
    :meth:`begin` (waits on the rate limits; uses a prepaid reservation, or reserves one more
    worst case for a resend beyond them: :class:`OutOfBudget` when the budget cannot hold it)
    and :meth:`end` (what the request cost: its usage, or the worst case when that is unknown,
    ``metered=False``).
    """

    budget: Budget
    limiter: RateLimiter
    est_cost: float
    est_tokens: int
    requests: int = 0  # begun
    ended: int = 0
    spent: float = 0.0
    unmetered: float = 0.0  # of spent: requests whose cost was not reported
    slots: int = 0  # prepaid reservations not used yet
    paced: bool = False  # the engine waited on the rate limits for the first request

    def prepay(self, requests: int = 1) -> bool:
        if not self.budget.try_reserve(self.est_cost * requests):
            return False
        self.slots = requests
        return True

    @property
    def prepaid(self) -> bool:
        return self.slots > 0

    async def begin(self) -> None:
        if self.slots:
            self.slots -= 1
        elif not self.budget.try_reserve(self.est_cost):
            raise OutOfBudget(budget_message(self.budget, self.est_cost))
        if self.paced:
            self.paced = False
        else:
            await self.limiter.acquire(self.est_tokens)
        self.requests += 1

    def end(self, cost: float, metered: bool = True) -> None:
        self.ended += 1
        self.spent += cost
        if not metered:
            self.unmetered += cost
        self.budget.settle(self.est_cost, cost)

    def close(self, fallback_cost: float = 0.0) -> None:
        """Release what is still reserved once the call is over.

        A request begun and never ended is charged its worst case (it may have been
        billed). A call that sent nothing through the account (a custom call) is charged
        ``fallback_cost``, what its result says it cost, against its reservation.
        """
        while self.ended < self.requests:
            self.end(self.est_cost, metered=False)
        if self.slots:
            cost = fallback_cost if self.requests == 0 else 0.0
            self.spent += cost
            self.budget.settle(self.est_cost * self.slots, cost)
            self.slots = 0


def budget_message(budget: Budget, est: float, requests: int = 1) -> str:
    what = (
        "the next request may cost up to"
        if requests == 1
        else f"the next item's {requests} requests (1 + parse_retries) may cost up to"
    )
    return (
        f"budget of ${budget.limit_usd:.2f} reached (${budget.spent_usd:.4f} spent, "
        f"${budget.reserved_usd:.4f} reserved for requests in flight; {what} ${est * requests:.4f})"
    )


def check_budget(jobs: Sequence[Job], budget_usd: float | None, option: str) -> None:
    """:class:`BudgetTooSmall` when ``budget_usd`` cannot pay for even one job's worst case:
    every run would stop before finishing an item, so say so before anything is sent."""
    if budget_usd is None or not jobs:
        return
    cheapest = min(jobs, key=lambda j: j.worst_case())
    need = cheapest.worst_case()
    if need <= budget_usd:
        return
    n = cheapest.remaining()
    raise BudgetTooSmall(
        f"{option}={budget_usd:g} cannot finish even one item: the cheapest one's worst case is "
        f"${need:.4f} ({n} request{'s' if n > 1 else ''} of up to ${cheapest.est_cost:.4f} each"
        f"{', 1 + parse_retries' if n > 1 else ''}); nothing was sent. Raise {option} to at "
        f"least {math.ceil(need * 1e4) / 1e4:g}, or lower max_tokens or parse_retries"
    )


def _item_of(job: Job) -> str:
    """An item's id for its partial record: the tally's, the example's, or the key."""
    if job.tally is not None and job.tally.item:
        return job.tally.item
    ex = job.example
    if isinstance(ex, tuple) and len(ex) == 2 and hasattr(ex[0], "id"):
        return f"{ex[0].id}:{ex[1]}" if isinstance(ex[1], str) else str(ex[0].id)
    return str(getattr(ex, "id", job.key))


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
    disk: list[NoSpace] = []  # the disk filled up: the run ends with this error

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

    def count(account: Account, tally: Tally | None) -> None:
        """This run's figures: what this call's requests sent, got and cost."""
        stats.requests += account.requests
        stats.cost_usd += account.spent
        stats.cost_unmetered_usd += account.unmetered
        if tally is not None:
            stats.tokens_in += tally.tokens_in
            stats.tokens_out += tally.tokens_out

    def keep_partial(job: Job, account: Account) -> None:
        """The paid replies of an item stopped before its answer: recorded, so a rerun
        continues from them (and counted here). Nothing to keep when nothing was sent."""
        tally, before = job.tally, job.resume
        if tally is None or not (account.requests or tally.raws):
            return
        if not account.requests and before is not None:
            return  # nothing new since the kept record
        partial = Result(
            job.key,
            _item_of(job),
            tally.source,
            "partial",
            None,
            {"attempts": tally.attempts},
            redact(json.dumps(tally.raws), secrets),
            redact(tally.reason, secrets) or None,
            account.spent + (before.cost_usd if before else 0.0),
            tally.tokens_in + (before.tokens_in if before else 0),
            tally.tokens_out + (before.tokens_out if before else 0),
            account.requests + (before.requests if before else 0),
            unmetered_usd=account.unmetered + (before.unmetered_usd if before else 0.0),
        )
        try:
            cache.put_partial(partial)
        except NoSpace as e:
            halt_disk(e)
            return
        stats.unfinished += 1

    def halt_disk(e: NoSpace) -> None:
        if not disk:
            disk.append(e)
        halt(str(e))

    async def worker() -> None:
        while not stop:
            job = await next_job()
            if job is None:
                return
            if job.key in asking:  # the same item twice in this run: wait for the first
                busy.append(job)
                continue
            try:
                claim = cache.try_claim(job.key, since=since)
            except NoSpace as e:  # nothing sent yet: nothing lost
                halt_disk(e)
                return
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
            if not account.prepay(job.remaining()):
                cache.release([job.key])
                halt(budget_message(budget, job.est_cost, job.remaining()))
                return
            job.account = account
            asking.add(job.key)
            try:
                await limiter.acquire(job.est_tokens)
                account.paced = True
                result = await call(job)
            except BaseException as e:  # unanswered (not cached): its paid replies are kept
                account.close()
                count(account, job.tally)
                keep_partial(job, account)
                cache.release([job.key])  # another process may ask it now
                if not isinstance(e, Exception):  # Ctrl-C, cancellation: not ours to swallow
                    raise
                if isinstance(e, OutOfBudget):
                    halt(str(e))
                elif isinstance(e, EndpointError):
                    halt(f"the endpoint failed: {redact(str(e), secrets)}")
                elif isinstance(e, NoSpace):
                    halt_disk(e)
                else:  # a bug or an unforeseen reply: stop cleanly, keep the answers in flight
                    halt(f"unexpected {type(e).__name__}: {redact(str(e), secrets)}")
                return
            finally:
                job.account = None
                asking.discard(job.key)
            account.close(result.cost_usd)
            tally, before = job.tally, job.resume
            if account.requests:  # the account is the record of what was sent and spent
                result.requests, result.cost_usd = account.requests, account.spent
                result.unmetered_usd = account.unmetered
            if tally is not None:  # the tokens the replies reported
                result.tokens_in, result.tokens_out = tally.tokens_in, tally.tokens_out
            this_run = (result.requests, result.cost_usd, result.unmetered_usd)
            this_tokens = (result.tokens_in, result.tokens_out)
            if before is not None:  # the item's record holds what every run spent on it
                result.requests += before.requests
                result.cost_usd += before.cost_usd
                result.unmetered_usd += before.unmetered_usd
                result.tokens_in += before.tokens_in
                result.tokens_out += before.tokens_out
            if result.status != "ok" and result.requests == 0:
                # given up before asking (a setting, not the item): never the item's answer
                cache.release([job.key])
                halt(
                    f"item {result.example_id} failed without a request sent "
                    f"({redact(result.error, secrets)}): not recorded"
                )
                return
            result.error = redact(result.error, secrets)
            result.raw = redact(result.raw, secrets)
            stats.requests += this_run[0]
            stats.cost_usd += this_run[1]
            stats.cost_unmetered_usd += this_run[2]
            stats.tokens_in += this_tokens[0]
            stats.tokens_out += this_tokens[1]
            try:
                cache.put(result)
            except NoSpace as e:  # even the reserve is gone: this answer is lost
                halt_disk(e)
                return
            if cache.disk_full is not None:  # written into the reserve: stop asking
                halt_disk(cache.disk_full)
            stats.results[job.key] = result
            stats.done += 1
            stats.failed += result.status != "ok"
            bar.update(1)
            bar.set_postfix(spent=f"${stats.cost_usd:.4f}", failed=stats.failed, refresh=False)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        bar.close()
    if stop:
        stats.stopped = stop[0]
    if disk:
        stats.disk_full = disk[0]


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
    budget_option: str = "budget_usd",
) -> RunStats:
    """Answer every job not already in the cache (or cached as failed, with ``retry_failed``).

    ``secrets`` (the API key in use) are redacted, with anything key-shaped, from every error
    text and raw reply before it is cached or shown (:func:`redact`). An item another
    process sharing the cache has in flight, or a repeat of a key in flight here, is waited
    for, not asked again (see the module doc). An item with a kept partial record continues
    from it (``job.resume``). :class:`BudgetTooSmall` (``budget_option`` names the setting)
    before anything is sent when the budget cannot finish one item; :class:`NoSpace` when the
    cache's disk filled up (every answer received is in the cache); :class:`RequestsAborted`
    when the run stopped for another reason.
    """
    started = time.time()
    cached = {k: r for k, r in cache.get_many(j.key for j in jobs).items() if is_answer(r)}
    if retry_failed:
        cached = {k: r for k, r in cached.items() if r.status == "ok"}
    todo = [j for j in jobs if j.key not in cached]
    partials = cache.partials(j.key for j in todo)
    for job in todo:
        job.resume = partials.get(job.key)
    check_budget(todo, budget_usd, budget_option)
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
        kept = (
            f" (the paid replies of {stats.unfinished} of them are kept: they continue from there)"
            if stats.unfinished
            else ""
        )
        done = (
            f"{stats.cached + stats.done} of {stats.total} items are answered and cached "
            f"({stats.done} in this run, ${stats.cost_usd:.4f}); {left} remain{kept}."
        )
        if stats.disk_full is not None:
            raise NoSpace(f"{stats.disk_full} {done}", stats=stats)
        raise RequestsAborted(
            f"{task} stopped: {stats.stopped}. {done} Rerun the same command to continue from here.",
            stats,
        )
    return stats
