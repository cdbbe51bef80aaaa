"""Paper-ready figures and tables: every plot as PNG and PDF, drawn from tiny inputs; the
density plot's parts; Figure 1's axes and legend; table.csv in numbers, table.md with W/T/L."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from phasedsft.evaluate.report import CSV_HEADER, Comparison, plot_stage_curves, write_tables
from phasedsft.evaluate.winrate import judge_item, length_view, summarize

# integer scores 1..5 as a scorer gives them: 3 + 5 + 8 + 3 + 1 examples
SCORES = [1.0] * 3 + [2.0] * 5 + [3.0] * 8 + [4.0] * 3 + [5.0] * 1
THRESHOLDS = [1.5, 3.5]


def assert_png_and_pdf(png: Path) -> None:
    from PIL import Image

    pdf = png.with_suffix(".pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    with Image.open(png) as im:
        im.verify()  # the whole file decodes
    with Image.open(png) as im:
        assert im.size[0] > 200 and im.size[1] > 200
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-32:], pdf


class Caught:
    """Stands in for ``save_figure``: keeps the figure to look at instead of writing it."""

    def __init__(self):
        self.fig = None

    def __call__(self, fig, png, dpi=150):
        self.fig = fig
        return png, png.with_suffix(".pdf")


# ------------------------------------------------------------------ the density plot


def test_density_plot_is_written_as_png_and_pdf(tmp_path):
    from phasedsft.segment.run import plot_density

    plot_density(SCORES, THRESHOLDS, tmp_path / "density.png", "alpaca: paper", None)
    assert_png_and_pdf(tmp_path / "density.png")


def test_density_plot_parts(monkeypatch):
    import numpy as np

    import phasedsft.io
    from phasedsft.segment.run import plot_density

    caught = Caught()
    monkeypatch.setattr(phasedsft.io, "save_figure", caught)
    plot_density(SCORES * 25, THRESHOLDS, Path("unused.png"), "alpaca: paper thresholds", None)
    ax, cdf = caught.fig.axes
    assert ax.get_title().startswith("alpaca: paper thresholds") and "n=500" in ax.get_title()
    # histogram bins of width 1 centred on the five scores, as a density (the shares)
    [hist] = ax.containers
    bars = list(hist)
    centres = sorted(round(b.get_x() + b.get_width() / 2, 6) for b in bars)
    assert centres == [1.0, 2.0, 3.0, 4.0, 5.0]
    heights = {round(b.get_x() + b.get_width() / 2): b.get_height() for b in bars}
    assert heights[3] == pytest.approx(8 / 20)
    # the KDE on the same axis, at the histogram's scale (not flattened under tall bars)
    [kde] = [line for line in ax.get_lines() if "KDE" in str(line.get_label())]
    assert 0.4 < max(kde.get_ydata()) / max(heights.values()) < 2.5
    # scipy's KDE over all 500 scores (Scott's rule: factor 500 ** -1/5), not over the 5
    # distinct values weighted (a kernel twice as wide)
    from scipy.stats import gaussian_kde

    xs = kde.get_xdata()
    assert kde.get_ydata() == pytest.approx(gaussian_kde(SCORES * 25)(xs), rel=1e-9)
    width = float(kde.get_label().split("width ")[1].rstrip(")"))
    assert width == pytest.approx(500**-0.2 * np.std(SCORES * 25, ddof=1), abs=0.006)
    # the CDF starts at 0 at the left edge and ends at 1
    [step] = cdf.get_lines()
    xs, ys = step.get_xdata(), step.get_ydata()
    assert (xs[0], ys[0]) == (pytest.approx(ax.get_xlim()[0]), 0.0)
    assert ys[-1] == pytest.approx(1.0) and np.all(np.diff(ys) >= 0)
    # each stage shaded and labelled with its number of examples
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["stage 1\nn=75", "stage 2\nn=325", "stage 3\nn=100"]
    shaded = [p for p in ax.patches if p not in bars]
    assert len(shaded) == 3


def test_density_plot_of_quarter_scores_and_of_one_value(tmp_path):
    from phasedsft.score.report import centred_bins
    from phasedsft.segment.run import plot_density

    assert centred_bins([1, 2, 5]) == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    assert centred_bins([1.0, 1.75, 3.25]) == pytest.approx([0.875 + 0.25 * i for i in range(11)])
    assert len(centred_bins([1.0, 1.33333, 2.9])) > 2  # off the grid: numpy's edges
    plot_density([3.75, 4.0, 4.25, 4.25, 5.0], [4.1], tmp_path / "q.png", "stage 3", None)
    assert_png_and_pdf(tmp_path / "q.png")
    plot_density([3.0] * 5, THRESHOLDS, tmp_path / "one.png", "one value", None)  # no KDE
    assert_png_and_pdf(tmp_path / "one.png")


def test_score_histogram_is_written_as_png_and_pdf(tmp_path):
    from phasedsft.score.report import plot_histogram

    plot_histogram([*SCORES, None], tmp_path / "histogram.png", "alpaca", THRESHOLDS)
    assert_png_and_pdf(tmp_path / "histogram.png")


# ------------------------------------------------------------------ Figure 1 and the tables


def _comparison(ordering, stage, eval_set, reviews, answers=("w w w", "w w")):
    judged = [judge_item(str(i), ab, ba, None, *answers) for i, (ab, ba) in enumerate(reviews)]
    comp = Comparison(
        ("alpaca", "llama2_7b", 0),
        ordering,
        f"run-{ordering}",
        stage,
        3,
        eval_set,
        "run-one_off",
        summarize(judged, "paper", 200),
        lengths=length_view(judged, resamples=200),
    )
    return comp, judged


WIN, TIE, LOSE = ("8 6", "6 8"), ("7 7", "7 7"), ("6 8", "8 6")


def sweep():
    """Two orderings x three stages on two sets; 1-2-3's last stage wins everything."""
    comps, pooled_items = [], {}
    for ordering, outcomes in [
        ("1-2-3", [[WIN, TIE, LOSE, LOSE], [WIN, WIN, TIE, LOSE], [WIN] * 4]),
        ("3-2-1", [[LOSE] * 4, [LOSE, LOSE, TIE, WIN], [TIE] * 4]),
    ]:
        for stage, reviews in enumerate(outcomes, start=1):
            for eval_set in ("koala", "vicuna"):
                c, judged = _comparison(ordering, stage, eval_set, reviews)
                comps.append(c)
                pooled_items.setdefault(c.row, []).extend(judged)
    pooled = {k: summarize(v, "paper", 200) for k, v in pooled_items.items()}
    lengths = {k: length_view(v, resamples=200) for k, v in pooled_items.items()}
    return comps, pooled, lengths


def test_figure1_is_written_as_png_and_pdf(tmp_path):
    comps, pooled, _ = sweep()
    png = plot_stage_curves(tmp_path, comps, pooled, "one_off")
    assert png == tmp_path / "figure1_stages.png"
    assert_png_and_pdf(png)


def test_figure1_spans_the_whole_range_and_its_legend_hides_no_point(monkeypatch, tmp_path):
    import phasedsft.evaluate.report as report

    caught = Caught()
    monkeypatch.setattr(report, "save_figure", caught)
    comps, pooled, _ = sweep()
    plot_stage_curves(tmp_path, comps, pooled, "one_off")
    fig = caught.fig
    [ax] = fig.axes
    lo, hi = ax.get_ylim()
    assert lo <= -50 and hi >= 50  # +50 (1-2-3 at stage 3) and -50 (3-2-1 at stage 1) fit
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # outside the axes: over no point
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["1-2-3", "3-2-1"]


def test_table_csv_is_numbers_and_table_md_has_the_counts(tmp_path):
    comps, pooled, lengths = sweep()
    text = write_tables(tmp_path, comps, pooled, "one_off", lengths)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "table.csv").read_text())))
    assert list(rows[0]) == CSV_HEADER
    assert len(rows) == len(comps) + len(pooled)  # one per comparison, one per pooled row
    numeric = CSV_HEADER[CSV_HEADER.index("win_rate") :]
    for r in rows:
        all_ties = r["ties"] == r["n"]  # no winner: no share of wins for the longer answer
        for k in numeric:
            if k == "longer_win_share" and all_ties:
                assert r[k] == ""
            else:
                float(r[k])  # a number, not "+4.2 [-1.3, 9.8]"
        assert int(r["wins"]) + int(r["ties"]) + int(r["losses"]) == int(r["n"])
        assert float(r["ci_low"]) <= float(r["win_rate"]) <= float(r["ci_high"])
    first = next(
        r for r in rows if (r["ordering"], r["stage"], r["eval_set"]) == ("1-2-3", "1", "koala")
    )
    c = next(c for c in comps if (c.ordering, c.stage_index, c.eval_set) == ("1-2-3", 1, "koala"))
    assert float(first["win_rate"]) == pytest.approx(c.result.win_rate)
    assert (first["wins"], first["ties"], first["losses"], first["n"]) == ("1", "1", "2", "4")
    assert (float(first["mean_words_candidate"]), float(first["mean_words_baseline"])) == (3.0, 2.0)
    assert (first["length_matched_items"], first["longer_win_share"]) == ("4", "0.3333333333333333")
    assert {r["eval_set"] for r in rows} == {"koala", "vicuna", "all sets"}
    pooled_row = next(r for r in rows if r["eval_set"] == "all sets" and r["stage"] == "1")
    assert pooled_row["n"] == "8"
    # table.md: win rate [CI]; W/T/L in each cell, and the length tables
    row = next(
        line
        for line in text.splitlines()
        if line.startswith("| alpaca | llama2_7b | 0 | 1-2-3 | 1/3 |")
    )
    assert f"{c.result.cell()}; 1/1/2" in row
    assert "Mean answer length in words" in text and "| run-one_off (baseline, final) |" in text
    assert "Length-controlled view" in text
