"""Difficulty scorers (the paper's IDC step): the protocol, and the cheap ones.

A scorer maps examples to difficulty scores, ``None`` for an example it could not score
(never a default score). Every scorer says how its scores relate to the paper's 1-5
range:

- ``OracleScorer``: the score the data already carries (graded suite level, the authors'
  GPT-4 scores, the output of ``score.py``), as is.
- ``LengthScorer``: token length, mapped to 1-5 by rank (:func:`rank_to_scale`).
- LLM scorers (``phasedsft.score.api.OpenAIScorer``, ``phasedsft.score.local``):
  ratings on the 1-5 scale itself; IFD and perplexity mapped to 1-5 by rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from phasedsft.llm.engine import ComputedResults, RunStats
from phasedsft.records import DataError, Example


@runtime_checkable
class Scorer(Protocol):
    """What the jobs call on a scorer.

    ``score.py`` calls :meth:`estimate` (what the run will send and cost, or ``None`` when
    it spends nothing), then :meth:`run` (results per example, cached as they come) and
    :meth:`finalize` (raw values to the 1-5 scale); ``train.py`` and ``segment.py`` call
    :meth:`score` (all of that, at once). :class:`ScorerBase` gives the defaults; a new
    scorer subclasses :class:`ComputedScorer` (scores computed at once) or
    :class:`~phasedsft.llm.endpoint.ChatEndpoint` (requests to an OpenAI-compatible API).
    """

    name: str
    uses_model: ClassVar[bool]  # needs the configured tokenizer and model (ctx.load_model)
    costs_nothing: ClassVar[bool]  # no request, no forward pass: plan_only may score

    def score(self, examples: Sequence[Example], ctx: Any) -> list[float | None]: ...

    def run(self, examples: Sequence[Example], ctx: Any) -> Any: ...

    def finalize(self, raw: list[float | None]) -> list[float | None]: ...

    def estimate(self, examples: list[Example], ctx: Any) -> dict[str, Any] | None: ...

    def secrets(self) -> tuple[str, ...]: ...


class ScorerBase:
    """Defaults of the :class:`Scorer` protocol: spends nothing, needs no model, keeps raw values."""

    uses_model: ClassVar[bool] = False
    costs_nothing: ClassVar[bool] = False

    def finalize(self, raw: list[float | None]) -> list[float | None]:
        return raw

    def estimate(self, examples: list[Example], ctx: Any) -> dict[str, Any] | None:
        return None

    def secrets(self) -> tuple[str, ...]:
        return ()


def checked_scorer(obj: Any) -> Scorer:
    """``obj`` if it implements :class:`Scorer`; else a plain error naming what it lacks."""
    if isinstance(obj, Scorer):
        return obj
    missing = [
        m
        for m in (
            "name",
            "uses_model",
            "costs_nothing",
            "score",
            "run",
            "finalize",
            "estimate",
            "secrets",
        )
        if not hasattr(obj, m)
    ]
    raise DataError(
        f"scorer {type(obj).__name__} lacks {', '.join(missing)}: subclass "
        "phasedsft.score.base.ComputedScorer (or ScorerBase) to get the defaults"
    )


def rank_to_scale(
    values: Sequence[float | None], low: float = 1.0, high: float = 5.0
) -> list[float | None]:
    """Map values to ``[low, high]`` by rank: the i-th smallest of n gets ``low + (high-low)*i/(n-1)``.

    Equal values share the mean of their ranks; ``None`` stays ``None``.
    """
    idx = [i for i, v in enumerate(values) if v is not None]
    order = sorted(idx, key=lambda i: values[i])  # type: ignore[arg-type,return-value]
    out: list[float | None] = [None] * len(values)
    n, i = len(order), 0
    while i < n:
        j = i
        while j + 1 < n and values[order[j + 1]] == values[order[i]]:
            j += 1
        rank = (i + j) / 2
        for k in range(i, j + 1):
            out[order[k]] = low + (high - low) * rank / (n - 1) if n > 1 else (low + high) / 2
        i = j + 1
    return out


class ComputedScorer(ScorerBase):
    """Scorers computed at once, with nothing to cache: ``run`` wraps ``score`` in run stats."""

    name: str
    costs_nothing: ClassVar[bool] = True  # no request, no model forward: a plan may score

    def score(self, examples: Sequence[Example], ctx: Any) -> list[float | None]:
        raise NotImplementedError

    def run(self, examples: Sequence[Example], ctx: Any) -> Any:
        # one Result(id, id, name, "ok" | "failed", score) per example, made when read
        scores = self.score(examples, ctx)
        results = ComputedResults([ex.id for ex in examples], self.name, scores)
        return RunStats(total=len(examples), done=len(examples), ordered=results)


@dataclass
class OracleScorer(ComputedScorer):
    """Use the ``score`` each example already has; fail clearly if any is missing."""

    name: str = "oracle"

    def score(self, examples: Sequence[Example], ctx: Any = None) -> list[float | None]:
        missing = [ex.id for ex in examples if ex.score is None]
        if missing:
            raise DataError(
                f"scorer=oracle: {len(missing)} of {len(examples)} examples carry no difficulty score "
                f"(e.g. ids {missing[:3]}). Score them first (python score.py ...), point the dataset at "
                "a scored file, use scorer=length, or use ordering=one_off, which needs no scores."
            )
        return [float(ex.score) for ex in examples]  # type: ignore[arg-type]


@dataclass
class LengthScorer(ComputedScorer):
    """Token length of instruction + input + output, mapped to 1-5 by rank."""

    name: str = "length"
    uses_model: ClassVar[bool] = True  # its tokenizer

    def score(self, examples: Sequence[Example], ctx: Any) -> list[float | None]:
        if not examples:
            return []
        from phasedsft.data.tokens import token_counts

        texts = (f"{ex.instruction}\n{ex.input}\n{ex.output}" for ex in examples)
        path = getattr(getattr(ctx, "cache", None), "path", None)
        cache_dir = Path(path).parent if path else None  # counts kept beside the score cache
        return rank_to_scale([float(n) for n in token_counts(ctx.tokenizer, texts, cache_dir)])


def apply_scores(
    examples: Sequence[Example], scores: Sequence[float | None], scorer_name: str
) -> list[Example]:
    if len(scores) != len(examples):
        raise DataError(
            f"scorer {scorer_name} returned {len(scores)} scores for {len(examples)} examples"
        )
    failed = [ex.id for ex, s in zip(examples, scores, strict=True) if s is None]
    if failed:
        raise DataError(
            f"scorer {scorer_name} could not score {len(failed)} examples (e.g. {failed[:3]}); "
            "run score.py to see why, then train on its scored file"
        )
    # an example that already carries this very score (scorer=oracle) is kept, not copied
    return [
        ex if same_float(ex.score, float(s)) else ex.with_score(float(s))  # type: ignore[arg-type]
        for ex, s in zip(examples, scores, strict=True)
    ]


def same_float(a: Any, b: float) -> bool:
    """``a`` is the float ``b`` itself (sign of zero included), not merely equal to it."""
    return type(a) is float and a.hex() == b.hex()
