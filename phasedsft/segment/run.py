"""``python segment.py``: from scores to stages, with the density view and the paper's Table 1.

    setup:   load a scored dataset -> scores (scorer=oracle reads them) -> method
    segment: thresholds -> stage manifest (difficulty + random stages), byte-identical reruns
    report:  density.png (histogram + KDE + CDF + thresholds), table1.md/.csv (count, mean
             difficulty, mean tokens per stage), sensitivity.md/.json (examples that change
             stage under each method in ``compare``), summary.json

Train on the result with the command it prints (also ``train_command`` in summary.json):
``python train.py <this job's dataset, scorer, model and seed options> segment.manifest=<run>/stage_manifest.json``;
a subsample of the same data (``dataset.max_examples=N``) trains on the same stages too.
"""

from __future__ import annotations

import csv
import io
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from phasedsft.data.tokens import token_counts
from phasedsft.io import atomic_write_json, atomic_write_text
from phasedsft.jobs import load_examples, load_tokenizer, score_cache_dir, start_job
from phasedsft.records import DataError, Example
from phasedsft.score.base import apply_scores, checked_scorer
from phasedsft.score.context import score_context
from phasedsft.segment.manifest import build_manifest
from phasedsft.segment.methods import sizes_for, stages_of
from phasedsft.segment.paper import paper_check
from phasedsft.select import rule_of, select

log = logging.getLogger(__name__)


# What train.py must be told to read the same examples with the same scores (and to count tokens
# with the same model): this job's overrides of these keys, as they were given.
CARRIED_TO_TRAIN = ("dataset", "scorer", "model", "seed", "selection")


def overridden(override: str) -> str:
    """The top-level key (or group) a command-line override sets: ``+dataset.source.x=1`` ->
    ``dataset``."""
    key = override.lstrip("+~").split("=", 1)[0]
    return key.split(".", 1)[0].split("@", 1)[0]


def carried(override: str) -> bool:
    """Whether a command-line override sets one of :data:`CARRIED_TO_TRAIN` (or a key inside)."""
    return overridden(override) in CARRIED_TO_TRAIN


def config_dirs() -> list[str]:
    """This job's ``--config-dir`` and ``hydra.searchpath`` options (a lab's own config
    folders), so the printed command finds the same dataset options."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    hc = HydraConfig.get()
    cwd = Path(hc.runtime.cwd)
    out = []
    for source in hc.runtime.config_sources:
        if source.provider == "command-line" and source.schema == "file":
            path = Path(source.path)
            out.append(
                f"--config-dir={path.relative_to(cwd) if path.is_relative_to(cwd) else path}"
            )
    out += [o for o in hc.overrides.hydra if o.split("=", 1)[0].lstrip("+") == "hydra.searchpath"]
    return out


CHAT_MODEL = "smollm2_135m"  # a model with a chat template, available offline


def train_command(
    manifest_path: Path, conversations: bool = False, chat_template: bool = True
) -> str:
    """The ``train.py`` command that trains on this job's stage manifest, as it must be typed:
    this job's options that choose the data, its scores and the model, then the manifest.

    Data with conversations (more than one exchange, or a system message) trains with
    ``prompt=chat``, which needs a model with a chat template: where this job's model has
    none, the command names one that has (``model=smollm2_135m``, offline) instead.
    """
    from hydra.core.hydra_config import HydraConfig

    task = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    options = [o for o in task if carried(o)]
    if conversations:
        if not chat_template:
            options = [o for o in options if overridden(o) != "model"] + [f"model={CHAT_MODEL}"]
        options.append("prompt=chat")
    args = [*config_dirs(), *options, f"segment.manifest={manifest_path}"]
    return " ".join(["python", "train.py", *map(shlex.quote, args)])


def train_note(conversations: bool, chat_template: bool) -> str:
    """What the printed command leaves to the user, and what must stay."""
    note = (
        "(add ordering=..., trainer options, ...; the data options must stay: the manifest "
        "stages these examples, or a subsample of them with dataset.max_examples=N"
    )
    if conversations and not chat_template:
        note += (
            f"; the data holds conversations, which train with prompt=chat and a model with a chat "
            f"template: model={CHAT_MODEL} offline, or model=hf model.path=<hub id or directory>"
        )
    return note + ")"


def table_text(ex: Example) -> str:
    """The text Table 1 counts an example's tokens in: instruction, input and output."""
    return f"{ex.instruction}\n{ex.input}\n{ex.output}"


def stage_table(
    examples: Sequence[Example],
    stages: Sequence[Sequence[str]],
    tokenizer: Any,
    cache_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """The paper's Table 1: per stage, count, mean difficulty, mean tokens (instruction+input+output).

    Tokens are counted in batches (:func:`~phasedsft.data.tokens.token_counts`), with the
    token-count cache in ``cache_dir`` where given."""
    by_id = {ex.id: ex for ex in examples}
    rows = []
    for i, ids in enumerate(stages, start=1):
        exs = [by_id[x] for x in ids]
        lengths = token_counts(tokenizer, map(table_text, exs), cache_dir)
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
    import numpy as np

    moved = int(np.count_nonzero(stages_of(scores, base) != stages_of(scores, other)))
    return {
        "thresholds": list(other),
        "sizes": sizes_for(scores, other),
        "changed": moved,
        "changed_share": moved / len(scores),
    }


STAGE_SHADES = ("#f2f2f2", "#e3e9f2")


def gaussian_density(xs: Any, values: Any, counts: Any, width: float) -> Any:
    """The Gaussian KDE of the scores (``values`` with their ``counts``) at ``xs``, kernel
    standard deviation ``width``: scipy's ``gaussian_kde`` over every score, in one sum over
    the distinct values."""
    import numpy as np

    z = (np.asarray(xs)[None, :] - np.asarray(values)[:, None]) / width
    weights = np.asarray(counts)[:, None] / np.sum(counts)
    return (weights * np.exp(-0.5 * z**2)).sum(axis=0) / (width * np.sqrt(2 * np.pi))


def kde_factor(bandwidth: Any, n: int) -> float:
    """scipy's bandwidth factor for ``n`` scores: Scott's ``n ** -1/5`` (None or "scott"),
    Silverman's ``(3n/4) ** -1/5``, or the number given."""
    if bandwidth is None or bandwidth == "scott":
        return float(n**-0.2)
    if bandwidth == "silverman":
        return float((n * 0.75) ** -0.2)
    try:
        return float(bandwidth)
    except (TypeError, ValueError):
        raise DataError(
            f"plot_bandwidth must be null, scott, silverman or a number; got {bandwidth!r}"
        ) from None


def plot_density(
    scores: Sequence[float], thresholds: Sequence[float], path: Path, title: str, bandwidth: Any
) -> None:
    """The paper's Figure 2 for these scores, as ``path`` (PNG) and the PDF beside it.

    Histogram as a density, its bins centred on the scores' grid (width 1 around each of
    1..5 for whole-number scores), and on the same axis a Gaussian KDE, so the two share a
    scale: ``bandwidth`` as scipy's ``bw_method`` (None = Scott's rule, "silverman", or a
    number: the factor on the scores' standard deviation), the rule taken over every score
    (not over the distinct values: with five distinct scores that would give a kernel
    wider than the whole scale); the kernel's width is in the legend. The CDF on the right
    axis, from 0 at the left edge; the thresholds; each stage shaded, with its number of
    examples. ``title``: the data's name and method.
    """
    from itertools import pairwise

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    from phasedsft.io import save_figure
    from phasedsft.score.report import centred_bins

    arr = np.asarray(scores, dtype=float)
    edges = centred_bins(arr)
    lo, hi = float(edges[0]), float(edges[-1])
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    heights, _, _ = ax.hist(
        arr,
        bins=edges,
        density=True,
        color="#a9bfdc",
        edgecolor="white",
        zorder=2,
        label=f"histogram (bins {edges[1] - edges[0]:.3g} wide)",
    )
    top = float(np.max(heights)) if len(heights) else 1.0
    values, counts = np.unique(arr, return_counts=True)
    if values.size >= 2:
        xs = np.linspace(lo, hi, 512)
        width = kde_factor(bandwidth, arr.size) * float(np.std(arr, ddof=1))
        ys = gaussian_density(xs, values, counts, width)
        ax.plot(xs, ys, color="#1f4e8c", lw=2, zorder=3, label=f"Gaussian KDE (width {width:.2f})")
        top = max(top, float(ys.max()))
    else:  # a single distinct score has no density: still draw the rest
        log.warning("no KDE curve: all %d scores are %s", arr.size, values[:1])
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, top * 1.3)  # room above the bars for the stages' labels
    ax.set_xlabel("difficulty score")
    ax.set_ylabel("density")
    top_of_axes = blended_transform_factory(ax.transData, ax.transAxes)
    bounds = [lo, *(min(max(t, lo), hi) for t in thresholds), hi]
    sizes = np.bincount(stages_of(arr, thresholds), minlength=len(bounds))[1:]
    for i, (left, right) in enumerate(pairwise(bounds)):
        ax.axvspan(left, right, color=STAGE_SHADES[i % 2], zorder=0, lw=0)
        ax.text(
            (left + right) / 2,
            0.97,
            f"stage {i + 1}\nn={int(sizes[i]):,}",
            transform=top_of_axes,
            ha="center",
            va="top",
            fontsize=8,
        )
    for t in thresholds:
        ax.axvline(t, color="#c44e52", linestyle="--", linewidth=1.2, zorder=4)
    cdf = ax.twinx()
    share = np.cumsum(counts) / max(counts.sum(), 1)
    cdf.step(np.r_[lo, values, hi], np.r_[0.0, share, 1.0], where="post", color="#55a868")
    cdf.set_ylabel("cumulative share")
    cdf.set_ylim(0, 1.3)  # the same room above as the density axis
    cdf.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    handles = ax.get_legend_handles_labels()[0] + [
        Line2D([], [], color="#55a868", label="CDF (right axis)"),
        Line2D(
            [],
            [],
            color="#c44e52",
            linestyle="--",
            label="thresholds " + ", ".join(f"{t:g}" for t in thresholds),
        ),
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=2,
        fontsize=8,
        frameon=False,
    )
    ax.set_title(f"{title} (n={arr.size:,})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def run(cfg: DictConfig) -> dict[str, Any]:
    run_dir = start_job(cfg)

    # --- setup
    loaded, examples = load_examples(cfg)
    tokenizer = load_tokenizer(cfg, examples)
    scorer = checked_scorer(instantiate(cfg.scorer))
    cache_dir = score_cache_dir(cfg, not scorer.costs_nothing)
    examples = apply_scores(
        examples, scorer.score(examples, score_context(cfg, cache_dir, tokenizer)), scorer.name
    )
    selection = None  # selection=...: segment the examples train.py will train on
    if (rule := rule_of(cfg.get("selection"))) is not None:
        examples, selection = select(rule, examples)
    scores = [float(ex.score) for ex in examples]  # type: ignore[arg-type]
    method = instantiate(cfg.segment.method)

    # --- segment
    manifest = build_manifest(examples, method, cfg.segment.random_seed)
    manifest_path = run_dir / "stage_manifest.json"
    atomic_write_json(manifest_path, manifest.to_json())

    # --- report
    rows = stage_table(examples, manifest.stages, tokenizer, Path(cfg.run.cache_dir))
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
        "data": {
            "examples": len(examples),
            "skipped_rows": loaded.skips.summary(),
            "unused_fields": loaded.unused_fields,
        },
    }
    paper = paper_check(  # the authors' released scores: stage sizes beside the paper's
        cfg.dataset.name,
        cfg.dataset.source.get("path"),
        manifest.thresholds,
        rows,
        loaded.skips.count,
        cfg.dataset.max_examples is not None,
    )
    if paper is not None:
        summary["paper_stage_sizes"] = paper.to_json()
    if selection is not None:
        summary["selection"] = selection
    conversations = any(ex.messages is not None for ex in examples)
    chat_template = bool(getattr(tokenizer, "chat_template", None))
    summary["train_command"] = train_command(manifest_path, conversations, chat_template)
    atomic_write_json(run_dir / "summary.json", summary)
    print(
        (f"\n{selection['line']}" if selection is not None else "")
        + f"\n{table_markdown(rows)}\nthresholds: {manifest.thresholds}\n\n"
        + (f"{paper.text()}\n\n" if paper is not None else "")
        + "\n".join(sens_md)
        + f"\n\ndensity plot: {run_dir / 'density.png'}\nstage manifest: {manifest_path}\n"
        f"train on it: {summary['train_command']}\n{train_note(conversations, chat_template)}",
        flush=True,
    )
    return summary
