"""Reports over a sweep: the paper's table shape, Figure 1, per-category growth, AlpacaEval export.

table.md     win rate [95% CI] and W/T/L per row (dataset x model x seed x ordering x
             stage) and test set; mean answer lengths (words); the length-matched view
table.csv    the same, one row per (row, test set), every number in its own column
table.json   everything, unrounded
             (where a comparison exists under several training seeds, table.md's "Across
             seeds" section and seeds.csv: mean, spread and t-interval over seeds, beside
             the pooled figure; see :mod:`.seeds`)
figure1_stages.png / .pdf   Figure 1
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from phasedsft.evaluate.comparison import Comparison
from phasedsft.evaluate.folding import Judged, LengthView, WinRate
from phasedsft.evaluate.formats import alpacaeval_rows, fastchat_rows, json_text, jsonl_text
from phasedsft.evaluate.seeds import ALL, AcrossSeeds
from phasedsft.io import atomic_write_json, atomic_write_text, save_figure


def cell(w: WinRate) -> str:
    """A table cell: ``+4.2 [-1.3, +9.8]; 10/3/7`` (win rate [95% CI]; wins/ties/losses)."""
    return f"{w.cell()}; {w.wins}/{w.ties}/{w.losses}" if w.win_rate is not None else w.cell()


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
        cells.setdefault(c.row, {})[c.eval_set] = cell(c.result)
        stages[c.row] = f"{c.stage_index}/{c.n_stages}"
    rows = []
    for key in sorted(cells):
        dataset, model, seed, ordering, _ = key
        row = [dataset, model, str(seed), ordering, stages[key]]
        row += [cells[key].get(s, "") for s in sets]
        if len(sets) > 1:
            row.append(cell(pooled[key]) if key in pooled else "")
        rows.append(row)
    return header, rows


def length_rows(comparisons: Sequence[Comparison]) -> tuple[list[str], list[list[str]]]:
    """Mean answer length in words per test set: every compared checkpoint (by its run's
    name, as the authors' table names them), then each group's baseline."""
    sets = sorted({c.eval_set for c in comparisons})
    means: dict[tuple, dict[str, float]] = {}
    for c in comparisons:
        if c.lengths is None:
            continue
        cand = (c.group, 0, f"{c.run} stage {c.stage_index}/{c.n_stages}")
        base = (c.group, 1, f"{c.baseline} (baseline, final)")  # last in its group
        means.setdefault(cand, {})[c.eval_set] = c.lengths.mean_a
        means.setdefault(base, {})[c.eval_set] = c.lengths.mean_b
    rows = [
        [key[2], *(f"{means[key][s]:.1f}" if s in means[key] else "" for s in sets)]
        for key in sorted(means)
    ]
    return ["answers of", *sets], rows


def length_matched_rows(
    comparisons: Sequence[Comparison],
) -> tuple[list[str], list[list[str]]]:
    """Per checkpoint and test set: the length-matched win rate (its items of all) and how
    often the longer answer won (see :class:`~.folding.LengthView`)."""
    sets = sorted({c.eval_set for c in comparisons})
    cells: dict[tuple, dict[str, str]] = {}
    for c in comparisons:
        v = c.lengths
        if v is None:
            continue
        share = v.longer_win_share
        key = (c.group, c.ordering, c.stage_index, f"{c.run} stage {c.stage_index}/{c.n_stages}")
        cells.setdefault(key, {})[c.eval_set] = (
            f"{v.matched.cell()} ({v.matched_items}/{v.items}); longer won "
            + (f"{share:.0%}" if share is not None else "-")
        )
    rows = [[key[3], *(cells[key].get(s, "") for s in sets)] for key in sorted(cells)]
    return ["run", *sets], rows


CSV_HEADER = [
    "dataset",
    "model",
    "seed",
    "ordering",
    "run",
    "stage",
    "n_stages",
    "eval_set",
    "baseline",
    "rule",
    "win_rate",
    "ci_low",
    "ci_high",
    "wins",
    "ties",
    "losses",
    "n",
    "unparsed",
    "sign_test_p",
    "position_consistency",
    "mean_words_candidate",
    "mean_words_baseline",
    "length_ratio",
    "length_matched_items",
    "length_matched_win_rate",
    "length_matched_ci_low",
    "length_matched_ci_high",
    "longer_win_share",
]


def _numbers(w: WinRate, v: LengthView | None) -> list[Any]:
    m = v.matched if v else None
    return [
        w.rule,
        w.win_rate,
        w.ci_low,
        w.ci_high,
        w.wins,
        w.ties,
        w.losses,
        w.n,
        w.unparsed,
        w.sign_test_p,
        w.position_consistency,
        v.mean_a if v else None,
        v.mean_b if v else None,
        v.ratio if v else None,
        v.matched_items if v else None,
        m.win_rate if m else None,
        m.ci_low if m else None,
        m.ci_high if m else None,
        v.longer_win_share if v else None,
    ]


def csv_rows(
    comparisons: Sequence[Comparison],
    pooled: dict[tuple, WinRate],
    pooled_lengths: dict[tuple, LengthView | None] | None = None,
) -> list[list[Any]]:
    """One row per comparison (and per pooled row, eval_set "all sets" where several sets):
    every figure in its own column; an empty cell where a figure does not exist."""
    rows: list[list[Any]] = []
    first: dict[tuple, Comparison] = {}
    for c in sorted(comparisons, key=lambda c: (c.row, c.eval_set)):
        first.setdefault(c.row, c)
        ident = [*c.group, c.ordering, c.run, c.stage_index, c.n_stages]
        rows.append([*ident, c.eval_set, c.baseline, *_numbers(c.result, c.lengths)])
    if len({c.eval_set for c in comparisons}) > 1:
        for key in sorted(pooled):
            if key in first:
                c = first[key]
                ident = [*c.group, c.ordering, c.run, c.stage_index, c.n_stages]
                lengths = (pooled_lengths or {}).get(key)
                rows.append([*ident, ALL, c.baseline, *_numbers(pooled[key], lengths)])
    return rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV; ``None`` becomes an empty cell, numbers are written in full."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if x is None else x for x in r] for r in rows])
    return buf.getvalue()


def _same_figures(a: WinRate, b: WinRate) -> bool:
    if (a.wins, a.ties, a.losses, a.n) != (b.wins, b.ties, b.losses, b.n):
        return False
    if a.win_rate is None or b.win_rate is None:
        return a.win_rate is b.win_rate
    return abs(a.win_rate - b.win_rate) < 1e-9


AUTHORS_ABSENT = (
    "\n\nThe authors' accounting (`rule=authors`) is not shown for {judges}: it reads two scores "
    "on a 1-10 scale and calls an item with a score <= 0 void, and this judge marks an answer "
    "right (1) or wrong (0), so every wrong answer would be void.\n"
)


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
    absent = sorted({c.judge for c in comparisons if c.authors is None and c.judge})
    note = AUTHORS_ABSENT.format(judges=", ".join(f"judge={j}" for j in absent)) if absent else ""
    if not lines:
        return note
    return note + (
        f"\n\nWhere the authors' script (`rule=authors`: its parser, on the judge's first reply in "
        f"each order, as their script, which never asks again, records it; an item with an "
        f"unparseable review or a score <= 0 in either order stays in N and adds nothing) gives "
        f"other figures (win rate [CI]; W/T/L of N):\n\n"
        f"| run | set | {comparisons[0].result.rule} rule | authors' script |\n| --- | --- | --- | --- |\n"
        + "\n".join(lines)
        + "\n"
    )


def lengths_markdown(comparisons: Sequence[Comparison]) -> str:
    """The two length tables of table.md (empty where no comparison knows its lengths)."""
    with_lengths = [c for c in comparisons if c.lengths is not None]
    if not with_lengths:
        return ""
    ratio = with_lengths[0].lengths.ratio  # type: ignore[union-attr]
    return (
        "\n\nMean answer length in words (whitespace-separated pieces of the answer text, the "
        "same count for every model whatever its tokenizer), per test set:\n\n"
        + markdown(*length_rows(with_lengths))
        + f"\nLength-controlled view: the win rate over the length-matched items only (the "
        f"longer answer at most {ratio:g} x the words of the shorter; matched items / all in "
        "brackets), and how often the longer answer won among the items with a winner and "
        "unequal lengths (about 50 %: no sign of a length preference; the matched items are "
        "no random sample, so compare with care):\n\n"
        + markdown(*length_matched_rows(with_lengths))
    )


SEEDS_CSV_HEADER = [
    "dataset",
    "model",
    "ordering",
    "stage",
    "n_stages",
    "eval_set",
    "baseline",
    "rule",
    "seeds",
    "per_seed_win_rates",
    "k",
    "mean",
    "std",
    "min",
    "max",
    "t_low",
    "t_high",
    "t_crit",
    "level",
    "same_sign",
    "within_seed_noise",
    "pooled_win_rate",
    "pooled_ci_low",
    "pooled_ci_high",
    "pooled_wins",
    "pooled_ties",
    "pooled_losses",
    "pooled_n",
    "pooled_unparsed",
    "pooled_sign_test_p",
    "items",
    "verdict",
]


def seeds_csv_rows(cells: Sequence[AcrossSeeds]) -> list[list[Any]]:
    """One row per comparison under several seeds: every figure in its own column (the seeds
    and their win rates space-separated, in the same order; "-" for a seed without one)."""
    rows = []
    for a in cells:
        s, p = a.spread, a.pooled
        stats = (
            [s.k, s.mean, s.std, s.min, s.max, s.t_low, s.t_high, s.t_crit, s.level]
            if s
            else [0, *[None] * 8]
        )
        rows.append(
            [
                a.dataset,
                a.model,
                a.ordering,
                a.stage_index,
                a.n_stages,
                a.eval_set,
                a.baseline,
                p.rule,
                " ".join(str(x) for x in a.seeds),
                " ".join("-" if w.win_rate is None else repr(w.win_rate) for w in a.per_seed),
                *stats,
                s.same_sign if s else None,
                a.within_noise,
                p.win_rate,
                p.ci_low,
                p.ci_high,
                p.wins,
                p.ties,
                p.losses,
                p.n,
                p.unparsed,
                p.sign_test_p,
                a.items,
                a.verdict(),
            ]
        )
    return rows


ITEMS_SHOWN = {
    "same": "same in every seed",
    "per seed": "drawn per seed",
    "mixed": "same for some sets",
}


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1f}"


def across_seeds_markdown(cells: Sequence[AcrossSeeds], baseline: str) -> str:
    """table.md's "Across seeds" section (empty with no comparison under two seeds or more)."""
    if not cells:
        return ""
    header = [
        "dataset",
        "model",
        "ordering",
        "stage",
        "set",
        "per seed",
        "mean ± sd",
        "range",
        "95 % t-interval",
        "pooled [item bootstrap CI]; W/T/L",
        "test items",
        "verdict",
    ]
    rows = []
    for a in cells:
        s = a.spread
        rows.append(
            [
                a.dataset,
                a.model,
                a.ordering,
                f"{a.stage_index}/{a.n_stages}",
                a.eval_set,
                ", ".join(
                    f"s{x} {_signed(w.win_rate)}" for x, w in zip(a.seeds, a.per_seed, strict=True)
                ),
                f"{s.mean:+.1f} ± {s.std:.1f}" if s else "-",
                f"{s.min:+.1f} .. {s.max:+.1f}" if s else "-",
                f"[{s.t_low:+.1f}, {s.t_high:+.1f}]" if s else "-",
                cell(a.pooled),
                ITEMS_SHOWN.get(a.items, a.items),
                a.verdict(),
            ]
        )
    return (
        "\n\n## Across seeds\n\n"
        f"The same comparison (candidate ordering and stage against `{baseline}`, same data, "
        "model, settings and test set) trained under several seeds (`seed`): the per-seed win "
        "rates, their mean ± standard deviation (n - 1) and range, and the 95 % t-interval over "
        "seeds (Student t with k - 1 degrees of freedom on the k per-seed win rates: mean ± "
        "t * sd / sqrt(k); seed-to-seed variation: training, and the test items where they are "
        "drawn with the seed). Beside it the pooled figure: every seed's items together, with "
        "the paired bootstrap CI over questions (a question judged in every seed is resampled "
        "as one): item noise only, for these trained models. **Within seed noise**: the "
        "t-interval contains 0, or the seeds are not all on the same side of 0.\n\n"
        + markdown(header, rows)
    )


def write_tables(
    out: Path,
    comparisons: Sequence[Comparison],
    pooled: dict[tuple, WinRate],
    baseline: str,
    pooled_lengths: dict[tuple, LengthView | None] | None = None,
    across: Sequence[AcrossSeeds] = (),
) -> str:
    """table.md, table.csv, table.json; with ``across`` (comparisons under several seeds,
    :func:`.seeds.across_seeds`) also table.md's "Across seeds" section and seeds.csv (a
    seeds.csv left by an earlier evaluation is removed when there is none)."""
    header, rows = table_rows(comparisons, pooled)
    intro = (
        f"Win rate against `{baseline}` (100 x (W + T/2) / N - 50; 0 = parity) with the paired "
        "bootstrap 95 % CI, then wins/ties/losses. Stage i/k: the run's weights after its "
        "i-th of k stages.\n\n"
    )
    text = (
        intro
        + markdown(header, rows)
        + across_seeds_markdown(across, baseline)
        + authors_differences(comparisons)
        + lengths_markdown(comparisons)
    )
    atomic_write_text(out / "table.md", text)
    atomic_write_text(
        out / "table.csv", csv_text(CSV_HEADER, csv_rows(comparisons, pooled, pooled_lengths))
    )
    if across:
        atomic_write_text(out / "seeds.csv", csv_text(SEEDS_CSV_HEADER, seeds_csv_rows(across)))
    else:
        (out / "seeds.csv").unlink(missing_ok=True)
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
            **({"lengths": c.lengths.to_json()} if c.lengths else {}),
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


def stage_points(
    comparisons: Sequence[Comparison], pooled: dict[tuple, WinRate], group: tuple, ordering: str
) -> list[tuple[int, WinRate]]:
    """Figure 1's points of one line: (stage, win rate) after each stage (pooled over sets
    where there are several)."""
    several = len({c.eval_set for c in comparisons}) > 1
    points: dict[int, WinRate] = {}
    for c in comparisons:
        if c.group != group or c.ordering != ordering:
            continue
        w = pooled.get(c.row) if several else c.result
        if w is not None and w.win_rate is not None:
            points[c.stage_index] = w
    return sorted(points.items())


def plot_stage_curves(
    out: Path, comparisons: Sequence[Comparison], pooled: dict[tuple, WinRate], baseline: str
) -> Path | None:
    """Figure 1: win rate against the baseline after each stage, one line per ordering.

    The y axis always spans the whole range of the figure, -50 (the baseline always wins) to
    +50; lines are nudged apart sideways so that no error bar hides another; the legend sits
    outside the axes. Written as ``figure1_stages.png`` and ``figure1_stages.pdf``; returns
    the PNG's path (``None`` when there is no point to draw).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = {c.eval_set for c in comparisons}
    groups = sorted({c.group for c in comparisons})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups) + 1.5, 4), squeeze=False)
    drawn = False
    for ax, group in zip(axes[0], groups, strict=True):
        orderings = sorted({c.ordering for c in comparisons if c.group == group})
        for k, ordering in enumerate(orderings):
            points = stage_points(comparisons, pooled, group, ordering)
            if not points:
                continue
            nudge = 0.06 * (k - (len(orderings) - 1) / 2)
            xs = [i + nudge for i, _ in points]
            ys = [w.win_rate for _, w in points]
            lo = [w.win_rate - w.ci_low for _, w in points]  # type: ignore[operator]
            hi = [w.ci_high - w.win_rate for _, w in points]  # type: ignore[operator]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=ordering)
            drawn = True
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_ylim(-52, 52)
        ax.set_yticks([-50, -25, 0, 25, 50])
        ax.set_title(f"{group[0]} / {group[1]} (seed {group[2]})")
        ax.set_xlabel("after stage")
        ax.set_ylabel(f"win rate vs {baseline}")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, fontsize=8)
    if not drawn:
        plt.close(fig)
        return None
    what = "all sets pooled" if len(sets) > 1 else next(iter(sets))
    fig.suptitle(f"Win rate against {baseline} after each stage ({what}; 95% CI)")
    fig.tight_layout()
    return save_figure(fig, out / "figure1_stages.png")[0]


def write_judgment_exports(
    folder: Path,
    label: str,
    judged: Sequence[Judged],
    rule: str,
    *,
    questions: Sequence[str],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    model_a: str,
    model_b: str,
    judge: str,
    dataset: str,
) -> tuple[Path, Path]:
    """One comparison's judgments as FastChat pair judgments (``fastchat/<label>_pair.jsonl``)
    and AlpacaEval annotations (``alpacaeval/<label>_annotations.json``), beside our replay
    file; ``python -m phasedsft.evaluate.winrate`` reads both back (see :mod:`.formats`)."""
    fastchat = folder / "fastchat" / f"{label}_pair.jsonl"
    atomic_write_text(fastchat, jsonl_text(fastchat_rows(judged, model_a, model_b, judge)))
    annotations = folder / "alpacaeval" / f"{label}_annotations.json"
    rows = alpacaeval_rows(
        judged,
        rule,
        questions=questions,
        answers_a=answers_a,
        answers_b=answers_b,
        model_a=model_a,
        model_b=model_b,
        annotator=judge,
        dataset=dataset,
    )
    atomic_write_text(annotations, json_text(rows))
    return fastchat, annotations


def alpacaeval_records(
    items: Sequence[dict[str, Any]], generator: str, dataset: str
) -> list[dict[str, str]]:
    """AlpacaEval's *model outputs* format (what ``alpaca_eval --model_outputs`` reads, to
    judge afresh): instruction (input folded in), output, generator. Our own judgments go to
    AlpacaEval's *annotations* format: :func:`write_judgment_exports`."""
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
