"""Judgments on their owners' scale (issue #21 item 6): the replay command prints the figures
AlpacaEval and FastChat themselves report for their files, under their names, next to the
paper's figure; a FastChat file is folded by FastChat's rule unless another is asked for.

The rows are in the owners' exact layout (AlpacaEval's ``annotations.json`` as
``alpaca_eval`` writes it, FastChat's ``model_judgment/<judge>_pair.jsonl`` as
``llm_judge/common.py`` ``play_a_match_pair`` writes it), and every expected figure is worked
out by hand here, from the owners' definitions (cited in phasedsft/evaluate/formats.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from phasedsft.evaluate.formats import read_judgments
from phasedsft.evaluate.winrate import ReplayError, main


def _cli(capsys, *args) -> dict:
    assert main([*map(str, args), "--json", "--bootstrap", "50"]) == 0
    return json.loads(capsys.readouterr().out)


def _text(capsys, *args) -> str:
    assert main([*map(str, args), "--bootstrap", "50"]) == 0
    return capsys.readouterr().out


# ------------------------------------------------------------------ AlpacaEval


def _annotation(i, preference, *, g1="gpt4_1106_preview", g2="mine", **extra) -> dict:
    """One row of an AlpacaEval annotations.json, keys as alpaca_eval writes them."""
    return {
        "instruction": f"instruction {i}",
        "output_1": "the baseline's answer",
        "generator_1": g1,
        "dataset": "helpful_base",
        "output_2": "the model's answer, a little longer",
        "generator_2": g2,
        "datasplit": "eval",
        "annotator": "weighted_alpaca_eval_gpt4_turbo",
        "preference": preference,
        "price_per_example": 0.01,
        "time_per_example": 0.18,
        "raw_completion": {"finish_reason": "length", "index": 0, "text": "m"},
        **extra,
    }


def _annotations(tmp_path: Path, rows, name="annotations.json") -> Path:
    f = tmp_path / name
    f.write_text(json.dumps(rows, indent=2))  # as alpaca_eval: to_json(orient="records", indent=2)
    return f


def test_alpacaeval_win_rate_is_the_mean_preference(tmp_path, capsys):
    """A 0/1 annotator: preferences 2, 1, 1.5, 2. AlpacaEval's win_rate is the mean of
    (preference - 1) * 100 = (1 + 0 + 0.5 + 1) / 4 * 100 = 62.5; discrete the same here."""
    f = _annotations(tmp_path, [_annotation(i, p) for i, p in enumerate([2, 1, 1.5, 2])])
    out = _cli(capsys, f)
    ae = out["alpacaeval"]
    assert ae["win_rate"] == pytest.approx(62.5)
    assert ae["discrete_win_rate"] == pytest.approx(62.5)
    # standard_error: pandas sem of [1, 0, 0.5, 1] (n - 1), times 100
    deviations = [1 - 0.625, 0 - 0.625, 0.5 - 0.625, 1 - 0.625]
    sem = math.sqrt(sum(d * d for d in deviations) / 3) / math.sqrt(4)
    assert ae["standard_error"] == pytest.approx(100 * sem) == pytest.approx(23.9357, abs=1e-4)
    assert (ae["n_wins"], ae["n_wins_base"], ae["n_draws"], ae["n_total"]) == (2, 1, 1, 4)
    # the paper's figure on the same file: 100 * (W + T/2) / N - 50 = discrete - 50
    assert (out["wins"], out["ties"], out["losses"], out["n"]) == (2, 1, 1, 4)
    assert out["win_rate"] == pytest.approx(12.5)
    assert out["rule"] is None  # one preference per item: no fold


# a weighted annotator (weighted_alpaca_eval_gpt4_turbo) gives preferences between 1 and 2;
# the first two are values from AlpacaEval's own results/NullModel annotations
WEIGHTED = [1.9900139974, 1.4593660117, 1.8, 1.2, 1.5, 0, None]


def test_weighted_preferences_split_win_rate_from_discrete_win_rate(tmp_path, capsys):
    f = _annotations(tmp_path, [_annotation(i, p) for i, p in enumerate(WEIGHTED)])
    out = _cli(capsys, f)
    ae = out["alpacaeval"]
    # win_rate: the legacy draw 0 is 1.5, the null is dropped: mean over six preferences
    shifted = [0.9900139974, 0.4593660117, 0.8, 0.2, 0.5, 0.5]
    assert ae["win_rate"] == pytest.approx(100 * sum(shifted) / 6)
    assert ae["win_rate"] == pytest.approx(57.48967, abs=1e-5)
    # discrete: 1.99 and 1.8 round to 2 (wins), 1.459 and 1.2 to 1 (losses), 1.5 and 0 draws
    assert ae["discrete_win_rate"] == pytest.approx(100 * (2 + 2 / 2) / 6) == pytest.approx(50.0)
    assert (ae["n_wins"], ae["n_wins_base"], ae["n_draws"], ae["n_total"]) == (2, 2, 2, 6)
    assert out["win_rate"] == pytest.approx(0.0)  # the paper's figure: discrete - 50
    assert (out["n"], out["unparsed"]) == (6, 1)
    assert ae["a_is_generator_2"] is True


def test_alpacaeval_figures_from_the_baselines_side_are_mirrored(tmp_path, capsys):
    """--models gpt4_1106_preview mine: A is generator_1, so each preference p is 3 - p."""
    f = _annotations(tmp_path, [_annotation(i, p) for i, p in enumerate(WEIGHTED)])
    ae = _cli(capsys, f, "--models", "gpt4_1106_preview", "mine")["alpacaeval"]
    mirrored = [1 - 0.9900139974, 1 - 0.4593660117, 0.2, 0.8, 0.5, 0.5]
    assert ae["win_rate"] == pytest.approx(100 * sum(mirrored) / 6)
    assert ae["win_rate"] == pytest.approx(100 - 57.48967, abs=1e-5)
    assert (ae["n_wins"], ae["n_wins_base"], ae["n_draws"]) == (2, 2, 2)
    assert ae["a_is_generator_2"] is False
    text = _text(capsys, f, "--models", "gpt4_1106_preview", "mine")
    assert "rows where A is generator_1 mirrored, AlpacaEval reports generator_2's" in text


def test_alpacaeval_text_output_names_each_figure_and_its_rounding(tmp_path, capsys):
    f = _annotations(tmp_path, [_annotation(i, p) for i, p in enumerate(WEIGHTED)])
    text = _text(capsys, f)
    assert "AlpacaEval's own figures, A against B" in text
    assert "printed %.2f as AlpacaEval prints them" in text
    assert "win_rate (the mean preference, (preference - 1) * 100): 57.49" in text
    assert "discrete_win_rate (1.5 a draw, other preferences rounded to 1 or 2): 50.00" in text
    assert "n_wins 2, n_wins_base 2, n_draws 2, n_total 6" in text
    assert "win rate (the paper's figure, 100 * (W + T/2) / N - 50): +0.00" in text
    assert "fold: none: one preference per item, already decided" in text
    # the annotations alone do not carry what AlpacaEval's LC fit needs: said, with why
    lc = next(line for line in text.splitlines() if "length_controlled_winrate" in line)
    assert "length_controlled_winrate: not computed: " in lc
    assert "glm_winrate.py" in lc and "difficulty" in lc and "glm_preference" in lc
    # an explicit --rule is said not to apply
    assert "(--rule fastchat does not change it)" in _text(capsys, f, "--rule", "fastchat")


def test_length_controlled_win_rate_is_read_where_the_file_carries_it(tmp_path, capsys):
    """AlpacaEval writes each row's fitted glm_preference into annotations.json when it
    recomputes its metrics; its length_controlled_winrate is their mean times 100, over every
    row (a row with a null preference included), and lc_standard_error their sem times 100."""
    glm = [0.7, 0.4, 0.55, 0.75]
    rows = [
        _annotation(i, p, glm_preference=g)
        for i, (p, g) in enumerate(zip([2, 1, None, 2], glm, strict=True))
    ]
    f = _annotations(tmp_path, rows)
    ae = _cli(capsys, f)["alpacaeval"]
    assert ae["length_controlled_winrate"] == pytest.approx(100 * (0.7 + 0.4 + 0.55 + 0.75) / 4)
    mean = 0.6
    sem = math.sqrt(sum((g - mean) ** 2 for g in glm) / 3) / 2
    assert ae["lc_standard_error"] == pytest.approx(100 * sem)
    assert ae["win_rate"] == pytest.approx(100 * 2 / 3)  # the null row is not in win_rate
    text = _text(capsys, f)
    assert "length_controlled_winrate: 60.00  (lc_standard_error " in text
    # from the baseline's side: 1 - g
    flipped = _cli(capsys, f, "--models", "gpt4_1106_preview", "mine")["alpacaeval"]
    assert flipped["length_controlled_winrate"] == pytest.approx(40.0)
    # some rows without one: not computed, and said why
    rows[1].pop("glm_preference")
    ae = _cli(capsys, _annotations(tmp_path, rows, "partial.json"))["alpacaeval"]
    assert ae["length_controlled_winrate"] is None
    assert ae["length_controlled_note"].startswith("only 3 of 4 rows carry a glm_preference")


@pytest.mark.parametrize(
    ("glm", "message"),
    [
        ("0.5", ":2: glm_preference must be a number or null"),
        (1.5, ":2: glm_preference must be between 0 and 1"),
    ],
)
def test_bad_glm_preference_names_the_line(tmp_path, glm, message):
    f = tmp_path / "annotations.json"
    f.write_text("[\n" + json.dumps(_annotation(0, 2, glm_preference=glm)) + "\n]\n")
    with pytest.raises(ReplayError, match=message):
        read_judgments(f)


# ------------------------------------------------------------------ FastChat


def _pair(qid, g1, g2, *, m1="mine", m2="gpt-3.5-turbo", turn=1) -> dict:
    """One row of FastChat's model_judgment/gpt-4_pair.jsonl, keys as play_a_match_pair
    writes them (g1: model_1's answer shown first; a winner names a model)."""
    return {
        "question_id": qid,
        "model_1": m1,
        "model_2": m2,
        "g1_winner": g1,
        "g2_winner": g2,
        "judge": ["gpt-4", "pair-v2"],
        "g1_user_prompt": "[User Question]\n...\n\n[The Start of Assistant A's Answer]\n...",
        "g1_judgment": "Assistant A is better. [[A]]",
        "g2_user_prompt": "[User Question]\n...\n\n[The Start of Assistant A's Answer]\n...",
        "g2_judgment": "Assistant B is better. [[B]]",
        "turn": turn,
        "tstamp": 1687221890.3,
    }


PAIRS = [
    _pair(81, "model_1", "model_1"),  # mine wins both games: a win for FastChat
    _pair(82, "model_1", "tie"),  # win + tie: a tie for FastChat, a win for the paper
    _pair(83, "model_1", "model_2"),  # the games disagree: a tie under both rules
    _pair(84, "tie", "tie"),  # a tie
    _pair(85, "model_2", "model_2"),  # gpt-3.5 wins both: a loss
    _pair(86, "tie", "model_2"),  # tie + loss: a tie for FastChat, a loss for the paper
    _pair(87, "error", "model_1"),  # dropped by show_result.py
    _pair(81, "model_2", "model_2", turn=2),  # a loss on turn 2
]


def _pairs(tmp_path: Path, rows=PAIRS) -> Path:
    f = tmp_path / "gpt-4_pair.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_fastchat_file_is_folded_by_fastchats_rule_by_default(tmp_path, capsys):
    f = _pairs(tmp_path)
    out = _cli(capsys, f)
    assert out["rule"] == "fastchat"
    # by hand: 7 rows without an error; win 81; loss 85, 81/turn2; ties 82, 83, 84, 86
    assert (out["wins"], out["ties"], out["losses"], out["n"], out["unparsed"]) == (1, 4, 2, 7, 1)
    assert out["win_rate"] == pytest.approx(100 * (1 + 4 / 2) / 7 - 50)
    text = _text(capsys, f)
    assert "fold rule: fastchat (" in text and "the default for fastchat files" in text
    assert "win / tie / lose (fastchat rule): 1 / 4 / 2" in text


def test_fastchat_own_figures_are_reported_whatever_the_rule(tmp_path, capsys):
    """show_result.py display_result_pairwise: win_rate = win / (win + loss + tie),
    loss_rate = loss / ..., win_rate_adjusted = (win + 0.5 * tie) / ...; fractions of 1."""
    f = _pairs(tmp_path)
    fc = _cli(capsys, f)["fastchat"]
    assert (fc["win"], fc["loss"], fc["tie"]) == (1, 2, 4)
    assert fc["win_rate"] == pytest.approx(1 / 7)
    assert fc["loss_rate"] == pytest.approx(2 / 7)
    assert fc["win_rate_adjusted"] == pytest.approx((1 + 0.5 * 4) / 7)
    # asked for the paper's rule: the fold (and the paper's figure) change, FastChat's don't
    paper = _cli(capsys, f, "--rule", "paper")
    assert paper["rule"] == "paper" and paper["fastchat"] == fc
    # paper: 81 and 82 wins; 85, 86 and 81/turn2 losses; 83 and 84 ties
    assert (paper["wins"], paper["ties"], paper["losses"]) == (2, 2, 3)
    assert paper["win_rate"] == pytest.approx(100 * (2 + 2 / 2) / 7 - 50)
    text = _text(capsys, f, "--rule", "paper")
    assert "fold rule: paper (" in text and "as asked)" in text
    assert "FastChat's own figures, A against B" in text
    assert "always by FastChat's rule" in text
    assert "win 1, loss 2, tie 4; win_rate 0.142857, loss_rate 0.285714, " in text
    assert "win_rate_adjusted 0.428571" in text
    assert "win rate (the paper's figure, 100 * (W + T/2) / N - 50): -7.14" in text


def test_fastchat_figures_for_the_other_model_mirror(tmp_path, capsys):
    fc = _cli(capsys, _pairs(tmp_path), "--models", "gpt-3.5-turbo", "mine")["fastchat"]
    assert (fc["win"], fc["loss"], fc["tie"]) == (2, 1, 4)
    assert fc["win_rate_adjusted"] == pytest.approx((2 + 0.5 * 4) / 7)


def test_other_formats_keep_the_papers_rule_and_print_no_owner_figures(tmp_path, capsys):
    f = tmp_path / "r.jsonl"
    f.write_text(
        json.dumps({"id": 1, "review_ab": "8 7", "review_ba": "7 7"})
        + "\n"
        + json.dumps({"id": 2, "review_ab": "5 7", "review_ba": "9 5"})
        + "\n"
    )
    out = _cli(capsys, f)
    assert out["rule"] == "paper" and "fastchat" not in out and "alpacaeval" not in out
    assert (out["wins"], out["ties"], out["losses"]) == (1, 0, 1)  # win + tie; lose + lose
    text = _text(capsys, f)
    assert "fold rule: paper (" in text and "the default for replay files" in text
    assert "own figures" not in text
