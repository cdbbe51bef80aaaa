"""Processes and servers evaluate starts: each in a session of its own, stopped with all it
started (:class:`ProcessGroup`), and the OpenAI-compatible servers a generator waits for
(:func:`listed_models`, :class:`Server`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _parent_death_signal() -> Callable[[], None] | None:
    """Linux: a ``preexec_fn`` that has the kernel send the child SIGTERM when this process
    dies, even by SIGKILL (where no ``finally`` runs). Built before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_signal() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return set_signal


class ProcessGroup:
    """A command in a session of its own: stopped, with every process it started, by
    :meth:`stop` (SIGTERM to the group, SIGKILL after ``stop_timeout`` seconds and for what
    is left), and sent SIGTERM by the kernel if this process dies first (Linux)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        stdout: Any = None,
        env: dict[str, str] | None = None,
        stop_timeout: float = 30.0,
    ):
        self.argv = list(argv)
        self.stop_timeout = stop_timeout
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            env=env,
            start_new_session=True,
            preexec_fn=_parent_death_signal(),
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "pid %d did not stop within %gs: killing it", self.pid, self.stop_timeout
                )
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        # what the leader left behind (a worker that outlived it)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


SERVER_LOG = "server.log"  # generations/<this>: what the started servers printed


def log_tail(path: Path, start: int, lines: int = 20) -> str:
    """The last ``lines`` lines a process wrote to ``path`` after byte ``start``."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listed_models(url: str, key: str | None, timeout: float = 5.0) -> list[str]:
    """The model ids ``<url>/models`` lists; raises OSError or ValueError while it cannot."""
    request = urllib.request.Request(f"{url.rstrip('/')}/models")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout) as r:
        body = json.loads(r.read().decode("utf-8"))
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ValueError("not a model list")
    return [str(m["id"]) for m in data if isinstance(m, dict) and m.get("id") is not None]


@dataclass
class Server:
    """A server :meth:`OpenAIGenerator.serve` started for one checkpoint."""

    label: str
    url: str
    group: ProcessGroup
    log_path: Path
    models: list[str]

    def stop(self) -> None:
        self.group.stop()
        log.info("%s: stopped its server (pid %d)", self.label, self.group.pid)
