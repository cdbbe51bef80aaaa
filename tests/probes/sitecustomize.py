"""A probe for tests/test_slurm.py: which process writes which file of a run.

Put this folder on ``PYTHONPATH`` and set ``PHASEDSFT_WRITES_LOG`` (a folder) and
``PHASEDSFT_WRITES_UNDER`` (a path prefix): every Python process started so (a SLURM job's tasks
inherit the environment) records, through an audit hook, each file it opens for writing or
renames into place under that prefix, one line ``<host> <SLURM_PROCID or -> <event> <path>`` in
``<log>/<host>.<pid>.log``. Files written by native code (safetensors, torch.save) are not seen.
"""

from __future__ import annotations

import os
import sys

_LOG = os.environ.get("PHASEDSFT_WRITES_LOG")
_UNDER = os.environ.get("PHASEDSFT_WRITES_UNDER")

if _LOG and _UNDER:
    import socket

    _HOST = socket.gethostname()
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    os.makedirs(_LOG, exist_ok=True)
    _FD = os.open(  # os.open/os.write raise no audit events of their own: no recursion
        os.path.join(_LOG, f"{_HOST}.{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND
    )

    def _record(event: str, path: object) -> None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            return
        path = os.path.abspath(path)
        if path.startswith(_UNDER):
            task = os.environ.get("SLURM_PROCID", "-")
            os.write(_FD, f"{_HOST} {task} {event} {path}\n".encode())

    def _hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else flags & _WRITE
            if writing:
                _record("open", path)
        elif event == "os.rename":  # os.rename and os.replace
            _record("rename", args[1])

    sys.addaudithook(_hook)
