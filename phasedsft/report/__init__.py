"""One self-contained HTML report per evaluated sweep: ``python -m phasedsft.report SWEEP_DIR``.

The page (``<sweep>/evaluation/<judge>/report.html``) holds the headline (Figure 1, the
paper's tables with their CIs, statistics across seeds), the data and the plan (density plot,
Table 1, each run's stages, forgetting matrix, growth curves), every judged item with both
answers and both reviews (filter, sort, paginate, permalink), and the provenance of each
figure. It loads nothing from anywhere: figures are embedded, the items are one JSON blob.

    build.build_model(eval_dir, sweep_dir)  -> the model (JSON-able; read from disk only)
    html.render(model)                      -> the page
    write_report(eval_dir, sweep_dir)       -> both, written atomically; its path
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from phasedsft.io import atomic_write_text

REPORT_FILE = "report.html"


def write_report(
    eval_dir: str | Path,
    sweep_dir: str | Path | None = None,
    out: str | Path | None = None,
    command: str | None = None,
) -> Path:
    """Gather the evaluation in ``eval_dir`` (and the runs of ``sweep_dir``, default
    ``<eval_dir>/../..``) into one HTML page: ``out``, default ``<eval_dir>/report.html``."""
    from phasedsft import __version__
    from phasedsft.report.build import build_model, sweep_of
    from phasedsft.report.html import render

    eval_dir = Path(eval_dir)
    sweep = Path(sweep_dir) if sweep_dir is not None else sweep_of(eval_dir)
    model: dict[str, Any] = build_model(eval_dir, sweep, command=command)
    model["generated"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    model["version"] = __version__
    path = Path(out) if out is not None else eval_dir / REPORT_FILE
    atomic_write_text(path, render(model))
    return path


__all__ = ["REPORT_FILE", "write_report"]
