"""The OpenAI-compatible LLM scorer (GPT-4 by default; any endpoint through ``base_url``).

The API key is read from the environment variable named by ``api_key_env`` when the
client is made; it is never stored in the config, the cache or any output.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from phasedsft.llm.cache import Result, cache_key
from phasedsft.llm.cost import count_tokens, prompt_tokens, tiktoken_knows
from phasedsft.llm.endpoint import ChatEndpoint, Rejected
from phasedsft.llm.engine import Job, RunStats
from phasedsft.ranges import ranged
from phasedsft.records import DataError, Example
from phasedsft.score.base import ScorerBase
from phasedsft.score.context import ScoreContext
from phasedsft.score.prompt import (
    PROMPT_VERSION,
    ParseError,
    combine,
    expected_scores,
    messages,
    parse_reply,
    spread,
)

log = logging.getLogger(__name__)


@dataclass
class OpenAIScorer(ChatEndpoint, ScorerBase):
    """Ask an LLM for the two difficulty ratings; average ``samples`` draws (and/or use logprobs)."""

    samples: int = ranged(1, ge=1, why="draws averaged per item")
    logprobs: bool = False
    score_from: str = "samples"  # or "logprobs": the probability-weighted expected score
    combine: str = "mean"
    uses_model: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score_from not in ("samples", "logprobs"):
            raise DataError(
                f"scorer.score_from must be 'samples' or 'logprobs', got {self.score_from!r}"
            )
        if self.score_from == "logprobs" and not self.logprobs:
            raise DataError("scorer.score_from=logprobs needs scorer.logprobs=true")
        combine(self.combine, 1, 1)  # fail early on an unknown rule
        if self.samples < 1:
            raise DataError("scorer.samples must be at least 1")

    # --- identity: what the cache key depends on (never the key or the URL's credentials)
    def identity(self) -> dict[str, Any]:
        return {
            "scorer": "openai",
            "model": self.model,
            "prompt": PROMPT_VERSION,
            "samples": self.samples,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "logprobs": self.logprobs,
            "score_from": self.score_from,
            "combine": self.combine,
            "structured": self.structured,
        }

    def jobs(self, examples: list[Example]) -> list[Job]:
        """One job per example: its tokens (for pacing) and one request's worst-case cost."""
        ident = self.identity()
        tokens_out = self.max_tokens * self.samples
        out = []
        for ex in examples:
            msgs = messages(ex)
            worst_in = prompt_tokens(msgs, self.model, bound=True)
            out.append(
                Job(
                    cache_key(ident, ex),
                    ex,
                    prompt_tokens(msgs, self.model) + tokens_out,
                    self.price.cost(worst_in, tokens_out),
                    max_requests=1 + self.parse_retries,
                )
            )
        return out

    def estimate(self, examples: list[Example], ctx: ScoreContext) -> dict[str, Any]:
        """What the run will send and cost; the upper bound counts every parse retry."""
        jobs = self.jobs(examples)
        cached = ctx.cache.get_many(j.key for j in jobs)
        todo = [j for j in jobs if j.key not in cached]
        tokens_out = self.max_tokens * self.samples
        tokens_in = sum(prompt_tokens(messages(j.example), self.model) for j in todo)
        attempts = 1 + self.parse_retries
        counted = "tiktoken counts" if tiktoken_knows(self.model) else "UTF-8 bytes"
        return {
            "model": self.model,
            "examples": len(jobs),
            "cached": len(jobs) - len(todo),
            "to_request": len(todo),
            "est_input_tokens": tokens_in,
            "max_output_tokens": len(todo) * tokens_out,
            "est_cost_usd": round(self.price.cost(tokens_in, len(todo) * tokens_out), 4),
            "max_requests": len(todo) * attempts,
            "est_cost_usd_upper_bound": math.ceil(sum(j.est_cost for j in todo) * attempts * 1e4)
            / 1e4,
            "upper_bound": (
                f"every item asked {attempts} times (1 + parse_retries) at max_tokens, input "
                f"tokens as {counted}; a request that gets no reply and is sent again is charged "
                "too, beyond this bound. budget_usd reserves each request's worst case before "
                "it is sent, retries included"
            ),
            "token_counts": count_tokens.method(self.model),  # type: ignore[attr-defined]
            "price": asdict(self.price),
        }

    def run(self, examples: list[Example], ctx: ScoreContext) -> RunStats:
        client = self.client("scorer")
        extra: dict[str, Any] = {}
        if self.logprobs:
            extra.update(logprobs=True, top_logprobs=5)
        if self.structured:
            extra["response_format"] = {"type": "json_schema", "json_schema": SCHEMA}

        async def call(job: Job) -> Result:
            item = job.example.id
            # an item an earlier run stopped (budget, endpoint) continues after its kept replies
            tally = self.tally_for(job, item)
            parsed: list[tuple[float, float]] = []
            expected = None

            def options(attempt: int) -> dict[str, Any]:
                temperature, seed = self.attempt_temperature(attempt), self.attempt_seed(attempt)
                return {"n": self.samples, "temperature": temperature, "seed": seed, **extra}

            def done(resp: Any) -> bool:
                """Every sample parsed that parses; answered once one did (and logprobs came,
                where the score is read from them)."""
                nonlocal expected
                for choice in resp.choices:
                    tally.raws.append(choice.message.content)
                    try:
                        parsed.append(parse_reply(choice.message.content))
                    except ParseError as e:
                        tally.reason = str(e)
                logprobs = getattr(resp.choices[0], "logprobs", None)
                if self.logprobs and logprobs is not None:
                    expected = expected_scores(getattr(logprobs, "content", None) or [])
                return bool(parsed) and (self.score_from == "samples" or expected is not None)

            try:
                await self.ask_until(client, job, messages(job.example), tally, options, done)
            except Rejected as e:
                return self.failed(job, item, tally, str(e))
            if not parsed:
                return self.failed(job, item, tally, f"unparseable reply: {tally.reason}")
            values = [combine(self.combine, t, r) for t, r in parsed]
            detail: dict[str, Any] = {
                "task": statistics.mean(t for t, _ in parsed),
                "response": statistics.mean(r for _, r in parsed),
                "samples": values,
                "n_valid": len(parsed),
                "n_requested": self.samples * tally.attempts,
                "spread": spread(values),
            }
            score = statistics.mean(values)
            if expected is not None:
                detail["expected"] = {"task": expected[0], "response": expected[1]}
                if self.score_from == "logprobs":
                    score = combine(self.combine, *expected)
            elif self.score_from == "logprobs":
                return self.failed(job, item, tally, "the server returned no usable logprobs")
            return self.succeeded(job, item, tally, score, detail, json.dumps(tally.raws))

        return self.run_requests(self.jobs(examples), call, ctx.cache, f"score ({self.model})")

    def finalize(self, raw: list[float | None]) -> list[float | None]:
        return raw

    def score(self, examples: list[Example], ctx: ScoreContext) -> list[float | None]:
        return self.run(examples, ctx).raw_scores()


SCHEMA = {
    "name": "difficulty",
    "schema": {
        "type": "object",
        "properties": {
            "task": {"type": "integer", "minimum": 1, "maximum": 5},
            "response": {"type": "integer", "minimum": 1, "maximum": 5},
        },
        "required": ["task", "response"],
        "additionalProperties": False,
    },
}
