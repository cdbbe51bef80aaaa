"""The difficulty-scoring prompt (versioned) and the parsing of its replies.

The judge rates two dimensions from 1 to 5: how hard the task itself is, and how hard it
is to get from the instruction (and input) to this particular output. Bump
:data:`PROMPT_VERSION` whenever the text changes: it is part of every cache key.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from phasedsft.records import Example

PROMPT_VERSION = "idc-v1"

SYSTEM = (
    "You are an expert annotator of instruction-tuning data. You rate how difficult a training "
    "example is for a language model to learn, on two dimensions, each from 1 (trivial) to 5 "
    "(very hard)."
)

USER = """Rate the difficulty of this instruction-tuning example.

[Instruction]
{instruction}
{input_block}
[Output]
{output}

Dimensions:
- task: how difficult the task itself is (knowledge, reasoning, creativity, length it needs).
- response: how difficult it is to go from the instruction to exactly this output.

Scale: 1 = trivial, 2 = easy, 3 = moderate, 4 = hard, 5 = very hard.
Reply with JSON only, exactly in this form: {{"task": <1-5>, "response": <1-5>}}"""


def messages(ex: Example) -> list[dict[str, str]]:
    input_block = f"\n[Input]\n{ex.input}\n" if ex.input.strip() else ""
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": USER.format(
                instruction=ex.instruction, input_block=input_block, output=ex.output
            ),
        },
    ]


class ParseError(ValueError):
    """A reply does not hold the two scores."""


_KEYS = ("task", "response")
_PAIR = re.compile(
    r'"?task"?\s*[:=]\s*"?(-?\d+(?:\.\d+)?)"?.*?"?response"?\s*[:=]\s*"?(-?\d+(?:\.\d+)?)',
    re.S | re.I,
)


def parse_reply(text: str | None) -> tuple[float, float]:
    """``(task, response)`` scores from a reply: JSON first, then a lenient pattern."""
    if not text or not text.strip():
        raise ParseError("empty reply")
    values: tuple[float, ...] | None = None
    match = re.search(r"\{.*?\}", text, re.S)
    if match:
        try:
            obj = json.loads(match.group(0))
            if any(isinstance(obj[k], bool) for k in _KEYS):  # true is no rating (float(True) is 1)
                raise TypeError("a boolean rating")
            values = tuple(float(obj[k]) for k in _KEYS)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            values = None
    if values is None:
        m = _PAIR.search(text)  # whole numbers: "10" is ten, never a 1
        if m:
            values = (float(m.group(1)), float(m.group(2)))
    if values is None:
        raise ParseError("no 'task' and 'response' scores from 1 to 5 in the reply")
    if not all(1 <= v <= 5 for v in values):  # out of the scale: a failed attempt, never a score
        raise ParseError(f"scores out of 1-5: task {values[0]:g}, response {values[1]:g}")
    return values[0], values[1]


COMBINE: dict[str, Callable[[float, float], float]] = {
    "mean": lambda t, r: (t + r) / 2,
    "max": max,
    "task": lambda t, r: t,
    "response": lambda t, r: r,
}


def combine(rule: str, task: float, response: float) -> float:
    try:
        return float(COMBINE[rule](task, response))
    except KeyError:
        raise ValueError(f"unknown combine rule '{rule}'; known: {sorted(COMBINE)}") from None


def expected_scores(tokens: Sequence[Any]) -> tuple[float, float] | None:
    """Probability-weighted scores from a reply's token logprobs, where the server returns them.

    For the digit token that follows ``"task":`` (and ``"response":``), the expected value
    over the top alternatives that are digits 1-5 (their probabilities renormalised).
    """
    text, found = "", {}
    for tok in tokens:
        piece = getattr(tok, "token", None) if not isinstance(tok, dict) else tok.get("token")
        if piece is None:
            continue
        stripped = piece.strip().strip('"')
        for key in _KEYS:
            if (
                key not in found
                and stripped[:1] in "12345"
                and stripped[:1]
                and re.search(rf'"?{key}"?\s*[:=]\s*"?$', text)
            ):
                alts = (
                    tok.get("top_logprobs")
                    if isinstance(tok, dict)
                    else getattr(tok, "top_logprobs", None)
                )
                probs: dict[int, float] = {}
                for alt in alts or []:
                    a_tok = str(alt["token"] if isinstance(alt, dict) else alt.token)
                    a_lp = float(alt["logprob"] if isinstance(alt, dict) else alt.logprob)
                    d = a_tok.strip().strip('"')
                    if len(d) == 1 and d in "12345":
                        probs[int(d)] = probs.get(int(d), 0.0) + math.exp(a_lp)
                if probs:
                    z = sum(probs.values())
                    found[key] = sum(k * p for k, p in probs.items()) / z
        text += piece
    if all(k in found for k in _KEYS):
        return found["task"], found["response"]
    return None


def spread(values: Sequence[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0
