"""Curves across stages and across runs: what each stage did to what came before.

- :func:`write_forgetting` (every multi-stage run, rank 0): the held-out loss of every group
  (``all``, each difficulty level, each task family with ``eval.by_task=true``) after every
  stage, as ``forgetting.csv`` and a plot (``forgetting.png`` / ``.pdf``): a column that rises
  after its own stage is forgetting, one that falls before its stage is transfer. The summary
  gets each group's forgetting: its loss after the last stage minus its lowest loss after any
  stage (0: never worse than its best).
- ``python -m phasedsft.train.curves growth SWEEP_DIR`` (a ``dataset.max_examples`` sweep):
  per group, the final held-out loss and accuracy against the number of training examples, one
  line per configuration: runs that differ in anything but their size are separate lines, each
  named by what differs (``growth.csv``, ``growth.png`` / ``.pdf``): the ability-growth question.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from phasedsft import rundir
from phasedsft.io import atomic_write_text
from phasedsft.records import UserError


def loss_groups(record: dict[str, Any]) -> dict[str, float]:
    """``{group: held-out loss}`` of one stage's record (``eval_<group>_loss`` metrics)."""
    out = {}
    for key, value in record.get("metrics", {}).get("eval", {}).items():
        if key.startswith("eval_") and key.endswith("_loss") and isinstance(value, int | float):
            out[key[len("eval_") : -len("_loss")]] = float(value)
    return out


def forgetting_matrix(
    records: Sequence[dict[str, Any]],
) -> tuple[list[str], list[list[float | None]]]:
    """Groups (columns) and, per stage in order (rows), each group's held-out loss."""
    per_stage = [loss_groups(r) for r in records]
    groups = sorted({g for row in per_stage for g in row}, key=group_order)
    return groups, [[row.get(g) for g in groups] for row in per_stage]


def group_order(group: str) -> tuple[int, str]:
    return (0 if group == "all" else 1 if group.startswith("level") else 2, group)


def forgetting(groups: Sequence[str], rows: Sequence[Sequence[float | None]]) -> dict[str, float]:
    """Per group: loss after the last stage minus its lowest loss after any stage."""
    out = {}
    for j, g in enumerate(groups):
        column = [float(v) for r in rows if (v := r[j]) is not None]
        last = rows[-1][j]
        if column and last is not None:
            out[g] = round(float(last) - min(column), 6)
    return out


def write_forgetting(run_dir: Path, records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``forgetting.csv`` and its plot in ``run_dir``; each group's forgetting."""
    groups, rows = forgetting_matrix(records)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["stage", "name", *groups])
    for r, row in zip(records, rows, strict=True):
        w.writerow([r["index"], r["name"], *("" if v is None else f"{v:.6g}" for v in row)])
    atomic_write_text(run_dir / "forgetting.csv", buf.getvalue())
    plot_forgetting(run_dir / "forgetting.png", [r["name"] for r in records], groups, rows)
    return forgetting(groups, rows)


def plot_forgetting(
    png: Path, stages: Sequence[str], groups: Sequence[str], rows: Sequence[Sequence[float | None]]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from phasedsft.io import save_figure

    values = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    fig, (lines, heat) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = np.arange(1, len(stages) + 1)
    for j, g in enumerate(groups):
        lines.plot(x, values[:, j], marker="o", label=g, lw=2.2 if g == "all" else 1.2)
    lines.set_xticks(x, [f"{i}. {s}" for i, s in zip(x, stages, strict=True)], rotation=20)
    lines.set_xlabel("after stage")
    lines.set_ylabel("held-out loss")
    lines.set_title("Held-out loss per group after each stage")
    lines.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    image = heat.imshow(values.T, aspect="auto", cmap="viridis")
    heat.set_xticks(range(len(stages)), [f"{i}" for i in x])
    heat.set_yticks(range(len(groups)), list(groups), fontsize=7)
    heat.set_xlabel("after stage")
    heat.set_title("Forgetting / transfer matrix (loss)")
    fig.colorbar(image, ax=heat)
    fig.tight_layout()
    save_figure(fig, png)


# ---------------------------------------------------------------- growth across runs


SIZE_KEYS = ("dataset.max_examples",)  # what a growth curve's x axis varies


def _flat(node: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys of a config container, each value as compact JSON text."""
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(node, sort_keys=True)}


def configuration(cfg: dict[str, Any]) -> dict[str, str]:
    """What a run computes, as dotted keys: its config less what does not change the result
    (:data:`phasedsft.config.NON_SEMANTIC_KEYS`) and the data size the curve varies."""
    from phasedsft.config import NON_SEMANTIC_KEYS

    flat = _flat({k: v for k, v in cfg.items() if k not in NON_SEMANTIC_KEYS})
    return {k: v for k, v in flat.items() if k not in SIZE_KEYS}


def line_labels(configs: Sequence[dict[str, str]]) -> list[str]:
    """A name for each distinct configuration: the settings in which it differs from the others
    (``ordering.name=1-2-3, seed=1``), the ordering first; one configuration: its ordering."""
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if len({c.get(k) for c in configs}) > 1]
    # an option whose name differs is named by it (ordering.name=1-2-3 vs paced-root); its other
    # keys appear only where configurations of the same name differ in them (ordering.anti)
    renamed = {k.rsplit(".", 1)[0] for k in differing if k.endswith(".name")}

    def needed(k: str) -> bool:
        option = k.rsplit(".", 1)[0]
        if k.endswith(".name") or option not in renamed:
            return True
        values: dict[str | None, set[str | None]] = {}
        for c in configs:
            values.setdefault(c.get(f"{option}.name"), set()).add(c.get(k))
        return any(len(v) > 1 for v in values.values())

    named = sorted(filter(needed, differing), key=lambda k: (not k.startswith("ordering."), k))

    def label(c: dict[str, str]) -> str:
        parts = [f"{k}={json.loads(c[k])}" for k in named if k in c]
        return ", ".join(parts) or str(json.loads(c.get("ordering.name", '"run"')))

    return [label(c) for c in configs]


def run_points(sweep: Path) -> list[dict[str, Any]]:
    """One point per finished run under ``sweep``: its size, line (the runs that differ only in
    their size) and final figures."""
    from omegaconf import OmegaConf

    points = []
    configs: list[dict[str, str]] = []
    for summary_path in sorted(sweep.glob("*/summary.json")):
        run = summary_path.parent
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        cfg = OmegaConf.load(run / rundir.RUN_CONFIG)
        size = OmegaConf.select(cfg, "dataset.max_examples") or summary.get("data", {}).get("used")
        last = summary["per_stage"][-1] if summary.get("per_stage") else {}
        accuracy = summary.get("final_accuracy") or {}
        container = OmegaConf.to_container(cfg, resolve=False)
        assert isinstance(container, dict)
        configs.append(configuration({str(k): v for k, v in container.items()}))
        points.append(
            {
                "run": run.name,
                "ordering": summary.get("ordering"),
                "examples": int(size) if size is not None else None,
                "loss": loss_groups({"metrics": {"eval": last.get("eval", {})}}),
                "accuracy": {g: v["accuracy"] for g, v in accuracy.items()},
            }
        )
    if not points:
        raise UserError(f"{sweep}: no finished training runs (no */summary.json) to draw from")
    distinct: list[dict[str, str]] = []
    for c in configs:
        if c not in distinct:
            distinct.append(c)
    labels = dict(zip(map(_key, distinct), line_labels(distinct), strict=True))
    for p, c in zip(points, configs, strict=True):
        p["line"] = labels[_key(c)]
    return points


def _key(config: dict[str, str]) -> str:
    return json.dumps(config, sort_keys=True)


def write_growth(sweep: Path) -> Path:
    """growth.csv and growth.png / .pdf: one line per configuration, final figures by size."""
    points = [p for p in run_points(sweep) if p["examples"] is not None]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["line", "ordering", "examples", "metric", "group", "value", "run"])
    for p in sorted(points, key=lambda p: (p["line"], p["examples"])):
        for metric in ("loss", "accuracy"):
            for g, v in sorted(p[metric].items(), key=lambda kv: group_order(kv[0])):
                w.writerow(
                    [p["line"], p["ordering"], p["examples"], metric, g, f"{v:.6g}", p["run"]]
                )
    atomic_write_text(sweep / "growth.csv", buf.getvalue())
    plot_growth(sweep / "growth.png", points)
    return sweep / "growth.csv"


def plot_growth(png: Path, points: Sequence[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from phasedsft.io import save_figure

    metrics = [m for m in ("loss", "accuracy") if any(p[m] for p in points)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        groups = sorted({g for p in points for g in p[metric]}, key=group_order)
        for line in sorted({p["line"] for p in points}):
            mine = sorted((p for p in points if p["line"] == line), key=lambda p: p["examples"])
            for g in groups:
                xs = [p["examples"] for p in mine if g in p[metric]]
                ys = [p[metric][g] for p in mine if g in p[metric]]
                if xs:
                    ax.plot(xs, ys, marker="o", label=f"{line} · {g}")
        ax.set_xscale("log")
        ax.set_xlabel("training examples (dataset.max_examples)")
        ax.set_ylabel(f"final held-out {metric}")
        ax.set_title(f"Growth of {metric} with data, per group")
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    save_figure(fig, png)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m phasedsft.train.curves", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    growth = sub.add_parser("growth", help="growth curves of a dataset.max_examples sweep")
    growth.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        out = write_growth(args.sweep_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"growth curves: {out} and {out.with_suffix('.png')} (.pdf)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
