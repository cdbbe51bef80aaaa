"""Judgment files as other tools write them (phasedsft.evaluate.formats): FastChat pair
judgments, AlpaGasus / Cherry LLM review logs, AlpacaEval annotations; read by the replay
command as they are, and written by evaluate.py beside its own replay file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ref_path
from helpers import run_command
from omegaconf import OmegaConf
from test_winrate_authors import EXPECTED, SETS, their_pipeline

from phasedsft.evaluate.formats import (
    alpacaeval_rows,
    detect_format,
    fastchat_rows,
    json_items,
    read_judgments,
)
from phasedsft.evaluate.judges import JudgeRun, Pair, Reviews
from phasedsft.evaluate.winrate import ReplayError, judge_item, main, summarize


def _cli(capsys, *args, bootstrap: int = 200) -> dict:
    assert main([*map(str, args), "--json", "--bootstrap", str(bootstrap)]) == 0
    return json.loads(capsys.readouterr().out)


def _counts(out: dict) -> tuple:
    return (out["wins"], out["ties"], out["losses"], out["n"], out["unparsed"])


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------ real review logs


@pytest.mark.parametrize("name", SETS)
def test_real_cherry_review_logs_read_as_they_are(name, capsys):
    """The GPT-4 review files themselves (no conversion): the counts test_winrate_authors
    asserts, under both rules, and the authors' pipeline's figure."""
    path = ref_path("judge_reviews_gpt4", f"{name}_reviews_gpt4.json")
    rows = json.loads(path.read_text())["data"]
    for rule in ("paper", "authors"):
        out = _cli(capsys, path, "--rule", rule)
        assert out["format"] == "cherry"
        assert _counts(out) == EXPECTED[name][rule]
    *_, n, rate = their_pipeline(rows)
    assert out["win_rate"] == pytest.approx(rate, abs=1e-9)
    # the answers are in the file: lengths in words, A = Answer1
    lengths = out["lengths"]
    assert lengths["items"] == n
    assert lengths["mean_a"] == pytest.approx(sum(len(r["Answer1"].split()) for r in rows) / n)
    assert lengths["mean_b"] == pytest.approx(sum(len(r["Answer2"].split()) for r in rows) / n)


def test_real_review_log_ids_and_scores_are_the_logged_ones():
    path = ref_path("judge_reviews_gpt4", "vicuna_reviews_gpt4.json")
    rows = json.loads(path.read_text())["data"]
    found = read_judgments(path)
    assert [j.id for j in found.items] == [str(i) for i in range(len(rows))]
    for j, r in zip(found.items, rows, strict=True):
        assert list(j.scores_ab) == json.loads(r["scores"])
        assert list(j.scores_ba) == json.loads(r["scores_reverse"])


# ------------------------------------------------------------------ telling formats apart


def test_format_is_told_from_the_content(tmp_path):
    replay = _jsonl(tmp_path / "a.txt", [{"id": 1, "review_ab": "8 7", "review_ba": "7 8"}])
    fastchat = _jsonl(
        tmp_path / "b.txt",
        [
            {
                "question_id": 1,
                "model_1": "x",
                "model_2": "y",
                "g1_winner": "tie",
                "g2_winner": "tie",
            }
        ],
    )
    cherry = tmp_path / "c.txt"
    cherry.write_text(json.dumps({"data": [{"review": "8 7", "review_reverse": "7 8"}]}, indent=4))
    bare = tmp_path / "d.txt"
    bare.write_text(json.dumps([{"review": "8 7", "review_reverse": "7 8"}]))
    alpaca = tmp_path / "e.txt"
    alpaca.write_text(json.dumps([{"generator_1": "b", "generator_2": "a", "preference": 2}]))
    for path, fmt in [
        (replay, "replay"),
        (fastchat, "fastchat"),
        (cherry, "cherry"),
        (bare, "cherry"),
        (alpaca, "alpacaeval"),
    ]:
        assert detect_format(path, path.read_text()) == fmt, path
        assert read_judgments(path).format == fmt


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question_id": 1, "model": "x", "score": 8, "turn": 1}\n', ":1: FastChat single-answer"),
        ('[{"instruction": "q", "output": "a", "generator": "m"}]', "AlpacaEval model outputs"),
        ('[{"something": 1}]', "not a judgment file this command reads"),
    ],
)
def test_files_that_are_no_pairwise_judgments_are_named(tmp_path, content, message):
    f = tmp_path / "x.json"
    f.write_text(content)
    with pytest.raises(ReplayError, match=message):
        read_judgments(f)


def test_format_override_reads_the_file_as_told(tmp_path, capsys):
    f = tmp_path / "log.json"
    f.write_text(json.dumps({"data": [{"review": "8 7", "review_reverse": "7 8"}]}, indent=2))
    assert main([str(f), "--format", "cherry", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["wins"] == 1
    assert main([str(f), "--format", "replay"]) == 2
    assert f"{f}:1: not valid JSON" in capsys.readouterr().err


def test_json_items_gives_the_line_each_item_starts_on():
    text = '{\n "Meta_Info": {"data": 1},\n "data": [\n  {"a": 1},\n\n  {"a": [\n 2]}, 3\n ]\n}'
    assert json_items(text, "data") == [(4, {"a": 1}), (6, {"a": [2]}), (7, 3)]
    assert json_items("[1,\n2]") == [(1, 1), (2, 2)]
    assert json_items("[]") == []


# ------------------------------------------------------------------ FastChat


def _fc(qid, m1, m2, g1, g2, turn=1, **extra):
    return {
        "question_id": qid,
        "model_1": m1,
        "model_2": m2,
        "g1_winner": g1,
        "g2_winner": g2,
        "judge": ["gpt-4", "pair-v2"],
        "turn": turn,
        **extra,
    }


def show_result_counts(rows, model):
    """FastChat's show_result.py display_result_pairwise, for one model (test oracle):
    rows with an "error" dropped; a tie unless both games name the same winner."""
    win = tie = loss = 0
    for r in rows:
        if "error" in (r["g1_winner"], r["g2_winner"]) or model not in (r["model_1"], r["model_2"]):
            continue
        if r["g1_winner"] == "tie" or r["g1_winner"] != r["g2_winner"]:
            tie += 1
        elif r[r["g1_winner"]] == model:
            win += 1
        else:
            loss += 1
    return win, tie, loss


FASTCHAT_ROWS = [
    _fc(81, "mine", "gpt-3.5", "model_1", "model_1"),  # A wins both games
    _fc(81, "mine", "gpt-3.5", "model_1", "tie", turn=2),  # win + tie
    _fc(82, "mine", "gpt-3.5", "model_1", "model_2"),  # inconsistent
    _fc(83, "gpt-3.5", "mine", "model_1", "model_1"),  # the other way round: A loses twice
    _fc(84, "gpt-3.5", "mine", "tie", "model_2"),  # tie + A wins (A = model_2)
    _fc(85, "mine", "gpt-3.5", "error", "model_1"),  # left out
]


def test_fastchat_pair_judgments_fold_as_fastchat_counts_them(tmp_path, capsys):
    f = _jsonl(tmp_path / "gpt-4_pair.jsonl", FASTCHAT_ROWS)
    fc = _cli(capsys, f, "--rule", "fastchat")
    assert fc["format"] == "fastchat" and fc["models"] == ["mine", "gpt-3.5"]
    w, t, lose = show_result_counts(FASTCHAT_ROWS, "mine")
    assert _counts(fc) == (w, t, lose, 5, 1) == (1, 3, 1, 5, 1)
    own = fc["fastchat"]  # FastChat's own figures, as its show_result.py computes them
    assert (own["win"], own["tie"], own["loss"]) == (w, t, lose)
    assert own["win_rate_adjusted"] == pytest.approx((w + t / 2) / (w + t + lose))
    assert fc["unparsed_ids"] == ["85/turn1"]
    assert _cli(capsys, f) == fc  # a FastChat file is counted as FastChat counts it by default
    paper = _cli(capsys, f, "--rule", "paper")  # win + tie is a win under the paper's rule
    assert _counts(paper) == (3, 1, 1, 5, 1) and paper["rule"] == "paper"
    # B's point of view mirrors A's
    mirror = _cli(capsys, f, "--models", "gpt-3.5", "mine", "--rule", "paper")
    assert _counts(mirror) == (1, 1, 3, 5, 1)
    # two turns: one item per question and turn, and a "turn" breakdown
    found = read_judgments(f)
    assert [j.id for j in found.items][:2] == ["81/turn1", "81/turn2"]
    assert paper["by_category"]["turn"]["2"]["wins"] == 1
    assert main([str(f)]) == 0
    text = capsys.readouterr().out
    assert "items: 5 judged in both orders (1 left out: a verdict of 'error')" in text
    assert "unparsed 85/turn1: g1_winner is 'error' (the judge's reply named no winner)" in text


def test_fastchat_position_verdicts_follow_the_order_shown(tmp_path):
    """g1 shows model_1 first: for A = model_2, its A-first verdict comes from g2."""
    rows = [_fc(1, "b", "a", "model_1", "model_2")]  # whoever is shown first wins
    f = _jsonl(tmp_path / "x.jsonl", rows)
    [item] = read_judgments(f, models=("a", "b")).items
    assert item.given == ("win", "lose")  # (A shown first, B shown first) from A's side
    [item] = read_judgments(f).items  # A = model_1 = b
    assert item.given == ("win", "lose")


def test_fastchat_file_of_several_pairs_asks_for_the_models(tmp_path, capsys):
    rows = [*FASTCHAT_ROWS, _fc(81, "other", "gpt-3.5", "model_2", "model_2")]
    f = _jsonl(tmp_path / "pair.jsonl", rows)
    with pytest.raises(ReplayError, match=r"judgments of 2 model pairs .*--models MODEL_A MODEL_B"):
        read_judgments(f)
    out = _cli(capsys, f, "--models", "other", "gpt-3.5", "--rule", "fastchat")
    assert _counts(out) == (0, 0, 1, 1, 0) and out["models"] == ["other", "gpt-3.5"]
    with pytest.raises(ReplayError, match="no judgment compares mine with other"):
        read_judgments(f, models=("mine", "other"))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([_fc(1, "a", "b", "A", "tie")], ":1: g1_winner must be one of model_1, model_2, tie"),
        ([{"question_id": 1, "model_1": "a", "g1_winner": "tie"}], ":1: missing field(s) model_2"),
        ([_fc(1, "a", "a", "tie", "tie")], ":1: model_1 and model_2 are both 'a'"),
        ([_fc(1, "a", "b", "tie", "tie", turn="1")], ":1: turn must be a whole number"),
        (
            [_fc(1, "a", "b", "tie", "tie"), _fc(1, "b", "a", "tie", "tie")],
            ":2: a second judgment of question 1 turn 1 for a vs b",
        ),
        (
            [_fc(1, "a", "b", "tie", "tie", g1_judgment=3)],
            ":1: field 'g1_judgment' must be a string",
        ),
    ],
)
def test_fastchat_errors_name_file_and_line(tmp_path, rows, message):
    with pytest.raises(ReplayError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_judgments(_jsonl(tmp_path / "pair.jsonl", rows))


def test_rule_authors_is_refused_on_files_without_scores(tmp_path, capsys):
    f = _jsonl(tmp_path / "pair.jsonl", FASTCHAT_ROWS)
    assert main([str(f), "--rule", "authors"]) == 2
    assert (
        "--rule authors re-parses the judge's 'score score' first lines" in capsys.readouterr().err
    )


def test_models_option_is_refused_where_the_file_names_no_models(tmp_path, capsys):
    f = _jsonl(tmp_path / "r.jsonl", [{"id": 1, "review_ab": "8 7", "review_ba": "7 8"}])
    assert main([str(f), "--models", "a", "b"]) == 2
    assert "--models chooses the models of a fastchat or alpacaeval file" in capsys.readouterr().err


# ------------------------------------------------------------------ AlpacaEval


def _ae(pref, g1="base", g2="mine", **extra):
    return {
        "instruction": "q",
        "output_1": "short",
        "generator_1": g1,
        "output_2": "a longer answer",
        "generator_2": g2,
        "annotator": "gpt4",
        "preference": pref,
        **extra,
    }


def test_alpacaeval_annotations_read_as_alpacaeval_counts_them(tmp_path, capsys):
    rows = [_ae(2), _ae(2.0), _ae(1.8), _ae(1), _ae(1.2), _ae(1.5), _ae(0), _ae(None)]
    f = tmp_path / "annotations.json"
    f.write_text(json.dumps(rows, indent=2))
    out = _cli(capsys, f)
    assert out["format"] == "alpacaeval" and out["models"] == ["mine", "base"]
    assert _counts(out) == (3, 2, 2, 7, 1)
    # AlpacaEval's discrete win rate over the rows with a preference, minus 50
    discrete = 100 * (3 + 2 / 2) / 7
    assert out["win_rate"] == pytest.approx(discrete - 50)
    assert out["position_consistency"] is None  # one preference per item: no orders to compare
    assert _cli(capsys, f, "--rule", "fastchat")["win_rate"] == out["win_rate"]
    assert out["lengths"]["mean_a"] == 3 and out["lengths"]["mean_b"] == 1
    flipped = _cli(capsys, f, "--models", "base", "mine")
    assert _counts(flipped) == (2, 2, 3, 7, 1)
    assert flipped["lengths"]["mean_a"] == 1
    assert main([str(f)]) == 0
    text = capsys.readouterr().out
    assert "format: alpacaeval (A = mine, B = base)" in text
    assert "items: 7 with a preference (1 left out: null preference)" in text
    assert "unparsed 7: preference is null (no annotation)" in text


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([_ae(2), _ae(3)], ":3: preference must be between 1 (output_1 preferred) and 2"),
        ([_ae("2")], ":2: preference must be a number or null"),
        ([_ae(2, g1="mine")], ":2: generator_1 and generator_2 are both 'mine'"),
        ([{"preference": 2, "generator_2": "m"}], ":2: item 0 lacks field(s) generator_1"),
        ([_ae(2, id=1), _ae(1, id=1)], ":3: duplicate id '1' (first at "),
    ],
)
def test_alpacaeval_errors_name_file_and_line(tmp_path, rows, message):
    f = tmp_path / "annotations.json"
    f.write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")  # item i: line i+2
    with pytest.raises(ReplayError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_judgments(f)


# ------------------------------------------------------------------ review logs


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"data": [\n{"review": "8 7", "review_reverse": "7 8"},\n{"review": "8 7"}]}',
            ":3: item 1 lacks field(s) review_reverse",
        ),
        (
            '{"data": [\n{"review": "8 7",\n "review_reverse": 7}]}',
            ":2: field 'review_reverse' must be a string",
        ),
        ('{"data": [\n1]}', ":2: item 0 is not a JSON object"),
        (
            '{"Meta_Info": {}, "data": {}}',
            ':1: a review log holds its items in a list under "data"',
        ),
        ('{"data": [\n{"review": "8 7", "review_reverse": "7 8"},\n]}', ":3: not valid JSON"),
        ('{"data": []}', "no items"),
    ],
)
def test_review_log_errors_name_file_and_line(tmp_path, content, message):
    f = tmp_path / "koala_reviews_gpt4.json"
    f.write_text(content)
    with pytest.raises(ReplayError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_judgments(f, "cherry")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b'{"data": [\n{"review": "8 7", "review_reverse": "7 8"},\n{"review": "8 7"}]}',
            "x.json:3: item 1 lacks",
        ),
        (
            b'[{"generator_1": "b", "generator_2": "a",\n "preference": "\xff"}]',
            "x.json:2: not UTF-8",
        ),
        (
            b'{"question_id": 1, "model_1": "a", "model_2": "b", "g1_winner": 1, "g2_winner": "tie"}\n',
            "x.json:1: g1_winner must be",
        ),
        (
            b'[{"generator_1": "b", "generator_2": "a", "preference": 7}]',
            "x.json:1: preference must be",
        ),
    ],
)
def test_bad_files_of_any_format_exit_2_with_a_plain_message(tmp_path, content, message):
    (tmp_path / "x.json").write_bytes(content)
    proc = run_command(
        [sys.executable, "-m", "phasedsft.evaluate.winrate", str(tmp_path / "x.json")],
        check=False,
        no_traceback=True,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr


# ------------------------------------------------------------------ written by evaluate.py


REVIEWS = [  # (review_ab, review_ba): A shown first, then B shown first
    ("8 6", "5 9"),  # win, win
    ("7 7", "6 8"),  # tie, win
    ("8 6", "9 5"),  # win, lose
    ("4 9", "9 3"),  # lose, lose
    ("6 6", "7 7"),  # tie, tie
    ("5 8", "7 7"),  # lose, tie
    ("9 2", "no scores here"),  # unparsed
    ("8 7", "6 9"),  # win, win
]


class StubJudge:
    """Replays fixed reviews; asks nothing of anyone."""

    name = "stub-judge"

    def question(self, pair):
        return pair.instruction

    def judge_pairs(self, pairs, cache, desc=""):
        reviews = [Reviews(p.id, *REVIEWS[int(p.id)]) for p in pairs]
        return JudgeRun(reviews, {"requests": 0, "cost_usd": 0.0})


def _comparison(tmp_path, rule):
    from phasedsft.evaluate.run import ToJudge, judge_comparison

    pairs = [
        Pair(str(i), f"question {i}", "a b c " * (i + 1), "x y", category={"level": i % 2})
        for i in range(len(REVIEWS))
    ]
    t = ToJudge(
        ("graded", "tiny", 0),
        SimpleNamespace(
            ordering="1-2-3",
            name="run-123",
            config=OmegaConf.create({"ordering": {"name": "1-2-3", "stages": [1, 2, 3]}}),
            identity={"seed": 0, "model": {"name": "tiny"}},
        ),
        SimpleNamespace(run="run-123", index=3, stage="difficulty-3", n_stages=3, label="run-123/stage_3_difficulty-3"),
        SimpleNamespace(name="koala", has_references=False, categories=["level"]),
        SimpleNamespace(name="run-one_off", final=SimpleNamespace(label="run-one_off/stage_1_all")),
        pairs,
    )  # fmt: skip
    cfg = SimpleNamespace(bootstrap=300, seed=0)
    comp, _, _ = judge_comparison(cfg, StubJudge(), None, t, rule, tmp_path)
    return comp, tmp_path / "comparisons" / "koala", t.label


@pytest.mark.parametrize("rule", ["paper", "fastchat"])
def test_evaluate_writes_fastchat_and_alpacaeval_files_that_read_back_alike(tmp_path, capsys, rule):
    comp, folder, label = _comparison(tmp_path, rule)
    ours = folder / f"{label}.jsonl"
    fastchat = folder / "fastchat" / f"{label}_pair.jsonl"
    annotations = folder / "alpacaeval" / f"{label}_annotations.json"
    got = {}
    for path, fmt in [(ours, "replay"), (fastchat, "fastchat"), (annotations, "alpacaeval")]:
        out = _cli(capsys, path, "--rule", rule, bootstrap=300)
        assert out["format"] == fmt
        got[fmt] = out
    keys = ("wins", "ties", "losses", "n", "unparsed", "win_rate", "ci_low", "ci_high")
    table = comp.result.to_json()
    for fmt, out in got.items():
        assert {k: out[k] for k in keys} == pytest.approx({k: table[k] for k in keys}), fmt
    assert (table["n"], table["unparsed"]) == (7, 1)
    # the per-category breakdown and the answers' lengths travel too
    for fmt in ("fastchat", "alpacaeval"):
        assert (
            got[fmt]["by_category"]["level"]["1"]["n"]
            == got["replay"]["by_category"]["level"]["1"]["n"]
        )
    mine, theirs = got["replay"]["lengths"], got["alpacaeval"]["lengths"]
    for k in ("items", "mean_a", "mean_b", "matched_items", "longer_won", "longer_decided"):
        assert theirs[k] == pytest.approx(mine[k]), k
    assert theirs["matched"]["win_rate"] == pytest.approx(mine["matched"]["win_rate"])
    assert mine["mean_a"] == pytest.approx(sum(3 * (i + 1) for i in range(8)) / 8)
    assert got["fastchat"]["models"] == ["run-123/stage_3_difficulty-3", "run-one_off/stage_1_all"]


def test_written_files_have_the_fields_each_tool_reads(tmp_path):
    _, folder, label = _comparison(tmp_path, "paper")
    rows = [
        json.loads(x)
        for x in (folder / "fastchat" / f"{label}_pair.jsonl").read_text().splitlines()
    ]
    assert {"question_id", "model_1", "model_2", "g1_winner", "g2_winner", "judge", "turn"} <= set(
        rows[0]
    )
    assert [(r["g1_winner"], r["g2_winner"]) for r in rows[:3]] == [
        ("model_1", "model_1"), ("tie", "model_1"), ("model_1", "model_2"),
    ]  # fmt: skip
    assert (rows[6]["g1_winner"], rows[6]["g2_winner"]) == ("model_1", "error")
    assert rows[0]["g1_judgment"] == "8 6"
    assert show_result_counts(rows, rows[0]["model_1"]) == (2, 4, 1)  # FastChat's own count
    notes = json.loads((folder / "alpacaeval" / f"{label}_annotations.json").read_text())
    assert {
        "instruction",
        "output_1",
        "output_2",
        "generator_1",
        "generator_2",
        "annotator",
        "preference",
    } <= set(notes[0])
    assert notes[0]["generator_1"] == "run-one_off/stage_1_all"  # the baseline is generator_1
    assert notes[0]["output_2"] == "a b c " and notes[0]["output_1"] == "x y"
    assert [n["preference"] for n in notes] == [2.0, 2.0, 1.5, 1.0, 1.5, 1.0, None, 2.0]
    # a rerun writes the same bytes (no timestamps)
    first = (folder / "fastchat" / f"{label}_pair.jsonl").read_bytes()
    _comparison(tmp_path, "paper")
    assert (folder / "fastchat" / f"{label}_pair.jsonl").read_bytes() == first


def test_writers_take_the_rule_and_the_orders_as_given():
    judged = [judge_item("1", "8 6", "9 5"), judge_item("2", "0 0", "0 0")]
    [a, b] = fastchat_rows(judged, "A", "B", "j")
    assert (a["g1_winner"], a["g2_winner"]) == ("model_1", "model_2")
    assert (b["g1_winner"], b["g2_winner"]) == ("tie", "tie")
    kw = dict(questions=["q", "q"], answers_a=["x", "x"], answers_b=["y", "y"], model_a="A",
              model_b="B", annotator="j", dataset="d")  # fmt: skip
    assert [r["preference"] for r in alpacaeval_rows(judged, "paper", **kw)] == [1.5, 1.5]
    # rule=authors: "0 0" makes the item void for their script, so it has no preference
    assert [r["preference"] for r in alpacaeval_rows(judged, "authors", **kw)] == [1.5, None]
    assert summarize(judged, "paper").n == 2
