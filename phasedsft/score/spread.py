"""Data-parallel scoring: every rank scores its own share of the examples, then all read the whole.

``torchrun --nproc_per_node N score.py ...`` or a SLURM job of N tasks (``srun -n N python
score.py ...``; :func:`phasedsft.distributed.export_slurm_ranks` turns SLURM's variables into
ranks) runs score.py N times. A scorer that runs a local model (IFD, perplexity, a local LM,
self-paced re-scoring during training) then scores examples ``rank, rank + N, ...`` only,
records them in the shared cache, seals them for ranks on other hosts
(:meth:`~phasedsft.llm.cache.ScoreCache.publish`) and waits for the others; then every rank's
run over all the examples finds them all in the cache. The merged result is therefore the
one-process run's (same ids, same order, the same scores to float tolerance: only how examples
are batched differs). Nothing depends on the wait for correctness: an example some rank did
not record is simply scored by whoever reads it next.

API scorers are not split: their processes already share the work item by item through the
cache's claims (:mod:`phasedsft.llm.cache`), and computed scorers cost nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from phasedsft.distributed import barrier, rank, world_size
from phasedsft.llm.engine import RunStats
from phasedsft.records import Example
from phasedsft.score.base import Scorer
from phasedsft.score.context import ScoreContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """Which share of the examples this process scores: ``rank`` of ``world``."""

    rank: int = 0
    world: int = 1

    def share(self, examples: Sequence[Example]) -> list[Example]:
        """Every ``world``-th example from ``rank`` on: shares are disjoint, cover everything,
        and mix long and short examples alike."""
        return list(examples[self.rank :: self.world])


def current_ranks() -> Ranks:
    return Ranks(rank(), world_size())


def splits(scorer: Scorer) -> bool:
    """Whether the scorer's work is split between ranks: it runs a local model (a computed
    scorer that only needs the tokenizer, ``length``, costs nothing and caches nothing)."""
    return bool(getattr(scorer, "uses_model", False)) and not getattr(
        scorer, "costs_nothing", False
    )


def spread_run(
    scorer: Scorer,
    examples: Sequence[Example],
    ctx: ScoreContext,
    ranks: Ranks | None = None,
    wait: Callable[[], None] = barrier,
) -> tuple[RunStats, RunStats | None]:
    """The scorer's run over every example, this rank computing its share only.

    Returns the run over all examples (after the wait: everything cached) and what this rank
    computed itself (``None`` in a single process or for a scorer that is not split)."""
    ranks = ranks or current_ranks()
    if ranks.world <= 1 or not splits(scorer):
        return scorer.run(examples, ctx), None
    mine = ranks.share(examples)
    log.info(
        "rank %d of %d scores %d of %d examples", ranks.rank, ranks.world, len(mine), len(examples)
    )
    own = scorer.run(mine, ctx)
    ctx.cache.publish()  # ranks on other hosts read it from the sealed copy
    wait()
    ctx.cache.refresh()
    return scorer.run(examples, ctx), own


def merged_counts(whole: RunStats, computed: Sequence[dict[str, Any]]) -> RunStats:
    """``whole`` (the run over every example after the ranks met, mostly cache hits) counted as
    the ranks' work: what they computed (``computed``: each rank's ``done``, ``failed``,
    ``requests``) is answered this run, not cached."""
    done = sum(int(c["done"]) for c in computed)
    whole.done += done
    whole.cached = max(whole.cached - done, 0)
    whole.failed += sum(int(c["failed"]) for c in computed)
    whole.requests += sum(int(c["requests"]) for c in computed)
    return whole
