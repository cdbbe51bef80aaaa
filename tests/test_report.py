"""``python -m phasedsft.report``: one self-contained HTML page per evaluated sweep.

Unit tests: the model gathered from a generated fake sweep (written with evaluate's own
writers, so the files are those evaluate.py writes), the verdicts folded as evaluate folds
them, escaping, the command line. Integration tests (marked): the page in a real browser,
Debian's headless Chromium driven over the DevTools protocol (stdlib only): no console error,
the table's numbers equal table.csv, filtering by "loss" shows exactly the losses, a
permalink shows its item, accessibility basics, the print stylesheet, one screenshot per
section, and the time to filter and draw a page among 20,000 items (reported).

Screenshots go to the test's temporary folder, or to ``$REPORT_SCREENSHOTS`` when set.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import json
import math
import os
import random
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from phasedsft.report import write_report
from phasedsft.report.__main__ import main
from phasedsft.report.build import VERDICTS, build_model, item_verdict, markdown_tables
from phasedsft.report.html import json_for_script, render

FIXTURE = ROOT / "tests" / "fixtures" / "report" / "replay_items.jsonl"
CHROMIUM = Path("/usr/bin/chromium")
LOSS_OF = {"win": "win", "tie": "tie", "lose": "loss"}  # evaluate's names -> the page's


# ---------------------------------------------------------------- a fake sweep, as evaluate writes it


def tiny_png(width: int = 4, height: int = 3) -> bytes:
    """A valid PNG (grey pixels), without any imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = b"".join(b"\x00" + b"\x80" * width * 3 for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


VOCAB = (
    "the a model answer question data stage training loss curriculum difficulty phased one-off "
    "because however therefore example result shows that which more less clear correct wrong "
    "detail step explain reason helpful concise verbose instruction output input"
).split()


def prose(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n)).capitalize() + "."


def review(a: int, b: int, rng: random.Random | None = None) -> str:
    why = prose(rng, rng.randint(30, 80)) if rng else "Short."
    return f"{a} {b}\nThe first answer {'is better' if a > b else 'is not better'}. {why}"


def make_sweep(
    root: Path,
    per_comparison: int = 12,
    sets: tuple[str, ...] = ("held_out", "koala"),
    seed: int = 0,
    long_texts: bool = False,
) -> Path:
    """A sweep as train.py / segment.py / evaluate.py leave it: a segment run, a one-off
    baseline, a phased run of 3 stages (every stage judged against the baseline) and a
    random-stages run; the first test set's first comparison starts with the fixture items.
    ``long_texts``: answers and reviews of real length (tens to hundreds of words, each
    candidate answer and review its own; the baseline's answer the same in every comparison)."""
    from phasedsft.evaluate.report import (
        SEEDS_CSV_HEADER,
        Comparison,
        write_categories,
        write_tables,
    )
    from phasedsft.evaluate.winrate import by_category, judge_item, length_view, summarize

    rng = random.Random(seed)
    sweep = root / "sweep"
    seg = sweep / "segment" / "graded"
    seg.mkdir(parents=True)
    (seg / "density.png").write_bytes(tiny_png())
    (seg / "table1.csv").write_text(
        "stage,count,share,mean_difficulty,mean_tokens\n1,40,0.4,1.0,20.5\n2,30,0.3,2.6,23.25\n3,30,0.3,4.5,34.9\n"
    )
    (seg / "sensitivity.md").write_text(
        "| method | thresholds | sizes | examples that change stage |\n|---|---|---|---:|\n"
        "| paper | 1.5, 3.5 | [40, 30, 30] | 0 (0.0%) |\n"
    )
    (seg / "summary.json").write_text(
        json.dumps(
            {
                "thresholds": [1.5, 3.5],
                "method": {"method": "manual", "thresholds": [1.5, 3.5]},
                "manifest_hash": "ab" * 32,
                "data": {"examples": 100},
                "train_command": "python train.py segment.manifest=x",
            }
        )
    )
    runs = {
        "graded-tiny-one_off-s0-0000aaaa": ("one_off", [("all", 100)]),
        "graded-tiny-1-2-3-s0-1111bbbb": (
            "1-2-3",
            [("difficulty-1", 40), ("difficulty-2", 30), ("difficulty-3", 30)],
        ),
        "graded-tiny-random-s0-2222cccc": ("random", [("random-1", 40), ("random-2", 60)]),
    }
    for name, (ordering, stages) in runs.items():
        d = sweep / name
        d.mkdir()
        (d / "config.yaml").write_text(
            f"seed: 0\nordering:\n  name: {ordering}\ndataset:\n  name: graded\nmodel:\n  name: tiny\n"
            "trainer:\n  stage_policy:\n    schedule: per_stage\n    optimizer_state: fresh\n"
            + (
                "replay:\n  _target_: x.Replay\n  fraction: 0.1\n"
                if ordering == "random"
                else "replay: null\n"
            )
        )
        manifest = {"path": str(seg / "stage_manifest.json"), "hash": "ab" * 32}
        (d / "run.json").write_text(
            json.dumps(
                {
                    "ordering": ordering,
                    "git": {"sha": "f" * 40, "dirty": False},
                    "stage_manifest": manifest
                    if ordering != "one_off"
                    else {"path": None, "hash": None},
                    "stages": [
                        {
                            "index": i,
                            "name": s,
                            "n_examples": n,
                            "n_tokens": 10 * n,
                            "n_target_tokens": 3 * n,
                            "order_sha256": f"{i}" * 64,
                            **(
                                {"mixture": {"difficulty-1": 4}}
                                if ordering == "random" and i == 2
                                else {}
                            ),
                        }
                        for i, (s, n) in enumerate(stages, 1)
                    ],
                }
            )
        )
        for i, (s, n) in enumerate(stages, 1):
            (d / f"stage_{i}_{s}").mkdir()
            (d / f"stage_{i}_{s}" / "stage.json").write_text(
                json.dumps({"index": i, "name": s, "global_step": n // 8, "fed_matches_plan": True})
            )
        (d / "summary.json").write_text("{}")
        if len(stages) > 1:
            (d / "forgetting.csv").write_text(
                "stage,name,all,level_1,level_5\n"
                + "".join(
                    f"{i},{s},{2.5 - 0.1 * i:.6g},{2.0 + 0.05 * i:.6g},{3.0 - 0.2 * i:.6g}\n"
                    for i, (s, _) in enumerate(stages, 1)
                )
            )
            (d / "forgetting.png").write_bytes(tiny_png())

    out = sweep / "evaluation" / "reference"
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "overrides.yaml").write_text(
        f"- sweep_dir={sweep}\n- checkpoints=every_stage\n"
    )
    (out / ".hydra" / "config.yaml").write_text("judge:\n  name: reference\n")
    (out / "figure1_stages.png").write_bytes(tiny_png(8, 5))
    fixture = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").split("\n") if line]
    base = "graded-tiny-one_off-s0-0000aaaa"
    comparisons, pooled_items = [], {}
    for name, (ordering, stages) in runs.items():
        if ordering == "one_off":
            continue
        for i, (s, _) in enumerate(stages, 1):
            for es in sets:
                rows = []
                if not comparisons:
                    rows += fixture
                for k in range(per_comparison - len(rows)):
                    a, b, c, d = (rng.randint(1, 9) for _ in range(4))
                    long = rng if long_texts else None
                    ans_a = (
                        prose(rng, rng.randint(20, 250))
                        if long_texts
                        else " ".join(["word"] * rng.randint(1, 40))
                    )
                    ans_b = f"The answer is {k}." + (
                        " " + prose(random.Random(f"{es}{k}"), 40 + k % 200) if long_texts else ""
                    )
                    rows.append(
                        {
                            "id": f"{es}-{k}",
                            "instruction": f"Question {k} of {es}: what is {k} + 0?",
                            "answer_a": ans_a,
                            "answer_b": ans_b,
                            "review_ab": review(a, b, long),
                            "review_ba": review(c, d, long),
                            "category": {"level": str(1 + k % 5), "task": ["arith", "copy"][k % 2]},
                            "scores_ab": [a, b],
                            "scores_ba": [c, d],
                        }
                    )
                judged = [
                    judge_item(
                        r["id"],
                        r["review_ab"],
                        r["review_ba"],
                        r["category"],
                        r["answer_a"],
                        r["answer_b"],
                    )
                    for r in rows
                ]
                for r, j in zip(rows, judged, strict=True):  # the replay file's parsed fields
                    r["scores_ab"], r["scores_ba"] = j.scores_ab, j.scores_ba
                label = f"{name}__stage_{i}_{s}__vs__{base}"
                folder = out / "comparisons" / es
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{label}.jsonl").write_text(
                    "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8",
                )
                win = summarize(judged, "paper", 200, 0)
                comp = Comparison(
                    ("graded", "tiny", 0),
                    ordering,
                    name,
                    i,
                    len(stages),
                    es,
                    base,
                    win,
                    by_category(judged, "paper", 50, 0),
                    lengths=length_view(judged, "paper", resamples=50, seed=0),
                    judge="reference",
                )
                comparisons.append(comp)
                pooled_items.setdefault(comp.row, []).extend(judged)
                (folder / f"{label}.json").write_text(
                    json.dumps(
                        {
                            **win.to_json(),
                            "candidate": f"{name}/stage_{i}_{s}",
                            "baseline": f"{base}/stage_1_all",
                            "judge": "reference",
                        }
                    )
                )
    pooled = {k: summarize(v, "paper", 200, 0) for k, v in pooled_items.items()}
    write_tables(out, comparisons, pooled, "one_off")
    write_categories(out, comparisons)
    # one comparison under two seeds (as seeds.csv writes it) and growth curves over sizes
    seeds = {h: "" for h in SEEDS_CSV_HEADER} | {
        "dataset": "graded",
        "model": "tiny",
        "ordering": "1-2-3",
        "stage": "3",
        "n_stages": "3",
        "eval_set": sets[0],
        "seeds": "0 1",
        "per_seed_win_rates": "4.5 -1.25",
        "k": "2",
        "mean": "1.625",
        "std": "4.07",
        "min": "-1.25",
        "max": "4.5",
        "t_low": "-34.9",
        "t_high": "38.2",
        "pooled_win_rate": "1.6",
        "pooled_ci_low": "-8.1",
        "pooled_ci_high": "11.0",
        "pooled_wins": "9",
        "pooled_ties": "4",
        "pooled_losses": "7",
        "verdict": "within seed noise",
    }
    (out / "seeds.csv").write_text(",".join(seeds) + "\n" + ",".join(seeds.values()) + "\n")
    (sweep / "growth.csv").write_text(
        "label,size,loss,accuracy\nphased,100,2.5,0.1\nphased,200,2.1,0.2\n"
    )
    (sweep / "growth.png").write_bytes(tiny_png())
    (out / "summary.json").write_text(
        json.dumps(
            {
                "judge": "reference",
                "rule": "paper",
                "checkpoints": "every_stage",
                "baseline": "one_off",
            }
        )
    )
    return sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("report"))


def replay_rows(eval_dir: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    return {
        (p.parent.name, p.stem): [
            json.loads(x) for x in p.read_text(encoding="utf-8").split("\n") if x
        ]
        for p in sorted((eval_dir / "comparisons").glob("*/*.jsonl"))
    }


def evaluate_outcome(row: dict[str, Any], rule: str = "paper") -> str:
    """The item's outcome as evaluate's own code folds it (an independent count)."""
    from phasedsft.evaluate.winrate import judge_item, outcome_of

    j = judge_item(row["id"], row["review_ab"], row["review_ba"])
    got = outcome_of(j, rule)
    return "unparsed" if got is None else LOSS_OF[got]


# ---------------------------------------------------------------- unit tests


def test_the_model_gathers_the_whole_sweep(sweep):
    eval_dir = sweep / "evaluation" / "reference"
    model = build_model(eval_dir, sweep)
    with (eval_dir / "table.csv").open() as f:
        table = list(csv.reader(f))
    assert model["table"] == {"columns": table[0], "rows": table[1:]}
    assert (
        model["judge"] == "reference"
        and model["rule"] == "paper"
        and model["baseline"] == "one_off"
    )
    assert (
        model["commands"]["evaluate"]
        == f"python evaluate.py sweep_dir={sweep} checkpoints=every_stage"
    )
    assert model["figure1"]["src"].startswith("data:image/png;base64,")
    # every comparison, every item; the re-folded counts equal evaluate's figures
    assert len(model["comparisons"]) == 5 * 2
    assert len(model["items"]) == 5 * 2 * 12
    assert all(c["counts_match"] for c in model["comparisons"])
    # the runs: the baseline and the candidates, with their stages and plan
    runs = {r["name"]: r for r in model["runs"]}
    phased = runs["graded-tiny-1-2-3-s0-1111bbbb"]
    assert phased["in_evaluation"] and phased["config_hash"] == "1111bbbb"
    assert [s["steps"] for s in phased["stages"]] == [5, 3, 3]
    assert [s["examples"] for s in phased["stages"]] == [40, 30, 30]
    assert phased["stage_policy"] == "schedule=per_stage, optimizer_state=fresh"
    assert runs["graded-tiny-random-s0-2222cccc"]["replay"] == "fraction=0.1"
    assert runs["graded-tiny-random-s0-2222cccc"]["stages"][1]["mixture"] == {"difficulty-1": 4}
    assert phased["forgetting"]["columns"] == ["stage", "name", "all", "level_1", "level_5"]
    assert runs["graded-tiny-one_off-s0-0000aaaa"]["forgetting"] is None
    # the segment run, found through the runs' stage manifest
    (seg,) = model["segments"]
    assert seg["thresholds"] == [1.5, 3.5] and seg["table1"]["rows"][0][:2] == ["1", "40"]
    assert seg["sensitivity"][0]["rows"] == [["paper", "1.5, 3.5", "[40, 30, 30]", "0 (0.0%)"]]
    assert model["categories"] and model["categories"][0]["columns"][0] in {"level", "task"}
    assert (
        model["seeds"]["rows"][0][model["seeds"]["columns"].index("verdict")] == "within seed noise"
    )
    assert model["growth"]["csv"]["rows"][1] == ["phased", "200", "2.1", "0.2"]
    assert model["growth"]["png"]["src"].startswith("data:image/png;base64,")
    json.dumps(model, allow_nan=False)  # JSON-able


def test_a_copied_sweep_shows_its_segment_run_once(sweep, tmp_path):
    """The runs name the original's stage manifest, the copy holds its own segment/ folder:
    one segmentation (the same manifest hash), not two."""
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    model = build_model(copy / "evaluation" / "reference", copy)
    assert [s["manifest_hash"] for s in model["segments"]] == ["ab" * 32]


def test_each_item_carries_its_verdict_as_evaluate_folds_it(sweep):
    eval_dir = sweep / "evaluation" / "reference"
    model = build_model(eval_dir, sweep)
    fields = {f: i for i, f in enumerate(model["item_fields"])}
    rows = replay_rows(eval_dir)
    by_cmp = {(c["set"], c["label"]): k for k, c in enumerate(model["comparisons"])}
    got = {
        (
            model["comparisons"][it[0]]["set"],
            model["comparisons"][it[0]]["label"],
            it[fields["id"]],
        ): VERDICTS[it[fields["verdict"]]]
        for it in model["items"]
    }
    for key, items in rows.items():
        assert key in by_cmp
        for row in items:
            assert got[(*key, row["id"])] == evaluate_outcome(row), row["id"]
    # the fixture items: win; tie + lose -> loss (inconsistent); unparsed; win + lose -> tie
    first = [it for it in model["items"] if it[0] == 0][:4]
    assert [VERDICTS[it[fields["verdict"]]] for it in first] == ["win", "loss", "unparsed", "tie"]
    assert [it[fields["consistent"]] for it in first] == [1, 0, None, 0]


@pytest.mark.parametrize("rule", ["paper", "fastchat"])
def test_the_fold_equals_evaluates_for_every_pair_of_verdicts(rule):
    from phasedsft.evaluate.winrate import judge_item, outcome_of

    for ab in [(8, 3), (5, 5), (3, 8)]:
        for ba in [(8, 3), (5, 5), (3, 8)]:
            j = judge_item("x", f"{ab[0]} {ab[1]}", f"{ba[0]} {ba[1]}")
            mine, _ = item_verdict(ab, ba, rule)
            assert mine == LOSS_OF[outcome_of(j, rule)], (ab, ba, rule)


def test_the_authors_rule_marks_a_zero_score_void():
    assert item_verdict((0, 0), (8, 3), "authors") == ("void", None)
    assert item_verdict((0, 0), (3, 8), "paper")[0] == "win"  # tie, then A better
    assert item_verdict(None, (8, 3), "paper") == ("unparsed", None)


def test_a_replay_file_without_parsed_scores_is_read_from_the_reviews(tmp_path):
    sweep = tmp_path / "s"
    folder = sweep / "evaluation" / "gpt4" / "comparisons" / "koala"
    folder.mkdir(parents=True)
    rows = [
        {
            "id": 1,
            "instruction": "q",
            "answer_a": "a",
            "answer_b": "b",
            "review_ab": "8 7\nok",
            "review_ba": "6 9",
        },
        {
            "id": 2,
            "instruction": "q",
            "answer_a": "a",
            "answer_b": "b",
            "review_ab": "no",
            "review_ba": "6 9",
        },
    ]
    (folder / "r__stage_1_all__vs__b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = build_model(sweep / "evaluation" / "gpt4")
    verdicts = [VERDICTS[it[model["item_fields"].index("verdict")]] for it in model["items"]]
    assert verdicts == ["win", "unparsed"]
    assert model["judge"] == "gpt4" and model["table"] is None
    render(model)  # a page, whatever is missing


def test_every_part_is_on_the_page(sweep):
    html = render(build_model(sweep / "evaluation" / "reference", sweep))
    for part in (
        'id="figure1"',  # Figure 1, and per test set as SVG
        'id="figure-per-set"',
        'id="table-pivot"',  # Table 2 shape
        'id="table-seeds"',  # across seeds: s0 +4.5, s1 -1.2 (rounded half to even)
        "s0 +4.5, s1 -1.2",
        "within seed noise",
        'id="table-csv"',
        'id="density-0"',  # density plot, Table 1, sensitivity
        'id="table1-0"',
        'id="table-runs"',  # runs, their stages, forgetting
        'id="stages-0"',
        'id="forgetting-0"',
        'id="forgetting-fig-0"',
        'id="table-growth"',
        'id="j-controls"',  # the item browser
        'id="cmd-report"',  # provenance
        'id="cmd-evaluate"',
        "(config 1111bbbb)",  # each figure: the runs, config hashes and judge that made it
        "judge <code>reference</code>",
    ):
        assert part in html, part


def test_html_in_answers_is_text_never_markup(sweep):
    html = render(build_model(sweep / "evaluation" / "reference", sweep))
    assert "<script>window.__pwned" not in html and "<img src=x" not in html
    assert "\\u003cscript\\u003ewindow.__pwned" in html  # in the JSON blob, escaped
    assert html.count("</script>") == 2  # the data and the page's own script, nothing else
    assert "\u2028" not in html.split('id="report-data">')[1].split("</script>")[0]
    # category values (static tables) are escaped too: "task=<html>"
    assert "<html>" not in html.split("<body>", 1)[1]


def test_json_for_script_round_trips():
    tricky = {"a": "</script><!-- \u2028\u2029 & > <", "b": [1.5, None, "é😀"]}
    text = json_for_script(tricky)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == tricky


def test_the_page_loads_nothing_from_anywhere(sweep):
    html = render(build_model(sweep / "evaluation" / "reference", sweep))
    assert 'http-equiv="Content-Security-Policy"' in html and "default-src 'none'" in html
    for attr in ("src=", "href="):
        for chunk in html.split(attr)[1:]:
            assert not chunk.lstrip("\"'").startswith(("http:", "https:", "//")), chunk[:60]


def test_markdown_tables_are_read_with_their_headings():
    text = "### koala: win rate by level\n\n| level | a |\n|---|---:|\n| 1 | +2.0 (n=3) |\n\nprose\n| x |\n|---|\n| y |\n"
    assert markdown_tables(text) == [
        {
            "title": "koala: win rate by level",
            "columns": ["level", "a"],
            "rows": [["1", "+2.0 (n=3)"]],
        },
        {"title": "koala: win rate by level", "columns": ["x"], "rows": [["y"]]},
    ]


def test_the_command_writes_one_report_per_evaluation(sweep, tmp_path, capsys):
    assert main([str(sweep)]) == 0
    path = sweep / "evaluation" / "reference" / "report.html"
    assert f"report: {path}" in capsys.readouterr().out
    assert f"python -m phasedsft.report {sweep}" in path.read_text(encoding="utf-8")
    assert main([str(sweep / "evaluation" / "reference"), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 10_000
    assert main([str(tmp_path)]) == 2
    assert "no evaluation in" in capsys.readouterr().err


def test_write_report_is_the_evaluate_hook(sweep, tmp_path):
    out = write_report(sweep / "evaluation" / "reference", sweep, tmp_path / "x.html")
    assert out == tmp_path / "x.html" and out.read_text(encoding="utf-8").startswith(
        "<!DOCTYPE html>"
    )


# ---------------------------------------------------------------- the page in a real browser


class DevTools:
    """A minimal Chrome DevTools Protocol client: one WebSocket, stdlib only."""

    def __init__(self, ws_url: str, timeout: float = 60) -> None:
        hostport, path = ws_url.removeprefix("ws://").split("/", 1)
        host, port = hostport.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            got = self.sock.recv(n - len(buf))
            if not got:
                raise ConnectionError("the browser closed the connection")
            buf += got
        return buf

    def _send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (
            bytes([0x80 | n])
            if n < 126
            else bytes([0x80 | 126]) + struct.pack(">H", n)
            if n < 65536
            else bytes([0x80 | 127]) + struct.pack(">Q", n)
        )
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(head + mask + masked)

    def _recv(self) -> dict[str, Any]:
        parts = []
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)
            if b0 & 0x0F == 8:
                raise ConnectionError("the browser closed the connection")
            if b0 & 0x0F in (9, 10):
                continue
            parts.append(payload)
            if b0 & 0x80:
                return json.loads(b"".join(parts))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = self._recv()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def js(self, expression: str) -> Any:
        got = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in got:
            raise AssertionError(f"{expression[:80]}: {got['exceptionDetails']}")
        return got["result"].get("value")

    def wait(self, expression: str, timeout: float = 60) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expression}")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors so far (CSP included)."""
        self.call("Runtime.evaluate", expression="0")  # collect pending events
        out = []
        for ev in self.events:
            p = ev.get("params", {})
            if ev.get("method") == "Runtime.exceptionThrown":
                out.append(json.dumps(p.get("exceptionDetails"))[:400])
            elif ev.get("method") == "Runtime.consoleAPICalled" and p.get("type") in (
                "error",
                "assert",
            ):
                out.append(json.dumps(p.get("args"))[:400])
            elif (
                ev.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error"
            ):
                out.append(p["entry"].get("text", "")[:400])
        return out


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium (Debian's package)")
    profile = tempfile.mkdtemp(prefix="report-chromium-")
    proc = subprocess.Popen(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            f"--window-size={width},{height}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > end or proc.poll() is not None:
                raise AssertionError("Chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Runtime", "Log", "Page"):
            tools.call(f"{domain}.enable")
        yield tools
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def load(tools: DevTools, url: str) -> None:
    """Open the page afresh (never a same-document jump: the view comes from the address)."""
    tools.call("Page.navigate", url="about:blank")
    tools.wait("document.readyState === 'complete' && location.href === 'about:blank'")
    tools.call("Page.navigate", url=url)
    tools.wait(
        "document.readyState === 'complete' && window.__report && window.__report.loadMs !== null"
    )


def screenshot(tools: DevTools, section: str, folder: Path, height: int = 2400) -> Path:
    """The section as a reader sees it: scrolled to its heading in a window as tall as the
    section (at most ``height`` px), so that what the page draws only on screen is drawn."""
    tall = tools.js(
        f"Math.ceil(document.getElementById('{section}').getBoundingClientRect().height)"
    )
    tools.call(
        "Emulation.setDeviceMetricsOverride",
        width=1280,
        height=min(tall, height),
        deviceScaleFactor=1,
        mobile=False,
    )
    try:
        tools.js(f"document.getElementById('{section}').scrollIntoView({{block: 'start'}})")
        tools.js("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        shot = tools.call("Page.captureScreenshot", format="png")
    finally:
        tools.call("Emulation.clearDeviceMetricsOverride")
    path = folder / f"report_{section}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def choose(tools: DevTools, control: str, value: str) -> None:
    """Pick a value in one of the page's own controls, as a user does (a change event)."""
    tools.js(
        f"(function(){{var s=document.getElementById({json.dumps(control)});s.value={json.dumps(value)};"
        "s.dispatchEvent(new Event('change',{bubbles:true}));})()"
    )


def shown_items(tools: DevTools) -> list[dict[str, str]]:
    return tools.js(
        "Array.from(document.querySelectorAll('#j-list article')).map(a=>({id:a.dataset.id,"
        "verdict:a.dataset.verdict,consistent:a.dataset.consistent}))"
    )


@pytest.fixture(scope="module")
def page(sweep):
    path = write_report(sweep / "evaluation" / "reference", sweep)
    with chromium() as tools:
        load(tools, path.as_uri())
        yield tools, path


@pytest.mark.integration
def test_the_page_runs_without_a_console_error(page):
    tools, _ = page
    assert tools.errors() == []
    assert tools.js("typeof window.__pwned") == "undefined"  # no answer ran as code
    assert tools.js("document.querySelectorAll('#j-list article').length") == 12


@pytest.mark.integration
def test_the_tables_numbers_equal_table_csv(page, sweep):
    tools, _ = page
    with (sweep / "evaluation" / "reference" / "table.csv").open() as f:
        rows = list(csv.reader(f))
    cells = tools.js(
        "Array.from(document.querySelectorAll('#table-csv tbody tr')).map(tr=>"
        "Array.from(tr.cells).map(c=>[c.dataset.value,c.textContent]))"
    )
    header = tools.js(
        "Array.from(document.querySelectorAll('#table-csv thead th')).map(th=>th.textContent)"
    )
    assert header == rows[0]
    assert len(cells) == len(rows) - 1
    for got, want in zip(cells, rows[1:], strict=True):
        assert [v for v, _ in got] == want  # every value exactly
        for (value, text), column in zip(got, rows[0], strict=True):  # and shown as that number
            if value and column not in {"seed", "stage", "n_stages"}:
                try:
                    x = float(value)
                except ValueError:
                    assert text == value
                    continue
                assert math.isclose(float(text), x, rel_tol=0.006, abs_tol=0.0051), (
                    column,
                    value,
                    text,
                )
    # the headline table's cells: the same win rates
    pivot = tools.js(
        "Array.from(document.querySelectorAll('#table-pivot td.cell')).map(td=>td.dataset.value)"
    )
    assert sorted(pivot) == sorted(r[rows[0].index("win_rate")] for r in rows[1:])


@pytest.mark.integration
def test_filtering_by_loss_shows_exactly_the_losses(page, sweep):
    """Every page of the "loss" view, in one comparison and across a set's comparisons,
    against the losses evaluate's own code counts in the replay files."""
    tools, path = page
    rows = replay_rows(sweep / "evaluation" / "reference")
    views = [(es, label, items) for (es, label), items in list(rows.items())[:2]]
    for es in sorted({es for es, _ in rows}):  # "every comparison on this set": several pages
        views.append((es, "*", [r for (s, _), items in rows.items() if s == es for r in items]))
    for es, label, items in views:
        load(tools, path.as_uri() + "#judged?" + urllib.parse.urlencode({"set": es, "cmp": label}))
        choose(tools, "f-size", "10")
        choose(tools, "f-verdict", "loss")
        seen, pages = [], 0
        while True:
            seen += shown_items(tools)
            pages += 1
            nxt = "Array.from(document.querySelectorAll('#j-pages button')).find(b=>b.textContent.startsWith('next'))"
            if not tools.js(f"!!({nxt}) && !({nxt}).disabled"):
                break
            before = tools.js("window.__report.renders")
            tools.js(f"({nxt}).click()")
            tools.wait(f"window.__report.renders > {before}")
        losses = [r["id"] for r in items if evaluate_outcome(r) == "loss"]
        assert [s["id"] for s in seen] == losses and {s["verdict"] for s in seen} <= {"loss"}
        assert tools.js("window.__report.matching") == len(losses)
        assert "verdict=loss" in tools.js("location.hash")
        if label == "*":
            assert pages == math.ceil(len(losses) / 10) > 1
    # position-inconsistent: the two orders disagree
    choose(tools, "f-verdict", "inconsistent")
    assert {s["consistent"] for s in shown_items(tools)} <= {"0"}
    assert tools.errors() == []


@pytest.mark.integration
def test_a_permalink_shows_its_item_as_text(page, sweep):
    tools, path = page
    eval_dir = sweep / "evaluation" / "reference"
    (es, label), _ = next(iter(replay_rows(eval_dir).items()))
    load(
        tools,
        path.as_uri()
        + "#judged?"
        + urllib.parse.urlencode({"set": es, "cmp": label, "item": "xss-1"}),
    )
    assert [s["id"] for s in shown_items(tools)] == ["xss-1"]
    text = tools.js("document.querySelector('#j-list article').textContent")
    assert "<script>window.__pwned = 'answer'</script>" in text and "<b>text</b>" in text
    assert (
        tools.js(
            "document.querySelectorAll('#j-list article script, #j-list article img, #j-list article b').length"
        )
        == 0
    )
    assert tools.js("typeof window.__pwned") == "undefined"
    # its permalink is the address it was opened by
    assert tools.js("document.querySelector('#j-list .permalink').getAttribute('href')").endswith(
        "item=xss-1"
    )
    assert tools.errors() == []


@pytest.mark.integration
def test_accessibility_basics(page):
    tools, _ = page
    report = tools.js(
        """(function(){
        var q=s=>Array.from(document.querySelectorAll(s));
        return {
          h1: q('h1').length,
          h2: q('h2').map(h=>h.textContent),
          imgNoAlt: q('img').filter(i=>!(i.getAttribute('alt')||'').trim()).length,
          tablesNoCaption: q('table').filter(t=>!t.caption||!t.caption.textContent.trim()).length,
          headNoScope: q('thead th').filter(th=>th.getAttribute('scope')!=='col').length,
          svgNoTitle: q('svg').filter(s=>!s.querySelector('title')).length,
          unlabelled: q('select, input').filter(c=>!c.closest('label')).length,
          lang: document.documentElement.lang};})()"""
    )
    assert report["h1"] == 1 and report["lang"] == "en"
    assert report["h2"] == [
        "1. Headline",
        "2. Data and plan",
        "3. Every judged item",
        "4. Provenance",
    ]
    assert report["imgNoAlt"] == report["tablesNoCaption"] == report["headNoScope"] == 0
    assert report["svgNoTitle"] == 0 and report["unlabelled"] == 0


@pytest.mark.integration
def test_the_page_prints_as_a_report(page):
    tools, _ = page
    tools.call("Emulation.setEmulatedMedia", media="print")
    try:
        hidden = tools.js(
            "['j-controls','j-pages'].map(id=>getComputedStyle(document.getElementById(id)).display)"
        )
        assert hidden == ["none", "none"]
        pdf = base64.b64decode(tools.call("Page.printToPDF", printBackground=True)["data"])
        assert pdf.startswith(b"%PDF") and len(pdf) > 20_000
    finally:
        tools.call("Emulation.setEmulatedMedia", media="")


@pytest.mark.integration
def test_a_screenshot_per_section(page, tmp_path):
    tools, path = page
    load(tools, path.as_uri())
    folder = Path(os.environ.get("REPORT_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    for section in ("headline", "plan", "judged", "provenance"):
        shot = screenshot(tools, section, folder)
        data = shot.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5_000, section
    assert tools.errors() == []


@pytest.mark.integration
def test_tens_of_thousands_of_items_stay_responsive(tmp_path):
    """20,000 judged items (5 comparisons x 2 sets x 2,000): the page draws one page of
    them, and each filter a user picks finds exactly the items it should (counted here from
    the model). How long that takes is measured by ``benchmarks/bench_report.py``, not here."""
    sweep = make_sweep(tmp_path, per_comparison=2000, seed=1, long_texts=True)
    eval_dir = sweep / "evaluation" / "reference"
    path = write_report(eval_dir, sweep)
    model = build_model(eval_dir, sweep)
    assert len(model["items"]) == 20_000
    f = {name: i for i, name in enumerate(model["item_fields"])}
    strings, comparisons = model["strings"], model["comparisons"]

    def expected(state: dict[str, Any]) -> int:
        n = 0
        for it in model["items"]:
            c = comparisons[it[f["comparison"]]]
            if c["set"] != state["set"] or state["cmp"] not in ("*", c["label"]):
                continue
            v = VERDICTS[it[f["verdict"]]]
            if state["verdict"] == "inconsistent" and it[f["consistent"]] != 0:
                continue
            if state["verdict"] in ("win", "tie", "loss") and v != state["verdict"]:
                continue
            if state["cat"] and state["cat"] not in [strings[k] for k in it[f["categories"]]]:
                continue
            text = "\n".join(
                [it[f["id"]], *(strings[it[f[k]]] for k in ("question", "answer_a", "answer_b"))]
            )
            if state["q"] and state["q"].lower() not in text.lower():
                continue
            n += 1
        return n

    with chromium() as tools:
        load(tools, path.as_uri())
        assert tools.js("document.querySelectorAll('#j-list article').length") == 25
        steps = [
            ("f-cmp", "*"),
            ("f-verdict", "loss"),
            ("f-cat", "level=3"),
            ("f-sort", "ldiff-desc"),
            ("f-size", "100"),
            ("f-verdict", "inconsistent"),
            ("f-set", "koala"),
            ("f-q", "question 7"),
        ]
        counts = []
        for control, value in steps:
            before = tools.js("window.__report.renders")
            if control == "f-q":
                tools.js(
                    f"var q=document.getElementById('f-q'); q.value={json.dumps(value)}; "
                    "q.form.requestSubmit()"
                )
            else:
                choose(tools, control, value)
            tools.wait(f"window.__report.renders > {before}")
            report = tools.js("window.__report")
            counts.append(report["matching"])
            assert report["matching"] == expected(report["state"]), (control, value)
            assert report["shown"] == min(report["state"]["size"], report["matching"])
            if value == "ldiff-desc":  # sorted by length A - B, largest first
                diffs = [
                    int(t.split("length A − B: ")[1].split()[0])
                    for t in tools.js(
                        "Array.from(document.querySelectorAll('#j-list article p.meta'))"
                        ".map(p=>p.textContent)"
                    )
                ]
                assert diffs == sorted(diffs, reverse=True) and len(set(diffs)) > 1
        assert counts[0] == 10_000 and all(counts)  # every filter found something
        assert tools.errors() == []
