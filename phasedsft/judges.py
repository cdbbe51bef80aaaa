"""Judges: compare two models' answers to the same question, in both orders.

Every judge returns, per item, two *review texts* whose first line holds the two scores in
the order the answers were shown ("8 7"); :mod:`phasedsft.winrate` parses and folds them.
So an LLM judge's reviews, a reference judge's verdicts and reviews users bring from
elsewhere all go through one parser and one folding rule.

- :class:`OpenAIJudge` - any OpenAI-compatible endpoint (GPT-4 as in the paper, a local
  llama.cpp / vLLM server). It shares the scorer's client, cache, budget, pacing, progress
  bar and failure handling (:class:`~phasedsft.scoring.endpoint.ChatEndpoint`).
- :class:`ReferenceJudge` - data with known answers (the graded suite): 1 point for an
  answer equal to the reference after normalising case and white space, else 0. It also
  marks single answers for the in-run accuracy (:meth:`ReferenceJudge.correct`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from phasedsft.io import sha256_json
from phasedsft.records import DataError
from phasedsft.scoring.cache import Result, ScoreCache
from phasedsft.scoring.cost import count_tokens
from phasedsft.scoring.endpoint import ChatEndpoint, Rejected
from phasedsft.scoring.engine import Job, RunStats
from phasedsft.winrate import ParseError, parse_scores

ORDERS = ("ab", "ba")


@dataclass(frozen=True)
class Pair:
    """One test item and the two answers to compare (A = candidate, B = baseline)."""

    id: str
    question: str
    answer_a: str
    answer_b: str
    reference: str = ""
    category: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def shown(self, order: str) -> tuple[str, str]:
        return (self.answer_a, self.answer_b) if order == "ab" else (self.answer_b, self.answer_a)


@dataclass
class Reviews:
    """The judge's raw texts for one pair (``None`` where the judge gave no usable reply)."""

    id: str
    review_ab: str | None
    review_ba: str | None
    errors: list[str] = field(default_factory=list)


@dataclass
class JudgeRun:
    reviews: list[Reviews]
    stats: dict[str, Any]


# ------------------------------------------------------------------ the pairwise prompt

JUDGE_PROMPT_VERSION = "pairwise-v1"
SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
# The general pairwise review prompt of Vicuna / FastChat, as used by AlpaGasus and Phased IFT.
TEMPLATE = (
    "[Question]\n{question}\n\n"
    "[The Start of Assistant 1's Answer]\n{answer_1}\n\n[The End of Assistant 1's Answer]\n\n"
    "[The Start of Assistant 2's Answer]\n{answer_2}\n\n[The End of Assistant 2's Answer]\n\n"
    "[System]\n"
    "We would like to request your feedback on the performance of two AI assistants in response "
    "to the user question displayed above.\n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each "
    "assistant receives an overall score on a scale of 1 to 10, where a higher score indicates "
    "better overall performance.\n"
    "Please first output a single line containing only two values indicating the scores for "
    "Assistant 1 and 2, respectively. The two scores are separated by a space. In the subsequent "
    "line, please provide a comprehensive explanation of your evaluation, avoiding any potential "
    "bias and ensuring that the order in which the responses were presented does not affect your "
    "judgment."
)
JSON_SUFFIX = (
    '\nReply with a JSON object: {"assistant_1": <score>, "assistant_2": <score>, '
    '"explanation": "..."}.'
)
SCHEMA = {
    "name": "pairwise_scores",
    "schema": {
        "type": "object",
        "properties": {
            "assistant_1": {"type": "integer", "minimum": 1, "maximum": 10},
            "assistant_2": {"type": "integer", "minimum": 1, "maximum": 10},
            "explanation": {"type": "string"},
        },
        "required": ["assistant_1", "assistant_2", "explanation"],
        "additionalProperties": False,
    },
}


def judge_messages(pair: Pair, order: str, structured: bool = False) -> list[dict[str, str]]:
    first, second = pair.shown(order)
    user = TEMPLATE.format(question=pair.question, answer_1=first, answer_2=second)
    if structured:
        user += JSON_SUFFIX
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


# ------------------------------------------------------------------ LLM judge


@dataclass
class OpenAIJudge(ChatEndpoint):
    """Score both answers 1-10, once in each order, through an OpenAI-compatible endpoint."""

    max_tokens: int = 512  # the first line holds the scores; the explanation follows
    name: str = "openai"

    def identity(self) -> dict[str, Any]:
        return {
            "judge": "pairwise",
            "model": self.model,
            "prompt": JUDGE_PROMPT_VERSION,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "structured": self.structured,
        }

    def jobs(self, pairs: Sequence[Pair]) -> list[Job]:
        ident = self.identity()
        jobs = []
        for pair in pairs:
            for order in ORDERS:
                first, second = pair.shown(order)
                msgs = judge_messages(pair, order, self.structured)
                tokens_in = sum(count_tokens(m["content"], self.model) for m in msgs) + 8
                key = sha256_json({"judge": ident, "shown": [pair.question, first, second]})
                jobs.append(
                    Job(
                        key,
                        (pair, order),
                        tokens_in + self.max_tokens,
                        self.price.cost(tokens_in, self.max_tokens),
                    )
                )
        return jobs

    def estimate(self, pairs: Sequence[Pair], cache: ScoreCache) -> dict[str, Any]:
        jobs = self.jobs(pairs)
        cached = cache.get_many(j.key for j in jobs)
        todo = [j for j in jobs if j.key not in cached]
        return {
            "model": self.model,
            "requests": len(jobs),
            "cached": len(jobs) - len(todo),
            "to_request": len(todo),
            "est_cost_usd_upper_bound": round(sum(j.est_cost for j in todo), 4),
        }

    def judge_pairs(
        self, pairs: Sequence[Pair], cache: ScoreCache, desc: str = "judge"
    ) -> JudgeRun:
        client = self.client("judge")
        extra: dict[str, Any] = {}
        if self.structured:
            extra["response_format"] = {"type": "json_schema", "json_schema": SCHEMA}

        async def call(job: Job) -> Result:
            pair, order = job.example
            item_id = f"{pair.id}:{order}"
            raws: list[str | None] = []
            tokens_in = tokens_out = requests = 0
            reason = ""
            for attempt in range(1 + self.parse_retries):
                try:
                    resp = await self.complete(
                        client,
                        judge_messages(pair, order, self.structured),
                        temperature=self.attempt_temperature(attempt),
                        seed=self.attempt_seed(attempt),
                        **extra,
                    )
                except Rejected as e:
                    return self.failed(job, item_id, raws, str(e), requests, tokens_in, tokens_out)
                requests += 1
                if resp.usage:
                    tokens_in += resp.usage.prompt_tokens
                    tokens_out += resp.usage.completion_tokens
                text = resp.choices[0].message.content if resp.choices else None
                raws.append(text)
                try:
                    first, second = parse_scores(text)
                except ParseError as e:
                    reason = str(e)
                    continue
                return Result(
                    job.key,
                    item_id,
                    self.name,
                    "ok",
                    first - second,
                    {"scores": [first, second], "attempts": len(raws)},
                    text,
                    None,
                    self.price.cost(tokens_in, tokens_out),
                    tokens_in,
                    tokens_out,
                    requests,
                )
            return self.failed(
                job, item_id, raws, f"unparseable review: {reason}", requests, tokens_in, tokens_out
            )

        jobs = self.jobs(pairs)
        stats = self.run_requests(jobs, call, cache, f"{desc} ({self.model})")
        return JudgeRun(reviews_from(pairs, stats), stats.summary())


def reviews_from(pairs: Sequence[Pair], stats: RunStats) -> list[Reviews]:
    """Both orders' texts per pair; a failed request keeps its last raw text (counted unparsed)."""
    out = []
    for i, pair in enumerate(pairs):
        texts: list[str | None] = []
        errors: list[str] = []
        for j in range(len(ORDERS)):
            r = stats.ordered[2 * i + j]
            if r is None:
                texts.append(None)
                errors.append(f"{ORDERS[j]}: not judged")
            elif r.status == "ok":
                texts.append(r.raw)
            else:
                raws = json.loads(r.raw) if r.raw else []
                texts.append(raws[-1] if raws else None)
                errors.append(f"{ORDERS[j]}: {r.error}")
        out.append(Reviews(pair.id, texts[0], texts[1], errors))
    return out


# ------------------------------------------------------------------ reference judge


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@dataclass
class ReferenceJudge:
    """Exact match against the reference answer, after normalisation (known-answer data)."""

    name: str = "reference"
    first_line_only: bool = True

    def correct(self, answer: str, reference: str) -> bool:
        if self.first_line_only:
            answer = answer.strip().split("\n", 1)[0]
        return normalise(answer) == normalise(reference)

    def review(self, first: str, second: str, reference: str) -> str:
        a, b = (int(self.correct(x, reference)) for x in (first, second))
        words = {1: "matches", 0: "does not match"}
        return f"{a} {b}\nAssistant 1 {words[a]} the reference answer; Assistant 2 {words[b]} it."

    def judge_pairs(
        self, pairs: Sequence[Pair], cache: Any = None, desc: str = "judge"
    ) -> JudgeRun:
        missing = [p.id for p in pairs if not p.reference.strip()]
        if missing:
            raise DataError(
                f"judge=reference needs reference answers; {len(missing)} items have none "
                f"(e.g. {missing[:3]}). Use it on known-answer sets (eval_set=held_out) or pick "
                "an LLM judge (judge=gpt4, judge=local)"
            )
        reviews = [
            Reviews(
                p.id,
                self.review(*p.shown("ab"), p.reference),
                self.review(*p.shown("ba"), p.reference),
            )
            for p in pairs
        ]
        return JudgeRun(reviews, {"requests": 0, "cost_usd": 0.0})
