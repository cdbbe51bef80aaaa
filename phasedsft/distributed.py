"""Ranks for multi-GPU / multi-node jobs (train.py, score.py): from torchrun, or derived from
SLURM's task variables.

``torchrun`` (or ``deepspeed``, ``accelerate launch``) sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; the Trainer reads them. A SLURM job with
one task per GPU (``launcher=slurm``: ``tasks_per_node = gpus_per_node``) runs train.py once per
task and sets ``SLURM_PROCID`` / ``SLURM_LOCALID`` / ``SLURM_NTASKS`` / ``SLURM_JOB_NODELIST``
instead: :func:`export_slurm_ranks` translates them, so the Trainer (and DeepSpeed) see the same
ranks either way. Only rank 0 writes run-level files; every rank takes part in training and in
saving (ZeRO-3 gathers the weights from all of them).

Across nodes, ``MASTER_ADDR`` is the job's first node *by name* (``SLURM_JOB_NODELIST``'s
first host, as ``scontrol show hostnames`` expands it); every task resolves that name to the
first node's own address, so it must not resolve to loopback there (tested on a two-node
cluster: launch/slurm_local, ``SLURM_NODES=2``, tests/test_slurm.py). Each task logs what it
derived (``ranks from SLURM: ...``).

Why not ``submitit.helpers.TorchDistributedEnvironment``, which does the same for a submitit
job (read in submitit 1.5's source): it finds its job through ``JobEnvironment()``, which
raises outside a submitit job (``SUBMITIT_EXECUTOR`` unset), so ``srun -n N python score.py``
or a hand-written sbatch script could not use it; ``export()`` raises when ``RANK`` is already
set instead of letting torchrun inside a job win; it always sets ``CUDA_VISIBLE_DEVICES`` to
the local rank unless told not to, which is wrong where SLURM already bound one GPU per task
(``--gpus-per-task``: each task sees device 0); and it needs submitit, an optional extra,
in every process. Its node-list parser (``submitit.slurm.slurm._parse_node_list``) is private;
``scontrol show hostnames`` is SLURM's own, with a parser of the common forms as fallback.
What it computes is the same as here: first host, ``SLURM_PROCID``/``SLURM_LOCALID``/
``SLURM_NTASKS``, a port derived from the job id (so every task agrees without talking).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
from collections.abc import Mapping, MutableMapping
from datetime import timedelta
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
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


def tasks_on_this_node(env: Mapping[str, str], ntasks: int) -> int:
    """How many of the step's tasks run on this task's node: ``SLURM_STEP_TASKS_PER_NODE``
    (or the job's ``SLURM_TASKS_PER_NODE``; ``2(x3),1`` = 2, 2, 2, 1) at ``SLURM_NODEID``;
    ``SLURM_NTASKS_PER_NODE`` (set only by ``--ntasks-per-node``) without them."""
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if spec and "SLURM_NODEID" in env:
        counts: list[int] = []
        for part in spec.split(","):
            m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
            if not m:
                counts = []
                break
            counts += [int(m.group(1))] * int(m.group(2) or 1)
        node = int(env["SLURM_NODEID"])
        if 0 <= node < len(counts):
            return counts[node]
    return int(env.get("SLURM_NTASKS_PER_NODE", str(ntasks)).split("(")[0])


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
        "LOCAL_WORLD_SIZE": str(tasks_on_this_node(env, ntasks)),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(env["SLURM_JOB_NODELIST"]),
        "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + job % 20000),
    }


def export_slurm_ranks(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    values = slurm_ranks(env)
    env.update(values)
    if values:
        addr = values["MASTER_ADDR"]
        try:
            resolved = socket.gethostbyname(addr)
        except OSError as e:
            resolved = f"unresolved: {e}"
        log.info(
            "ranks from SLURM: rank %s of %s (local %s of %s) on %s, MASTER_ADDR=%s (%s) port %s",
            values["RANK"],
            values["WORLD_SIZE"],
            values["LOCAL_RANK"],
            values["LOCAL_WORLD_SIZE"],
            socket.gethostname(),
            addr,
            resolved,
            values["MASTER_PORT"],
        )
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
