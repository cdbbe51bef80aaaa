"""Ranks for multi-GPU / multi-node jobs (train.py, score.py): from torchrun, or derived from
SLURM's task variables.

``torchrun`` (or ``deepspeed``, ``accelerate launch``) sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; the Trainer reads them. A SLURM job with
one task per GPU (``launcher=slurm``: ``tasks_per_node = gpus_per_node``) runs train.py once per
task and sets ``SLURM_PROCID`` / ``SLURM_LOCALID`` / ``SLURM_NTASKS`` / ``SLURM_JOB_NODELIST``
instead: :func:`export_slurm_ranks` translates them, so the Trainer (and DeepSpeed) see the same
ranks either way. Only rank 0 writes run-level files; every rank takes part in training and in
saving (ZeRO-3 gathers the weights from all of them).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, MutableMapping
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")
# how long a rank waits for the others at a meeting point (a rank scoring a big share)
RANKS_WAIT = timedelta(hours=24)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[003-005,010],cpu1`` -> ``gpu003``."""
    try:  # scontrol knows every form; fall back to the common ones when it is not on PATH
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    first = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist
    m = re.match(r"^([^\[,]+)\[([^\],]+)", first)
    if m:
        return m.group(1) + m.group(2).split("-")[0]
    return first


def slurm_ranks(env: Mapping[str, str]) -> dict[str, str]:
    """torch.distributed's variables from a SLURM task's environment ({} for a single task)."""
    ntasks = int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")))
    if ntasks <= 1 or "RANK" in env:
        return {}
    job = int(env.get("SLURM_JOB_ID", "0"))
    return {
        "RANK": env["SLURM_PROCID"],
        "LOCAL_RANK": env["SLURM_LOCALID"],
        "WORLD_SIZE": str(ntasks),
        "LOCAL_WORLD_SIZE": env.get("SLURM_NTASKS_PER_NODE", str(ntasks)).split("(")[0],
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(env["SLURM_JOB_NODELIST"]),
        "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + job % 20000),
    }


def export_slurm_ranks(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    values = slurm_ranks(env)
    env.update(values)
    return values


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def join_ranks() -> int:
    """Join the job's other ranks (gloo, CPU only) when it runs as several processes and no
    process group exists yet; returns the number of ranks. The Trainer makes its own group
    for training; score.py needs one only to wait for its ranks and add up their counts."""
    export_slurm_ranks()
    if world_size() <= 1:
        return 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=RANKS_WAIT)
    return world_size()


def _joined() -> Any:
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and world_size() > 1 else None


def gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    dist = _joined()
    if dist is None:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def from_main(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (``obj`` itself in a single process)."""
    dist = _joined()
    if dist is None:
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
