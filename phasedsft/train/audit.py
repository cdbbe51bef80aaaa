"""The data-order audit: what every rank fed, and whether the union of it is the plan.

Every rank appends what it feeds to a log of its own, one JSON line per micro-batch with the
optimizer step and the planned positions and ids: ``fed_ids.jsonl`` for rank 0 (the only log of
a single-process run), ``fed_ids.rank<r>.jsonl`` for rank r > 0. After training, rank 0 checks
the union of the logs against the plan (:func:`audit_fed`; :class:`FeedShape` says how the
Trainer shares a pass among ranks). Free of torch, so entrypoints can name :class:`AuditError`
cheaply.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phasedsft.io import atomic_write_text, sha256_lines
from phasedsft.records import UserError

FED_LOG = "fed_ids.jsonl"


class AuditError(UserError, RuntimeError):
    """The data a stage fed differs from its planned order: the stage is not marked done."""


def fed_log_path(stage_dir: Path, rank: int) -> Path:
    """Where rank ``rank`` logs what it fed: ``fed_ids.jsonl`` for rank 0 (so a single-process
    run has one log, as it always had), ``fed_ids.rank<r>.jsonl`` for every other rank."""
    return stage_dir / (FED_LOG if rank == 0 else f"fed_ids.rank{rank}.jsonl")


def fed_log_ranks(stage_dir: Path) -> list[int]:
    """The ranks whose fed logs are in ``stage_dir``."""
    ranks = [0] if (stage_dir / FED_LOG).exists() else []
    for p in stage_dir.glob("fed_ids.rank*.jsonl"):
        r = p.name.removeprefix("fed_ids.rank").removesuffix(".jsonl")
        if r.isdigit() and int(r) > 0:
            ranks.append(int(r))
    return sorted(ranks)


class FedLog:
    """Append-only record of what one rank fed: one JSON line per micro-batch,
    ``{"step": <optimizer step>, "positions": [<positions in the plan>], "ids": [...],
    "loss": <the loss the Trainer added up for it>}``."""

    def __init__(self, path: Path, sequence: Sequence[str], rank: int = 0):
        self.path = path
        self.sequence = sequence
        self.rank = rank

    def truncate(self, step: int) -> None:
        """Forget micro-batches from optimizer step ``step`` on (they are about to be redone).

        A line torn by a killed process (its last, always past the checkpoint resumed from)
        goes too.
        """
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] < step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        atomic_write_text(self.path, "".join(f"{line}\n" for line in kept))

    def record(self, step: int, positions: Sequence[int], loss: float | None = None) -> None:
        line: dict[str, Any] = {"step": step, "positions": list(positions)}
        line["ids"] = [self.sequence[p] for p in positions]
        if loss is not None:
            line["loss"] = loss
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def ids(self) -> list[str]:
        return [i for r in self.records() for i in r["ids"]]


@dataclass(frozen=True)
class FeedShape:
    """How the Trainer feeds one pass over a stage's planned order, across ranks.

    Measured on 2 gloo ranks (accelerate's ``BatchSamplerShard``, ``split_batches=False``,
    ``even_batches=True``, the Trainer's defaults): the sequential sampler cuts the plan into
    micro-batches of ``batch_size`` and deals them round-robin, so micro-batch ``j`` of rank
    ``r`` is global micro-batch ``j * ranks + r``. Optimizer step ``k`` of a pass is global
    micro-batches ``[k * G * ranks, (k + 1) * G * ranks)`` (``G`` = gradient accumulation):
    the step feeds plan positions ``[k * G * ranks * batch_size, ...)``, split across ranks.
    To give every rank a full last micro-batch, the sampler pads the pass up to a multiple of
    ``ranks * batch_size`` with the first positions of the pass again (position ``i % n``):
    those duplicates are the only ones expected. A single process does not pad (its last
    micro-batch may be short); the last step of a pass may have fewer micro-batches. With
    ``max_steps`` past the end of the plan, the next pass starts again at position 0.
    """

    n_planned: int  # dataset items: plan positions, or packs of them (``units``)
    ranks: int
    batch_size: int  # per rank and micro-batch
    grad_accum: int = 1
    even_batches: bool = True
    split_batches: bool = False
    drop_last: bool = False
    # trainer.packing: the plan positions each dataset item holds (a pack of consecutive ones);
    # None: item i is plan position i
    units: Sequence[Sequence[int]] | None = None

    def unit(self, i: int) -> Sequence[int]:
        return self.units[i] if self.units is not None else (i,)

    @property
    def global_batch(self) -> int:
        """Items per global micro-batch (all ranks together)."""
        return self.batch_size if self.split_batches else self.batch_size * self.ranks

    def pass_length(self) -> int:
        """Dataset items one pass feeds over all ranks, the sampler's padding included."""
        n, g = self.n_planned, self.global_batch
        if n == 0:
            return 0
        if self.drop_last:
            return n // g * g
        if self.ranks > 1 and self.even_batches:
            return -(-n // g) * g
        return n

    def pass_positions(self) -> list[int]:
        """The plan positions one pass feeds, in the sampler's global order (padding included)."""
        return [p for i in range(self.pass_length()) for p in self.unit(i % self.n_planned)]

    def _step_items(self) -> list[range]:
        size, length = self.global_batch * self.grad_accum, self.pass_length()
        return [range(i, min(i + size, length)) for i in range(0, length, size)]

    def steps(self) -> list[list[int]]:
        """The plan positions of each optimizer step of one pass."""
        return [[p for i in r for p in self.unit(i % self.n_planned)] for r in self._step_items()]

    def padding(self) -> list[int]:
        """Per optimizer step of a pass: plan positions fed again to even out the ranks."""
        n = self.n_planned
        return [sum(len(self.unit(i % n)) for i in r if i >= n) for r in self._step_items()]


@dataclass
class AuditResult:
    ok: bool
    problem: str | None  # the first difference, in words
    n_fed: int  # items fed over all ranks (padding included)
    n_padding: int  # of which duplicates the sampler added to even out the ranks
    fed_sha256: str  # of the ids fed, by step, then micro-batch, then rank

    def record(self) -> dict[str, Any]:
        return {
            "fed_matches_plan": self.ok,
            "n_fed": self.n_fed,
            "fed_padding": self.n_padding,
            "fed_sha256": self.fed_sha256,
        }


def stage_train_loss(logs: Mapping[int, FedLog], n_steps: int) -> float | None:
    """The stage's mean training loss per optimizer step, from the fed logs of every rank.

    What HF's ``train_loss`` is for an uninterrupted run (the micro-batches' losses added up,
    averaged over ranks, divided by the steps), but over the whole stage also when it was
    resumed: the logs hold every step's micro-batches, those redone after a resume once.
    ``None`` when a record carries no loss (a log written before losses were recorded).
    """
    records = [r for log in logs.values() for r in log.records()]
    if not records or n_steps <= 0 or any("loss" not in r for r in records):
        return None
    return sum(float(r["loss"]) for r in records) / len(logs) / n_steps


def audit_fed(logs: Mapping[int, FedLog], shape: FeedShape, n_steps: int) -> AuditResult:
    """Check the union of every rank's fed log against the plan for ``n_steps`` optimizer steps.

    Exact up to what cannot change a step's update: for every step ``k`` the multiset of plan
    positions fed across all ranks must equal the positions the plan gives step ``k`` (see
    :class:`FeedShape`, padding duplicates included); nothing may be fed at any other step. So
    the whole stage feeds the planned multiset, step by step in the planned order; which rank
    or micro-batch of a step carried an item is not checked.
    """
    # step -> (micro-batch of the step, rank, position), in the sampler's global order: micro-batch
    # m of every rank in turn, each in the order it was fed
    fed: dict[int, list[tuple[int, int, int]]] = {}
    for r, fed_log in sorted(logs.items()):
        micro: Counter[int] = Counter()
        for rec in fed_log.records():
            step = int(rec["step"])
            fed.setdefault(step, []).extend((micro[step], r, int(p)) for p in rec["positions"])
            micro[step] += 1
    for items in fed.values():
        items.sort(key=lambda t: (t[0], t[1]))  # stable: a micro-batch keeps its own order
    sequence = next(iter(logs.values())).sequence if logs else []
    pass_steps = shape.steps()
    padding = shape.padding()  # per step of a pass: items past the plan's end, fed again

    def where(r: int) -> str:
        return f"by rank {r} ({logs[r].path.name})" if r in logs else f"by rank {r}"

    def item(p: int) -> str:
        if 0 <= p < len(sequence):
            return f"position {p} (data_order.txt line {p + 1}, id {sequence[p]})"
        return f"position {p} (not in the plan)"

    problem: str | None = None
    for k in range(max([n_steps, *(s + 1 for s in fed)])):
        planned = pass_steps[k % len(pass_steps)] if k < n_steps and pass_steps else []
        got = fed.get(k, [])
        want, have = Counter(planned), Counter(p for _, _, p in got)
        if want == have:
            continue
        missing = next((p for p in planned if want[p] > have[p]), None)
        extra = next(((r, p) for _, r, p in got if have[p] > want[p]), None)
        if not got:
            problem = f"optimizer step {k}: nothing was fed, the plan feeds {len(planned)} items"
        elif missing is None and extra is not None:
            problem = (
                f"optimizer step {k}: {item(extra[1])} was fed {where(extra[0])} but the plan "
                f"{'ends before this step' if not planned else 'does not feed it here'}"
            )
        elif missing is not None and extra is None:
            problem = f"optimizer step {k}: planned {item(missing)} was not fed"
        else:
            assert missing is not None and extra is not None
            problem = (
                f"optimizer step {k}: planned {item(missing)} was not fed; "
                f"{item(extra[1])} was fed instead, {where(extra[0])}"
            )
        break
    order = [p for k in sorted(fed) for _, _, p in fed[k]]
    ids = [sequence[p] if 0 <= p < len(sequence) else f"?{p}" for p in order]
    n_padding = sum(padding[k % len(padding)] for k in range(n_steps)) if padding else 0
    return AuditResult(problem is None, problem, len(order), n_padding, sha256_lines(ids))
