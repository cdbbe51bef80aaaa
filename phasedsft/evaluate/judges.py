"""Judges: compare two models' answers to the same question, in both orders.

Every judge returns, per item, two *review texts* whose first line holds the two scores in
the order the answers were shown ("8 7"); :mod:`phasedsft.evaluate.folding` parses and folds them.
So an LLM judge's reviews, a reference judge's verdicts and reviews users bring from
elsewhere all go through one parser and one folding rule.

- :class:`OpenAIJudge` - any OpenAI-compatible endpoint (GPT-4 as in the paper, a local
  llama.cpp / vLLM server). It shares the scorer's client, cache, budget, pacing, progress
  bar and failure handling (:class:`~phasedsft.llm.endpoint.ChatEndpoint`). Its
  ``style`` picks the prompt (:data:`STYLES`): ``authors`` sends what the Phased IFT
  authors' ``evaluation/eval.py`` sent GPT-4 (``judge=gpt4``), ``vicuna`` the general
  Vicuna / FastChat review prompt with an explanation (``judge=gpt4_vicuna``, ``judge=local``).
  The judge formats the question from the item's instruction and input, as its style does.
- :class:`~phasedsft.judging.ReferenceJudge` (in :mod:`phasedsft.judging`, below both steps,
  as are the pair types and the judge protocols; re-exported here) - data with known answers (the graded suite): 1 point for an
  answer equal to the reference after normalising case and white space, else 0. It also
  marks single answers for the in-run accuracy (:meth:`ReferenceJudge.correct`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from phasedsft.evaluate.folding import ParseError, parse_scores
from phasedsft.io import sha256_json

# the judge contract lives below both steps (train marks answers with a ReferenceJudge),
# in phasedsft.judging; its names stay importable from here
from phasedsft.judging import INPUT_SEPARATORS
from phasedsft.judging import ORDERS as ORDERS
from phasedsft.judging import Judge as Judge
from phasedsft.judging import JudgeRun as JudgeRun
from phasedsft.judging import MarksAnswers as MarksAnswers
from phasedsft.judging import Pair as Pair
from phasedsft.judging import ReferenceJudge as ReferenceJudge
from phasedsft.judging import Reviews as Reviews
from phasedsft.judging import checked_judge as checked_judge
from phasedsft.judging import format_question as format_question
from phasedsft.judging import normalise as normalise
from phasedsft.llm.cache import Result, ScoreCache
from phasedsft.llm.cost import prompt_tokens
from phasedsft.llm.endpoint import ChatEndpoint, Rejected
from phasedsft.llm.engine import Job, RunStats
from phasedsft.ranges import ranged
from phasedsft.records import DataError

# ------------------------------------------------------------------ the pairwise prompts

SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."

# ``vicuna``: the general pairwise review prompt of Vicuna / FastChat (scores, then an
# explanation), as AlpaGasus published it; the text the authors' eval.py keeps commented out
# (xubuvd/PhasedSFT evaluation/eval.py:60).
VICUNA_VERSION = "pairwise-v1"  # the judge cache key's prompt version: replies stay reusable
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

# ``authors``: what the Phased IFT authors sent GPT-4, reproduced as data so the request is the
# identical text: system prompt xubuvd/PhasedSFT evaluation/eval.py:58, user template :59 (it
# ends in two newlines), the criteria in use :61 (scores only, "Do not explain"), filled in
# :62-63 and sent as [system, user] :158-162.
AUTHORS_VERSION = "phasedsft-eval.py-v1"
AUTHORS_TEMPLATE = (
    "[Question]\n{question}\n\n[The Start of Assistant 1's Answer]\n{answer_1}\n\n"
    "[The End of Assistant 1's Answer]\n\n[The Start of Assistant 2's Answer]\n{answer_2}\n\n"
    "[The End of Assistant 2's Answer]\n\n[System]\n{criteria}\n\n"
)
AUTHORS_CRITERIA = (
    "We would like to request your feedback on the performance of two AI assistants in response "
    "to the user question displayed above.\nPlease rate the helpfulness, relevance, accuracy, "
    "level of details of their responses. Each assistant receives an overall score on a scale of "
    "1 to 10, where a higher score indicates better overall performance.\nPlease only output a "
    "single line containing only two values indicating the scores for Assistant 1 and 2, "
    "respectively. The two scores are separated by a space. Do not explain for your scores."
)


@dataclass(frozen=True)
class Style:
    """One judge prompt: its cache version, its user message and how it joins the input."""

    version: str
    template: str
    input_separator: str
    explains: bool  # the reply carries an explanation after the scores


STYLES = {
    # eval.py:142-153: "{instruction} Input: {input}" when the item has a (non-empty) input
    # (Self-Instruct's instances[0].input, OASST's and Anthropic's input), else the instruction.
    "authors": Style(
        AUTHORS_VERSION,
        AUTHORS_TEMPLATE.replace("{criteria}", AUTHORS_CRITERIA),
        INPUT_SEPARATORS["authors"],
        explains=False,
    ),
    # ours: the input on its own paragraph after the instruction
    "vicuna": Style(VICUNA_VERSION, TEMPLATE, INPUT_SEPARATORS["vicuna"], explains=True),
}
JUDGE_PROMPT_VERSION = VICUNA_VERSION  # the default style's version (kept for old imports)


def style_of(name: str) -> Style:
    if name not in STYLES:
        raise DataError(f"unknown judge.style '{name}'; known: {sorted(STYLES)}")
    return STYLES[name]


JSON_SUFFIX = (
    '\nReply with a JSON object: {"assistant_1": <score>, "assistant_2": <score>, '
    '"explanation": "..."}.'
)
JSON_SUFFIX_SCORES_ONLY = (
    '\nReply with a JSON object: {"assistant_1": <score>, "assistant_2": <score>}.'
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


def schema_for(style: str) -> dict[str, Any]:
    """The JSON schema of a structured reply; without the explanation where the style asks none."""
    if style_of(style).explains:
        return SCHEMA
    inner = SCHEMA["schema"]
    assert isinstance(inner, dict)
    props = {k: v for k, v in inner["properties"].items() if k != "explanation"}
    return {
        "name": SCHEMA["name"],
        "schema": {**inner, "properties": props, "required": ["assistant_1", "assistant_2"]},
    }


def judge_messages(
    pair: Pair, order: str, structured: bool = False, style: str = "vicuna"
) -> list[dict[str, str]]:
    """The chat messages of one request: the system prompt, then the review prompt."""
    st = style_of(style)
    first, second = pair.shown(order)
    user = st.template.format(
        question=format_question(pair, style), answer_1=first, answer_2=second
    )
    if structured:
        user += JSON_SUFFIX if st.explains else JSON_SUFFIX_SCORES_ONLY
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


# ------------------------------------------------------------------ LLM judge


@dataclass
class OpenAIJudge(ChatEndpoint):
    """Score both answers 1-10, once in each order, through an OpenAI-compatible endpoint."""

    task: ClassVar[str] = "judging"

    # the first line holds the scores; the explanation follows
    max_tokens: int = ranged(512, ge=1, why="tokens a review may take")
    style: str = "vicuna"  # the prompt: "authors" (their eval.py) or "vicuna" (see STYLES)
    # sent when set (the authors sent 1.0, eval.py:181)
    top_p: float | None = ranged(None, gt=0, le=1, why="nucleus sampling mass; null: not sent")
    name: str = "openai"

    def __post_init__(self) -> None:
        super().__post_init__()
        style_of(self.style)  # an unknown style fails before any request

    def identity(self) -> dict[str, Any]:
        ident = {
            "judge": "pairwise",
            "model": self.model,
            "prompt": style_of(self.style).version,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "structured": self.structured,
        }
        if self.top_p is not None:
            ident["top_p"] = self.top_p
        return ident

    def question(self, pair: Pair) -> str:
        """The question as this judge shows it (also written to the replay files)."""
        return format_question(pair, self.style)

    def messages(self, pair: Pair, order: str) -> list[dict[str, str]]:
        return judge_messages(pair, order, self.structured, self.style)

    def request_options(self, attempt: int) -> dict[str, Any]:
        """What one request sends besides the model, the messages and ``max_tokens``."""
        options: dict[str, Any] = {"temperature": self.attempt_temperature(attempt)}
        seed = self.attempt_seed(attempt)
        if seed is not None:
            options["seed"] = seed
        if self.top_p is not None:
            options["top_p"] = self.top_p
        if self.structured:
            options["response_format"] = {
                "type": "json_schema",
                "json_schema": schema_for(self.style),
            }
        return options

    def jobs(self, pairs: Sequence[Pair]) -> list[Job]:
        ident = self.identity()
        jobs = []
        for pair in pairs:
            for order in ORDERS:
                first, second = pair.shown(order)
                msgs = self.messages(pair, order)
                worst_in = prompt_tokens(msgs, self.model, bound=True)  # for the budget
                key = sha256_json({"judge": ident, "shown": [self.question(pair), first, second]})
                jobs.append(
                    Job(
                        key,
                        (pair, order),
                        prompt_tokens(msgs, self.model) + self.max_tokens,
                        self.price.cost(worst_in, self.max_tokens),
                        max_requests=1 + self.parse_retries,
                    )
                )
        return jobs

    def estimate(self, pairs: Sequence[Pair], cache: ScoreCache) -> dict[str, Any]:
        every = self.jobs(pairs)
        jobs = unique_jobs(every)  # what judge_pairs sends: each prompt once
        cached = cache.get_many(j.key for j in jobs)
        todo = [j for j in jobs if j.key not in cached]
        attempts = 1 + self.parse_retries
        return {
            "model": self.model,
            "pairs": len(pairs),
            "same_prompt_merged": len(every) - len(jobs),  # equal answers: one request, not two
            "requests": len(jobs),
            "cached": len(jobs) - len(todo),
            "to_request": len(todo),
            "max_requests": len(todo) * attempts,
            "est_cost_usd_upper_bound": math.ceil(sum(j.est_cost for j in todo) * attempts * 1e4)
            / 1e4,
            "upper_bound": f"every request asked {attempts} times (1 + parse_retries) at max_tokens",
        }

    def judge_pairs(
        self, pairs: Sequence[Pair], cache: ScoreCache, desc: str = "judge"
    ) -> JudgeRun:
        client = self.client("judge")

        async def call(job: Job) -> Result:
            pair, order = job.example
            item = f"{pair.id}:{order}"
            # an item an earlier run stopped (budget, endpoint) continues after its kept replies
            tally = self.tally_for(job, item)
            review: list[tuple[str, float, float]] = []  # the reply that parsed, once one did

            def done(resp: Any) -> bool:
                text = resp.choices[0].message.content
                tally.raws.append(text)
                try:
                    review.append((text, *parse_scores(text)))
                except ParseError as e:
                    tally.reason = str(e)
                return bool(review)

            try:
                messages = self.messages(pair, order)
                await self.ask_until(client, job, messages, tally, self.request_options, done)
            except Rejected as e:
                return self.failed(job, item, tally, str(e))
            if not review:
                return self.failed(job, item, tally, f"unparseable review: {tally.reason}")
            text, first, second = review[0]
            detail = {"scores": [first, second], "attempts": tally.attempts}
            if len(tally.raws) > 1:  # asked again: the authors' script would keep the first
                detail["first_raw"] = tally.raws[0]
            return self.succeeded(job, item, tally, first - second, detail, text)

        jobs = self.jobs(pairs)
        # one request per distinct prompt: the two orders of a pair whose answers are equal
        # (or a repeated item) show the judge the same text, so it is sent once and its reply
        # stands for both (see unique_jobs)
        stats = self.run_requests(unique_jobs(jobs), call, cache, f"{desc} ({self.model})")
        stats.ordered = [stats.results.get(j.key) for j in jobs]
        return JudgeRun(reviews_from(pairs, stats), stats.summary())


def unique_jobs(jobs: Sequence[Job]) -> list[Job]:
    """``jobs`` less repeats of a key (the first kept): identical prompts are sent once.

    A pair whose two answers are identical shows the judge the same prompt in both orders
    (same cache key). The judge's one reply is used as both reviews: a reply "8 6" reads as
    a win for the first shown in each order, so A wins one order and loses the other, and
    "7 7" is a tie twice; either way the item folds to a tie under every rule, the text is
    the judge's own, and the request is paid once, not twice.
    """
    first: dict[str, Job] = {}
    for job in jobs:
        first.setdefault(job.key, job)
    return list(first.values())


def reviews_from(pairs: Sequence[Pair], stats: RunStats) -> list[Reviews]:
    """Both orders' texts per pair; a failed request keeps its last raw text (counted unparsed)."""
    out = []
    for i, pair in enumerate(pairs):
        texts: list[str | None] = []
        firsts: list[str | None] = []  # the first reply where it is not the review itself
        errors: list[str] = []
        for j in range(len(ORDERS)):
            r = stats.ordered[2 * i + j]
            if r is None:
                texts.append(None)
                firsts.append(None)
                errors.append(f"{ORDERS[j]}: not judged")
            elif r.status == "ok":
                texts.append(r.raw)
                firsts.append((r.detail or {}).get("first_raw"))
            else:
                raws = json.loads(r.raw) if r.raw else []
                texts.append(raws[-1] if raws else None)
                firsts.append(raws[0] if len(raws) > 1 else None)
                errors.append(f"{ORDERS[j]}: {r.error}")
        out.append(Reviews(pair.id, texts[0], texts[1], errors, firsts[0], firsts[1]))
    return out
