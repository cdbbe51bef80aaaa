"""Checksummed directories of weights: one counts only once its manifest says so.

A Trainer checkpoint (``checkpoints/checkpoint-N``) and a stage's final ``model`` (and
``adapter``) directory get a ``manifest.json``, written last: the size and sha256 of every
file under the directory (sub-directories included: DeepSpeed's per-rank shards), after every
file and folder was synced to disk. A file's sha256 is taken per block of ``block_bytes``
(256 MiB): a smaller file has one, its own sha256 (``sha256sum`` prints it); the blocks of a
big file are hashed in parallel (one block is ~0.2 s on one core), and a mismatch says which
bytes changed. The manifest is written atomically (a temporary file,
fsynced, renamed, then the folder fsynced), so a directory either has a whole manifest or none.

``verify`` checks a directory against its manifest: every listed file is there with its size
(cheap), then every file's sha256 (the whole directory is read once, several files at a time).
What it finds wrong is one :class:`Problem`, named by file: a missing file, a file of another
size (a half-written weights file, the empty ``trainer_state.json`` a full disk leaves),
bytes that changed since the manifest was written (pages a node crash never wrote), or a
missing or unreadable manifest (the directory was never completely written, or was written by
a version before manifests). Files the manifest does not list are not checked.

Pure functions of the file system, shared by training (:mod:`phasedsft.train.checkpoints`,
:mod:`phasedsft.train.stage`) and evaluate.py, which reads the stages' weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phasedsft.io import atomic_write_json
from phasedsft.records import UserError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
CHUNK = 8 << 20  # bytes read at a time while hashing
BLOCK = 256 << 20  # bytes per sha256 of a file: blocks are hashed in parallel
THREADS = min(8, os.cpu_count() or 1)  # blocks hashed at once (hashlib lets go of the GIL)


class ManifestError(UserError):
    """A stage's saved weights do not match their manifest: ``error: ...``, exit code 2."""


@dataclass(frozen=True)
class Problem:
    """Why a directory fails verification: ``file`` (relative to it) and what is wrong."""

    file: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}: {self.why}"

    @property
    def no_manifest(self) -> bool:
        return self.file == MANIFEST and self.why.startswith("missing")

    def sentence(self) -> str:
        """``<file> does not match its manifest (<why>)``, or what is wrong with the manifest."""
        if self.file == MANIFEST:
            return f"its {MANIFEST} is {self.why}"
        return f"{self.file} does not match its manifest ({self.why})"


def listed_files(folder: Path) -> list[str]:
    """Every regular file under ``folder`` (relative POSIX paths, sorted), but the manifest
    and temporary files of an atomic write of it."""
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).as_posix()
        if rel == MANIFEST or (rel.startswith(f".{MANIFEST}.") and rel.endswith(".tmp")):
            continue
        if p.is_file() and not p.is_symlink():
            out.append(rel)
    return sorted(out)


def fsync_path(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(folder: Path) -> None:
    """fsync every file under ``folder``, then every folder, deepest first, ``folder`` last:
    what the library wrote (and never synced) is on disk before the manifest vouches for it."""
    for rel in listed_files(folder):
        fsync_path(folder / rel)
    dirs = sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for d in [*dirs, folder]:
        fsync_path(d)


def block_sha256(path: Path, index: int, block: int) -> str:
    """sha256 of bytes ``[index * block, (index + 1) * block)`` of ``path``."""
    h = hashlib.sha256()
    buf = bytearray(min(CHUNK, block))
    view = memoryview(buf)
    with open(path, "rb") as f:
        f.seek(index * block)
        left = block
        while left > 0 and (n := f.readinto(view[: min(len(buf), left)])):
            h.update(view[:n])
            left -= n
    return h.hexdigest()


def n_blocks(size: int, block: int) -> int:
    return max(1, -(-size // block))


def hash_files(folder: Path, sizes: Mapping[str, int], block: int) -> dict[str, list[str]]:
    """The block sha256s of each file (relative to ``folder``), several blocks at a time."""
    tasks = [(name, i) for name, size in sizes.items() for i in range(n_blocks(size, block))]
    with ThreadPoolExecutor(max_workers=max(1, min(THREADS, len(tasks)))) as pool:
        digests = list(pool.map(lambda t: block_sha256(folder / t[0], t[1], block), tasks))
    out: dict[str, list[str]] = {name: [] for name in sizes}
    for (name, _), digest in zip(tasks, digests, strict=True):
        out[name].append(digest)
    return out


def write_manifest(folder: Path, block: int | None = None) -> dict[str, Any]:
    """Sync everything under ``folder``, then write its manifest last (atomically, synced)."""
    started = time.perf_counter()
    block = block or BLOCK
    sync_tree(folder)
    sizes = {f: (folder / f).stat().st_size for f in listed_files(folder)}
    hashes = hash_files(folder, sizes, block)
    manifest = {
        "format": FORMAT,
        "algorithm": "sha256",
        "block_bytes": block,
        "files": {f: {"size": sizes[f], "sha256": hashes[f]} for f in sizes},
    }
    atomic_write_json(folder / MANIFEST, manifest)  # the file itself is fsynced before the rename
    fsync_path(folder)  # the rename too
    log.debug(
        "%s: manifest of %d files, %.1f MB, in %.2f s",
        folder,
        len(sizes),
        sum(sizes.values()) / 1e6,
        time.perf_counter() - started,
    )
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | Problem:
    path = folder / MANIFEST
    if not path.is_file():
        return Problem(
            MANIFEST, "missing (not completely written, or by a version before manifests)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT}")
        block = int(manifest["block_bytes"])
        for name, entry in files.items():
            if len(entry["sha256"]) != n_blocks(int(entry["size"]), block) or block <= 0:
                raise ValueError(f"{name}: {len(entry['sha256'])} block hashes for its size")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
        return Problem(MANIFEST, f"unreadable ({type(e).__name__}: {e})")
    return dict(manifest)


def verify(folder: Path, hashes: bool = True) -> Problem | None:
    """``None`` when ``folder`` matches its manifest, else the first :class:`Problem` found
    (files in the manifest's order): missing files and sizes first, then sha256 (``hashes``)."""
    manifest = read_manifest(folder)
    if isinstance(manifest, Problem):
        return manifest
    files: dict[str, dict[str, Any]] = manifest["files"]
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return Problem(name, "missing")
        size = path.stat().st_size
        if size != int(entry["size"]):
            return Problem(name, f"{size} bytes, the manifest says {int(entry['size'])}")
    if not hashes:
        return None
    block = int(manifest["block_bytes"])
    actual = hash_files(folder, {name: int(entry["size"]) for name, entry in files.items()}, block)
    for name, entry in files.items():
        for i, (got, want) in enumerate(zip(actual[name], entry["sha256"], strict=True)):
            if got != want:
                end = min((i + 1) * block, int(entry["size"])) - 1
                return Problem(
                    name,
                    f"bytes {i * block}-{end} changed: sha256 {got[:12]}..., "
                    f"the manifest says {want[:12]}...",
                )
    return None


_UNVERIFIED_WARNED: set[Path] = set()
_VERIFIED: set[tuple[Path, tuple[tuple[str, int, int], ...]]] = set()


def fingerprint(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of every file under ``folder``: changes when any file is rewritten."""
    out = []
    for name in [MANIFEST, *listed_files(folder)]:
        st = (folder / name).stat() if (folder / name).is_file() else None
        out.append((name, st.st_size if st else -1, st.st_mtime_ns if st else -1))
    return tuple(out)


def require_verified(model_dir: Path, stage_dir: Path | None = None, once: bool = False) -> None:
    """Before a stage's saved weights are read (by a later stage or evaluate.py): raise
    :class:`ManifestError` unless ``model_dir`` matches its manifest. A directory without one
    (written before manifests) is read with a warning, once per process. ``once``: a
    directory this process verified is not hashed again while no file of it was rewritten."""
    key = (model_dir, fingerprint(model_dir)) if once else None
    if key is not None and key in _VERIFIED:
        return
    problem = verify(model_dir)
    if problem is None:
        if key is not None:
            _VERIFIED.add(key)
        return
    if problem.no_manifest:
        if model_dir not in _UNVERIFIED_WARNED:
            _UNVERIFIED_WARNED.add(model_dir)
            log.warning(
                "%s has no %s (saved by a version before manifests): read unverified",
                model_dir,
                MANIFEST,
            )
        return
    stage_dir = stage_dir or model_dir.parent
    raise ManifestError(
        f"{model_dir}: {problem.sentence()}; rerun the stage: delete {stage_dir} and run the "
        "same training command again"
    )


__all__ = ["MANIFEST", "ManifestError", "Problem", "require_verified", "verify", "write_manifest"]
