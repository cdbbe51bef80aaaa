"""A full disk, in plain words: ``error: no space left on <path>``, exit 2.

Every way a write can find the disk full ends a job the same way (``cli.plain_errors`` maps
them through :func:`no_space_error`): an ``OSError`` with ``errno`` ENOSPC, SQLite's
"database or disk is full", torch's serializer ("file write failed", "unexpected pos"),
safetensors' "StorageFull", any message saying "No space left on device". Where the error
names no file, the path is read from the failing call's arguments (``path``, ``filename``,
``output_dir``, ...), innermost first.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

from phasedsft.records import UserError

_MESSAGES = (
    "no space left on device",
    "database or disk is full",
    "storagefull",  # safetensors: IoError(Os { code: 28, kind: StorageFull, ... })
    "file write failed",  # torch's PytorchStreamWriter
    "disk quota exceeded",
)
# names of a failing call's arguments that hold the file or folder it was writing
_PATH_NAMES = (
    "filename",
    "file",
    "path",
    "f",
    "name",
    "output_dir",
    "save_directory",
    "checkpoint_dir",
    "output_path",
    "dst",
    "target",
    "tmp",
    "directory",
    "dir",
)


class NoSpace(UserError):
    """A write found the disk full. ``path``: what it was writing (or its folder)."""

    def __init__(self, message: str, *, path: str | None = None, stats: Any = None) -> None:
        super().__init__(message)
        self.path = path
        self.stats = stats  # a stopped request run's figures (phasedsft.llm.engine.RunStats)


def is_no_space(e: BaseException) -> bool:
    """Whether ``e`` says the disk (or the quota) is full."""
    if isinstance(e, NoSpace):
        return True
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e).lower()
    if any(m in text for m in _MESSAGES):
        return True
    # torch: "[enforce fail at inline_container.cc:...] . unexpected pos 123 vs 456"
    return "inline_container" in text and "unexpected pos" in text


def written_path(e: BaseException) -> str | None:
    """The file or folder ``e`` was writing: its ``filename``, else the innermost frame of its
    traceback whose arguments name a path (``torch.save(obj, f)``, ``save_file(t, filename)``)."""
    for attr in ("filename", "filename2"):
        value = getattr(e, attr, None)
        if isinstance(value, (str, os.PathLike)) and str(value):
            return str(value)
    tb = e.__traceback__
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name in _PATH_NAMES:
            value = frame.f_locals.get(name)
            if isinstance(value, os.PathLike) or (
                isinstance(value, str) and os.sep in value and "\n" not in value
            ):
                return str(value)
    return None


def folder_of(path: str | os.PathLike[str]) -> str:
    """The existing folder holding ``path`` (the path itself when it is one)."""
    p = Path(path).absolute()
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return str(p)


def no_space_message(path: str | os.PathLike[str] | None) -> str:
    """``no space left on <folder>`` (with what is free there, when it can be read)."""
    if path is None:
        return "no space left on the device being written"
    folder = folder_of(path)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return f"no space left on {folder}"
    return f"no space left on {folder} ({_size(free)} free)"


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"


def no_space_error(e: BaseException) -> NoSpace:
    """``e`` (a write that found the disk full) as a :class:`NoSpace` naming where."""
    if isinstance(e, NoSpace):
        return e
    path = written_path(e)
    return NoSpace(
        f"{no_space_message(path)}; free space, then rerun the same command to continue "
        f"({type(e).__name__}: {_first_line(e)})",
        path=path,
    )


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else ""
