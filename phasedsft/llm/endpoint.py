"""What every OpenAI-compatible caller shares: the client, errors, pacing, budget and cache.

The difficulty scorer (:class:`~phasedsft.score.api.OpenAIScorer`) and the pairwise
judge (:class:`~phasedsft.evaluate.judges.OpenAIJudge`) both subclass
:class:`ChatEndpoint`, so they make the client the same way (the key from the environment
only), classify failures the same way (the endpoint is down -> stop the run cleanly and
resumably; this one request was rejected -> record it as failed; a 200 reply that is not a
chat completion -> one failed attempt, retried like an unparseable one) and run their
requests through the same engine (worker pool, rate limits, a budget reservation per
request, a cache write per result, progress bar). Every error text is redacted
(:func:`~phasedsft.llm.engine.redact`) before it is kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from phasedsft.llm.cache import Result, ScoreCache
from phasedsft.llm.cost import Price
from phasedsft.llm.engine import EndpointError, Job, RunStats, Tally, redact, run_jobs
from phasedsft.ranges import ranged
from phasedsft.records import DataError

RETRY_STATUS = (408, 409, 429)  # and 5xx: retried with backoff, as the openai client does
MAX_RETRY_AFTER_S = 60.0


class Rejected(RuntimeError):
    """The endpoint answered but refused this one request (e.g. HTTP 400): record it, go on."""


class BadReply(RuntimeError):
    """A 200 reply that is not a chat completion (not JSON, an HTML page, no choices).

    One failed attempt of the item, like an unparseable reply: retried (``parse_retries``),
    then recorded with ``raw`` (the body, cut to :data:`RAW_CHARS`) and the reason.
    """

    def __init__(self, reason: str, raw: str):
        super().__init__(reason)
        self.raw = raw


RAW_CHARS = 2000


class _Retry(RuntimeError):
    """This request may succeed if sent again (429, 5xx, no reply)."""

    def __init__(self, text: str, headers: Any = None):
        super().__init__(text)
        self.headers = headers


def _never_sent(e: BaseException) -> bool:
    """The connection was refused: the server never saw the request (so never billed it)."""
    return type(e.__cause__).__name__ in ("ConnectError", "ConnectTimeout")


def usage_of(resp: Any) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` of a reply, or None when it reports none."""
    usage = getattr(resp, "usage", None)
    t_in = getattr(usage, "prompt_tokens", None)
    t_out = getattr(usage, "completion_tokens", None)
    if isinstance(t_in, int) and isinstance(t_out, int) and t_in >= 0 and t_out >= 0:
        return t_in, t_out
    return None


def completion_problem(resp: Any) -> str | None:
    """Why a parsed 200 reply is not a usable chat completion, or None when it is one."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        return "the reply is not a chat completion (no choices)"
    for choice in choices:
        message = getattr(choice, "message", None)
        if message is None:
            return "the reply is not a chat completion (a choice without a message)"
        content = getattr(message, "content", None)
        if content is not None and not isinstance(content, str):
            return "the reply is not a chat completion (a message without text)"
    return None


def retry_delay(retry: int, headers: Any = None) -> float:
    """The server's Retry-After (up to a minute), else exponential backoff with jitter."""
    try:
        after = float((headers or {}).get("retry-after", ""))
    except (TypeError, ValueError):
        after = math.nan
    if math.isfinite(after) and 0 < after <= MAX_RETRY_AFTER_S:
        return after
    return min(0.5 * 2.0**retry, 8.0) * (1 - 0.25 * random.random())


@dataclass
class ChatEndpoint:
    task: ClassVar[str] = "scoring"  # what a stopped run says stopped ("judging" for judges)
    model: str = "gpt-4-0613"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = ranged(0.0, ge=0, le=2, why="sampling temperature; 0: greedy")
    max_tokens: int = ranged(24, ge=1, why="tokens a reply may take")
    seed: int | None = ranged(0, ge=0, why="the first request's seed; null: none sent")
    # ask again when a reply cannot be parsed
    parse_retries: int = ranged(2, ge=0, why="requests after an unparseable reply")
    structured: bool = False  # send a JSON schema as response_format (servers that support it)
    concurrency: int = ranged(16, ge=1, why="requests in flight at once")
    requests_per_minute: float | None = ranged(None, gt=0, why="null: no limit")
    tokens_per_minute: float | None = ranged(None, gt=0, why="null: no limit")
    # retries of a request on 429 / 5xx / timeouts / no reply, with backoff
    max_retries: int = ranged(5, ge=0, why="resends of a request that got no usable answer")
    timeout: float = ranged(120.0, gt=0, why="seconds to wait for a reply")
    price: Price = field(default_factory=Price)
    budget_usd: float | None = ranged(None, gt=0, why="this run's spending cap in USD; null: none")
    retry_failed: bool = False  # ask again for items cached as failed (unparseable, rejected)
    name: str = "openai"

    def __post_init__(self) -> None:
        if not isinstance(self.price, Price):  # a mapping from the config
            self.price = Price(**{str(k): float(v) for k, v in dict(self.price).items()})

    def secrets(self) -> tuple[str, ...]:
        """What :func:`~phasedsft.llm.engine.redact` removes besides key-shaped text."""
        key = os.environ.get(self.api_key_env)
        return (key,) if key else ()

    def redact(self, text: str) -> str:
        return redact(text, self.secrets()) or ""

    def client(self, role: str) -> Any:
        from openai import AsyncOpenAI

        key = os.environ.get(self.api_key_env)
        if not key:
            if self.base_url is None:
                raise DataError(
                    f"{role}={self.name} needs an API key in the environment variable "
                    f"{self.api_key_env} (export it; it is never written to any file)"
                )
            key = "unused"  # local OpenAI-compatible servers accept any key
        for noisy in ("httpx", "httpx2"):  # one INFO line per request would drown the progress bar
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # retries are ours (:meth:`complete`): each one is paced, reserved and counted
        return AsyncOpenAI(base_url=self.base_url, api_key=key, max_retries=0, timeout=self.timeout)

    def attempt_temperature(self, attempt: int) -> float:
        # a retry at temperature 0 would repeat the same reply
        return self.temperature if attempt == 0 or self.temperature > 0 else 0.7

    def attempt_seed(self, attempt: int) -> int | None:
        return None if self.seed is None else self.seed + attempt

    async def complete(
        self, client: Any, job: Job, messages: list[dict[str, str]], **kwargs: Any
    ) -> Any:
        """One chat completion for ``job``; every HTTP request goes through the job's account.

        Retries up to ``max_retries`` times on 408 / 409 / 429 / 5xx and when no reply came
        (timeout, refused or dropped connection), then :class:`EndpointError` stops the run;
        401 / 403 / 404 stop it at once. Any other error status raises :class:`Rejected`
        (record this item as failed, go on); a 200 reply that is not a chat completion,
        :class:`BadReply` (a failed attempt). Error texts come back redacted.
        """
        for retry in range(self.max_retries + 1):
            try:
                return await self._request(client, job, messages, kwargs)
            except _Retry as e:
                if retry == self.max_retries:
                    raise EndpointError(str(e)) from None
                await asyncio.sleep(retry_delay(retry, e.headers))
        raise AssertionError("unreachable")

    async def _request(
        self, client: Any, job: Job, messages: list[dict[str, str]], kwargs: dict[str, Any]
    ) -> Any:
        """One HTTP request: reserve its worst case, send it, settle what it cost."""
        import openai

        account, tally = job.account, job.tally
        if account is not None:
            await account.begin()  # OutOfBudget: the engine stops the run cleanly
        cost = job.est_cost  # unless the reply says what it cost, assume the worst
        usage: tuple[int, int] | None = None
        try:
            try:
                resp = await client.chat.completions.create(
                    model=self.model, messages=messages, max_tokens=self.max_tokens, **kwargs
                )
            except openai.APIStatusError as e:
                cost = 0.0  # an error status is not billed
                text = self.redact(f"{type(e).__name__}: {e}")
                if e.status_code in RETRY_STATUS or e.status_code >= 500:
                    raise _Retry(text, e.response.headers) from None
                if isinstance(
                    e,
                    (
                        openai.AuthenticationError,
                        openai.PermissionDeniedError,
                        openai.NotFoundError,
                    ),
                ):
                    raise EndpointError(text) from None
                raise Rejected(f"request rejected: {text}") from None
            except openai.APIConnectionError as e:  # timeouts included
                if _never_sent(e):
                    cost = 0.0  # else the server may have answered, and billed, it
                raise _Retry(self.redact(f"{type(e).__name__}: {e}")) from None
            except ValueError as e:  # a 200 with a JSON content type whose body is not JSON
                body = getattr(e, "doc", None) or ""
                raise BadReply(
                    f"the reply is not JSON ({type(e).__name__}: {e})",
                    self.redact(str(body))[:RAW_CHARS],
                ) from None
            if isinstance(resp, str):  # the client hands back any non-JSON body (an HTML page)
                raise BadReply(
                    "the reply is not a chat completion (a non-JSON content type)",
                    self.redact(resp)[:RAW_CHARS],
                )
            usage = usage_of(resp)  # a reply that is not a completion may still report it
            if usage is not None:
                cost = self.price.cost(*usage)
            problem = completion_problem(resp)
            if problem:
                dump = getattr(resp, "model_dump_json", None)
                body = dump() if callable(dump) else repr(resp)
                raise BadReply(problem, self.redact(body)[:RAW_CHARS])
            return resp
        finally:
            if tally is not None:  # every request sent, and the tokens its reply reported
                tally.requests += 1
                if usage is not None:
                    tally.tokens_in += usage[0]
                    tally.tokens_out += usage[1]
            if account is not None:
                account.end(cost, metered=usage is not None or cost == 0)

    async def ask(
        self, client: Any, job: Job, messages: list[dict[str, str]], tally: Tally, **kwargs: Any
    ) -> Any | None:
        """One attempt of ``job``: the completion, or ``None`` when the reply was not a chat
        completion (a failed attempt, its raw text kept). :class:`Rejected` propagates: the
        item is then recorded as failed. Every request sent and the tokens its reply reported
        are added to ``tally`` (the job's: the engine keeps its replies if the call stops)."""
        job.tally = tally
        try:
            resp = await self.complete(client, job, messages, **kwargs)
        except BadReply as e:
            tally.attempts += 1
            tally.raws.append(e.raw)
            tally.reason = str(e)
            return None
        tally.attempts += 1
        return resp

    async def ask_until(
        self,
        client: Any,
        job: Job,
        messages: list[dict[str, str]],
        tally: Tally,
        options: Callable[[int], dict[str, Any]],
        done: Callable[[Any], bool],
    ) -> None:
        """Ask ``job`` again until ``done(reply)`` says the replies so far answer it, or its
        ``1 + parse_retries`` attempts are spent (those of an earlier run included: ``tally``);
        ``options(attempt)`` are the attempt's request options. A reply that is not a chat
        completion is a spent attempt; :class:`Rejected` propagates (the item failed)."""
        for attempt in range(tally.attempts, 1 + self.parse_retries):
            resp = await self.ask(client, job, messages, tally, **options(attempt))
            if resp is not None and done(resp):
                return

    def tally_for(self, job: Job, item_id: str) -> Tally:
        """The item's tally: it continues the replies an earlier run kept (``job.resume``)."""
        job.tally = Tally.resumed(job.resume, item_id, self.name)
        return job.tally

    def failed(self, job: Job, item_id: str, tally: Tally, reason: str) -> Result:
        """The item's failure, with every raw reply and what its requests cost."""
        detail = {"attempts": tally.attempts}
        return self._result(
            job, item_id, tally, "failed", None, detail, json.dumps(tally.raws), reason
        )

    def succeeded(
        self, job: Job, item_id: str, tally: Tally, score: float, detail: dict[str, Any], raw: str
    ) -> Result:
        return self._result(job, item_id, tally, "ok", score, detail, raw, None)

    def _result(
        self,
        job: Job,
        item_id: str,
        tally: Tally,
        status: str,
        score: float | None,
        detail: dict[str, Any],
        raw: str | None,
        error: str | None,
    ) -> Result:
        return Result(
            job.key,
            item_id,
            self.name,
            status,
            score,
            detail,
            raw,
            error,
            self.price.cost(tally.tokens_in, tally.tokens_out),
            tally.tokens_in,
            tally.tokens_out,
            tally.requests,
        )

    def run_requests(
        self,
        jobs: Sequence[Job],
        call: Callable[[Job], Awaitable[Result]],
        cache: ScoreCache,
        desc: str,
    ) -> RunStats:
        return run_jobs(
            jobs,
            call,
            cache,
            concurrency=self.concurrency,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            budget_usd=self.budget_usd,
            retry_failed=self.retry_failed,
            desc=desc,
            secrets=self.secrets(),
            task=self.task,
            budget_option=f"{ROLES.get(self.task, 'scorer')}.budget_usd",
        )


ROLES = {"scoring": "scorer", "judging": "judge", "generation": "generator"}  # config groups
