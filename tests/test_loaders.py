import json
import statistics

import pytest
from conftest import ref_path

from phasedsft.data.loaders import load_hub, load_json, load_jsonl
from phasedsft.records import DataError
from phasedsft.segment.manifest import split_by_thresholds
from phasedsft.segment.methods import ManualThresholds


def write(path, text, mode="w"):
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


ROWS = [
    {"instruction": "Say hi.", "input": "", "output": "hi"},
    {"instruction": "Add.", "input": "1 2", "output": "3"},
]


def test_alpaca_json_list(tmp_path):
    p = write(tmp_path / "a.json", json.dumps(ROWS, indent=2))
    loaded = load_json(str(p))
    assert [e.id for e in loaded.examples] == ["0", "1"]
    assert loaded.examples[1].input == "1 2" and loaded.examples[1].output == "3"
    assert loaded.examples[0].score is None
    assert loaded.skips.count == 0


def test_jsonl_with_ids_and_scores(tmp_path):
    lines = [json.dumps({**r, "id": f"x{i}", "score": 2.5}) for i, r in enumerate(ROWS)]
    loaded = load_jsonl(str(write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")))
    assert [(e.id, e.score) for e in loaded.examples] == [("x0", 2.5), ("x1", 2.5)]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"instruction": "a", "output": "b"', "invalid JSON"),
        ('{"instruction": "a"}', "missing field 'output'"),
        ('{"instruction": "a", "output": "   "}', "empty output"),
        ('{"instruction": "a", "output": 3}', "must be a string"),
        ('{"id": "0", "instruction": "a", "output": "b"}', "duplicate id '0'"),
        ('{"instruction": "a", "output": "b", "score": "hard"}', "not a number"),
        ("[1, 2]", "not an object"),
    ],
)
def test_bad_jsonl_line_is_named(tmp_path, line, reason):
    good = json.dumps({"id": "0", "instruction": "q", "output": "a"})
    p = write(tmp_path / "bad.jsonl", f"{good}\n\n{line}\n")
    with pytest.raises(DataError) as err:
        load_jsonl(str(p))
    assert f"{p}:3:" in str(err.value) and reason in str(err.value)


def test_skip_mode_counts_every_bad_row(tmp_path):
    good = [json.dumps({"instruction": "q", "output": f"a{i}", "id": str(i)}) for i in range(3)]
    bad = ['{"instruction": "q"', '{"instruction": "q", "output": ""}', good[0]]
    p = write(tmp_path / "mixed.jsonl", "\n".join(good + bad) + "\n")
    loaded = load_jsonl(str(p), on_error="skip")
    assert len(loaded.examples) == 3
    assert loaded.skips.count == 3
    summary = loaded.skips.summary()
    assert summary["skipped"] == 3
    assert [s["where"] for s in summary["first"]] == [f"{p}:4", f"{p}:5", f"{p}:6"]


def test_non_utf8_names_the_line(tmp_path):
    good = json.dumps({"instruction": "q", "output": "a"}).encode()
    p = write(
        tmp_path / "latin1.jsonl", good + b"\n" + b'{"instruction": "caf\xe9", "output": "x"}\n'
    )
    with pytest.raises(DataError, match=rf"{p}:2: not valid UTF-8"):
        load_jsonl(str(p))
    j = write(
        tmp_path / "latin1.json",
        b'[\n {"instruction": "q", "output": "a"},\n {"instruction": "caf\xe9", "output": "x"}\n]',
    )
    with pytest.raises(DataError, match=rf"{j}:3: not valid UTF-8"):
        load_json(str(j))


def test_json_list_errors_name_the_record_line(tmp_path):
    p = write(
        tmp_path / "a.json", '[\n {"instruction": "q", "output": "a"},\n {"instruction": "q2"}\n]'
    )
    with pytest.raises(DataError, match=rf"{p}:3: missing field 'output'"):
        load_json(str(p))
    p2 = write(
        tmp_path / "b.json", '[\n {"instruction": "q", "output": "a"},\n {"instruction": }\n]'
    )
    with pytest.raises(DataError, match=rf"{p2}:3:\d+: invalid JSON"):
        load_json(str(p2))
    with pytest.raises(DataError, match="data file not found"):
        load_json(str(tmp_path / "missing.json"))


def test_authors_scored_and_lima_formats(tmp_path):
    scored = write(
        tmp_path / "s.jsonl",
        json.dumps({"id": "7", "score": "3.75", "data": ["Do it.", "Done."]}) + "\n",
    )
    (ex,) = load_jsonl(str(scored), format="phasedsft_scored").examples
    assert (ex.id, ex.score, ex.instruction, ex.output) == ("7", 3.75, "Do it.", "Done.")
    lima = write(
        tmp_path / "l.jsonl",
        json.dumps({"conversations": ["Q1", "A1", "Q2", "A2"], "source": "x"})
        + "\n"
        + json.dumps({"conversations": ["Q", "A"]})
        + "\n",
    )
    loaded = load_jsonl(str(lima), format="lima")
    assert [(e.instruction, e.output) for e in loaded.examples] == [("Q1", "A1"), ("Q", "A")]
    assert loaded.notes == {"multi_turn_first_exchange_only": 1}
    with pytest.raises(DataError, match="unknown data format 'nope'"):
        load_jsonl(str(lima), format="nope")


def test_hub_loader_on_a_local_dataset_dir(tmp_path):
    d = tmp_path / "my_alpaca"
    d.mkdir()
    write(d / "train.jsonl", "\n".join(json.dumps(r) for r in ROWS) + "\n")
    loaded = load_hub(str(d), split="train")
    assert [(e.id, e.output) for e in loaded.examples] == [("0", "hi"), ("1", "3")]


def test_hub_loader_error_is_plain(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="could not load dataset 'no-such-org/no-such-data'"):
        load_hub("no-such-org/no-such-data")


# ---- real reference data (skipped where ../shared/ref is absent)


def test_real_alpaca_subset_loads():
    loaded = load_json(str(ref_path("alpaca", "alpaca_subset_3111.json")))
    assert len(loaded.examples) == 3111
    assert sum(1 for e in loaded.examples if e.input) > 0
    assert all(e.output.strip() for e in loaded.examples)


def test_authors_stage3_scores_match_the_paper():
    path = ref_path("phasedsft_scores", "en-alpaca52k-stage3.jsonl")
    # The authors' file has 9 items with an empty output (first at line 2161): an error by
    # default, counted skips on request.
    with pytest.raises(DataError, match=rf"{path}:2161: empty output"):
        load_jsonl(str(path), format="phasedsft_scored")
    loaded = load_jsonl(str(path), format="phasedsft_scored", on_error="skip")
    assert loaded.skips.count == 9 and len(loaded.examples) == 6880
    stages = split_by_thresholds(loaded.examples, ManualThresholds().thresholds)
    assert [len(s) for s in stages] == [0, 0, 6880]  # all of them are stage 3 under [1.5, 3.5]
    assert round(statistics.mean(e.score for e in loaded.examples), 2) == 4.25  # paper, Table 1


@pytest.mark.parametrize(
    ("score", "reason"),
    [
        (7, "score 7 is outside the scale 1-5"),
        (-3, "score -3 is outside the scale 1-5"),
        ("99", "score 99 is outside the scale 1-5"),
        (True, "field 'score' must be a number"),
        ([3], "field 'score' must be a number"),
        ("hard", "field 'score' is not a number"),
    ],
)
def test_bad_scores_are_located_data_errors(tmp_path, score, reason):
    rows = [
        {"instruction": "a", "output": "b", "score": 2},
        {"instruction": "c", "output": "d", "score": score},
    ]
    f = tmp_path / "s.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"s.jsonl:2: .*{reason}"):
        load_jsonl(str(f))
    skipped = load_jsonl(str(f), on_error="skip")
    assert [ex.score for ex in skipped.examples] == [2.0] and skipped.skips.count == 1


def test_score_range_is_configurable_and_string_scores_load(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text(
        json.dumps({"instruction": "a", "output": "b", "score": "3.75"})
        + "\n"
        + json.dumps({"instruction": "c", "output": "d", "score": 9})
        + "\n"
    )
    assert [ex.score for ex in load_jsonl(str(f), score_range=[0, 10]).examples] == [3.75, 9.0]
    assert [ex.score for ex in load_jsonl(str(f), score_range=None).examples] == [3.75, 9.0]
