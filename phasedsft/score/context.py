"""What a scorer gets besides the examples: the cache, and (for local LMs) a tokenizer and model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from phasedsft.llm.cache import ScoreCache


@dataclass
class ScoreContext:
    cache: ScoreCache
    tokenizer: Any = None
    load_model: Callable[[], Any] | None = None
    model_name: str | None = None
