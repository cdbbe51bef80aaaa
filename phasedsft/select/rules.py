"""Which examples to train on: the selection rules (``selection=...``), pure functions on records.

A rule sees the examples after scoring and before segmentation and ordering, and keeps some of
them (:class:`Selection`). It reads named score columns (:func:`column`): ``score`` is the
difficulty score every example carries once scored (the run's scorer, or the data's own);
any other name is a column of the ``scores`` field score.py writes beside it, one per scorer
(``scores: {ifd: 0.83, length: 112}``; raw values, in each scorer's own unit).

Every rule first drops what its ``filters`` (:class:`Bound`) reject (Cherry LLM's IFD < 1, a
length floor), then chooses among the rest. Ranked rules (``top_k``, ``top_fraction``,
``token_budget``, ``diverse``) go through the examples by value, highest first (``descending:
false``: lowest first); **ties are broken by the original data order** (the earlier example
first), so a selection is the same on every machine. The value is the product of ``by`` and
each column in ``times`` (Deita's complexity x quality). ``random`` draws with numpy's PCG64
seeded by ``seed``. docs/selection.md gives each rule's paper and the test that checks it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from phasedsft.records import DataError, Example

SCORE = "score"  # the difficulty score every scored example carries
COUNTS = ("total", "target")
TOKEN_COLUMNS = ("tokens", "target_tokens")  # columns counted, not scored


class Tokens(NamedTuple):
    """Per example, training tokens as train.py counts them (phasedsft.train.inspect.stage_tokens):
    ``total`` every token fed (after truncation to trainer.max_seq_length), ``target`` those in
    the loss."""

    total: np.ndarray
    target: np.ndarray


def column(
    examples: Sequence[Example], name: str, where: str = "selection", tokens: Tokens | None = None
) -> np.ndarray:
    """The values of score column ``name`` for every example (float64), or a plain error naming
    the column, how many examples lack it and the columns they have. ``tokens`` and
    ``target_tokens`` are each example's training tokens as train.py counts them (a length
    floor: ``{column: target_tokens, at_least: 10}``)."""
    if name in TOKEN_COLUMNS:
        if tokens is None:
            raise DataError(
                f"{where}: column '{name}' counts training tokens as train.py counts them "
                "(prompt template, tokenizer, trainer.max_seq_length): use it with train.py"
            )
        return np.asarray(tokens.total if name == "tokens" else tokens.target, dtype=np.float64)
    if name == SCORE:
        values = [ex.score for ex in examples]
    else:
        values = [
            (s.get(name) if isinstance(s := ex.meta.get("scores"), Mapping) else None)
            for ex in examples
        ]
    missing = [ex.id for ex, v in zip(examples, values, strict=True) if v is None]
    if missing:
        have = sorted(
            {
                k
                for ex in examples[:1000]
                if isinstance(s := ex.meta.get("scores"), Mapping)
                for k in s
            }
        )
        raise DataError(
            f"{where}: {len(missing)} of {len(examples)} examples have no score column "
            f"'{name}' (e.g. ids {missing[:3]}); columns found: "
            f"{[SCORE, *have] if examples[0].score is not None else have or 'none'}. "
            "score.py writes one column per scorer "
            "(python score.py scorer=ifd +scorer@extra_scorers.length=length ...); "
            "'score' is the difficulty score"
        )
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(
            f"{where}: score column '{name}' holds a value that is not a number"
        ) from None
    if not np.isfinite(arr).all():
        bad = [examples[i].id for i in np.flatnonzero(~np.isfinite(arr))[:3]]
        raise DataError(f"{where}: score column '{name}' is not finite for ids {bad}")
    return arr


@dataclass
class Bound:
    """Keep an example only if its ``column`` is >= ``at_least``, > ``above``, <= ``at_most``
    and < ``below`` (each optional). Cherry LLM: ``{column: ifd, below: 1}``."""

    column: str = SCORE
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None

    def mask(
        self, examples: Sequence[Example], where: str, tokens: Tokens | None = None
    ) -> np.ndarray:
        v = column(examples, self.column, where, tokens)
        keep = np.ones(len(v), dtype=bool)
        if self.at_least is not None:
            keep &= v >= self.at_least
        if self.above is not None:
            keep &= v > self.above
        if self.at_most is not None:
            keep &= v <= self.at_most
        if self.below is not None:
            keep &= v < self.below
        return keep

    def text(self) -> str:
        parts = [
            f"{self.column} {op} {x:g}"
            for op, x in (
                (">=", self.at_least),
                (">", self.above),
                ("<=", self.at_most),
                ("<", self.below),
            )
            if x is not None
        ]
        return " and ".join(parts) or f"{self.column} (any)"


def _bound(b: Any) -> Bound:
    return b if isinstance(b, Bound) else Bound(**dict(b))


@dataclass
class Selection:
    """What a rule kept: positions into the examples it was given, in the order the rule chose
    them (rank order for ranked rules, draw order for ``random``, data order otherwise)."""

    rule: dict[str, Any]
    examples: int  # examples offered
    candidates: int  # of those, passing the filters
    order: np.ndarray  # kept positions, in the rule's order
    tokens: dict[str, int] | None = None  # training tokens of the kept examples (when counted)
    target: dict[str, int] | None = None  # random: what it matched (size or tokens)

    @property
    def kept(self) -> int:
        return len(self.order)

    def positions(self) -> np.ndarray:
        """Kept positions in data order (how the kept examples are trained on)."""
        return np.sort(self.order)

    def apply(self, examples: Sequence[Example]) -> list[Example]:
        return [examples[i] for i in self.positions()]

    def record(self, examples: Sequence[Example]) -> dict[str, Any]:
        """run.json's ``selection``: the rule, the counts, the kept ids (in the rule's order)."""
        counts: dict[str, Any] = {
            "examples": self.examples,
            "candidates": self.candidates,
            "kept": self.kept,
        }
        if self.tokens is not None:
            counts["tokens"] = self.tokens
        if self.target is not None:
            counts["matched"] = self.target
        return {"rule": self.rule, "counts": counts, "ids": [examples[i].id for i in self.order]}

    def line(self) -> str:
        """One line for the plan and the logs."""
        text = f"selection={self.rule['name']}: kept {self.kept} of {self.examples} examples"
        if self.candidates != self.examples:
            text += f" ({self.candidates} passed the filters)"
        if self.tokens is not None:
            text += f", {self.tokens['total']} tokens ({self.tokens['target']} target)"
        if self.target is not None:
            text += " (matched: " + ", ".join(f"{k} {v}" for k, v in self.target.items()) + ")"
        return text


@dataclass
class Rule:
    """What every rule shares: its name and its filters."""

    name: str = "rule"
    filters: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.filters = [_bound(b) for b in self.filters]

    def columns(self) -> set[str]:
        return {b.column for b in self.filters}

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for k, v in vars(self).items():
            if k == "name":
                continue
            if k == "filters":
                out[k] = [b.text() for b in v]
            elif isinstance(v, Rule):
                out[k] = v.describe()
            else:
                out[k] = v if v is None or isinstance(v, str | int | float | bool) else list(v)
        return out

    def candidates(self, examples: Sequence[Example], tokens: Tokens | None = None) -> np.ndarray:
        """Positions passing every filter, in data order."""
        keep = np.ones(len(examples), dtype=bool)
        for b in self.filters:
            keep &= b.mask(examples, f"selection.filters ({b.text()})", tokens)
        return np.flatnonzero(keep)

    def select(self, examples: Sequence[Example], tokens: Tokens | None = None) -> Selection:
        raise NotImplementedError

    def _selection(
        self,
        examples: Sequence[Example],
        cand: np.ndarray,
        order: np.ndarray,
        tokens: Tokens | None,
        target: dict[str, int] | None = None,
    ) -> Selection:
        kept_tokens = (
            {"total": int(tokens.total[order].sum()), "target": int(tokens.target[order].sum())}
            if tokens is not None
            else None
        )
        return Selection(
            self.describe(),
            len(examples),
            len(cand),
            np.asarray(order, dtype=np.int64),
            kept_tokens,
            target,
        )


def _need_tokens(rule: Rule, tokens: Tokens | None, n: int, count: str) -> np.ndarray:
    if count not in COUNTS:
        raise DataError(f"selection.count must be total or target, got {count!r}")
    if tokens is None:
        raise DataError(
            f"selection={rule.name} counts training tokens, as train.py counts them (prompt template, "
            "tokenizer, trainer.max_seq_length): use it with train.py (plan_only=true shows the sizes)"
        )
    arr = np.asarray(tokens.total if count == "total" else tokens.target, dtype=np.int64)
    if len(arr) != n:
        raise DataError(f"selection={rule.name}: {len(arr)} token counts for {n} examples")
    return arr


@dataclass
class Ranked(Rule):
    """Rules that go through the candidates by value: ``by`` x each of ``times``."""

    by: str = SCORE
    times: list[str] = field(default_factory=list)
    descending: bool = True

    def columns(self) -> set[str]:
        return super().columns() | {self.by, *self.times}

    def values(self, examples: Sequence[Example], tokens: Tokens | None = None) -> np.ndarray:
        v = column(examples, self.by, "selection.by", tokens)
        for name in self.times:
            v = v * column(examples, name, "selection.times", tokens)
        return v

    def ranked(
        self, examples: Sequence[Example], cand: np.ndarray, tokens: Tokens | None = None
    ) -> np.ndarray:
        """``cand`` by value (highest first unless ``descending`` is false), ties in data order."""
        v = self.values(examples, tokens)[cand]
        key = -v if self.descending else v
        return cand[np.argsort(key, kind="stable")]  # stable: equal values keep data order


@dataclass
class Threshold(Rule):
    """Keep every example whose ``column`` is >= ``at_least`` (> ``above``, <= ``at_most``,
    < ``below``), in data order. AlpaGasus: ``column: score, at_least: 4.5``."""

    name: str = "threshold"
    column: str = SCORE
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if all(x is None for x in (self.at_least, self.above, self.at_most, self.below)):
            raise DataError(
                "selection=threshold needs a bound: selection.at_least, selection.above, selection.at_most "
                "or selection.below"
            )

    def bound(self) -> Bound:
        return Bound(self.column, self.at_least, self.above, self.at_most, self.below)

    def columns(self) -> set[str]:
        return super().columns() | {self.column}

    def select(self, examples: Sequence[Example], tokens: Tokens | None = None) -> Selection:
        cand = self.candidates(examples, tokens)
        keep = self.bound().mask(examples, "selection.column", tokens)
        return self._selection(examples, cand, cand[keep[cand]], tokens)


@dataclass
class TopK(Ranked):
    """The ``k`` candidates of highest value (fewer if fewer pass the filters)."""

    name: str = "top_k"
    k: int = 1

    def select(self, examples: Sequence[Example], tokens: Tokens | None = None) -> Selection:
        cand = self.candidates(examples, tokens)
        return self._selection(
            examples, cand, self.ranked(examples, cand, tokens)[: self.k], tokens
        )


@dataclass
class TopFraction(Ranked):
    """The floor(``fraction`` x N) candidates of highest value, N the examples offered (before
    the filters): Cherry LLM's 5 % / 10 % of the data by IFD, after dropping IFD >= 1."""

    name: str = "top_fraction"
    fraction: float = 0.1

    def select(self, examples: Sequence[Example], tokens: Tokens | None = None) -> Selection:
        cand = self.candidates(examples, tokens)
        k = math.floor(self.fraction * len(examples) + 1e-9)
        return self._selection(examples, cand, self.ranked(examples, cand, tokens)[:k], tokens)


def _fill(order: np.ndarray, tok: np.ndarray, budget: int) -> np.ndarray:
    """The examples of ``order`` taken in turn while they fit in ``budget`` tokens: one that
    would pass it is passed over and the next ones still tried (never more than ``budget``)."""
    sizes = tok[order]
    cum = np.cumsum(sizes)
    head = int(np.searchsorted(cum, budget, side="right"))  # the prefix that fits
    taken = [order[:head]]
    left = budget - (int(cum[head - 1]) if head else 0)
    rest = []
    if head < len(order) and left > 0:
        smallest = int(sizes[head:].min())
        for pos, size in zip(order[head:].tolist(), sizes[head:].tolist(), strict=True):
            if left < smallest:
                break
            if size <= left:
                rest.append(pos)
                left -= size
    taken.append(np.asarray(rest, dtype=np.int64))
    return np.concatenate(taken)


@dataclass
class TokenBudget(Ranked):
    """Candidates by value, highest first, while their training tokens fit in ``budget``: one
    that would pass the budget is passed over and the next ones still tried."""

    name: str = "token_budget"
    budget: int = 1
    count: str = "total"  # total: every token trained on (prompt too); target: tokens in the loss

    def select(self, examples: Sequence[Example], tokens: Tokens | None = None) -> Selection:
        tok = _need_tokens(self, tokens, len(examples), self.count)
        cand = self.candidates(examples, tokens)
        order = _fill(self.ranked(examples, cand, tokens), tok, self.budget)
        return self._selection(examples, cand, order, tokens)


@dataclass
class Diverse(Ranked):
    """Deita's score-first, diversity-aware selection: candidates by value, highest first; one
    whose cosine similarity to an example already kept exceeds ``max_similarity`` is skipped;
    stop after ``k`` (null: go through all). Embeddings: :func:`phasedsft.select.embed.hashed`."""

    name: str = "diverse"
    max_similarity: float = 0.9
    k: int | None = None
    dims: int = 1024
    embedding: str = "hashed"  # or "model": embed_model's mean-pooled hidden states
    embed_model: str | None = None
    embed_gguf_file: str | None = None
    embed_batch_size: int = 16
    embed_max_tokens: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embedding not in ("hashed", "model"):
            raise DataError(
                f"selection.embedding must be 'hashed' or 'model', got {self.embedding!r}"
            )
        if self.embedding == "model" and not self.embed_model:
            raise DataError(
                "selection.embedding=model needs selection.embed_model (a hub id or a local "
                "model directory; selection.embed_gguf_file for a GGUF file in it)"
            )

    def select(self, examples: Sequence[Example], tokens: Tokens | None = None) -> Selection:
        from phasedsft.select.embed import hashed, model_embeddings, texts

        cand = self.candidates(examples, tokens)
        ranked = self.ranked(examples, cand, tokens)
        docs = texts(examples, ranked)
        if self.embedding == "model":
            assert self.embed_model is not None
            vectors = model_embeddings(
                docs,
                self.embed_model,
                self.embed_gguf_file,
                self.embed_batch_size,
                self.embed_max_tokens,
            )
        else:
            vectors = hashed(docs, self.dims)
        kept = diverse_order(vectors, self.max_similarity, self.k)
        return self._selection(examples, cand, ranked[kept], tokens)


def diverse_order(
    vectors: np.ndarray, max_similarity: float, k: int | None, block: int = 256
) -> np.ndarray:
    """Rows of ``vectors`` (unit length, in rank order) kept by the rule: each row is kept when
    its dot product with every row kept before it is <= ``max_similarity``; at most ``k``.
    Blocks of rows are compared with the kept ones by one matrix product, then with each other."""
    n = len(vectors)
    limit = n if k is None else min(k, n)
    kept_rows = np.empty((limit, vectors.shape[1]), dtype=vectors.dtype)
    kept: list[int] = []
    for start in range(0, n, block):
        if len(kept) >= limit:
            break
        x = vectors[start : start + block]
        prior = (x @ kept_rows[: len(kept)].T).max(axis=1) if kept else np.full(len(x), -np.inf)
        inner = x @ x.T
        mine: list[int] = []
        for i in range(len(x)):
            if len(kept) + len(mine) >= limit:
                break
            if prior[i] > max_similarity:
                continue
            if mine and inner[i, mine].max() > max_similarity:
                continue
            mine.append(i)
        for i in mine:
            kept_rows[len(kept)] = x[i]
            kept.append(start + i)
    return np.asarray(kept, dtype=np.int64)


@dataclass
class Random(Rule):
    """A seeded random draw from the candidates: ``size`` examples, or examples while they fit
    in ``tokens`` training tokens (as :class:`TokenBudget` fills), or as many examples
    (``matching: size``) or tokens (``matching: tokens``) as the selection ``match`` keeps."""

    name: str = "random"
    size: int | None = None
    tokens: int | None = None
    match: Any = None  # another rule (a selection node)
    matching: str = "size"  # size | tokens
    count: str = "total"  # which tokens: total | target
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        given = [x for x in (self.size, self.tokens, self.match) if x is not None]
        if len(given) != 1:
            raise DataError(
                "selection=random needs exactly one of selection.size, selection.tokens, selection.match "
                f"(got {len(given)})"
            )
        if self.matching not in ("size", "tokens"):
            raise DataError(f"selection.matching must be size or tokens, got {self.matching!r}")

    def columns(self) -> set[str]:
        return super().columns() | (self.match.columns() if self.match is not None else set())

    def select(self, examples: Sequence[Example], tokens: Tokens | None = None) -> Selection:
        size, budget = self.size, self.tokens
        target: dict[str, int] = {}
        if self.match is not None:
            matched = self.match.select(examples, tokens)
            if self.matching == "size":
                size = matched.kept
            else:
                tok = _need_tokens(self, tokens, len(examples), self.count)
                budget = int(tok[matched.order].sum())
        cand = self.candidates(examples, tokens)
        drawn = cand[np.random.Generator(np.random.PCG64(self.seed)).permutation(len(cand))]
        if size is not None:
            if size > len(cand):
                raise DataError(
                    f"selection=random: {size} examples asked, only {len(cand)} candidates"
                )
            target["size"] = size
            return self._selection(examples, cand, drawn[:size], tokens, target)
        assert budget is not None
        target["tokens"] = budget
        order = _fill(drawn, _need_tokens(self, tokens, len(examples), self.count), budget)
        return self._selection(examples, cand, order, tokens, target)


def check_rule(obj: Any) -> Rule:
    """``obj`` if it is a selection rule, else a plain error."""
    if isinstance(obj, Rule):
        return obj
    raise DataError(
        f"selection: {type(obj).__name__} is not a selection rule (subclass phasedsft.select.rules.Rule)"
    )
