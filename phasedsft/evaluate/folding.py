"""Pairwise judgments -> win / tie / lose -> the paper's win rate, with its uncertainty.

Each item is judged twice, the answers swapped. A review's first line holds the two
scores in the order the answers were shown ("8 7"). From answer A's side each order gives
a verdict (win / tie / lose); a *folding rule* turns the two verdicts into one outcome:

    paper     win = win twice or win + tie;  tie = tie twice or win + lose;
              lose = lose twice or lose + tie                        (Phased IFT, AlpaGasus)
    fastchat  win = win twice;  lose = lose twice;  anything else is a tie
              (FastChat's MT-bench pairwise results: inconsistent verdicts count as ties)
    authors   the released ``evaluation/win_tie_loss_stat.py`` of Phased IFT, exactly: the
              same folding as ``paper``, but its own parser and accounting (see below)

Reported figure: ``100 * (W + T/2) / N - 50`` (0 = parity, +50 = A always wins), with a
paired bootstrap 95 % CI over items, an exact two-sided sign test (wins vs losses) and the
position-consistency rate (share of items whose two verdicts agree).

Items with a review we cannot parse are left out of N and counted as ``unparsed``. The
authors' released code (GitHub xubuvd/PhasedSFT, commit a8546508, ``evaluation/``) does
otherwise, and ``--rule authors`` reproduces it (our own code, checked against theirs):

- parsing: ``eval.py`` NFKC-normalizes the judge's reply (``eval.py:221``) and parses it
  (``:223``, parser ``:41-54``) into the ``score`` it stores (``:226``), which
  ``win_tie_loss_stat.py`` uses as it is (``:16``; its own copy of the parser, ``:14-29``, only
  runs on a text). The parser takes the first line (split on "\\n"), turns commas into spaces,
  splits on single spaces and needs exactly two parts, each read by ``float``; else
  ``[-1, -1]``. So "8 7" and "8,7" parse; "8, 7", "8  7", "8 7 ", " 8 7", "8/10 7/10" and
  "Assistant 1: 8" do not.
- void items: unless all four scores of the two orders are > 0 the item is skipped
  (``win_tie_loss_stat.py:112``): an unparseable review (-1), a score of 0 (GPT-4's "0 0"
  reply) or "nan".
- folding (``:114-128``): the paper's table, from the first order's (A, B) and the second
  order's (B, A) scores.
- N is every item (``:97``, written as ``num`` ``:142``), void ones included, and the figure
  is ``100 * (W + T/2) / N - 50`` (``:144``). A void item adds nothing to W, T or L, so it
  weighs like a loss in the figure.

Under ``authors``: ``unparsed`` counts the void items; the bootstrap resamples all N items, a
void one with value 0 (so the CI is around the same figure); the sign test compares W and L;
position consistency and mean scores are over the non-void items.

Answer lengths, where the file holds the answers: mean length in *words* (whitespace-separated
pieces of the answer text: no tokenizer, so models with different tokenizers compare) and a
length-controlled view of the win rate (:func:`length_view`).

The reading of our replay files lives here too (:func:`read_replay`); the command that
replays judgment files of any format is :mod:`.winrate`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from phasedsft.records import DataError

WIN, TIE, LOSE = "win", "tie", "lose"
VERDICTS = (WIN, TIE, LOSE)
VALUE = {WIN: 1.0, TIE: 0.5, LOSE: 0.0}

RULES: dict[str, dict[tuple[str, str], str]] = {
    "paper": {
        (WIN, WIN): WIN,
        (WIN, TIE): WIN,
        (TIE, WIN): WIN,
        (TIE, TIE): TIE,
        (WIN, LOSE): TIE,
        (LOSE, WIN): TIE,
        (LOSE, LOSE): LOSE,
        (LOSE, TIE): LOSE,
        (TIE, LOSE): LOSE,
    },
    "fastchat": {(a, b): (a if a == b and a != TIE else TIE) for a in VERDICTS for b in VERDICTS},
}
# The authors' script folds the two orders exactly as the paper's text says
# (win_tie_loss_stat.py:114-128); what differs is parsing and what N counts (summarize).
RULES["authors"] = RULES["paper"]
AUTHORS = "authors"

REPLAY_FIELDS = ("id", "instruction", "answer_a", "answer_b", "review_ab", "review_ba")


class ParseError(ValueError):
    """A judge's reply does not contain two scores where we look for them."""


# ------------------------------------------------------------------ parsing reviews

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_ASSISTANT = re.compile(r"\b(?:assistant|answer|response)[\s_]*[12]\b(?:'s)?", re.I)
_OUT_OF = re.compile(r"\s*(?:/|out\s+of)\s*10(?:\.0+)?\b", re.I)
_LABELLED = re.compile(
    rf"\b(?:assistant|answer|response)[\s_]*([12])\b[\"']?(?:'s)?\s*(?:score|rating)?\s*[:=\-]\s*\**\s*({_NUMBER})",
    re.I,
)


def _in_range(values: Sequence[float], where: str) -> tuple[float, float]:
    a, b = values
    if not (0 <= a <= 10 and 0 <= b <= 10):
        raise ParseError(f"{where}: scores {a:g} {b:g} are outside 0-10")
    return a, b


def _from_json(text: str) -> tuple[float, float] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if isinstance(obj, list) and len(obj) == 2:
        values = obj
    elif isinstance(obj, dict):
        values = [v for k, v in obj.items() if "explan" not in str(k).lower()]
    else:
        return None
    if len(values) != 2 or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        return None
    return _in_range([float(v) for v in values], "JSON reply")


def parse_scores(text: str | None) -> tuple[float, float]:
    """The two scores, in the order the answers were shown.

    Understood: a first line "8 7", "8, 7", "8.5 9", "8/10 7/10", "Assistant 1: 8
    Assistant 2: 7" (markdown emphasis ignored), a JSON reply ``{"assistant_1": 8,
    "assistant_2": 7}`` or ``[8, 7]``, and labelled scores anywhere ("Assistant 1 score: 8", also in a JSON reply cut off by the
    token limit).
    Anything else raises :class:`ParseError` with the reason.
    """
    if text is None or not text.strip():
        raise ParseError("empty reply")
    text = text.strip()
    if text.startswith(("{", "[")):
        parsed = _from_json(text)
        if parsed is not None:
            return parsed
    first = next(line for line in text.splitlines() if line.strip())
    line = first.replace("*", "").replace("#", "")
    line = _OUT_OF.sub(" ", _ASSISTANT.sub(" ", line))
    numbers = re.findall(_NUMBER, line.replace(",", " ").replace(";", " "))
    if len(numbers) == 2:
        return _in_range([float(n) for n in numbers], "first line")
    labelled: dict[str, float] = {}
    for which, value in _LABELLED.findall(text.replace("*", "")):
        labelled.setdefault(which, float(value))
    if len(labelled) == 2:
        return _in_range([labelled["1"], labelled["2"]], "labelled scores")
    raise ParseError(f"no pair of scores on the first line: {first[:80]!r}")


def parse_scores_authors(text: str | None) -> tuple[float, float] | None:
    """The authors' parser (``eval.py:41-54``, the same as ``win_tie_loss_stat.py:14-29``).

    Their ``eval.py`` NFKC-normalizes the reply (``:221``), parses it (``:223``) and stores the
    pair in ``score`` (``:226``), which ``win_tie_loss_stat.py`` takes as it is (``:16``). So:
    NFKC, first line (split on "\\n"), commas to spaces, split on single spaces, exactly two
    parts, each read by ``float``; ``None`` where theirs returns ``[-1, -1]``.
    """
    if not isinstance(text, str):
        return None
    text = unicodedata.normalize("NFKC", text)
    parts = text.split("\n")[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


# ------------------------------------------------------------------ verdicts and folding


def verdict(score_a: float, score_b: float) -> str:
    return WIN if score_a > score_b else LOSE if score_a < score_b else TIE


def fold(v_ab: str, v_ba: str, rule: str = "paper") -> str:
    """One outcome from answer A's verdicts in the two orders."""
    try:
        table = RULES[rule]
    except KeyError:
        raise ValueError(f"unknown folding rule {rule!r}; known: {sorted(RULES)}") from None
    return table[(v_ab, v_ba)]


@dataclass
class Judged:
    """One item after parsing both reviews (A's point of view)."""

    id: str
    scores_ab: tuple[float, float] | None  # as shown: (A, B)
    scores_ba: tuple[float, float] | None  # as shown: (B, A)
    error: str | None = None
    category: dict[str, Any] = field(default_factory=dict)
    review_ab: str | None = None  # the raw texts, for parsers other than ours (rule=authors)
    review_ba: str | None = None
    # files that hold verdicts, not scores: A's verdict in each order (FastChat's g1/g2 winner)
    given: tuple[str, str] | None = None
    # ... or one outcome, already folded (an AlpacaEval preference): no rule applies to it
    outcome: str | None = None
    length_a: int | None = None  # the answers' lengths in words (:func:`words`), where known
    length_b: int | None = None
    # the judge's first reply in each order where it was asked again (None: the review itself):
    # what the authors' script, which never asks again, records (rule=authors reads these)
    first_ab: str | None = None
    first_ba: str | None = None

    @property
    def parsed(self) -> bool:
        if self.outcome is not None or self.given is not None:
            return True
        return self.scores_ab is not None and self.scores_ba is not None

    def verdicts(self) -> tuple[str, str]:
        if self.given is not None:
            return self.given
        assert self.scores_ab is not None and self.scores_ba is not None
        return (
            verdict(self.scores_ab[0], self.scores_ab[1]),
            verdict(self.scores_ba[1], self.scores_ba[0]),
        )


def words(text: str | None) -> int | None:
    """An answer's length in words: its whitespace-separated pieces (``None`` for no answer)."""
    return None if text is None else len(text.split())


def judge_item(
    item_id: str,
    review_ab: str | None,
    review_ba: str | None,
    category: Mapping[str, Any] | None = None,
    answer_a: str | None = None,
    answer_b: str | None = None,
    first_ab: str | None = None,
    first_ba: str | None = None,
) -> Judged:
    errors: list[str] = []
    scores: list[tuple[float, float] | None] = []
    for name, text in (("review_ab", review_ab), ("review_ba", review_ba)):
        try:
            scores.append(parse_scores(text))
        except ParseError as e:
            errors.append(f"{name}: {e}")
            scores.append(None)
    return Judged(
        str(item_id),
        scores[0],
        scores[1],
        "; ".join(errors) or None,
        dict(category or {}),
        review_ab,
        review_ba,
        length_a=words(answer_a),
        length_b=words(answer_b),
        first_ab=first_ab,
        first_ba=first_ba,
    )


def as_authors(j: Judged) -> Judged:
    """The item as the authors' script sees it: their parser on the judge's first reply in each
    order (their script never asks again); unless all four scores are > 0
    (``win_tie_loss_stat.py:112``; so also a "nan" score) the item is void."""
    ab = parse_scores_authors(j.first_ab if j.first_ab is not None else j.review_ab)
    ba = parse_scores_authors(j.first_ba if j.first_ba is not None else j.review_ba)
    reasons = [
        f"{name}: "
        + (
            "not two numbers on the first line"
            if pair is None
            else f"scores {pair[0]:g} {pair[1]:g}"
        )
        for name, pair in (("review_ab", ab), ("review_ba", ba))
        if pair is None or not all(s > 0 for s in pair)
    ]
    void = bool(reasons)
    return replace(
        j,
        scores_ab=None if void else ab,
        scores_ba=None if void else ba,
        error="void for the authors' script (" + "; ".join(reasons) + ")" if void else None,
        given=None,
        outcome=None,
    )


def outcome_of(j: Judged, rule: str = "paper") -> str | None:
    """The item's folded outcome under ``rule`` (``None``: left out, or void for the authors)."""
    item = as_authors(j) if rule == AUTHORS else j
    if not item.parsed:
        return None
    return item.outcome if item.outcome is not None else fold(*item.verdicts(), rule=rule)


# ------------------------------------------------------------------ the figure and its uncertainty


@dataclass
class WinRate:
    rule: str
    wins: int
    ties: int
    losses: int
    n: int
    unparsed: int
    win_rate: float | None  # 100 * (W + T/2) / N - 50
    ci_low: float | None
    ci_high: float | None
    sign_test_p: float | None
    position_consistency: float | None
    bootstrap: int
    mean_score_a: float | None = None
    mean_score_b: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def cell(self) -> str:
        """Compact table cell: ``+4.2 [-1.3, 9.8]``."""
        if self.win_rate is None:
            return "n/a"
        return f"{self.win_rate:+.1f} [{self.ci_low:+.1f}, {self.ci_high:+.1f}]"

    def lines(
        self,
        counted: str = "judged in both orders",
        left_out: str = "unparseable review",
        fold: str | None = None,
    ) -> list[str]:
        """The figures in words; ``counted`` / ``left_out`` say what an item and a left-out
        item are (other files than ours: "with a preference", "no preference"); ``fold`` how
        the outcomes were reached (default: "<rule> rule")."""
        if self.win_rate is None:
            return [f"no parsed items (unparsed: {self.unparsed})"]
        return (
            [
                f"items: {self.n} {counted} ({self.unparsed} "
                + (
                    "void: kept in N, adding nothing, as the authors' script)"
                    if self.rule == AUTHORS
                    else f"left out: {left_out})"
                ),
                f"win / tie / lose ({fold or self.rule + ' rule'}): "
                f"{self.wins} / {self.ties} / {self.losses}",
                f"win rate (the paper's figure, 100 * (W + T/2) / N - 50): {self.win_rate:+.2f}  "
                f"(95% bootstrap CI {self.ci_low:+.2f} .. {self.ci_high:+.2f}; "
                "0 = parity, range -50..+50)",
                f"sign test (wins vs losses, two-sided): p = {self.sign_test_p:.4g}",
            ]
            + (
                [
                    f"position consistency: {self.position_consistency:.1%} of items get the same verdict in both orders"
                ]
                if self.position_consistency is not None
                else []
            )
            + (
                [f"mean scores: A {self.mean_score_a:.2f}, B {self.mean_score_b:.2f}"]
                if self.mean_score_a is not None and self.mean_score_b is not None
                else []
            )
        )


def figure(outcomes: Sequence[str]) -> float:
    return 100.0 * sum(VALUE[o] for o in outcomes) / len(outcomes) - 50.0


def bootstrap_ci(
    values: Sequence[float], resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of ``100 * mean - 50`` over items resampled with replacement.

    Each value is one item's folded outcome (1, 0.5, 0), which already pairs the two
    models' answers to the same question, so resampling items is the paired bootstrap.
    """
    if resamples < 1:
        raise DataError(f"bootstrap resamples must be at least 1, got {resamples}")
    arr = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(arr), size=(resamples, len(arr)))
    stats = 100.0 * arr[idx].mean(axis=1) - 50.0
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def clustered_bootstrap_ci(
    values: Sequence[float],
    clusters: Sequence[Any],
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of ``100 * mean - 50`` where whole clusters of values are resampled.

    ``clusters[i]`` names the cluster of ``values[i]`` (a question: the same question answered
    by the models of several training seeds is one cluster). Each resample draws as many
    clusters as there are, with replacement, and takes the mean of all the values they hold.
    With one value per cluster (in order) this is :func:`bootstrap_ci` draw for draw.
    """
    if resamples < 1:
        raise DataError(f"bootstrap resamples must be at least 1, got {resamples}")
    if len(values) != len(clusters):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster names")
    if not values:
        raise ValueError("no values to resample")
    index: dict[Any, int] = {}
    for c in clusters:
        index.setdefault(c, len(index))
    sums = np.zeros(len(index))
    counts = np.zeros(len(index))
    for v, c in zip(values, clusters, strict=True):
        sums[index[c]] += float(v)
        counts[index[c]] += 1
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(index), size=(resamples, len(index)))
    stats = 100.0 * sums[idx].sum(axis=1) / counts[idx].sum(axis=1) - 50.0
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def item_values(judged: Sequence[Judged], rule: str = "paper") -> list[tuple[int, float]]:
    """The items :func:`summarize` counts, in their order: (position in ``judged``, value:
    1 win, 0.5 tie, 0 loss). Unparsed items are left out; under ``authors`` a void item stays,
    with value 0. ``100 * mean - 50`` of the values is :func:`summarize`'s win rate."""
    out = []
    for i, j in enumerate(judged):
        o = outcome_of(j, rule)
        if o is not None:
            out.append((i, VALUE[o]))
        elif rule == AUTHORS:
            out.append((i, 0.0))
    return out


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial test of wins vs losses (ties left out); 1.0 with none."""
    n = wins + losses
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(wins, n, 0.5).pvalue)


def summarize(
    judged: Iterable[Judged], rule: str = "paper", resamples: int = 2000, seed: int = 0
) -> WinRate:
    items = list(judged)
    if rule == AUTHORS:
        items = [as_authors(j) for j in items]
    ok = [j for j in items if j.parsed]
    outcomes = [j.outcome if j.outcome is not None else fold(*j.verdicts(), rule=rule) for j in ok]
    values = [VALUE[o] for o in outcomes]
    if rule == AUTHORS:  # void items stay in N and add nothing (value 0)
        values += [0.0] * (len(items) - len(ok))
    if not values:
        return WinRate(rule, 0, 0, 0, 0, len(items), None, None, None, None, None, resamples)
    n = len(values)
    lo, hi = bootstrap_ci(values, resamples, seed)
    wins, ties, losses = (outcomes.count(v) for v in VERDICTS)
    two = [j.verdicts() for j in ok if j.outcome is None]  # items with a verdict per order
    scored = [j for j in ok if j.scores_ab is not None and j.scores_ba is not None]
    score_a = [(j.scores_ab[0] + j.scores_ba[1]) / 2 for j in scored]  # type: ignore[index]
    score_b = [(j.scores_ab[1] + j.scores_ba[0]) / 2 for j in scored]  # type: ignore[index]
    return WinRate(
        rule=rule,
        wins=wins,
        ties=ties,
        losses=losses,
        n=n,
        unparsed=len(items) - len(ok),
        win_rate=100.0 * sum(values) / n - 50.0,
        ci_low=lo,
        ci_high=hi,
        sign_test_p=sign_test(wins, losses),
        position_consistency=sum(a == b for a, b in two) / len(two) if two else None,
        bootstrap=resamples,
        mean_score_a=float(np.mean(score_a)) if scored else None,
        mean_score_b=float(np.mean(score_b)) if scored else None,
    )


def by_category(
    judged: Sequence[Judged], rule: str = "paper", resamples: int = 2000, seed: int = 0
) -> dict[str, dict[str, WinRate]]:
    """Win rate per value of every category key the items carry (``{"Skill": {"Math": ...}}``)."""
    keys = sorted({k for j in judged for k in j.category})
    out: dict[str, dict[str, WinRate]] = {}
    for key in keys:
        groups: dict[str, list[Judged]] = {}
        for j in judged:
            if key in j.category:
                groups.setdefault(str(j.category[key]), []).append(j)
        out[key] = {v: summarize(g, rule, resamples, seed) for v, g in sorted(groups.items())}
    return out


# ------------------------------------------------------------------ answer lengths

LENGTH_RATIO = 1.5  # length_view's default: the longer answer at most 1.5 x the shorter


@dataclass
class LengthView:
    """Answer lengths and a length-controlled view of one comparison (lengths in words).

    Judges favour longer answers, so a model can gain win rate by talking more. Two plain
    views, with no model of the judge behind them:

    - ``matched``: the win rate over the *length-matched* items only, those whose longer
      answer has at most ``ratio`` times the words of the shorter one (two empty answers
      match). On them length can explain little of the verdict. They are not a random
      sample of the test set (short factual questions get similar-length answers more
      often), so read the figure with its own n and CI, beside the full one.
    - ``longer_won`` of ``longer_decided``: of the items with a winner (win or loss, under
      the same rule) whose answers differ in length, how many the longer answer won. About
      half: the judge shows no taste for length here; near all: length and verdict go
      together (longer answers may also be better, so this measures association, not cause).
    """

    unit: str
    items: int  # items with both answers' lengths
    mean_a: float
    mean_b: float
    ratio: float
    matched_items: int
    matched: WinRate
    longer_won: int
    longer_decided: int

    @property
    def longer_win_share(self) -> float | None:
        return self.longer_won / self.longer_decided if self.longer_decided else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "longer_win_share": self.longer_win_share}

    def lines(self) -> list[str]:
        m = self.matched
        share = self.longer_win_share
        return [
            f"answer length ({self.unit}, mean over {self.items} items): "
            f"A {self.mean_a:.1f}, B {self.mean_b:.1f}",
            f"length-matched items (longer <= {self.ratio:g} x shorter): {self.matched_items} of "
            f"{self.items}; win rate {m.cell()}",
            "longer answer won "
            + (
                f"{share:.0%} of the {self.longer_decided} items with a winner and unequal lengths"
                if share is not None
                else "- (no item with a winner and unequal lengths)"
            ),
        ]


def matched_length(a: int, b: int, ratio: float) -> bool:
    """Whether two lengths are within ``ratio`` of each other (two zeros match)."""
    return max(a, b) <= ratio * min(a, b)


def length_view(
    judged: Sequence[Judged],
    rule: str = "paper",
    ratio: float = LENGTH_RATIO,
    resamples: int = 2000,
    seed: int = 0,
) -> LengthView | None:
    """See :class:`LengthView`; ``None`` when no item carries both answers' lengths."""
    if ratio < 1:
        raise DataError(f"the length ratio must be at least 1, got {ratio:g}")
    known = [(j, (j.length_a, j.length_b)) for j in judged]
    sized = [(j, a, b) for j, (a, b) in known if a is not None and b is not None]
    if not sized:
        return None
    matched = [j for j, a, b in sized if matched_length(a, b, ratio)]
    outcomes = [(outcome_of(j, rule), a, b) for j, a, b in sized]
    decided = [(o, a, b) for o, a, b in outcomes if o in (WIN, LOSE) and a != b]
    return LengthView(
        unit="words",
        items=len(sized),
        mean_a=float(np.mean([a for _, a, _ in sized])),
        mean_b=float(np.mean([b for _, _, b in sized])),
        ratio=ratio,
        matched_items=len(matched),
        matched=summarize(matched, rule, resamples, seed),
        longer_won=sum((o == WIN) == (a > b) for o, a, b in decided),
        longer_decided=len(decided),
    )


# ------------------------------------------------------------------ our replay files


class ReplayError(ValueError):
    pass


def json_object(line: str, where: str) -> dict[str, Any]:
    """One JSON-lines row, which must be an object; else a ReplayError naming ``where``."""
    try:
        row = json.loads(line)
    except ValueError as e:
        raise ReplayError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(row, dict):
        raise ReplayError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def read_replay(path: str | Path) -> list[Judged]:
    """Parse a replay file (see the module docstring); errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ReplayError(f"{p}: file not found")
    items, seen = [], set()
    with p.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{p}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ReplayError(
                    f"{where}: not UTF-8 text (byte {e.start + 1} of the line)"
                ) from None
            if not line.strip():
                continue
            row = json_object(line, where)
            missing = [k for k in ("id", "review_ab", "review_ba") if k not in row]
            if missing:
                raise ReplayError(f"{where}: missing field(s) {', '.join(missing)}")
            for k in ("review_ab", "review_ba"):
                if row[k] is not None and not isinstance(row[k], str):
                    raise ReplayError(f"{where}: field '{k}' must be a string (the raw judge text)")
            answers = [optional_text(row, k, where) for k in ("answer_a", "answer_b")]
            category = checked_category(row.get("category"), where)
            if str(row["id"]) in seen:
                raise ReplayError(f"{where}: duplicate id {row['id']!r}")
            seen.add(str(row["id"]))
            firsts = [optional_text(row, k, where) for k in ("first_review_ab", "first_review_ba")]
            items.append(
                judge_item(
                    row["id"], row["review_ab"], row["review_ba"], category, *answers, *firsts
                )
            )
    if not items:
        raise ReplayError(f"{p}: no items")
    return items


def optional_text(row: Mapping[str, Any], key: str, where: str) -> str | None:
    """``row[key]`` when it is a string; absent or null: ``None``; anything else an error."""
    value = row.get(key)
    if value is not None and not isinstance(value, str):
        raise ReplayError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    return value


def checked_category(category: Any, where: str) -> dict[str, Any] | None:
    """A row's ``category``: an object of plain values (``{"Skill": "Math"}``) or absent."""
    if category is not None and not (
        isinstance(category, dict)
        and all(isinstance(v, str | int | float | bool) for v in category.values())
    ):
        raise ReplayError(
            f"{where}: field 'category' must be an object of plain values, "
            f'e.g. {{"Skill": "Math"}}; got {json.dumps(category)[:60]}'
        )
    return category
