"""The paper's stage sizes beside the ones segment.py computes, when the data is the authors'.

Pang et al. (2024) segment GPT-4's 1-5 difficulty scores at 1.5 and 3.5 and report the stages'
sizes in thousands: Alpaca 52K 30.3k / 14.7k / 6.8k (mean difficulty 1.00 / 2.21 / 4.25, the
paper's Table 1), Alpaca-cleaned 23.9k / 16.4k / 11.4k. The authors released those scores
(GitHub xubuvd/PhasedSFT, ``Alpaca-scored/`` and ``Alpaca-clean-scored/``, one file per stage:
``en-alpaca52k-stage{1,2,3}.jsonl``, ``en-alpaca_data-cleaned-stage{1,2,3}.jsonl``, named by
each folder's ``*-meta-info-v1.json``). On that data (``dataset=authors_alpaca`` /
``authors_alpaca_cleaned``, or any of their stage files by its own name) under the paper's
thresholds, :func:`paper_check` compares each stage's size (and, where the paper gives it, its
mean difficulty) with the paper's figure.

The paper's figures are cut, not rounded, to their last digit: stage 3 of the release holds
6,889 rows (6,880 with an output; 4.255 mean difficulty) where the paper says 6.8k (4.25), and
its three Alpaca sizes add up to 51.8k of 52,002 rows. So a value matches a figure when it
truncates to it, or rounds to it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PAPER_THRESHOLDS = (1.5, 3.5)

# Per released dataset: stage sizes (in examples) and mean difficulty as the paper prints them.
PAPER_STAGES: dict[str, dict[str, Any]] = {
    "alpaca": {
        "title": "Alpaca 52K",
        "sizes": (30_300, 14_700, 6_800),
        "mean_difficulty": (1.00, 2.21, 4.25),
    },
    "alpaca_cleaned": {
        "title": "Alpaca-cleaned",
        "sizes": (23_900, 16_400, 11_400),
        "mean_difficulty": None,
    },
}

# conf/dataset/authors_*.yaml: the authors' release, every stage
DATASET_OPTIONS = {"authors_alpaca": "alpaca", "authors_alpaca_cleaned": "alpaca_cleaned"}

# the release's own file names: one stage (stageK) or all of them (stages-all)
RELEASE_FILE = re.compile(
    r"^en-(alpaca52k|alpaca_data-cleaned)-(?:stage([123])|stages-all)\.jsonl$"
)
RELEASE_DATASET = {"alpaca52k": "alpaca", "alpaca_data-cleaned": "alpaca_cleaned"}


@dataclass(frozen=True)
class AuthorsData:
    """Which released dataset the data is, and which of its stages it holds."""

    dataset: str  # a key of PAPER_STAGES
    stages: tuple[int, ...]  # 1-based


def authors_data(dataset_name: str, path: str | None) -> AuthorsData | None:
    """The authors' release this data is (by the dataset option, else by the file's own
    name), or None."""
    if dataset_name in DATASET_OPTIONS:
        return AuthorsData(DATASET_OPTIONS[dataset_name], (1, 2, 3))
    m = RELEASE_FILE.match(Path(str(path)).name) if path else None
    if m is None:
        return None
    stages = (int(m.group(2)),) if m.group(2) else (1, 2, 3)
    return AuthorsData(RELEASE_DATASET[m.group(1)], stages)


def matches(value: float, figure: float, step: float) -> bool:
    """Whether ``value`` is printed as ``figure`` with the last digit worth ``step``: cut
    (the paper's way) or rounded."""
    eps = step * 1e-6
    return figure - eps <= value < figure + step - eps or abs(value - figure) <= step / 2 + eps


def thousands(n: float) -> str:
    return f"{n / 1000:.1f}k"


@dataclass
class PaperCheck:
    """Each stage's size (and mean difficulty) beside the paper's, for the authors' data."""

    data: AuthorsData
    rows: list[dict[str, Any]]
    note: str = ""  # why some rows are not compared

    @property
    def ok(self) -> bool:
        return all(r["matches"] is not False for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": PAPER_STAGES[self.data.dataset]["title"],
            "stages_held": list(self.data.stages),
            "matches": self.ok,
            "note": self.note,
            "stages": self.rows,
        }

    def text(self) -> str:
        title = PAPER_STAGES[self.data.dataset]["title"]
        held = "" if self.data.stages == (1, 2, 3) else f", stage {self.data.stages[0]} only"
        lines = [f"stage sizes against the paper's ({title}, the authors' GPT-4 scores{held}):"]
        if not self.rows:
            return "\n".join([*lines, self.note])
        lines += [
            "| stage | examples | paper | mean difficulty | paper | check |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for r in self.rows:
            mean = "-" if r["mean_difficulty"] is None else f"{r['mean_difficulty']:.3f}"
            paper_mean = (
                "-" if r["paper_mean_difficulty"] is None else f"{r['paper_mean_difficulty']:.2f}"
            )
            verdict = {True: "matches", False: "DIFFERS", None: "not in this data"}[r["matches"]]
            lines.append(
                f"| {r['stage']} | {r['count']:,} | {thousands(r['paper_count'])} | {mean} | "
                f"{paper_mean} | {verdict} |"
            )
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def compare_stages(
    data: AuthorsData,
    counts: Sequence[int],
    mean_difficulty: Sequence[float | None],
    skipped: int = 0,
) -> PaperCheck:
    """Each stage's count and mean difficulty against the paper's figures. A stage the data
    does not hold (one released stage file alone) is shown, not compared (``matches: None``)."""
    paper = PAPER_STAGES[data.dataset]
    rows = []
    for i, (count, paper_count) in enumerate(zip(counts, paper["sizes"], strict=True), start=1):
        mean = mean_difficulty[i - 1]
        paper_mean = paper["mean_difficulty"][i - 1] if paper["mean_difficulty"] else None
        if i not in data.stages:
            ok: bool | None = None if count == 0 else False
        else:
            ok = matches(count, paper_count, 100)
            if paper_mean is not None and mean is not None:
                ok = ok and matches(mean, paper_mean, 0.01)
        rows.append(
            {
                "stage": i,
                "count": count,
                "paper_count": paper_count,
                "mean_difficulty": mean,
                "paper_mean_difficulty": paper_mean,
                "matches": ok,
            }
        )
    note = ""
    if skipped:
        note = (
            f"({skipped:,} rows skipped by dataset.source.on_error=skip are not counted above: "
            "data.skipped_rows in summary.json; the authors' loader skipped none, an empty "
            "output trained as EOS alone)"
        )
    return PaperCheck(data, rows, note)


def paper_check(
    dataset_name: str,
    path: str | None,
    thresholds: Sequence[float],
    table1: Sequence[dict[str, Any]],
    skipped: int = 0,
    subsampled: bool = False,
) -> PaperCheck | None:
    """The comparison for segment.py's Table 1 rows; None when the data is not the authors'
    release. On a subsample (``dataset.max_examples``) or under other thresholds than the
    paper's, nothing is compared and the note says why."""
    data = authors_data(dataset_name, path)
    if data is None:
        return None
    if subsampled:
        return PaperCheck(data, [], "not compared: a subsample (dataset.max_examples) of the data")
    if tuple(float(t) for t in thresholds) != PAPER_THRESHOLDS:
        ts = ", ".join(f"{float(t):g}" for t in thresholds)
        return PaperCheck(data, [], f"not compared: thresholds {ts}, not the paper's 1.5, 3.5")
    check = compare_stages(
        data, [r["count"] for r in table1], [r["mean_difficulty"] for r in table1], skipped
    )
    if not check.ok:
        log.warning("the stages differ from the paper's:\n%s", check.text())
    return check
