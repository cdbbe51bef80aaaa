"""The authors' released GPT-4 scores as the first reproduction path (GitHub xubuvd/PhasedSFT,
``Alpaca-scored/``, ``Alpaca-clean-scored/``): their configs, their prompt text as they trained
it, and segment.py's stage sizes beside the paper's.

The real file (``../shared/ref/phasedsft_scores/en-alpaca52k-stage3.jsonl``, the release's
stage 3 of Alpaca 52K) is only present beside the project's own checkouts: those tests skip,
saying so, without it.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import CONF, compose, ref_path

from phasedsft.segment.paper import (
    RELEASE_FILE,
    AuthorsData,
    authors_data,
    compare_stages,
    matches,
    paper_check,
)

STAGE3 = ("phasedsft_scores", "en-alpaca52k-stage3.jsonl")
EMPTY_OUTPUTS = {"21728", "9000", "39389", "14045", "43626", "6246", "11445", "19683", "47113"}


def released_prompt(instruction: str, input: str) -> str:
    """The prompt as the authors' released files hold it (read off the files, see below)."""
    body = instruction if instruction.endswith(".") else instruction + "."
    return body + (f"\n{input}" if input else "")


# ---------------------------------------------------------------- the configs


@pytest.mark.parametrize(
    ("option", "file"),
    [
        ("authors_alpaca", "Alpaca-scored/en-alpaca52k-stage{1,2,3}.jsonl"),
        ("authors_alpaca_cleaned", "Alpaca-clean-scored/en-alpaca_data-cleaned-stage{1,2,3}.jsonl"),
    ],
)
def test_each_released_dataset_has_its_option(option, file):
    cfg = compose([f"dataset={option}"])
    assert cfg.dataset.name == option
    assert cfg.dataset.source.format == "phasedsft_scored"
    assert cfg.dataset.source.on_error == "skip"  # their empty outputs: skipped and counted
    text = (CONF / "dataset" / f"{option}.yaml").read_text()
    # the download command in the file writes the file the option reads
    (cat,) = [line for line in text.splitlines() if " cat data/PhasedSFT/" in line]
    assert file in cat and cat.endswith(f"> {cfg.dataset.source.path}")
    stage_file = file.split("/")[1].replace("{1,2,3}", "1")
    assert RELEASE_FILE.match(stage_file)
    assert authors_data(option, None) == AuthorsData(option.removeprefix("authors_"), (1, 2, 3))


# ---------------------------------------------------------------- the real stage-3 file


def test_the_release_appends_a_period_to_instructions():
    """Their prompt is the instruction with "." appended when it does not end in one (after
    "?" or ":" too), then "\\n" + input: every item of the real Alpaca subset that is in their
    stage 3 is there in that form, none joined without the "."."""
    rows = [json.loads(line) for line in ref_path(*STAGE3).open(encoding="utf-8")]
    alpaca = json.loads(ref_path("alpaca", "alpaca_subset_3111.json").read_text(encoding="utf-8"))
    released = {tuple(r["data"]) for r in rows}
    found = [
        a
        for a in alpaca
        if (released_prompt(a["instruction"], a["input"]), a["output"]) in released
    ]
    plain = [
        a
        for a in alpaca
        if (a["instruction"] + (f"\n{a['input']}" if a["input"] else ""), a["output"]) in released
    ]
    assert len(found) == 1033
    with_period = [a for a in found if not a["instruction"].endswith(".")]
    assert len(with_period) == 222
    assert {a["instruction"][-1] for a in with_period} >= {"?", ":"}
    # joined without the ".": only the instructions that already end in one
    assert all(a["instruction"].endswith(".") for a in plain) and len(plain) == 1033 - 222


def test_the_authors_prompt_is_trained_verbatim():
    """The loader keeps their prompt as the instruction, and prompt=authors renders it
    between "User: " and EOS unchanged (their xllm/xllm_dataset.py:150-173)."""
    from phasedsft.data.loaders import load_jsonl
    from phasedsft.prompts import UserAssistantTemplate

    path = ref_path(*STAGE3)
    rows = {r["id"]: r for r in map(json.loads, path.open(encoding="utf-8"))}
    loaded = load_jsonl(str(path), format="phasedsft_scored", on_error="skip")
    assert {s["where"].rsplit(":", 1)[0] for s in loaded.skips.skipped} == {str(path)}
    assert len(loaded.examples) == len(rows) - len(EMPTY_OUTPUTS)
    assert {ex.id for ex in loaded.examples} == set(rows) - EMPTY_OUTPUTS
    template = UserAssistantTemplate()
    for ex in loaded.examples:
        prompt, output = rows[ex.id]["data"]
        assert template.prompt_text(ex) == f"User: {prompt}\nAssistant: "
        assert ex.output == output


# segment.py on 6,889 real rows
@pytest.mark.integration
def test_segment_prints_the_stage_sizes_beside_the_papers(tmp_path, capsys):
    """segment.py on the release's stage-3 file: 6,880 examples with an output (9 skipped),
    mean difficulty 4.254; the paper: 6.8k, 4.25."""
    from phasedsft.segment.run import run

    path = ref_path(*STAGE3)
    cfg = compose(
        [
            f"run.root={tmp_path}/segment",
            f"run.cache_dir={tmp_path}/cache",
            "model.tokenizer.vocab_size=300",
            "dataset=phasedsft_scored",
            f"dataset.source.path={path}",
            "dataset.source.on_error=skip",
        ],
        config_name="segment",
    )
    summary = run(cfg)
    check = summary["paper_stage_sizes"]
    assert check["dataset"] == "Alpaca 52K" and check["stages_held"] == [3]
    assert check["matches"] is True
    stage3 = check["stages"][2]
    assert stage3["count"] == 6880 and stage3["paper_count"] == 6800 and stage3["matches"]
    assert [s["matches"] for s in check["stages"][:2]] == [None, None]  # not in this file
    out = capsys.readouterr().out
    assert (
        "stage sizes against the paper's (Alpaca 52K, the authors' GPT-4 scores, stage 3 only)"
        in out
    )
    assert re.search(r"\| 3 \| 6,880 \| 6\.8k \| 4\.254 \| 4\.25 \| matches \|", out)
    assert "9 rows skipped" in out
    saved = json.loads((tmp_path / "segment").glob("*/summary.json").__next__().read_text())
    assert saved["paper_stage_sizes"] == check


# ---------------------------------------------------------------- the comparison itself


def test_the_papers_figures_are_cut_not_rounded():
    """6,889 rows print as 6.8k in the paper, and 4.255 as 4.25: a value matches a figure it
    truncates or rounds to, nothing further away."""
    assert matches(6889, 6800, 100) and matches(6880, 6800, 100) and matches(6751, 6800, 100)
    assert not matches(6900, 6800, 100) and not matches(6749, 6800, 100)
    assert matches(4.255, 4.25, 0.01) and matches(4.2549, 4.25, 0.01) and matches(4.246, 4.25, 0.01)
    assert not matches(4.26, 4.25, 0.01) and not matches(4.2449, 4.25, 0.01)


def table(counts, means):
    return [{"count": c, "mean_difficulty": m} for c, m in zip(counts, means, strict=True)]


def test_whole_release_against_the_paper():
    alpaca = AuthorsData("alpaca", (1, 2, 3))
    ok = compare_stages(alpaca, [30_374, 14_739, 6_889], [1.0, 2.214, 4.255])
    assert ok.ok and [r["matches"] for r in ok.rows] == [True, True, True]
    off = compare_stages(alpaca, [30_374, 14_739, 6_700], [1.0, 2.214, 4.255])
    assert not off.ok and "DIFFERS" in off.text()
    wrong_mean = compare_stages(alpaca, [30_374, 14_739, 6_889], [1.0, 2.3, 4.255])
    assert [r["matches"] for r in wrong_mean.rows] == [True, False, True]
    cleaned = compare_stages(
        AuthorsData("alpaca_cleaned", (1, 2, 3)), [23_960, 16_420, 11_380], [1.0, 2.0, 4.0]
    )
    assert cleaned.ok and "23.9k" in cleaned.text() and "11.4k" in cleaned.text()


def test_which_data_is_the_authors():
    assert authors_data("authors_alpaca_cleaned", "x.jsonl") == AuthorsData(
        "alpaca_cleaned", (1, 2, 3)
    )
    assert authors_data("phasedsft_scored", "/d/en-alpaca52k-stage2.jsonl") == AuthorsData(
        "alpaca", (2,)
    )
    assert authors_data("jsonl", "/d/en-alpaca_data-cleaned-stages-all.jsonl") == AuthorsData(
        "alpaca_cleaned", (1, 2, 3)
    )
    assert authors_data("jsonl", "runs/score/x/scored.jsonl") is None
    assert authors_data("graded", None) is None


def test_compared_only_where_it_means_something():
    rows = table([30_374, 14_739, 6_889], [1.0, 2.21, 4.25])
    assert paper_check("jsonl", "runs/score/x/scored.jsonl", [1.5, 3.5], rows) is None
    other = paper_check("authors_alpaca", None, [2.0, 3.0], rows)
    assert other is not None and other.rows == [] and "thresholds 2, 3" in other.text()
    sub = paper_check("authors_alpaca", None, [1.5, 3.5], rows, subsampled=True)
    assert sub is not None and sub.rows == [] and "subsample" in sub.text()
    # a stage-2 file whose rows all fall into stage 2; an example in a stage it should not hold differs
    held = paper_check(
        "phasedsft_scored",
        "en-alpaca52k-stage2.jsonl",
        [1.5, 3.5],
        table([0, 14_739, 0], [None, 2.21, None]),
    )
    assert held is not None and held.ok
    stray = paper_check(
        "phasedsft_scored",
        "en-alpaca52k-stage2.jsonl",
        [1.5, 3.5],
        table([3, 14_739, 0], [1.0, 2.21, None]),
    )
    assert stray is not None and not stray.ok
