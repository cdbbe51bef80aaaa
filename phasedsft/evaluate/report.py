"""Reports over a sweep: the paper's table shape, Figure 1, per-category growth, AlpacaEval export."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phasedsft.evaluate.winrate import WinRate
from phasedsft.io import atomic_write_json, atomic_write_text


@dataclass
class Comparison:
    """One candidate checkpoint against its group's baseline on one test set."""

    group: tuple[str, str, int]  # dataset, model, seed
    ordering: str
    run: str
    stage_index: int
    n_stages: int
    eval_set: str
    baseline: str
    result: WinRate
    categories: dict[str, dict[str, WinRate]] = field(default_factory=dict)
    accuracy: dict[str, float] | None = None  # known-answer sets: candidate, baseline
    # known-answer sets: {"level": {"3": {"candidate": 0.4, "baseline": 0.2, "n": 12}}}
    category_accuracy: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    authors: WinRate | None = None  # the same items under rule=authors (their script's figure)

    @property
    def row(self) -> tuple[str, str, int, str, int]:
        return (*self.group, self.ordering, self.stage_index)


ALL = "all sets"


def table_rows(
    comparisons: Sequence[Comparison], pooled: dict[tuple, WinRate]
) -> tuple[list[str], list[list[str]]]:
    """Rows: dataset x model x seed x ordering x stage; columns: test sets (+ pooled)."""
    sets = sorted({c.eval_set for c in comparisons})
    header = ["dataset", "model", "seed", "ordering", "stage", *sets]
    if len(sets) > 1:
        header.append(ALL)
    cells: dict[tuple, dict[str, str]] = {}
    stages: dict[tuple, str] = {}
    for c in comparisons:
        cells.setdefault(c.row, {})[c.eval_set] = c.result.cell()
        stages[c.row] = f"{c.stage_index}/{c.n_stages}"
    rows = []
    for key in sorted(cells):
        dataset, model, seed, ordering, _ = key
        row = [dataset, model, str(seed), ordering, stages[key]]
        row += [cells[key].get(s, "") for s in sets]
        if len(sets) > 1:
            row.append(pooled[key].cell() if key in pooled else "")
        rows.append(row)
    return header, rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _same_figures(a: WinRate, b: WinRate) -> bool:
    if (a.wins, a.ties, a.losses, a.n) != (b.wins, b.ties, b.losses, b.n):
        return False
    if a.win_rate is None or b.win_rate is None:
        return a.win_rate is b.win_rate
    return abs(a.win_rate - b.win_rate) < 1e-9


def authors_differences(comparisons: Sequence[Comparison]) -> str:
    """Cells whose figures under the authors' script (``rule=authors``) differ from the table's:
    the win rate, or W / T / L / N (a void item that the table's rule counts as a loss leaves
    the figure as it is but not the counts)."""
    lines = []
    for c in comparisons:
        ours, other = c.result, c.authors
        if other is None or _same_figures(ours, other):
            continue
        lines.append(
            f"| {c.run} stage {c.stage_index}/{c.n_stages} | {c.eval_set} | "
            f"{ours.cell()}; {ours.wins}/{ours.ties}/{ours.losses} of {ours.n} "
            f"({ours.unparsed} left out) | "
            f"{other.cell()}; {other.wins}/{other.ties}/{other.losses} of {other.n} "
            f"({other.unparsed} void, kept in N) |"
        )
    if not lines:
        return ""
    return (
        f"\n\nWhere the authors' script (`rule=authors`: its parser; an item with an unparseable "
        f"review or a score <= 0 in either order stays in N and adds nothing) gives other figures "
        f"(win rate [CI]; W/T/L of N):\n\n"
        f"| run | set | {comparisons[0].result.rule} rule | authors' script |\n| --- | --- | --- | --- |\n"
        + "\n".join(lines)
        + "\n"
    )


def write_tables(
    out: Path, comparisons: Sequence[Comparison], pooled: dict[tuple, WinRate], baseline: str
) -> str:
    header, rows = table_rows(comparisons, pooled)
    intro = (
        f"Win rate against `{baseline}` (100 x (W + T/2) / N - 50; 0 = parity) with the paired "
        "bootstrap 95 % CI. Stage i/k: the run's weights after its i-th of k stages.\n\n"
    )
    text = intro + markdown(header, rows) + authors_differences(comparisons)
    atomic_write_text(out / "table.md", text)
    atomic_write_text(out / "table.csv", csv_text(header, rows))
    # the same numbers, unrounded, for other tools
    numbers = [
        {
            "dataset": c.group[0],
            "model": c.group[1],
            "seed": c.group[2],
            "ordering": c.ordering,
            "run": c.run,
            "stage": c.stage_index,
            "n_stages": c.n_stages,
            "eval_set": c.eval_set,
            "baseline": c.baseline,
            **c.result.to_json(),
            **({"authors_rule": c.authors.to_json()} if c.authors else {}),
            **({"accuracy": c.accuracy} if c.accuracy else {}),
        }
        for c in comparisons
    ]
    atomic_write_json(out / "table.json", numbers)
    return text


def write_categories(out: Path, comparisons: Sequence[Comparison]) -> str:
    """Per test set and category key: win rate per category value, one column per stage."""
    parts = []
    by_set: dict[tuple[str, str], list[Comparison]] = {}
    for c in comparisons:
        for key in c.categories:
            by_set.setdefault((c.eval_set, key), []).append(c)
    for (eval_set, key), comps in sorted(by_set.items()):
        columns = sorted({(c.group, c.ordering, c.stage_index, c.n_stages) for c in comps})
        values = sorted({v for c in comps for v in c.categories[key]})
        header = [
            key,
            *(
                f"{o} {i}/{k}" + (f" ({g[1]})" if len({x[0] for x in columns}) > 1 else "")
                for g, o, i, k in columns
            ),
        ]
        lookup = {
            (c.group, c.ordering, c.stage_index, c.n_stages): c.categories[key] for c in comps
        }
        rows = []
        for v in values:
            row = [v]
            for col in columns:
                w = lookup[col].get(v)
                row.append(
                    f"{w.win_rate:+.1f} (n={w.n})"
                    if w is not None and w.win_rate is not None
                    else ""
                )
            rows.append(row)
        parts.append(f"### {eval_set}: win rate by {key}\n\n" + markdown(header, rows))
    parts += accuracy_tables(comparisons)
    text = "\n".join(parts) if parts else "No test set in this evaluation carries categories.\n"
    atomic_write_text(out / "categories.md", text)
    return text


def plot_stage_curves(
    out: Path, comparisons: Sequence[Comparison], pooled: dict[tuple, WinRate], baseline: str
) -> Path | None:
    """Figure 1: win rate against the baseline after each stage, one line per ordering."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = {c.eval_set for c in comparisons}
    groups = sorted({c.group for c in comparisons})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4), squeeze=False)
    drawn = False
    for ax, group in zip(axes[0], groups, strict=True):
        orderings = sorted({c.ordering for c in comparisons if c.group == group})
        for ordering in orderings:
            points = []
            for c in comparisons:
                if c.group != group or c.ordering != ordering:
                    continue
                w = pooled.get(c.row) if len(sets) > 1 else c.result
                if w is not None and w.win_rate is not None:
                    points.append((c.stage_index, w))
            points = sorted(dict(points).items())
            if not points:
                continue
            xs = [p[0] for p in points]
            ys = [p[1].win_rate for p in points]
            lo = [p[1].win_rate - p[1].ci_low for p in points]  # type: ignore[operator]
            hi = [p[1].ci_high - p[1].win_rate for p in points]  # type: ignore[operator]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=ordering)
            drawn = True
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{group[0]} / {group[1]} (seed {group[2]})")
        ax.set_xlabel("after stage")
        ax.set_ylabel(f"win rate vs {baseline}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
    if not drawn:
        plt.close(fig)
        return None
    what = "all sets pooled" if len(sets) > 1 else next(iter(sets))
    fig.suptitle(f"Win rate against {baseline} after each stage ({what}; 95% CI)")
    fig.tight_layout()
    path = out / "figure1_stages.png"
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def alpacaeval_records(
    items: Sequence[dict[str, Any]], generator: str, dataset: str
) -> list[dict[str, str]]:
    """AlpacaEval's model-outputs format: instruction (input folded in), output, generator."""
    records = []
    for it in items:
        instruction = it["instruction"] + (
            f"\n\n{it['input']}" if it.get("input", "").strip() else ""
        )
        records.append(
            {
                "instruction": instruction,
                "output": it["output"],
                "generator": generator,
                "dataset": dataset,
            }
        )
    return records


def write_alpacaeval(out: Path, label: str, eval_set: str, items: Sequence[dict[str, Any]]) -> Path:
    generator = label.replace("/", "__")
    path = out / "alpacaeval" / f"{generator}__{eval_set}.json"
    atomic_write_text(
        path,
        json.dumps(alpacaeval_records(items, generator, eval_set), ensure_ascii=False, indent=1),
    )
    return path


def accuracy_tables(comparisons: Sequence[Comparison]) -> list[str]:
    """Known-answer sets: accuracy per category value after each stage, beside the baseline's."""
    parts = []
    keyed: dict[tuple[str, str], list[Comparison]] = {}
    for c in comparisons:
        for key in c.category_accuracy:
            keyed.setdefault((c.eval_set, key), []).append(c)
    for (eval_set, key), comps in sorted(keyed.items()):
        columns = sorted({(c.group, c.ordering, c.stage_index, c.n_stages) for c in comps})
        lookup = {(c.group, c.ordering, c.stage_index, c.n_stages): c for c in comps}
        values = sorted({v for c in comps for v in c.category_accuracy[key]})
        header = [key, "n", "baseline (final)"]
        header += [f"{o} {i}/{k}" for _, o, i, k in columns]
        rows = []
        for v in values:
            first = comps[0].category_accuracy[key].get(v, {})
            row = [v, str(int(first.get("n", 0))), f"{first.get('baseline', float('nan')):.0%}"]
            for col in columns:
                acc = lookup[col].category_accuracy[key].get(v)
                row.append(f"{acc['candidate']:.0%}" if acc else "")
            rows.append(row)
        parts.append(f"### {eval_set}: exact-match accuracy by {key}\n\n" + markdown(header, rows))
    return parts
