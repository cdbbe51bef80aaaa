"""What every OpenAI-compatible caller shares: the client, errors, pacing, budget and cache.

The difficulty scorer (:class:`~phasedsft.scoring.api.OpenAIScorer`) and the pairwise
judge (:class:`~phasedsft.evaluation.judging.OpenAIJudge`) both subclass
:class:`ChatEndpoint`, so they make the client the same way (the key from the environment
only), classify failures the same way (the endpoint is down -> stop the run cleanly and
resumably; this one request was rejected -> record it as failed) and run their requests
through the same engine (worker pool, rate limits, budget reservation, a cache write per
result, progress bar).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from phasedsft.records import DataError
from phasedsft.scoring.cache import Result, ScoreCache
from phasedsft.scoring.cost import Price
from phasedsft.scoring.engine import EndpointError, Job, RunStats, run_jobs


class Rejected(RuntimeError):
    """The endpoint answered but refused this one request (e.g. HTTP 400): record it, go on."""


@dataclass
class ChatEndpoint:
    model: str = "gpt-4-0613"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 24
    seed: int | None = 0
    parse_retries: int = 2  # ask again when a reply cannot be parsed
    structured: bool = False  # send a JSON schema as response_format (servers that support it)
    concurrency: int = 16
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_retries: int = 5  # the openai client's own retries on 429 / 5xx / timeouts, with backoff
    timeout: float = 120.0
    price: Price = field(default_factory=Price)
    budget_usd: float | None = None
    retry_failed: bool = False  # ask again for items cached as failed (unparseable, rejected)
    name: str = "openai"

    def __post_init__(self) -> None:
        if not isinstance(self.price, Price):  # a mapping from the config
            self.price = Price(**{str(k): float(v) for k, v in dict(self.price).items()})

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
        return AsyncOpenAI(
            base_url=self.base_url, api_key=key, max_retries=self.max_retries, timeout=self.timeout
        )

    def attempt_temperature(self, attempt: int) -> float:
        # a retry at temperature 0 would repeat the same reply
        return self.temperature if attempt == 0 or self.temperature > 0 else 0.7

    def attempt_seed(self, attempt: int) -> int | None:
        return None if self.seed is None else self.seed + attempt

    async def complete(self, client: Any, messages: list[dict[str, str]], **kwargs: Any) -> Any:
        """One chat completion; :class:`EndpointError` stops the run, :class:`Rejected` skips the item."""
        import openai

        fatal = (
            openai.APIConnectionError,  # includes timeouts, after the client's retries
            openai.AuthenticationError,
            openai.PermissionDeniedError,
            openai.NotFoundError,
            openai.RateLimitError,
            openai.InternalServerError,
        )
        try:
            return await client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=self.max_tokens, **kwargs
            )
        except fatal as e:
            raise EndpointError(f"{type(e).__name__}: {e}") from e
        except openai.APIStatusError as e:  # e.g. 400: this item cannot be scored
            raise Rejected(f"request rejected: {e}") from e

    def failed(
        self,
        job: Job,
        item_id: str,
        raws: Sequence[str | None],
        reason: str,
        requests: int,
        tokens_in: int,
        tokens_out: int,
    ) -> Result:
        return Result(
            job.key,
            item_id,
            self.name,
            "failed",
            None,
            {},
            json.dumps(list(raws)),
            reason,
            self.price.cost(tokens_in, tokens_out),
            tokens_in,
            tokens_out,
            requests,
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
        )
