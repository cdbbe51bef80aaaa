"""``python segment.py``: from scores to stages, with the density view and the paper's Table 1.

    setup:   load a scored dataset -> scores (scorer=oracle reads them) -> method
    segment: thresholds -> stage manifest (difficulty + random stages), byte-identical reruns
    report:  density.png (histogram + KDE + CDF + thresholds), table1.md/.csv (count, mean
             difficulty, mean tokens per stage), sensitivity.md/.json (examples that change
             stage under each method in ``compare``), summary.json

Train on the result: ``python train.py segment.manifest=<run>/stage_manifest.json ...``.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from phasedsft.io import atomic_write_json, atomic_write_text
from phasedsft.jobs import load_examples, load_tokenizer, start_job
from phasedsft.records import Example, stage_of
from phasedsft.score.base import apply_scores, checked_scorer
from phasedsft.score.context import score_context
from phasedsft.segment.manifest import build_manifest
from phasedsft.segment.methods import KDEValleys, sizes_for

log = logging.getLogger(__name__)


def stage_table(
    examples: Sequence[Example], stages: Sequence[Sequence[str]], tokenizer: Any
) -> list[dict[str, Any]]:
    """The paper's Table 1: per stage, count, mean difficulty, mean tokens (instruction+input+output)."""
    by_id = {ex.id: ex for ex in examples}
    rows = []
    for i, ids in enumerate(stages, start=1):
        exs = [by_id[x] for x in ids]
        texts = [f"{e.instruction}\n{e.input}\n{e.output}" for e in exs]
        lengths = (
            [len(t) for t in tokenizer(texts, add_special_tokens=False)["input_ids"]]
            if texts
            else []
        )
        rows.append(
            {
                "stage": i,
                "count": len(exs),
                "share": len(exs) / len(examples),
                "mean_difficulty": sum(e.score or 0.0 for e in exs) / len(exs) if exs else None,
                "mean_tokens": sum(lengths) / len(lengths) if lengths else None,
            }
        )
    return rows


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    def f(x: Any, fmt: str) -> str:
        return format(x, fmt) if x is not None else "-"

    lines = [
        "| stage | count | share | mean difficulty | mean tokens |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['count']} | {r['share']:.1%} | {f(r['mean_difficulty'], '.2f')} | {f(r['mean_tokens'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def sensitivity(
    scores: Sequence[float], base: Sequence[float], other: Sequence[float]
) -> dict[str, Any]:
    """How many examples land in a different stage under ``other`` thresholds than under ``base``."""
    moved = sum(1 for s in scores if stage_of(s, base) != stage_of(s, other))
    return {
        "thresholds": list(other),
        "sizes": sizes_for(scores, other),
        "changed": moved,
        "changed_share": moved / len(scores),
    }


def plot_density(
    scores: Sequence[float], thresholds: Sequence[float], path: Path, title: str, bandwidth: Any
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(scores, bins=40, density=True, color="#c8d6e8", edgecolor="white", label="histogram")
    try:
        xs, ys = KDEValleys(bandwidth=bandwidth).density(scores)
        ax.plot(xs, ys, color="#4c72b0", label="Gaussian KDE")
    except Exception as e:  # a single distinct score has no density: still draw the rest
        log.warning("no KDE curve: %s", e)
    ax.set_xlabel("difficulty score")
    ax.set_ylabel("density")
    cdf = ax.twinx()
    values, counts = np.unique(np.asarray(scores, dtype=float), return_counts=True)
    cdf.step(values, np.cumsum(counts) / counts.sum(), where="post", color="#55a868", label="CDF")
    cdf.set_ylabel("cumulative share")
    cdf.set_ylim(0, 1.02)
    for t in thresholds:
        ax.axvline(t, color="#c44e52", linestyle="--", linewidth=1.2)
        ax.text(t, ax.get_ylim()[1] * 0.95, f" {t:g}", color="#c44e52", fontsize=8, va="top")
    handles = ax.get_legend_handles_labels()[0] + cdf.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: DictConfig) -> dict[str, Any]:
    run_dir = start_job(cfg)
    cache_dir = Path(cfg.run.cache_dir)

    # --- setup
    loaded, examples = load_examples(cfg)
    tokenizer = load_tokenizer(cfg, examples)
    scorer = checked_scorer(instantiate(cfg.scorer))
    examples = apply_scores(
        examples, scorer.score(examples, score_context(cfg, cache_dir, tokenizer)), scorer.name
    )
    scores = [float(ex.score) for ex in examples]  # type: ignore[arg-type]
    method = instantiate(cfg.segment.method)

    # --- segment
    manifest = build_manifest(examples, method, cfg.segment.random_seed)
    manifest_path = run_dir / "stage_manifest.json"
    atomic_write_json(manifest_path, manifest.to_json())

    # --- report
    rows = stage_table(examples, manifest.stages, tokenizer)
    atomic_write_text(run_dir / "table1.md", table_markdown(rows))
    atomic_write_text(run_dir / "table1.csv", table_csv(rows))
    compare = {name: instantiate(node) for name, node in cfg.compare.items()}
    sens = {}
    for name, other in compare.items():
        try:
            sens[name] = sensitivity(scores, manifest.thresholds, other.thresholds_for(scores))
        except Exception as e:  # one method failing on these scores must not hide the others
            sens[name] = {"error": str(e)}
    atomic_write_json(run_dir / "sensitivity.json", sens)
    sens_md = ["| method | thresholds | sizes | examples that change stage |", "|---|---|---|---:|"]
    for name, r in sens.items():
        if "error" in r:
            sens_md.append(f"| {name} | - | - | {r['error']} |")
        else:
            ts = ", ".join(f"{t:g}" for t in r["thresholds"])
            sens_md.append(
                f"| {name} | {ts} | {r['sizes']} | {r['changed']} ({r['changed_share']:.1%}) |"
            )
    atomic_write_text(run_dir / "sensitivity.md", "\n".join(sens_md) + "\n")
    title = f"{cfg.dataset.name}: {manifest.params['method']} thresholds {[round(t, 3) for t in manifest.thresholds]}"
    plot_density(scores, manifest.thresholds, run_dir / "density.png", title, cfg.plot_bandwidth)
    summary = {
        "run_dir": str(run_dir),
        "stage_manifest": str(manifest_path),
        "manifest_hash": manifest.hash,
        "method": manifest.params,
        "thresholds": manifest.thresholds,
        "table1": rows,
        "sensitivity": sens,
        "density_png": str(run_dir / "density.png"),
        # bad rows skipped with on_error=skip: counted, with reasons (as run.json does for train.py)
        "data": {"examples": len(examples), "skipped_rows": loaded.skips.summary()},
    }
    atomic_write_json(run_dir / "summary.json", summary)
    print(
        f"\n{table_markdown(rows)}\nthresholds: {manifest.thresholds}\n\n"
        + "\n".join(sens_md)
        + f"\n\ndensity plot: {run_dir / 'density.png'}\nstage manifest: {manifest_path}\n"
        f"train on it: python train.py segment.manifest={manifest_path} ...",
        flush=True,
    )
    return summary
