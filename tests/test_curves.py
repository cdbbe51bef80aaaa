"""Forgetting matrix of a run, growth curves of a dataset.max_examples sweep."""

from __future__ import annotations

import csv
import json
import sys

import pytest
from conftest import TINY
from helpers import run_command, run_dir, run_dirs, stage_dirs

from phasedsft.train.curves import forgetting, forgetting_matrix, write_forgetting


def record(index: int, **losses: float) -> dict:
    eval_ = {f"eval_{g}_loss": v for g, v in losses.items()} | {"eval_all_runtime": 1.0}
    return {"index": index, "name": f"difficulty-{index}", "metrics": {"eval": eval_}}


RECORDS = [
    record(1, all=3.0, level1=2.0, level2=4.0),
    record(2, all=2.5, level1=3.5, level2=1.5),  # level 1 forgotten, level 2 learnt
    record(3, all=2.0, level1=2.5, level2=1.8),
]


def test_forgetting_is_the_rise_above_each_groups_best():
    groups, rows = forgetting_matrix(RECORDS)
    assert groups == ["all", "level1", "level2"]
    assert rows == [[3.0, 2.0, 4.0], [2.5, 3.5, 1.5], [2.0, 2.5, 1.8]]
    assert forgetting(groups, rows) == {"all": 0.0, "level1": 0.5, "level2": pytest.approx(0.3)}


def test_forgetting_table_and_plot_are_written(tmp_path):
    assert write_forgetting(tmp_path, RECORDS)["level1"] == 0.5
    rows = list(csv.DictReader((tmp_path / "forgetting.csv").open()))
    assert [r["name"] for r in rows] == ["difficulty-1", "difficulty-2", "difficulty-3"]
    assert float(rows[1]["level1"]) == 3.5
    assert (tmp_path / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "forgetting.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.integration
def test_a_phased_run_writes_its_forgetting_matrix_per_level_and_task(tmp_path):
    cmd = [sys.executable, "train.py", *TINY, f"run.root={tmp_path}", "eval.by_task=true"]
    run_command([*cmd, "trainer.max_steps=4", "eval.generate=false"], no_traceback=True)
    run = run_dir(tmp_path, "summary.json")
    rows = list(csv.DictReader((run / "forgetting.csv").open()))
    assert len(rows) == 3
    tasks = [c for c in rows[0] if c.startswith("task-")]
    assert len(tasks) >= 5 and {"all", "level1", "level5"} <= set(rows[0])
    for row, stage in zip(rows, stage_dirs(run), strict=True):
        metrics = json.loads((stage / "stage.json").read_text())["metrics"]["eval"]
        for group in ("level1", tasks[0]):
            assert float(row[group]) == pytest.approx(metrics[f"eval_{group}_loss"], rel=1e-5)
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["forgetting"]) == set(rows[0]) - {"stage", "name"}
    assert all(v >= 0 for v in summary["forgetting"].values())


@pytest.mark.integration
def test_growth_curves_of_a_data_quantity_sweep(tmp_path):
    run_command(
        [
            sys.executable,
            "train.py",
            "-m",
            "dataset.max_examples=60,120",
            "ordering=one_off",
            *TINY,
            "trainer.max_steps=3",
            f"run.root={tmp_path}",
        ],
        no_traceback=True,
    )
    assert len(run_dirs(tmp_path, "summary.json")) == 2
    out = run_command(
        [sys.executable, "-m", "phasedsft.train.curves", "growth", str(tmp_path)], no_traceback=True
    )
    assert "growth.csv" in out.stdout
    rows = list(csv.DictReader((tmp_path / "growth.csv").open()))
    assert sorted({int(r["examples"]) for r in rows}) == [60, 120]
    assert {r["metric"] for r in rows} == {"loss", "accuracy"}
    assert {r["group"] for r in rows} >= {"all", "level1"}
    assert (tmp_path / "growth.pdf").read_bytes()[:5] == b"%PDF-"
    empty = run_command(
        [sys.executable, "-m", "phasedsft.train.curves", "growth", str(tmp_path / "none")],
        check=False,
    )
    assert empty.returncode == 2 and "no finished training runs" in empty.stderr


def fake_run(sweep, name, size, cfg, loss):
    """A finished run's files as growth curves read them (summary.json, config.yaml)."""
    import yaml

    run = sweep / name
    run.mkdir(parents=True)
    cfg = {"run": {"name": name}, "dataset": {"name": "d", "max_examples": size}, **cfg}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    summary = {
        "ordering": cfg["ordering"]["name"],
        "per_stage": [{"eval": {"eval_loss": loss}}],
        "final_accuracy": {},
    }
    (run / "summary.json").write_text(json.dumps(summary))


def test_growth_curves_draw_one_line_per_configuration(tmp_path):
    from phasedsft.train.curves import run_points, write_growth

    phased = {"name": "1-2-3", "stages": [1, 2, 3]}
    paced = {"name": "paced-root", "pacing": "root", "anti": False}
    for size in (100, 200):
        fake_run(tmp_path, f"a{size}", size, {"ordering": phased, "seed": 0}, 3.0)
        fake_run(tmp_path, f"b{size}", size, {"ordering": phased, "seed": 1}, 2.0)
        fake_run(tmp_path, f"c{size}", size, {"ordering": paced, "seed": 0}, 1.0)
        # the anti-curriculum under the same name: a line of its own, named by what differs
        anti = {**paced, "anti": True}
        fake_run(tmp_path, f"d{size}", size, {"ordering": anti, "seed": 0}, 0.5)
    lines = {p["run"]: p["line"] for p in run_points(tmp_path)}
    assert lines["a100"] == lines["a200"] != lines["b100"]
    assert len(set(lines.values())) == 4
    assert lines["a100"] == "ordering.name=1-2-3, seed=0"
    assert lines["b100"] == "ordering.name=1-2-3, seed=1"
    assert lines["d100"] == "ordering.anti=True, ordering.name=paced-root, seed=0"
    rows = list(csv.DictReader(write_growth(tmp_path).open()))
    by_line = {}
    for r in rows:
        by_line.setdefault(r["line"], set()).add((int(r["examples"]), float(r["value"])))
    assert by_line["ordering.name=1-2-3, seed=1"] == {(100, 2.0), (200, 2.0)}
