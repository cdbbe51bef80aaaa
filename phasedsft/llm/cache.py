"""An embedded SQLite cache of scoring results, written one result at a time.

Each row is keyed by a hash of (scorer, model, prompt version, generation parameters,
example content); see :func:`cache_key`. Every ``put`` commits, in WAL mode, so a result
is durable as soon as it is recorded and a killed process loses only requests still in
flight. Several processes may share one cache file.

**Claims** keep processes that share the file (two identical ``score.py`` runs, a sweep
scoring inline) from asking the same item twice. Before sending an item's request a
process takes a claim on its key (:meth:`ScoreCache.claim` / :meth:`ScoreCache.try_claim`,
one SQLite write transaction, so two processes can never both get it); another process then
sees the item as *busy* and skips it, and comes back later to find it *done* (its result is
in the cache) or free again. A claim is free again when its holder records the result
(``put`` drops the holder's claim), releases it (:meth:`ScoreCache.release`: the call failed
or the run stopped), or dies: each claim stores the holder's host, pid and time, and counts
as stale (free) once its ``ttl`` has passed, or at once when the holder ran on this host and
its pid is gone (``kill -9``, a crash). A holder that claims a key again renews it, so a call
that may outlast the ``ttl`` can keep its claim. Claims never block a read: they only
decide who asks.

**Partial records** (table ``partials``) keep the paid replies of an item whose call stopped
before its answer (the budget, the endpoint, an interruption): its raw replies, attempts,
tokens and cost. They are never an answer; the next run continues the item from them, and
the item's ``put`` removes its partial record in the same transaction.

**A full disk loses no answer.** Each cache keeps :data:`RESERVE_BYTES` of disk in a file
beside it (``<name>.reserve``). A write of an answer (or a partial record) that finds the disk
full deletes the reserve and writes again, so the answer in hand is kept; ``disk_full`` then
tells the engine to stop asking (:class:`~phasedsft.nospace.NoSpace`). The next run makes the
reserve again first: with the disk still full, it stops before sending anything.

**Several hosts** (a cache under ``runs/`` on NFS, Lustre or GPFS, used by jobs on several
nodes): each host writes a live file of its own and reads the others' answers from sealed,
read-only copies, never from a file another host writes (:mod:`phasedsft.llm.sealed`). The
host that first used the cache writes the file named here (on one machine the file keeps its
name; the sealed copies beside it take about as much disk again).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phasedsft.io import sha256_json
from phasedsft.llm.sealed import SEAL_EVERY_S, Segments, better, host_name, live_path
from phasedsft.nospace import NoSpace, is_no_space, no_space_message
from phasedsft.records import Example

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    example_id TEXT NOT NULL,
    scorer TEXT NOT NULL,
    status TEXT NOT NULL,            -- 'ok' or 'failed'
    score REAL,                      -- NULL when failed: never a default score
    detail TEXT NOT NULL,            -- JSON: per-dimension scores, samples, spread, expected...
    raw TEXT,                        -- the reply text(s), kept for failures and audits
    error TEXT,
    cost_usd REAL NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
)
"""
UNMETERED = "ALTER TABLE results ADD COLUMN unmetered_usd REAL NOT NULL DEFAULT 0"

PARTIALS = """
CREATE TABLE IF NOT EXISTS partials (
    key TEXT PRIMARY KEY,            -- a results key with no answer yet
    example_id TEXT NOT NULL,
    scorer TEXT NOT NULL,
    detail TEXT NOT NULL,            -- JSON: {"attempts": replies asked for so far}
    raw TEXT,                        -- JSON list of the raw replies received
    error TEXT,                      -- why the last attempt failed
    cost_usd REAL NOT NULL DEFAULT 0,
    unmetered_usd REAL NOT NULL DEFAULT 0,
    tokens_in INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    requests INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
)
"""

CLAIMS = """
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,            -- a results key whose request is in flight
    owner TEXT NOT NULL,             -- who sends it: "<host>:<pid>:<random>" (ScoreCache.owner)
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    claimed REAL NOT NULL,           -- time.time() when taken (or last renewed)
    expires REAL NOT NULL            -- stale (free) after this, whoever holds it
)
"""

# Every row recorded, in order (a trigger appends it), so a host seals exactly the rows it
# recorded since its last seal (``sealed.upto``), replaced rows included; see sealed.py.
CHANGES = """
CREATE TABLE IF NOT EXISTS changes (
    n INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, also after the rows are pruned
    tbl TEXT NOT NULL,
    key TEXT NOT NULL
)
"""
TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS results_changed AFTER INSERT ON results "
    "BEGIN INSERT INTO changes (tbl, key) VALUES ('results', NEW.key); END",
    "CREATE TRIGGER IF NOT EXISTS partials_changed AFTER INSERT ON partials "
    "BEGIN INSERT INTO changes (tbl, key) VALUES ('partials', NEW.key); END",
)
SEALED = "CREATE TABLE IF NOT EXISTS sealed (id INTEGER PRIMARY KEY CHECK (id = 0), upto INTEGER)"

RESERVE_BYTES = 512 * 1024  # disk kept free beside each cache for answers that meet a full disk
# what counts as an item's answer to a run of requests (run_jobs, claims): any ok result, or a
# failure some request answered (a request failure recorded with no request sent says nothing
# about the item: a setting gave up before asking). Local scorers read their results directly.
ANSWERED = "(status = 'ok' OR (status = 'failed' AND requests > 0))"
CLAIM_TTL_S = 900.0  # a claim's lifetime: longer than one item's call, retries and backoff included
HOST = socket.gethostname()  # claims: whose pid a stale check may look up
_CHUNK = 900  # SQLite's limit on bound parameters, with room to spare


def _chunks(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(keys), _CHUNK):
        yield keys[start : start + _CHUNK]


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (a zombie counts until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@dataclass(frozen=True)
class Claim:
    """What :meth:`ScoreCache.try_claim` found for one key.

    ``state`` is ``"granted"`` (this owner sends the request, then ``put``s the result),
    ``"done"`` (answered already: ``result`` holds it; send nothing) or ``"busy"`` (another
    live process has it in flight: skip it and ask again later).
    """

    state: str
    result: Result | None = None


def cache_key(identity: Mapping[str, Any], ex: Example) -> str:
    """Hash of the scorer's identity (name, model, prompt version, parameters) and the content."""
    return sha256_json({"scorer": dict(identity), "example": [ex.instruction, ex.input, ex.output]})


@dataclass
class Result:
    key: str
    example_id: str
    scorer: str
    status: str
    score: float | None
    detail: dict[str, Any] = field(default_factory=dict)
    raw: str | None = None
    error: str | None = None
    cost_usd: float = 0.0  # every request's cost: usage x prices, or its worst case (unmetered)
    tokens_in: int = 0
    tokens_out: int = 0
    requests: int = 0
    unmetered_usd: float = 0.0  # of cost_usd: requests whose reply reported no usage


def is_answer(r: Result) -> bool:
    """Whether a recorded result answers its item (see :data:`ANSWERED`)."""
    return r.status == "ok" or (r.status == "failed" and r.requests > 0)


_COLUMNS = (
    "key, example_id, scorer, status, score, detail, raw, error, cost_usd, tokens_in, "
    "tokens_out, requests, unmetered_usd"
)
_PARTIAL_COLUMNS = (
    "key, example_id, scorer, detail, raw, error, cost_usd, unmetered_usd, tokens_in, "
    "tokens_out, requests"
)
# a sealed segment's tables: the columns above, then ``created`` (see sealed.py)
SEGMENT_TABLES = {
    "results": f"CREATE TABLE results ({_COLUMNS}, created, PRIMARY KEY (key))",
    "partials": f"CREATE TABLE partials ({_PARTIAL_COLUMNS}, created, PRIMARY KEY (key))",
}


def _result(row: Sequence[Any]) -> Result:
    return Result(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), *row[6:13])


def _partial(row: Sequence[Any]) -> Result:
    k, ex, sc, detail, raw, err, cost, unmetered, t_in, t_out, req = row[:11]
    return Result(
        k, ex, sc, "partial", None, json.loads(detail), raw, err, cost, t_in, t_out, req, unmetered
    )


def _answers(row: tuple[Any, ...]) -> bool:
    """:data:`ANSWERED` of a results row (``status`` at 3, ``requests`` at 11)."""
    return row[3] == "ok" or (row[3] == "failed" and row[11] > 0)


class ScoreCache:
    def __init__(self, path: str | Path, reserve_bytes: int = RESERVE_BYTES):
        self._token = secrets.token_hex(4)
        self.home = Path(path)  # the cache's name; this host writes ``path`` (see sealed.py)
        self.home.parent.mkdir(parents=True, exist_ok=True)
        self.host = host_name()
        self.path = live_path(self.home, self.host)
        self.segments = Segments(self.home, self.host, SEGMENT_TABLES)
        self._sealed_at = time.monotonic()
        self._closed = False
        self.reserve = self.path.with_name(self.path.name + ".reserve")
        self.reserve_bytes = reserve_bytes
        self.disk_full: NoSpace | None = None  # set once a write needed the reserve
        self._make_reserve()
        # used by one thread at a time (the engine may run its event loop in a helper thread)
        self.db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        # Switching a new file to WAL does not wait on SQLite's busy timeout: two processes
        # opening a fresh cache at once (the ranks of a multi-GPU run, a sweep) could fail with
        # "database is locked". One process at a time sets it up, under an exclusive file lock.
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self.db.execute(SCHEMA)
                self.db.execute(CLAIMS)
                self.db.execute(PARTIALS)
                columns = {r[1] for r in self.db.execute("PRAGMA table_info(results)")}
                if "unmetered_usd" not in columns:  # a cache written before the column
                    self.db.execute(UNMETERED)
                self.db.execute(CHANGES)
                self.db.execute(SEALED)
                for trigger in TRIGGERS:
                    self.db.execute(trigger)
                self.db.commit()
                if self.db.execute("SELECT upto FROM sealed WHERE id = 0").fetchone() is None:
                    # never sealed (a new cache, or one from before sealing: all of it is new);
                    # the mark is set in the same transaction, so an interrupted upgrade redoes it
                    for table in ("results", "partials"):
                        self.db.execute(
                            f"INSERT INTO changes (tbl, key) SELECT '{table}', key FROM {table}"
                        )
                    self.db.execute("INSERT INTO sealed (id, upto) VALUES (0, 0)")
                    self.db.commit()
            except sqlite3.Error as e:
                if is_no_space(e):
                    raise self._no_space("the cache could not be set up") from e
                raise
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self.publish()  # what an earlier run of this host left unsealed
        _OPEN.add(self)

    # ------------------------------------------------------------ a full disk

    def _no_space(self, what: str) -> NoSpace:
        return NoSpace(f"{no_space_message(self.path)}: {what} ({self.path})", path=str(self.path))

    def _make_reserve(self) -> None:
        """The disk this cache keeps free for answers that arrive as the disk fills up."""
        if not self.reserve_bytes:
            return
        try:
            if self.reserve.exists() and self.reserve.stat().st_size >= self.reserve_bytes:
                return
            fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError as e:
            if not is_no_space(e):
                raise
            self.reserve.unlink(missing_ok=True)
            raise NoSpace(
                f"{no_space_message(self.path)}: the cache keeps {self.reserve_bytes // 1024} KiB "
                f"free beside it ({self.reserve}) so that no answer is lost when the disk fills "
                "up; nothing was sent. Free space and rerun the same command to continue",
                path=str(self.path),
            ) from e

    def _write(self, statements: Callable[[], None], what: str, reserve: bool = True) -> None:
        """Run ``statements`` and commit. A full disk: with ``reserve``, free the reserve and
        write again (then ``disk_full`` is set: stop asking), else :class:`NoSpace`."""
        try:
            statements()
            self.db.commit()
            return
        except sqlite3.Error as e:
            self._rollback()
            if not is_no_space(e):
                raise
            if not reserve:
                raise self._no_space(f"{what} not written") from e
            # free the reserve (another process sharing the cache may have freed it already:
            # write again either way)
            self.reserve.unlink(missing_ok=True)
            first = e
        try:
            statements()
            self.db.commit()
        except sqlite3.Error as e:
            self._rollback()
            if is_no_space(e):
                raise self._no_space(f"{what} not written, even into the reserve") from first
            raise
        self.disk_full = self._no_space(
            f"the disk filled up; {what} was written into the space kept in reserve"
        )

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.rollback()

    @property
    def owner(self) -> str:
        """This cache object's claim owner: host, pid (current, also after a fork) and a token."""
        return f"{HOST}:{os.getpid()}:{self._token}"

    def get_many(self, keys: Iterable[str]) -> dict[str, Result]:
        """The recorded results of these keys (failures given up before asking included:
        :func:`is_answer` tells which answer their item)."""
        keys = list(keys)
        best: dict[str, tuple[Any, ...]] = {}
        for chunk in _chunks(keys):
            rows = self.db.execute(
                f"SELECT {_COLUMNS}, created FROM results "
                f"WHERE key IN ({','.join('?' * len(chunk))})",
                list(chunk),
            ).fetchall()
            best.update((r[0], r) for r in rows)
        for r in self.segments.rows("results", f"{_COLUMNS}, created", keys):
            if r[0] not in best or better(r, best[r[0]], _answers):
                best[r[0]] = r
        return {k: _result(r) for k, r in best.items()}

    def put(self, r: Result) -> None:
        """Record a result (one commit); the claim this cache's owner held on its key ends, and
        so does the item's partial record."""

        def statements() -> None:
            self.db.execute(
                f"INSERT OR REPLACE INTO results ({_COLUMNS}, created) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    r.key,
                    r.example_id,
                    r.scorer,
                    r.status,
                    r.score,
                    json.dumps(r.detail),
                    r.raw,
                    r.error,
                    r.cost_usd,
                    r.tokens_in,
                    r.tokens_out,
                    r.requests,
                    r.unmetered_usd,
                    time.time(),
                ),
            )
            self.db.execute("DELETE FROM partials WHERE key = ?", (r.key,))
            self.db.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (r.key, self.owner))

        self._write(statements, f"the answer of item {r.example_id}")
        self._seal_now_and_then()

    def put_partial(self, r: Result) -> None:
        """Keep the paid replies of an item stopped before its answer (one commit); the item
        stays unanswered, and this owner's claim on it ends."""

        def statements() -> None:
            self.db.execute(
                "INSERT OR REPLACE INTO partials (key, example_id, scorer, detail, raw, error, "
                "cost_usd, unmetered_usd, tokens_in, tokens_out, requests, created) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    r.key,
                    r.example_id,
                    r.scorer,
                    json.dumps(r.detail),
                    r.raw,
                    r.error,
                    r.cost_usd,
                    r.unmetered_usd,
                    r.tokens_in,
                    r.tokens_out,
                    r.requests,
                    time.time(),
                ),
            )
            self.db.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (r.key, self.owner))

        self._write(statements, f"the replies received for item {r.example_id}")
        self._seal_now_and_then()

    def partials(self, keys: Iterable[str]) -> dict[str, Result]:
        """The kept partial records of these keys (status ``partial``), this host's or, for
        keys it has none of, the newest another host sealed."""
        keys = list(keys)
        found: dict[str, tuple[Any, ...]] = {}
        for chunk in _chunks(keys):
            rows = self.db.execute(
                f"SELECT {_PARTIAL_COLUMNS}, created FROM partials "
                f"WHERE key IN ({','.join('?' * len(chunk))})",
                list(chunk),
            ).fetchall()
            found.update((r[0], r) for r in rows)
        mine = set(found)
        for r in self.segments.rows("partials", f"{_PARTIAL_COLUMNS}, created", keys):
            if r[0] not in mine and (r[0] not in found or r[-1] > found[r[0]][-1]):
                found[r[0]] = r
        return {k: _partial(r) for k, r in found.items()}

    # ------------------------------------------------------------ claims (see the module doc)

    def _done(self, keys: Sequence[str], since: float | None) -> set[str]:
        """Keys whose result counts as an answer: any result, or with ``since`` an ``ok`` one
        or one recorded at or after ``since`` (a failed result older than that is asked again)."""
        done: set[str] = set()
        for chunk in _chunks(keys):
            rows = self.db.execute(
                f"SELECT key, status, created FROM results WHERE {ANSWERED} "
                f"AND key IN ({','.join('?' * len(chunk))})",
                list(chunk),
            ).fetchall()
            done.update(
                k
                for k, status, created in rows
                if since is None or status == "ok" or created >= since
            )
        rest = [k for k in keys if k not in done]
        for r in self.segments.rows("results", f"{_COLUMNS}, created", rest) if rest else ():
            if _answers(r) and (since is None or r[3] == "ok" or r[-1] >= since):
                done.add(r[0])
        return done

    def _stale(self, host: str, pid: int, expires: float, now: float) -> bool:
        return expires <= now or (host == HOST and not pid_alive(pid))

    def claim(
        self,
        keys: Iterable[str],
        owner: str | None = None,
        ttl: float = CLAIM_TTL_S,
        since: float | None = None,
    ) -> list[str]:
        """Claim the keys nobody else is asking; returns the granted ones, in order.

        A key is granted when it has no answer yet (see ``since``) and no live claim by
        another owner: unclaimed, claimed by ``owner`` itself (renewed), or stale (past its
        expiry, or held by a process of this host that no longer exists). Granted claims
        expire after ``ttl`` seconds. ``since`` (the run's start, for ``retry_failed``): a
        failed result recorded before it does not count as an answer; without it any
        result does. One write transaction: two processes never both get a key.
        """
        keys = list(dict.fromkeys(keys))
        owner = owner or self.owner
        granted: list[str] = []
        if not keys:
            return granted
        try:
            self.db.execute("BEGIN IMMEDIATE")  # the write lock first: check and take atomically
            now = time.time()
            done = self._done(keys, since)
            held: dict[str, tuple[str, str, int, float]] = {}
            for chunk in _chunks(keys):
                rows = self.db.execute(
                    "SELECT key, owner, host, pid, expires FROM claims "
                    f"WHERE key IN ({','.join('?' * len(chunk))})",
                    list(chunk),
                ).fetchall()
                held.update((k, (o, h, p, e)) for k, o, h, p, e in rows)
            for key in keys:
                if key in done:
                    continue
                h = held.get(key)
                if h is None or h[0] == owner or self._stale(h[1], h[2], h[3], now):
                    granted.append(key)
            self.db.executemany(
                "INSERT OR REPLACE INTO claims VALUES (?,?,?,?,?,?)",
                [(k, owner, HOST, os.getpid(), now, now + ttl) for k in granted],
            )
            self.db.commit()
        except BaseException as e:
            self._rollback()
            if isinstance(e, sqlite3.Error) and is_no_space(e):  # nothing sent yet: nothing lost
                raise self._no_space("no item can be claimed") from e
            raise
        return granted

    def try_claim(
        self,
        key: str,
        owner: str | None = None,
        ttl: float = CLAIM_TTL_S,
        since: float | None = None,
    ) -> Claim:
        """One key: ``granted`` (ask it), ``done`` (with the recorded result) or ``busy``."""
        if self.claim([key], owner, ttl, since):
            return Claim("granted")
        if key in self._done([key], since):
            return Claim("done", self.get_many([key]).get(key))
        return Claim("busy")

    def release(self, keys: Iterable[str], owner: str | None = None) -> None:
        """Give up ``owner``'s claims on these keys (its call failed or the run stopped)."""
        keys = list(keys)
        owner = owner or self.owner

        def statements() -> None:
            for chunk in _chunks(keys):
                self.db.execute(
                    f"DELETE FROM claims WHERE owner = ? AND key IN ({','.join('?' * len(chunk))})",
                    [owner, *chunk],
                )

        # a full disk: the claim stays, and is free once its holder has exited (stale)
        with contextlib.suppress(NoSpace):
            self._write(statements, "a claim's release", reserve=False)

    def claims(self) -> dict[str, dict[str, Any]]:
        """Every claim on record, stale ones included (``stale`` says which): for a look."""
        now = time.time()
        rows = self.db.execute("SELECT key, owner, host, pid, claimed, expires FROM claims")
        return {
            k: {
                "owner": o,
                "host": h,
                "pid": p,
                "claimed": c,
                "expires": e,
                "stale": self._stale(h, p, e, now),
            }
            for k, o, h, p, c, e in rows.fetchall()
        }

    def count(self) -> int:
        """Results recorded by this host (partial records not included)."""
        return int(self.db.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    # ------------------------------------------------------------ other hosts (see sealed.py)

    def _seal_now_and_then(self) -> None:
        if time.monotonic() - self._sealed_at >= SEAL_EVERY_S:
            self.publish()

    def publish(self) -> Path | None:
        """Seal the rows this host recorded since its last seal into a read-only segment
        other hosts read (none when nothing is new). A failure to seal (a full disk) is
        logged, never raised: the rows stay in this host's live file and are sealed later."""
        self._sealed_at = time.monotonic()
        try:
            return self._seal()
        except (OSError, sqlite3.Error) as e:
            self._rollback()
            log.warning("could not seal the new rows of %s for other hosts: %s", self.path, e)
            return None

    def _seal(self) -> Path | None:
        # the new rows, read from one snapshot (WAL: other processes keep writing meanwhile)
        self.db.execute("BEGIN")
        try:
            row = self.db.execute("SELECT upto FROM sealed WHERE id = 0").fetchone()
            upto = row[0] if row else 0
            top = self.db.execute("SELECT MAX(n) FROM changes").fetchone()[0]
            rows = {}
            if top is not None and top > upto:
                rows = {
                    table: self.db.execute(
                        f"SELECT {columns}, created FROM {table} WHERE key IN "
                        "(SELECT key FROM changes WHERE tbl = ? AND n > ?)",
                        (table, upto),
                    ).fetchall()
                    for table, columns in (("results", _COLUMNS), ("partials", _PARTIAL_COLUMNS))
                }
        finally:
            self._rollback()  # a read: nothing to commit
        if not rows:
            return None
        # written with no lock held; then the mark moves, never back (a sealer of this host that
        # ran meanwhile sealed a part of the same rows: a row in two segments is harmless)
        segment = self.segments.write(upto + 1, top, rows)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("UPDATE sealed SET upto = MAX(upto, ?) WHERE id = 0", (top,))
            self.db.execute("DELETE FROM changes WHERE n <= (SELECT upto FROM sealed WHERE id = 0)")
            self.db.commit()
        except BaseException:
            self._rollback()
            raise
        self.segments.merge_own()
        return segment

    def refresh(self) -> None:
        """Read the other hosts' list of sealed segments again now (it is read every few
        seconds anyway)."""
        self.segments.refresh()

    def close(self) -> None:
        if self._closed:
            return
        self.publish()
        self._closed = True
        _OPEN.discard(self)
        self.segments.close()
        self.db.close()


# Caches still open when the process exits seal what they recorded (a job that never closed
# its cache: the judge's, train.py's); a cache garbage-collected earlier is sealed the next
# time a process of its host opens it.
_OPEN: weakref.WeakSet[ScoreCache] = weakref.WeakSet()


@atexit.register
def _publish_open_caches() -> None:
    for cache in list(_OPEN):
        if not cache._closed:
            cache.publish()


def identity_hash(identity: Mapping[str, Any]) -> str:
    return sha256_json(dict(identity))[:12]
