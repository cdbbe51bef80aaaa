"""Win rates back into the training runs' W&B runs (training with ``logger=wandb``).

After judging, each candidate run trained with ``logger=wandb`` gets its win rates, per test set
and checkpoint, in the summary of its own W&B run (the same stable id the training used, resumed,
in the run directory: offline runs stay offline and are synced with ``wandb sync`` as usual).
Keys: ``winrate/<test set>/stage_<i>_vs_<baseline>`` (and ``..._ci_low``, ``..._ci_high``,
``..._n``). A run trained without W&B is left alone; W&B missing here is a warning, never a
failure: the tables are already written.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from phasedsft.evaluate.comparison import Comparison
from phasedsft.evaluate.runs import Run
from phasedsft.io import stable_run_id

log = logging.getLogger(__name__)


def win_rate_values(
    comparisons: Sequence[Comparison], baseline: str
) -> dict[str, dict[str, float | None]]:
    """Per candidate run name, the W&B summary values of its comparisons (``baseline``: the
    baseline runs' ordering, e.g. ``one_off``)."""
    out: dict[str, dict[str, float | None]] = defaultdict(dict)
    for c in comparisons:
        key = f"winrate/{c.eval_set}/stage_{c.stage_index}_vs_{baseline}"
        r = c.result
        out[c.run].update(
            {
                key: r.win_rate,
                f"{key}_ci_low": r.ci_low,
                f"{key}_ci_high": r.ci_high,
                f"{key}_n": r.n,
            }
        )
    return dict(out)


def log_win_rates(
    comparisons: Sequence[Comparison], runs: Mapping[str, Run], baseline: str
) -> list[str]:
    """Add each run's win rates to its W&B run; the names of the runs updated."""
    updated = []
    for name, values in win_rate_values(comparisons, baseline).items():
        run = runs.get(name)
        logger: Any = run.config.get("logger") if run is not None else None
        if run is None or not logger or logger.get("name") != "wandb" or not logger.get("tracker"):
            continue
        try:
            import wandb
        except ImportError:
            log.warning("%s was trained with logger=wandb, but wandb is not installed here", name)
            continue
        tracker = logger.tracker
        w = wandb.init(
            project=tracker.get("project"),
            entity=tracker.get("entity"),
            id=stable_run_id(run.dir),
            resume="allow",
            dir=str(run.dir),
            mode=tracker.get("mode"),
        )
        w.summary.update(values)
        w.finish()
        updated.append(name)
    return updated
