"""Token counts and prices for cost estimates before any paid call."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Price:
    """US dollars per 1,000 tokens (set them from your provider's price list)."""

    input_per_1k: float = 0.0
    output_per_1k: float = 0.0

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


def _method(model: str) -> str:
    return "tiktoken" if _encoding(model) is not None else "approximate (4 characters per token)"


count_tokens.method = _method  # type: ignore[attr-defined]
