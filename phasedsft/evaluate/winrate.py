"""``python -m phasedsft.evaluate.winrate``: the win rate of judgments you already have.

What folding the two orders means, the rules and the figure: :mod:`.folding` (the library;
its names are re-exported here for code that imported them from this module).

Replay judgments you already have::

    python -m phasedsft.evaluate.winrate FILE [--format replay|fastchat|cherry|alpacaeval]
        [--rule paper|fastchat|authors] [--models MODEL_A MODEL_B] [--json]

``replay`` (ours): one JSON object per line: ``id``, ``instruction``, ``answer_a``, ``answer_b``,
``review_ab`` (raw judge text, answer_a shown first), ``review_ba`` (answer_b shown first).
FastChat ``*_pair.jsonl`` judgments, AlpaGasus / Cherry LLM review logs and AlpacaEval
annotations are read too, the format told from the content (:mod:`.formats`).

The rule, when none is asked for: ``fastchat`` for a FastChat file (counted as FastChat counts
it), ``paper`` for the others; the output names it. An AlpacaEval file's items are decided
already (one preference each), so no rule applies (JSON ``rule``: null). For FastChat and
AlpacaEval files the command also prints the figures their own tool reports, under that
tool's names and on its scale (:class:`~.formats.FastChatFigures`: ``win_rate``,
``loss_rate``, ``win_rate_adjusted``, fractions of 1; :class:`~.formats.AlpacaEvalFigures`:
``win_rate`` = the mean preference, ``discrete_win_rate``, ``length_controlled_winrate``
where the file carries it, 0..100), beside the paper's figure; ``--json`` puts them under the
key ``fastchat`` / ``alpacaeval``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from phasedsft.evaluate.folding import (
    AUTHORS,
    LENGTH_RATIO,
    LOSE,
    REPLAY_FIELDS,
    RULES,
    TIE,
    VALUE,
    VERDICTS,
    WIN,
    Judged,
    LengthView,
    ParseError,
    ReplayError,
    WinRate,
    as_authors,
    bootstrap_ci,
    by_category,
    checked_category,
    clustered_bootstrap_ci,
    figure,
    fold,
    item_values,
    json_object,
    judge_item,
    length_view,
    matched_length,
    optional_text,
    outcome_of,
    parse_scores,
    parse_scores_authors,
    read_replay,
    sign_test,
    summarize,
    verdict,
    words,
)
from phasedsft.evaluate.formats import (
    FORMATS,
    default_rule,
    owner_figures,
    read_judgments,
    rule_applies,
)

# the library, re-exported: code imported it from this module
__all__ = [
    "AUTHORS",
    "LENGTH_RATIO",
    "LOSE",
    "REPLAY_FIELDS",
    "RULES",
    "TIE",
    "VALUE",
    "VERDICTS",
    "WIN",
    "Judged",
    "LengthView",
    "ParseError",
    "ReplayError",
    "WinRate",
    "as_authors",
    "bootstrap_ci",
    "by_category",
    "checked_category",
    "clustered_bootstrap_ci",
    "figure",
    "fold",
    "item_values",
    "json_object",
    "judge_item",
    "length_view",
    "main",
    "matched_length",
    "optional_text",
    "outcome_of",
    "parse_scores",
    "parse_scores_authors",
    "read_replay",
    "sign_test",
    "summarize",
    "verdict",
    "words",
]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def ratio_at_least_1(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m phasedsft.evaluate.winrate",
        description="Win rate of answer A over answer B from pairwise reviews in both orders.",
    )
    parser.add_argument(
        "file",
        help="judgments: our JSONL (id, review_ab, review_ba, ...), FastChat *_pair.jsonl, "
        "an AlpaGasus / Cherry LLM review log, or AlpacaEval annotations",
    )
    parser.add_argument(
        "--format", choices=FORMATS, default=None, help="the file's format (default: from content)"
    )
    parser.add_argument(
        "--rule",
        choices=sorted(RULES),
        default=None,
        help="how a verdict per order folds into one outcome (default: fastchat for FastChat "
        "pair files, as FastChat counts them; paper for the others)",
    )
    parser.add_argument(
        "--models",
        nargs=2,
        metavar=("MODEL_A", "MODEL_B"),
        help="fastchat / alpacaeval files: the two models to compare, A first",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--bootstrap", type=positive_int, default=2000, help="bootstrap resamples (>= 1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--by", action="append", default=[], help="also break down by this category key"
    )
    parser.add_argument(
        "--length-ratio",
        type=ratio_at_least_1,
        default=LENGTH_RATIO,
        help="length-matched items: the longer answer at most this many times the shorter",
    )
    args = parser.parse_args(argv)
    try:
        found = read_judgments(args.file, args.format, args.models)
        rule = args.rule or default_rule(found.format)
        refused = rule_applies(found.format, rule)
        if refused:
            raise ReplayError(f"{args.file}: {refused}")
    except ReplayError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    judged = found.items
    result = summarize(judged, rule, args.bootstrap, args.seed)
    lengths = length_view(judged, rule, args.length_ratio, args.bootstrap, args.seed)
    owners = owner_figures(found)
    # the items the figure leaves out (rule=authors: its void items, kept in N)
    left_out = [j for j in (map(as_authors, judged) if rule == AUTHORS else judged) if not j.parsed]
    categories = {
        k: v
        for k, v in by_category(judged, rule, args.bootstrap, args.seed).items()
        if not args.by or k in args.by
    }
    decided = found.format in DECIDED  # one outcome per item: no rule folds anything
    if args.json:
        obj = result.to_json()
        obj["format"] = found.format
        obj["rule"] = None if decided else rule
        if found.models:
            obj["models"] = list(found.models)
        if owners is not None:
            obj[found.format] = owners.to_json()  # the file's own tool's figures, its names
        obj["unparsed_ids"] = [j.id for j in left_out][:100]
        if lengths:
            obj["lengths"] = lengths.to_json()
        if categories:
            obj["by_category"] = {
                k: {v: w.to_json() for v, w in g.items()} for k, g in categories.items()
            }
        print(json.dumps(obj))
        return 0
    counted, missing = ITEMS_OF.get(found.format, ITEMS_OF["replay"])
    fold = DECIDED.get(found.format)
    print(
        "\n".join(
            _heading(found.format, found.models, rule, args.rule)
            + (owners.lines() if owners is not None else [])
            + result.lines(counted, missing, fold)
        )
    )
    if lengths:
        print("\n".join(lengths.lines()))
    for j in left_out[:5]:
        print(f"  {'void' if rule == AUTHORS else 'unparsed'} {j.id}: {j.error}")
    for key, groups in categories.items():
        print(f"\nby {key}:")
        for value, w in groups.items():
            print(f"  {value:<24} n={w.n:<4} {w.cell()}")
    return 0


# what an item is, and what leaves one out, in each format's terms
ITEMS_OF = {
    "replay": ("judged in both orders", "unparseable review"),
    "fastchat": ("judged in both orders", "a verdict of 'error'"),
    "alpacaeval": ("with a preference", "null preference"),
}


# formats whose items come already decided, one outcome each: how they are counted
DECIDED = {
    "alpacaeval": "AlpacaEval's preferences: 2 win, 1 loss, 1.5 draw, between: the side it leans to"
}

# what each folding rule does, in a phrase
RULE_TEXT = {
    "paper": "the paper's: win = win twice or win + tie, tie = tie twice or win + lose",
    "fastchat": "FastChat's: a win or a loss only when both orders agree, anything else a tie",
    "authors": "the authors' win_tie_loss_stat.py: the paper's fold, their parser, void items in N",
}


def _heading(fmt: str, models: tuple[str, str] | None, rule: str, asked: str | None) -> list[str]:
    """The file's format and models, and the folding rule used (and whether it was asked)."""
    lines = [f"format: {fmt}" + (f" (A = {models[0]}, B = {models[1]})" if models else "")]
    if fmt in DECIDED:
        lines.append(
            "fold: none: one preference per item, already decided"
            + (f" (--rule {asked} does not change it)" if asked else "")
        )
    else:
        lines.append(
            f"fold rule: {rule} ({RULE_TEXT[rule]}; "
            + ("as asked)" if asked else f"the default for {fmt} files)")
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
