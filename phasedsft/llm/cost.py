"""Token counts and prices for cost estimates before any paid call."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from phasedsft.ranges import ranged

log = logging.getLogger(__name__)


@dataclass
class Price:
    """US dollars per 1,000 tokens (set them from your provider's price list)."""

    input_per_1k: float = ranged(0.0, ge=0, why="USD per 1,000 prompt tokens")
    output_per_1k: float = ranged(0.0, ge=0, why="USD per 1,000 completion tokens")

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return tokens_in / 1000 * self.input_per_1k + tokens_out / 1000 * self.output_per_1k


@functools.cache
def _encoding(model: str) -> Any:
    """tiktoken's encoding for a known OpenAI model, or None (unknown model, or offline)."""
    try:
        import tiktoken

        return tiktoken.encoding_for_model(model)
    except Exception as e:  # unknown model (KeyError) or the encoding file cannot be fetched
        log.warning(
            "no tiktoken encoding for %r (%s): token counts are approximate (4 characters/token)",
            model,
            e,
        )
        return None


def count_tokens(text: str, model: str) -> int:
    enc = _encoding(model)
    if enc is None:
        return max(1, (len(text) + 3) // 4)
    return len(enc.encode(text, disallowed_special=()))


def tokens_upper_bound(text: str, model: str) -> int:
    """At most this many tokens: tiktoken's count where the model is known, else UTF-8 bytes.

    No byte-level BPE or byte-fallback tokenizer makes more tokens than the text has bytes,
    so the bound holds for models tiktoken does not know (4 characters per token does not:
    code and most non-English text take more).
    """
    enc = _encoding(model)
    return (
        len(text.encode("utf-8")) if enc is None else len(enc.encode(text, disallowed_special=()))
    )


CHAT_OVERHEAD_TOKENS = 8  # per message (role, separators) and for the reply's start: generous


def prompt_tokens(messages: Sequence[dict[str, str]], model: str, bound: bool = False) -> int:
    """A chat prompt's tokens: the estimate, or (``bound``) an upper bound for the budget."""
    count = tokens_upper_bound if bound else count_tokens
    return sum(count(m["content"], model) + CHAT_OVERHEAD_TOKENS for m in messages) + (
        CHAT_OVERHEAD_TOKENS
    )


def tiktoken_knows(model: str) -> bool:
    return _encoding(model) is not None


def _method(model: str) -> str:
    if tiktoken_knows(model):
        return "tiktoken"
    return "approximate (4 characters per token; the budget reserves 1 token per UTF-8 byte)"


count_tokens.method = _method  # type: ignore[attr-defined]
