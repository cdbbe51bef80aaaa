"""A score cache shared by several hosts: one live file per host, sealed copies for the others.

SQLite's WAL mode needs every process that opens a database on one host (its index is shared
memory), and its rollback-journal locks rely on ``fcntl`` locks that many network filesystems
(NFS, Lustre, GPFS) do not honour across hosts. So a cache directory on such a filesystem,
written by jobs on several nodes, is safe only if **no SQLite file that one host writes is ever
opened by another**. That is the rule here:

* **One live file per host.** The host that first used the cache writes ``<name>`` itself (its
  name is in ``<name>.host``, created once with ``link()``, atomic on NFS too); every other host
  writes ``<stem>.<host><suffix>`` beside it. Processes of one host share their live file (WAL,
  claims), exactly as on a single machine.
* **Sealed segments for everyone else.** A host copies the rows it recorded since its last seal
  into a new file ``<name>.sealed/<host>.<first>-<last>.<token>.sqlite``: written under a temporary name,
  synced, renamed into place, and never changed again, so other hosts open it with SQLite's
  ``immutable=1`` (no locks, no journal, safe on any filesystem). A host seals when its cache
  opens (what an earlier run left unsealed), every :data:`SEAL_EVERY_S` seconds while it
  records, when it closes, when the process exits (for caches still open), and when asked
  (:meth:`ScoreCache.publish`: score.py at its end, data-parallel scoring before its ranks
  meet). A host's many small segments are merged into one now and then (one merge per host at a
  time, under a file lock; its largest segment is left as it is, so a merge rewrites only what
  was sealed since).
* **Reads see all of it as one cache**: this host's live file, then every other host's
  segments; of several rows for one key, an answer beats a non-answer, ``ok`` beats ``failed``,
  and the newest wins (:func:`better`).

What is not shared across hosts: *claims* (they keep two processes of one host from asking the
same item). Two hosts scoring the same items at once may both ask an item; give each its own
share (``torchrun`` / a SLURM job of N tasks splits ``score.py``'s examples by rank). A host that
dies hard (``kill -9``, a node failure) leaves at most its last :data:`SEAL_EVERY_S` seconds of
answers unsealed; they are sealed when a process of that host opens the cache again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEAL_EVERY_S = 60.0  # while recording, a host seals its new rows at most this often
REFRESH_EVERY_S = 10.0  # how often the list of other hosts' segments is read again
MERGE_ABOVE = 16  # a host's segments are merged into one once it has more than this many
_SEGMENT = re.compile(
    r"^(?P<host>.+)\.(?P<first>\d{12})-(?P<last>\d{12})\.(?P<token>[0-9a-f]{8})\.sqlite$"
)
_CHUNK = 900


def host_name() -> str:
    """This host's name as file names use it (anything but letters, digits, ``.-_`` is ``_``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "host"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def live_path(home: Path, host: str) -> Path:
    """The live file ``host`` writes for the cache named ``home`` (see the module doc)."""
    marker = home.with_name(home.name + ".host")
    if not marker.exists():
        tmp = home.with_name(f".{home.name}.host.{host}.{os.getpid()}.{secrets.token_hex(4)}")
        tmp.write_text(host + "\n")
        try:
            os.link(tmp, marker)  # exclusive on every filesystem, NFS included
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    first = marker.read_text().strip()
    if first == host:
        return home
    return home.with_name(f"{home.stem}.{host}{home.suffix}")


def segments_dir(home: Path) -> Path:
    return home.with_name(home.name + ".sealed")


def better(
    a: tuple[Any, ...], b: tuple[Any, ...], answer: Callable[[tuple[Any, ...]], bool]
) -> bool:
    """Whether row ``a`` is the better record of one key than ``b``: an answer first, then ``ok``,
    then the newer (``status`` at index 3 and ``created`` last)."""
    rank_a = (answer(a), a[3] == "ok", a[-1])
    rank_b = (answer(b), b[3] == "ok", b[-1])
    return rank_a > rank_b


class Segments:
    """Every host's sealed segments of one cache, opened read-only (``immutable=1``)."""

    def __init__(self, home: Path, host: str, tables: dict[str, str]):
        self.dir = segments_dir(home)
        self.host = host
        self.tables = tables  # table name -> its CREATE TABLE statement
        self._open: dict[Path, sqlite3.Connection] = {}
        self._listed = 0.0

    # ------------------------------------------------------------ reading other hosts' rows

    def others(self) -> list[sqlite3.Connection]:
        """Open connections to the other hosts' segments (the list read again now and then)."""
        if time.monotonic() - self._listed > REFRESH_EVERY_S:
            self.refresh()
        return list(self._open.values())

    def refresh(self) -> None:
        """Read the list of segments again: open new ones, drop the ones merged away."""
        self._listed = time.monotonic()
        present = set(self._paths(other_hosts=True))
        for gone in set(self._open) - present:
            with contextlib.suppress(sqlite3.Error):
                self._open.pop(gone).close()
        for path in sorted(present - set(self._open)):
            db = open_segment(path)
            if db is not None:
                self._open[path] = db

    def _paths(self, other_hosts: bool) -> Iterator[Path]:
        if not self.dir.is_dir():
            return
        for p in self.dir.iterdir():
            m = _SEGMENT.match(p.name)
            if m and (m["host"] != self.host) == other_hosts:
                yield p

    def rows(self, table: str, columns: str, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        """Every other host's rows of ``table`` for these keys (several per key possible). A
        segment merged away while read (gone, stale on NFS): the list is read again and the
        lookup repeated once, so the merged segment's rows are found."""
        try:
            return self._rows(table, columns, keys)
        except sqlite3.Error:
            self.refresh()
            return self._rows(table, columns, keys)

    def _rows(self, table: str, columns: str, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for db in self.others():
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                out += db.execute(
                    f"SELECT {columns} FROM {table} WHERE key IN ({','.join('?' * len(chunk))})",
                    list(chunk),
                ).fetchall()
        return out

    def close(self) -> None:
        for db in self._open.values():
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._open.clear()

    # ------------------------------------------------------------ sealing this host's rows

    def write(self, first: int, last: int, rows: dict[str, list[tuple[Any, ...]]]) -> Path:
        """A new segment of this host holding ``rows`` (per table), in place atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(4)  # never the name of another segment: none is written over
        final = self.dir / f"{self.host}.{first:012d}-{last:012d}.{token}.sqlite"
        tmp = self.dir / f".tmp.{self.host}.{os.getpid()}.{token}"
        try:
            db = sqlite3.connect(tmp)
            try:
                db.execute("PRAGMA journal_mode=OFF")
                for table, create in self.tables.items():
                    db.execute(create)
                    if rows.get(table):
                        width = len(rows[table][0])
                        db.executemany(
                            f"INSERT OR REPLACE INTO {table} VALUES ({','.join('?' * width)})",
                            rows[table],
                        )
                db.commit()
            finally:
                db.close()
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.dir)
        finally:
            tmp.unlink(missing_ok=True)
        return final

    def merge_own(self) -> None:
        """Merge this host's segments, all but its largest, into one once there are more than
        :data:`MERGE_ABOVE` (later rows of a key replace earlier ones; readers prefer the better
        row of a key across segments anyway). One merge per host at a time (a file lock); the
        merged segments are removed after the merged one is in place."""
        if sum(1 for _ in self._paths(other_hosts=False)) <= MERGE_ABOVE:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f".merge.{self.host}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self._merge_locked()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _merge_locked(self) -> None:
        own = list(self._paths(other_hosts=False))  # listed again: another merge may be done
        if len(own) <= MERGE_ABOVE:
            return
        largest = max(own, key=lambda p: p.stat().st_size if p.exists() else 0)
        inputs = sorted((p for p in own if p != largest), key=lambda p: _span(p)[1])
        merged: dict[str, list[tuple[Any, ...]]] = {table: [] for table in self.tables}
        by_key: dict[str, dict[str, tuple[Any, ...]]] = {table: {} for table in self.tables}
        read: list[Path] = []
        for path in inputs:
            db = open_segment(path)
            if db is None:  # gone or unreadable: left as it is
                continue
            try:
                for table in self.tables:
                    for row in db.execute(f"SELECT * FROM {table}"):
                        by_key[table][row[0]] = row
            except sqlite3.Error:
                continue
            finally:
                db.close()
            read.append(path)
        if len(read) < 2:
            return
        for table in self.tables:
            merged[table] = list(by_key[table].values())
        written = self.write(_span(read[0])[0], _span(read[-1])[1], merged)
        for path in read:
            if path != written:
                path.unlink(missing_ok=True)


def open_segment(path: Path) -> sqlite3.Connection | None:
    """A sealed segment, read-only and immutable (never creating a file: a segment merged away
    between a listing and the open is ``None``)."""
    try:
        db = sqlite3.connect(
            f"{path.as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False
        )
    except sqlite3.Error:
        return None
    try:
        db.execute("SELECT 1 FROM results LIMIT 1").fetchall()
    except sqlite3.Error:
        db.close()
        return None
    return db


def _span(path: Path) -> tuple[int, int]:
    m = _SEGMENT.match(path.name)
    assert m is not None
    return int(m["first"]), int(m["last"])
