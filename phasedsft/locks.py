"""One writer per run directory: a lock its holder keeps for the whole job, and is named by.

:class:`RunLock` is taken by the process that trains a run (a launch's rank 0) before it writes
anything, and kept until it ends: ``fcntl.flock`` on ``<run dir>/.lock``. The kernel releases a
flock when its process ends however it ends (return, exception, Ctrl-C, SIGKILL, OOM kill), so a
dead holder never leaves a stale lock and a rerun, or a SLURM requeue, takes it at once. Beside it
``.lock.json`` names the holder (pid, host, start time, SLURM job, launch) and carries a heartbeat
the holder refreshes every :data:`HEARTBEAT_S` seconds. A second process is refused, before it
writes anything, with :class:`RunBusy`:

    error: runs/x is being trained by pid 123 on host gpu07 (started 2025-06-01 10:00:03)

**Ranks.** The other processes of the same launch (torchrun / DeepSpeed ranks, SLURM tasks) take
nothing: they wait until ``.lock.json`` names their own launch (:func:`launch_id`: the SLURM job
step and restart, torchrun's run id, the master address and port, which all ranks of one launch
share and no two live launches do), then go on; when it names another live launch they are
refused with the same message. So a second launch stops on every rank before any writes.

**Shared filesystems.** flock over NFS is the server's lock (NLM, NFSv4), coherent across nodes;
but Lustre mounted ``localflock`` and BeeGFS (by default) keep flock node-local, and Lustre
mounted without ``flock`` refuses it. So the sidecar counts too: a holder on another host whose
heartbeat is younger than :data:`STALE_S` is live even where flock is granted here, unless it is
an earlier run of this same SLURM job (a requeue: SLURM runs a job once at a time, so its earlier
run is gone). Where flock is refused altogether, the sidecar is the lock. There, and on any
filesystem that is not a known local one, a claim is written, then read back after
:data:`SETTLE_S`: of two simultaneous starts the one written last wins, and the launch's other
ranks wait for the claim to settle. A holder on another host that died unseen blocks its run
directory for at most :data:`STALE_S` seconds after its last heartbeat (the message says so).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from phasedsft.io import atomic_write_json
from phasedsft.records import UserError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"  # the flock target; never removed (a removed one could be locked twice)
HOLDER_FILE = ".lock.json"  # who holds it; removed by the holder when it lets go
HEARTBEAT_S = 15.0  # the holder refreshes its heartbeat this often
STALE_S = 90.0  # a holder on another host unheard of for this long is gone
SETTLE_S = 1.0  # where flock may not reach other hosts: wait, then read the holder back
FOLLOW_S = 600.0  # how long a rank > 0 waits for its launch's rank 0 to take the lock
GRACE_S = 5.0  # how long a rank > 0 sees another live launch hold it before it gives up
RETRY_S = 2.0  # rank 0 retries a busy flock this long (the other ranks' probes hold it briefly)

# errno values of a filesystem that does not do flock (Lustre without -o flock: ENOSYS)
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
# filesystems on one machine's own disks or memory: flock there is exact, no settle needed
LOCAL_FS = {
    "apfs", "bcachefs", "btrfs", "exfat", "ext2", "ext3", "ext4", "f2fs", "hfs", "jfs",
    "ntfs", "ntfs3", "overlay", "ramfs", "reiserfs", "tmpfs", "vfat", "xfs", "zfs",
}  # fmt: skip

_HELD: set[int] = set()  # flock descriptors this process holds (closed in forked children)


def _close_in_child() -> None:
    # A forked child shares the parent's flock: left open, a child outliving a killed parent
    # (a data-loader worker) would keep the run locked. Closing its copy leaves the parent's.
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunBusy(UserError):
    """Another process is training this run directory (``error: ...``, exit code 2)."""

    def __init__(self, folder: Path, holder: Mapping[str, Any] | None) -> None:
        self.holder = dict(holder or {})
        super().__init__(f"{folder} is being trained by {describe(holder)}")


def describe(holder: Mapping[str, Any] | None) -> str:
    """``pid N on host H (started ..., SLURM job J)``, from a ``.lock.json``."""
    if not holder:
        return "another process (it has not named itself in .lock.json yet)"
    about = [f"started {holder.get('started', '?')}"]
    if holder.get("slurm_job_id"):
        about.append(f"SLURM job {holder['slurm_job_id']}")
    if holder.get("host") != socket.gethostname():
        age = time.time() - float(holder.get("heartbeat") or 0)
        about.append(
            f"last heartbeat {age:.0f} s ago; if that process is gone, the run is free "
            f"{STALE_S:.0f} s after its last heartbeat"
        )
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} ({'; '.join(about)})"


def launch_id(env: Mapping[str, str] = os.environ) -> str:
    """What every process of one launch shares and no two live launches do.

    The SLURM job step (and its restart count), torchrun's run id and the master address and
    port (two live launches cannot both bind one); a single process: its host and pid.
    """
    parts = []
    if env.get("SLURM_JOB_ID"):
        step = env.get("SLURM_STEP_ID", "")
        parts.append(f"slurm:{env['SLURM_JOB_ID']}.{step}.r{env.get('SLURM_RESTART_COUNT', '0')}")
    if env.get("TORCHELASTIC_RUN_ID"):
        parts.append(f"torchrun:{env['TORCHELASTIC_RUN_ID']}")
    if env.get("MASTER_ADDR") and env.get("MASTER_PORT"):
        parts.append(f"master:{env['MASTER_ADDR']}:{env['MASTER_PORT']}")
    # a loopback master is the same address on every node: such a launch is on one host only,
    # named by that host too (two such launches on two nodes never share an id)
    if env.get("MASTER_ADDR", "").startswith(("127.", "localhost", "::1")):
        parts.append(f"host:{socket.gethostname()}")
    if int(env.get("WORLD_SIZE", "1")) <= 1 or not parts:
        parts.append(f"process:{socket.gethostname()}:{os.getpid()}")
    return "|".join(parts)


def _me(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    now = time.time()
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)),
        "heartbeat": now,
        "launch": launch_id(env),
        "slurm_job_id": env.get("SLURM_JOB_ID"),
        "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT", "0") or 0),
        "token": secrets.token_hex(8),
    }


def read_holder(folder: Path) -> dict[str, Any] | None:
    """The holder ``.lock.json`` names, or None (none, or unreadable)."""
    try:
        holder = json.loads((folder / HOLDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def held(folder: Path) -> bool:
    """Does a process hold ``folder`` (or did one, killed before it could let go)?"""
    return (folder / HOLDER_FILE).exists()


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # someone else's process, or a pid we cannot judge: assume alive
    return True


def _requeued(holder: Mapping[str, Any], me: Mapping[str, Any]) -> bool:
    """``holder`` is an earlier run of this SLURM job (requeued since): gone."""
    job = me.get("slurm_job_id")
    return (
        bool(job)
        and holder.get("slurm_job_id") == job
        and int(holder.get("slurm_restart_count") or 0) < int(me.get("slurm_restart_count") or 0)
    )


def is_live(holder: Mapping[str, Any], me: Mapping[str, Any], flock_free: bool | None) -> bool:
    """Is the ``.lock.json`` holder still training, given what flock says here?

    ``flock_free``: True when flock was (or could be) taken here, False when someone holds it,
    None when the filesystem does not do flock.
    """
    if holder.get("launch") == me.get("launch") or _requeued(holder, me):
        return False  # this launch's own earlier record, or its requeued predecessor
    fresh = time.time() - float(holder.get("heartbeat") or 0) < STALE_S
    if holder.get("host") == me.get("host"):
        if flock_free is True:
            return False  # flock is exact between the processes of one host
        return fresh and _pid_alive(holder.get("pid"))
    return fresh  # another host: flock may be node-local there, the heartbeat says


def _flock(fd: int, retry_s: float = 0.0) -> bool | None:
    """Take an exclusive flock: True; False if another holds it; None if flock is not done here."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        except OSError as e:
            if e.errno in NO_FLOCK:
                return None
            raise


def probe(folder: Path) -> bool | None:
    """Could flock be taken now (True), is it held (False), or not done here (None)? Takes
    nothing: a granted flock is let go at once."""
    try:
        fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        got = _flock(fd)
        if got:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return got
    finally:
        os.close(fd)


def shared_fs(path: Path, mountinfo: str | None = None) -> bool:
    """Is ``path`` on a filesystem other hosts may share (not a known local one)?
    ``mountinfo``: the mount table (default: this process's, ``/proc/self/mountinfo``)."""
    try:
        table = Path("/proc/self/mountinfo").read_text() if mountinfo is None else mountinfo
    except OSError:
        return False  # no mount table to read (not Linux): trust flock
    lines = table.splitlines()
    target, best, fstype = str(path.resolve() if mountinfo is None else path), "", ""
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount = fields[4].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, fstype = mount, line.split(" - ", 1)[1].split()[0]
    return fstype.split(".")[0] not in LOCAL_FS if fstype else False


class RunLock:
    """``with RunLock(run_dir):`` one writer per run directory (see the module doc).

    ``leader``: this process trains the run and takes the lock (a launch's rank 0); the
    launch's other processes pass ``leader=False`` and wait for theirs to hold it.
    """

    def __init__(self, folder: str | os.PathLike[str], *, leader: bool = True) -> None:
        self.folder = Path(folder).absolute()  # the heartbeat thread must not follow a chdir
        self.leader = leader
        self.me = _me()
        self._fd: int | None = None
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        if self.leader:
            self.acquire()
        else:
            self.follow()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # ------------------------------------------------------------------ the leader

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunBusy` naming its holder; nothing else written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        got = _flock(fd, RETRY_S)
        if got is False:
            os.close(fd)
            raise RunBusy(self.folder, self._named_holder())
        self._fd = fd
        _HELD.add(fd)
        try:
            self._claim(got)
        except BaseException:
            self._let_go()
            raise
        self._beat = threading.Thread(target=self._heartbeat, name="run-lock", daemon=True)
        self._beat.start()

    def _claim(self, got: bool | None) -> None:
        """With the flock (``got``) or without (None): make the sidecar name this process."""
        previous = read_holder(self.folder)
        if previous is not None and is_live(previous, self.me, got):
            raise RunBusy(self.folder, previous)
        settle = got is None or shared_fs(self.folder)
        self.me["settled"] = not settle  # the launch's other ranks wait for a settled claim
        self._write()
        if settle:
            time.sleep(SETTLE_S)  # a simultaneous start on another host writes last and wins
            holder = read_holder(self.folder)
            if holder is not None and holder.get("token") != self.me["token"]:
                raise RunBusy(self.folder, holder)
            self.me["settled"] = True
            self._write()
        if previous is not None:
            log.info("took over the lock of %s from %s", self.folder, describe(previous))

    def _named_holder(self) -> dict[str, Any] | None:
        """The sidecar of a flock held elsewhere (its holder may be writing it just now)."""
        for _ in range(10):
            holder = read_holder(self.folder)
            if holder is not None:
                return holder
            time.sleep(0.1)
        return None

    def _write(self) -> None:
        self.me["heartbeat"] = time.time()
        atomic_write_json(self.folder / HOLDER_FILE, self.me)

    def _heartbeat(self) -> None:
        warned = False
        while not self._stop.wait(HEARTBEAT_S):
            try:
                holder = read_holder(self.folder)
                if holder is not None and holder.get("token") != self.me["token"]:
                    if not warned:  # should not happen: say so once, never overwrite theirs
                        log.warning(
                            "the lock of %s is now held by %s", self.folder, describe(holder)
                        )
                        warned = True
                    continue
                self._write()
            except OSError as e:  # a heartbeat missed is not worth ending training for
                log.debug("run lock heartbeat failed: %s", e)

    def release(self) -> None:
        """Let go (the leader: the sidecar, then the flock); nothing in a forked child."""
        if os.getpid() != self._pid or not self.leader:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        holder = read_holder(self.folder)
        if holder is not None and holder.get("token") == self.me["token"]:
            with contextlib.suppress(OSError):
                (self.folder / HOLDER_FILE).unlink()
        self._let_go()

    def _let_go(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.discard(fd)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    # ------------------------------------------------------------------ the other ranks

    def follow(self) -> None:
        """Wait until this launch's leader holds the lock; :class:`RunBusy` when another live
        launch does (for :data:`GRACE_S`, while this launch's leader would have taken it)."""
        deadline = time.monotonic() + FOLLOW_S
        other_since: float | None = None
        while True:
            holder = read_holder(self.folder)
            if holder is not None and holder.get("launch") == self.me["launch"]:
                if holder.get("settled", True):
                    return
                other_since = None
                time.sleep(0.1)
                continue
            if holder is not None and is_live(holder, self.me, probe(self.folder)):
                other_since = other_since or time.monotonic()
                if time.monotonic() - other_since >= GRACE_S:
                    raise RunBusy(self.folder, holder)
            else:
                other_since = None
            if time.monotonic() >= deadline:
                raise UserError(
                    f"rank {os.environ.get('RANK', '?')} waited {FOLLOW_S:.0f} s for rank 0 of "
                    f"its launch to lock {self.folder}; rank 0 did not start, or ended"
                )
            time.sleep(0.1)
