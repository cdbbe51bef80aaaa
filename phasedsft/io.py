"""Small, dependable file helpers: atomic writes, content hashes, provenance."""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import itertools
import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike[str], text: str | Iterable[str]) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half.

    ``text`` may come in pieces (an iterable of strings, written one after another), so a big
    file is never one string in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600: colleagues could not read it
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if isinstance(text, str):
                f.write(text)
            else:
                f.writelines(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.cache
def current_umask() -> int:
    """The process's umask (read once, by setting it and putting it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(folder: Path) -> None:
    """Give every file and folder under ``folder`` the modes the user's umask asks for.

    Libraries that write through a temporary file (safetensors weights saved by
    transformers) leave mkstemp's 0600: colleagues on a shared cluster could not load them.
    """
    mask = current_umask()
    for p in [folder, *folder.rglob("*")]:
        if p.is_symlink():
            continue
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """``json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False)`` and a newline, written as
    it is encoded (a big manifest is never one string in memory)."""
    encoder = json.JSONEncoder(indent=2, sort_keys=True, ensure_ascii=False)
    atomic_write_text(path, _joined(itertools.chain(encoder.iterencode(obj), ["\n"])))


def _joined(pieces: Iterable[str], size: int = 1 << 16) -> Iterator[str]:
    """``pieces`` regrouped into strings of about ``size`` characters (fewer, bigger writes)."""
    buf: list[str] = []
    n = 0
    for piece in pieces:
        buf.append(piece)
        n += len(piece)
        if n >= size:
            yield "".join(buf)
            buf, n = [], 0
    if buf:
        yield "".join(buf)


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written ``tmp_dir`` into place as ``final_dir`` (replacing any old one)."""
    if final_dir.exists():
        old = final_dir.with_name(final_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_pieces(obj: Any, chunk: int = 65536) -> Iterator[str]:
    """:func:`canonical_json` of ``obj`` in pieces whose concatenation is exactly that text:
    dicts (string keys) and lists are walked, scalars encoded ``chunk`` at a time, so a stage
    manifest of a million ids is never one string (nor its UTF-8 bytes) in memory at once."""
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        yield "{"
        for n, key in enumerate(sorted(obj)):
            yield ("," if n else "") + json.dumps(key, ensure_ascii=False) + ":"
            yield from canonical_pieces(obj[key], chunk)
        yield "}"
    elif isinstance(obj, list | tuple):
        yield "["
        scalars = (str, int, float, bool, type(None))
        if all(isinstance(x, scalars) for x in obj):
            for start in range(0, len(obj), chunk):
                yield ("," if start else "") + canonical_json(list(obj[start : start + chunk]))[
                    1:-1
                ]
        else:
            for n, item in enumerate(obj):
                if n:
                    yield ","
                yield from canonical_pieces(item, chunk)
        yield "]"
    else:
        yield canonical_json(obj)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def sha256_json_large(obj: Any) -> str:
    """:func:`sha256_json` of an object too big to hold as one text (a stage manifest): the
    same digest, fed :func:`canonical_pieces` one at a time."""
    h = hashlib.sha256()
    for piece in canonical_pieces(obj):
        h.update(piece.encode("utf-8"))
    return h.hexdigest()


def sha256_lines(lines: Iterable[str], chunk: int = 4096) -> str:
    """The SHA-256 of ``lines``, each followed by a newline (fed ``chunk`` lines at a time:
    the same digest, a hundred times fewer calls)."""
    h = hashlib.sha256()
    it = iter(lines)
    while part := list(itertools.islice(it, chunk)):
        h.update(("\n".join(part) + "\n").encode("utf-8"))
    return h.hexdigest()


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside (the state before is restored after).

    Building a million records allocates millions of container objects, and every full
    collection on the way scans all that were kept: a quarter of the loading time at 1M rows,
    for records that hold no reference cycles. Reference counting still frees everything else.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def git_revision(start: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The git commit of the code that ran (and whether the tree had local changes)."""
    cwd = Path(start or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return {"sha": sha, "dirty": bool(dirty)}
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}


def stable_run_id(run_dir: Path) -> str:
    """A run directory's tracker id (W&B): the same for every job, requeue and evaluation of it."""
    return hashlib.sha256(Path(run_dir).name.encode()).hexdigest()[:16]


def save_figure(fig: Any, png: Path, dpi: int = 150) -> tuple[Path, Path]:
    """Write ``fig`` as ``png`` and as the PDF beside it (each atomically, the legend and
    titles kept whole), close it; a rerun writes the same PDF (no creation date)."""
    import matplotlib.pyplot as plt

    pdf = png.with_suffix(".pdf")
    png.parent.mkdir(parents=True, exist_ok=True)
    for path, fmt, meta in ((png, "png", {"Software": None}), (pdf, "pdf", {"CreationDate": None})):
        # a name of this process's own: two jobs writing one figure (two identical score.py
        # runs at once) each replace it whole, never one the other's half-written file
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", metadata=meta)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    plt.close(fig)
    return png, pdf
