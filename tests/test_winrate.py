"""Folding rules, review parsing, the win-rate figure and its statistics, the replay command."""

from __future__ import annotations

import itertools
import json
import re
import sys

import pytest
from conftest import ref_path
from helpers import run_command

from phasedsft.evaluate.winrate import (
    LOSE,
    TIE,
    VERDICTS,
    WIN,
    ParseError,
    ReplayError,
    bootstrap_ci,
    by_category,
    fold,
    judge_item,
    main,
    parse_scores,
    read_replay,
    sign_test,
    summarize,
    verdict,
)

# The paper's rule, written out from its text for all nine pairs of verdicts.
PAPER = {
    (WIN, WIN): WIN,
    (WIN, TIE): WIN,
    (TIE, WIN): WIN,
    (TIE, TIE): TIE,
    (WIN, LOSE): TIE,
    (LOSE, WIN): TIE,
    (LOSE, LOSE): LOSE,
    (LOSE, TIE): LOSE,
    (TIE, LOSE): LOSE,
}
FASTCHAT = {
    (WIN, WIN): WIN,
    (WIN, TIE): TIE,
    (TIE, WIN): TIE,
    (TIE, TIE): TIE,
    (WIN, LOSE): TIE,
    (LOSE, WIN): TIE,
    (LOSE, LOSE): LOSE,
    (LOSE, TIE): TIE,
    (TIE, LOSE): TIE,
}


@pytest.mark.parametrize("pair", list(itertools.product(VERDICTS, VERDICTS)))
def test_folding_rules_on_all_nine_pairs(pair):
    assert fold(*pair, rule="paper") == PAPER[pair]
    assert fold(*pair, rule="fastchat") == FASTCHAT[pair]
    # Both rules are symmetric in the order, and swapping the models mirrors the outcome.
    mirror = {WIN: LOSE, LOSE: WIN, TIE: TIE}
    for rule in ("paper", "fastchat"):
        assert fold(pair[1], pair[0], rule) == fold(*pair, rule)
        assert fold(mirror[pair[0]], mirror[pair[1]], rule) == mirror[fold(*pair, rule)]


def test_unknown_rule_is_named():
    with pytest.raises(ValueError, match="unknown folding rule 'strict'"):
        fold(WIN, WIN, "strict")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8 7\nAssistant 1 was more detailed.", (8, 7)),
        ("8, 7\nbecause", (8, 7)),
        ("8.5 9", (8.5, 9)),
        ("\n\n  9   10  \nexplanation", (9, 10)),
        ("8/10 7/10\nwhy", (8, 7)),
        ("Assistant 1: 8, Assistant 2: 7", (8, 7)),
        ("**8** **6**\n", (8, 6)),
        ("Score: 7 out of 10; 9 out of 10", (7, 9)),
        ('{"assistant_1": 6, "assistant_2": 9, "explanation": "x"}', (6, 9)),
        ("[3, 4]", (3, 4)),
        ('{"assistant_1": 4, "assistant_2": 1, "explanation": "cut off by max_tok', (4, 1)),
        ("Here is my evaluation.\nAssistant 1 score: 4\nAssistant 2 score: 8", (4, 8)),
    ],
)
def test_parse_scores_understands_common_layouts(text, expected):
    assert parse_scores(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", None, "Both answers are good.", "8\nonly one", "8 7 6", "12 3", '{"a": 8}'],
)
def test_parse_scores_refuses_what_it_cannot_read(text):
    with pytest.raises(ParseError):
        parse_scores(text)


def test_verdicts_take_answer_a_side_in_both_orders():
    # A shown first scores 8 vs 7; shown second (first number is B) scores 9 vs 5.
    item = judge_item("x", "8 7", "5 9")
    assert item.verdicts() == (WIN, WIN)
    assert judge_item("y", "7 7", "9 5").verdicts() == (TIE, LOSE)
    assert verdict(3, 3) == TIE


def test_summary_counts_figure_and_unparsed():
    items = [
        judge_item("w1", "8 7", "5 9"),  # win, win -> win
        judge_item("w2", "8 7", "7 7"),  # win, tie -> win
        judge_item("t1", "8 7", "9 5"),  # win, lose -> tie (paper)
        judge_item("l1", "6 7", "9 5"),  # lose, lose -> lose
        judge_item("u1", "no idea", "9 5"),  # unparsed: out of N
    ]
    w = summarize(items, "paper", resamples=500)
    assert (w.wins, w.ties, w.losses, w.n, w.unparsed) == (2, 1, 1, 4, 1)
    assert w.win_rate == pytest.approx(100 * (2 + 0.5) / 4 - 50)
    assert w.ci_low <= w.win_rate <= w.ci_high
    assert w.position_consistency == pytest.approx(2 / 4)  # w1 and l1 agree across orders
    fc = summarize(items, "fastchat", resamples=500)
    assert (fc.wins, fc.ties, fc.losses) == (1, 2, 1)


def test_sign_test_matches_the_binomial_distribution():
    from math import comb

    # 9 wins, 1 loss: two-sided exact p = 2 * P(X >= 9) for X ~ Bin(10, 1/2)
    expected = 2 * sum(comb(10, k) for k in (9, 10)) / 2**10
    assert sign_test(9, 1) == pytest.approx(expected)
    assert sign_test(0, 0) == 1.0
    assert sign_test(5, 5) == pytest.approx(1.0)


def test_bootstrap_ci_is_seeded_and_shrinks_with_n():
    values = [1.0] * 30 + [0.0] * 20
    a = bootstrap_ci(values, 1000, seed=1)
    assert a == bootstrap_ci(values, 1000, seed=1)
    assert a[0] < 10 < a[1]  # point estimate 100*0.6-50 = 10
    wide = bootstrap_ci(values, 1000, seed=1)
    narrow = bootstrap_ci(values * 16, 1000, seed=1)
    assert (narrow[1] - narrow[0]) < (wide[1] - wide[0]) / 2
    assert bootstrap_ci([0.5] * 10, 200) == (0.0, 0.0)


def test_per_category_breakdown():
    items = [
        judge_item("a", "8 7", "5 9", {"Skill": "Math"}),
        judge_item("b", "3 7", "9 5", {"Skill": "Math"}),
        judge_item("c", "8 7", "5 9", {"Skill": "Code"}),
    ]
    cats = by_category(items, resamples=100)
    assert cats["Skill"]["Math"].n == 2 and cats["Skill"]["Math"].win_rate == 0.0
    assert cats["Skill"]["Code"].win_rate == 50.0


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_replay_command_json(tmp_path, capsys):
    rows = [
        {
            "id": i,
            "instruction": "q",
            "answer_a": "a",
            "answer_b": "b",
            "review_ab": ab,
            "review_ba": ba,
        }
        for i, (ab, ba) in enumerate([("8 7", "5 9"), ("8 7", "9 5"), ("2 7", "9 5"), ("x", "1 1")])
    ]
    f = _write(tmp_path / "r.jsonl", rows)
    assert main([str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["wins"], out["ties"], out["losses"], out["n"], out["unparsed"]) == (1, 1, 1, 3, 1)
    assert out["win_rate"] == pytest.approx(0.0)
    assert out["ci_low"] <= 0 <= out["ci_high"]
    assert out["unparsed_ids"] == ["3"]
    assert main([str(f), "--rule", "fastchat"]) == 0
    text = capsys.readouterr().out
    assert "win / tie / lose (fastchat rule): 1 / 1 / 1" in text


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": 1, "review_ab": "8 7", "review_ba": "7 8"}\nnot json\n', ":2: not valid JSON"),
        ('{"id": 1, "review_ab": "8 7"}\n', ":1: missing field(s) review_ba"),
        ('{"id": 1, "review_ab": 8, "review_ba": "7 8"}\n', "must be a string"),
        ('{"id": 1, "review_ab": "8 7", "review_ba": "7 8"}\n' * 2, ":2: duplicate id 1"),
    ],
)
def test_replay_errors_name_file_and_line(tmp_path, content, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(ReplayError, match=re.escape(message)):
        read_replay(f)


def test_replay_module_exits_2_with_a_plain_message(tmp_path):
    proc = run_command(
        [sys.executable, "-m", "phasedsft.evaluate.winrate", str(tmp_path / "missing.jsonl")],
        check=False,
        no_traceback=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "file not found" in proc.stderr


SETS = ["koala", "lima", "sinstruct", "vicuna", "wizardlm"]


@pytest.mark.parametrize("name", SETS)
def test_replay_real_gpt4_reviews(tmp_path, name, capsys):
    """Real GPT-4 reviews (Cherry LLM logs), converted to the replay format."""
    src = json.loads(ref_path("judge_reviews_gpt4", f"{name}_reviews_gpt4.json").read_text())
    rows = [
        {
            "id": i,
            "instruction": next(
                r[k]
                for k in ("prompt", "instruction", "text", "Instruction", "conversations")
                if k in r
            ),
            "answer_a": r["Answer1"],
            "answer_b": r["Answer2"],
            "review_ab": r["review"],
            "review_ba": r["review_reverse"],
        }
        for i, r in enumerate(src["data"])
    ]
    f = _write(tmp_path / f"{name}.jsonl", rows)
    judged = read_replay(f)
    # Our parser reads exactly the scores the authors' pipeline parsed from the same texts...
    for j, r in zip(judged, src["data"], strict=True):
        assert list(j.scores_ab) == json.loads(r["scores"])
        assert list(j.scores_ba) == json.loads(r["scores_reverse"])
    # ...and the per-position means match the means the log itself reports.
    meta = json.loads(src["Meta_Info"]["average_scores"])
    assert sum(j.scores_ab[0] for j in judged) / len(judged) == pytest.approx(meta[0])
    assert sum(j.scores_ab[1] for j in judged) / len(judged) == pytest.approx(meta[1])

    # Independent count of the paper's rule straight from the logged score pairs.
    w = t = lose = 0
    for r in src["data"]:
        a1, b1 = json.loads(r["scores"])
        b2, a2 = json.loads(r["scores_reverse"])
        first = (a1 > b1) - (a1 < b1)
        second = (a2 > b2) - (a2 < b2)
        total = first + second
        w += total > 0
        lose += total < 0
        t += total == 0
    assert main([str(f), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["wins"], out["ties"], out["losses"], out["unparsed"]) == (w, t, lose, 0)
    assert out["n"] == len(src["data"])
    assert out["win_rate"] == pytest.approx(100 * (w + t / 2) / out["n"] - 50)


# ------------------------------------------------------------------ rule=authors


def test_authors_parser_takes_exactly_two_space_separated_numbers():
    from phasedsft.evaluate.winrate import parse_scores_authors

    assert parse_scores_authors("8 7\nexplanation") == (8.0, 7.0)
    assert parse_scores_authors("8.5 9") == (8.5, 9.0)
    assert parse_scores_authors("8,7") == (8.0, 7.0)  # the comma becomes the one space
    for text in ("8, 7", "8 7 ", "8  7", "Assistant 1: 8", "8/10 7/10", "", None, "eight 7"):
        assert parse_scores_authors(text) is None, text


def test_authors_rule_keeps_void_items_in_n_adding_nothing():
    from phasedsft.evaluate.winrate import summarize

    judged = [
        judge_item("win", "8 6", "6 8"),  # A wins both orders
        judge_item("tie", "7 7", "7 7"),
        judge_item("comma", "8, 6", "6 8"),  # ours parses it; theirs does not
        judge_item("zero", "0 6", "6 8"),  # a score <= 0 voids the item for them
    ]
    ours = summarize(judged, "paper", resamples=200)
    assert (ours.wins, ours.ties, ours.losses, ours.n, ours.unparsed) == (2, 2, 0, 4, 0)
    theirs = summarize(judged, "authors", resamples=200)
    assert (theirs.wins, theirs.ties, theirs.losses, theirs.n, theirs.unparsed) == (1, 1, 0, 4, 2)
    assert theirs.win_rate == pytest.approx(100 * (1 + 0.5) / 4 - 50)
    assert ours.win_rate == pytest.approx(100 * (2 + 1) / 4 - 50)


def test_cli_offers_the_authors_rule(tmp_path, capsys):
    f = _write(
        tmp_path / "r.jsonl",
        [
            {"id": 1, "review_ab": "8 6", "review_ba": "6 8"},
            {"id": 2, "review_ab": "8, 6", "review_ba": "6 8"},
        ],
    )
    assert main([str(f), "--rule", "authors", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["rule"], out["wins"], out["n"], out["unparsed"]) == ("authors", 1, 2, 1)
    assert out["win_rate"] == pytest.approx(0.0)


def authors_recount(rows):
    """The released win_tie_loss_stat.py's algorithm, written out plainly (test oracle)."""

    def parse(review):
        parts = review.split("\n")[0].replace(",", " ").split(" ")
        try:
            return [float(parts[0]), float(parts[1])] if len(parts) == 2 else [-1, -1]
        except ValueError:
            return [-1, -1]

    w = t = lose = 0
    for r in rows:
        pos, neg = parse(r["review"]), parse(r["review_reverse"])
        if not all(x > 0 for x in pos + neg):
            continue
        a = (pos[0] > pos[1]) - (pos[0] < pos[1]) + (neg[1] > neg[0]) - (neg[1] < neg[0])
        w, t, lose = w + (a > 0), t + (a == 0), lose + (a < 0)
    return w, t, lose, len(rows)


@pytest.mark.parametrize("name", SETS)
def test_authors_rule_on_real_gpt4_reviews(tmp_path, name, capsys):
    src = json.loads(ref_path("judge_reviews_gpt4", f"{name}_reviews_gpt4.json").read_text())
    rows = [
        {"id": i, "review_ab": r["review"], "review_ba": r["review_reverse"]}
        for i, r in enumerate(src["data"])
    ]
    f = _write(tmp_path / f"{name}.jsonl", rows)
    w, t, lose, n = authors_recount(src["data"])
    assert main([str(f), "--rule", "authors", "--json"]) == 0
    theirs = json.loads(capsys.readouterr().out)
    assert (theirs["wins"], theirs["ties"], theirs["losses"], theirs["n"]) == (w, t, lose, n)
    assert theirs["win_rate"] == pytest.approx(100 * (w + t / 2) / n - 50)
    assert main([str(f), "--rule", "paper", "--json"]) == 0
    ours = json.loads(capsys.readouterr().out)
    print(f"{name}: paper {ours['win_rate']:+.2f} authors {theirs['win_rate']:+.2f}")
    # where every first line is "a b", the two rules agree exactly; void items (kept in N,
    # adding nothing) can only pull the authors' figure down
    if theirs["unparsed"] == 0:
        assert theirs["win_rate"] == pytest.approx(ours["win_rate"])
    assert theirs["win_rate"] <= ours["win_rate"] + 1e-9


def test_reports_show_the_authors_figure_where_it_differs(tmp_path):
    from phasedsft.evaluate.report import Comparison, write_tables
    from phasedsft.evaluate.winrate import summarize

    def comparison(run, judged):
        return Comparison(
            ("alpaca", "llama2_7b", 0), "1-2-3", run, 3, 3, "koala", "one_off",
            summarize(judged, "paper", 200), authors=summarize(judged, "authors", 200),
        )  # fmt: skip

    same = comparison("clean", [judge_item("1", "8 6", "6 8"), judge_item("2", "7 7", "7 7")])
    void = comparison("void", [judge_item("1", "8 6", "6 8"), judge_item("2", "8, 6", "6 8")])
    text = write_tables(tmp_path, [same, void], {}, "one_off")
    assert "authors' script" in text
    rows = [line for line in text.splitlines() if line.startswith("| void stage")]
    assert len(rows) == 1 and "1 void, kept in N" in rows[0]
    assert not any(line.startswith("| clean stage") for line in text.splitlines())
    numbers = json.loads((tmp_path / "table.json").read_text())
    assert numbers[1]["authors_rule"]["unparsed"] == 1


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        (b'{"id": 1, "review_ab": "8 6", "review_ba": "\xff 8"}\n', [], "r.jsonl:1: not UTF-8"),
        (
            b'{"id": 1, "review_ab": "8 6", "review_ba": "6 8", "category": ["a"]}\n',
            [],
            "r.jsonl:1: field 'category' must be an object",
        ),
        (
            b'{"id": 1, "review_ab": "8 6", "review_ba": "6 8", "category": {"k": [1]}}\n',
            [],
            "field 'category'",
        ),
        (
            b'{"id": 1, "review_ab": "8 6", "review_ba": "6 8"}\n',
            ["--bootstrap", "0"],
            "at least 1",
        ),
        (
            b'{"id": 1, "review_ab": "8 6", "review_ba": "6 8"}\n',
            ["--bootstrap", "-5"],
            "at least 1",
        ),
    ],
)
def test_replay_bad_input_is_a_plain_error(tmp_path, content, args, message):
    (tmp_path / "r.jsonl").write_bytes(content)
    proc = run_command(
        [sys.executable, "-m", "phasedsft.evaluate.winrate", str(tmp_path / "r.jsonl"), *args],
        check=False,
        no_traceback=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_numeric_category_values_are_broken_down(tmp_path, capsys):
    f = _write(
        tmp_path / "r.jsonl",
        [
            {"id": i, "review_ab": "8 6", "review_ba": "6 8", "category": {"level": i % 2}}
            for i in range(4)
        ],
    )
    assert main([str(f), "--json", "--by", "level"]) == 0
    assert set(json.loads(capsys.readouterr().out)["by_category"]["level"]) == {"0", "1"}


# ------------------------------------------------------------------ answer lengths


def _sized(item_id, outcome, words_a, words_b):
    """An item A wins (or loses) in both orders, with answers of the given lengths in words."""
    reviews = {"win": ("8 6", "6 8"), "lose": ("6 8", "8 6")}[outcome]
    return judge_item(item_id, *reviews, None, "w " * words_a, "w " * words_b)


def longer_always_wins():
    """A is 3x longer on 10 items and wins them; B is 3x longer on 4 and wins them; on 6
    items of equal length each side wins 3."""
    return (
        [_sized(f"a{i}", "win", 30, 10) for i in range(10)]
        + [_sized(f"b{i}", "lose", 10, 30) for i in range(4)]
        + [_sized(f"e{i}", "win" if i % 2 else "lose", 20, 20) for i in range(6)]
    )


def test_length_view_when_the_longer_answer_always_wins():
    from phasedsft.evaluate.winrate import length_view

    judged = longer_always_wins()
    raw = summarize(judged, "paper", resamples=300)
    assert raw.win_rate == pytest.approx(100 * 13 / 20 - 50)  # +15: A is longer more often
    view = length_view(judged, "paper", ratio=1.5, resamples=300)
    assert (view.items, view.mean_a, view.mean_b) == (
        20,
        (300 + 40 + 120) / 20,
        (100 + 120 + 120) / 20,
    )
    # on the length-matched items (the 6 of equal length) A is at parity
    assert view.matched_items == 6
    assert (view.matched.wins, view.matched.losses, view.matched.n) == (3, 3, 6)
    assert view.matched.win_rate == pytest.approx(0.0)
    # and the longer answer won every item with a winner and unequal lengths
    assert (view.longer_won, view.longer_decided, view.longer_win_share) == (14, 14, 1.0)
    # with a ratio loose enough to match everything, the view is the full figure
    wide = length_view(judged, "paper", ratio=3, resamples=300)
    assert wide.matched_items == 20 and wide.matched.win_rate == pytest.approx(raw.win_rate)


def test_length_view_shows_no_taste_for_length_where_there_is_none():
    from phasedsft.evaluate.winrate import length_view

    # the longer side wins half the time: A longer on all 8 items, wins 4
    judged = [_sized(str(i), "win" if i % 2 else "lose", 30, 10) for i in range(8)]
    view = length_view(judged, "paper", resamples=100)
    assert view.longer_win_share == pytest.approx(0.5)
    assert view.matched_items == 0 and view.matched.win_rate is None
    assert length_view([judge_item("1", "8 6", "6 8")]) is None  # no answers: no view


@pytest.mark.parametrize(
    ("a", "b", "ratio", "matched"),
    [
        (0, 0, 1.5, True),
        (0, 1, 1.5, False),
        (2, 3, 1.5, True),
        (2, 4, 1.5, False),
        (5, 5, 1.0, True),
    ],
)
def test_length_matching(a, b, ratio, matched):
    from phasedsft.evaluate.winrate import matched_length

    assert matched_length(a, b, ratio) is matched
    assert matched_length(b, a, ratio) is matched


def test_cli_reports_lengths_where_the_file_has_the_answers(tmp_path, capsys):
    rows = [
        {"id": j.id, "review_ab": j.review_ab, "review_ba": j.review_ba,
         "answer_a": "w " * j.length_a, "answer_b": "w " * j.length_b}
        for j in longer_always_wins()
    ]  # fmt: skip
    f = _write(tmp_path / "r.jsonl", rows)
    assert main([str(f), "--json", "--bootstrap", "100"]) == 0
    lengths = json.loads(capsys.readouterr().out)["lengths"]
    assert (lengths["unit"], lengths["matched_items"], lengths["longer_win_share"]) == (
        "words",
        6,
        1.0,
    )
    assert main([str(f), "--length-ratio", "3", "--bootstrap", "100"]) == 0
    text = capsys.readouterr().out
    assert "answer length (words, mean over 20 items): A 23.0, B 17.0" in text
    assert "length-matched items (longer <= 3 x shorter): 20 of 20" in text
    assert "longer answer won 100% of the 14 items with a winner and unequal lengths" in text
    with pytest.raises(SystemExit) as bad:  # argparse: usage and the reason, exit 2
        main([str(f), "--length-ratio", "0.5"])
    assert bad.value.code == 2 and "must be at least 1, got 0.5" in capsys.readouterr().err
    g = _write(tmp_path / "bare.jsonl", [{"id": 1, "review_ab": "8 6", "review_ba": "6 8"}])
    assert main([str(g), "--json"]) == 0
    assert "lengths" not in json.loads(capsys.readouterr().out)
