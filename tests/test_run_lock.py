"""One writer per run directory (phasedsft/locks.py): a second run of the same command is
refused by name before it writes anything, and no holder, dead or requeued, leaves it locked."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from helpers import run_command, run_dir, stage_dirs

from phasedsft import locks
from phasedsft.locks import HOLDER_FILE, LOCK_FILE, RunBusy, RunLock, launch_id

HOST = socket.gethostname()

# a process holding a run's lock until a line arrives on its stdin; it forks a child that
# outlives it when asked (a data-loader worker left behind by a killed parent)
HOLD = """
import os, sys, time
from pathlib import Path
from phasedsft.locks import RunLock
folder, ready, fork = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "fork"
with RunLock(folder):
    child = os.fork() if fork else None
    if child == 0:
        time.sleep(120)
        os._exit(0)
    ready.write_text(str(child or ""))
    sys.stdin.readline()
"""


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(locks, "RETRY_S", 0.2)
    monkeypatch.setattr(locks, "GRACE_S", 0.5)
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    for key in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)


def hold(folder: Path, tmp_path: Path, env: dict[str, str] | None = None, fork: bool = False):
    """A process holding ``folder``'s lock; returns it once it holds, and its forked child."""
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), str(ready), "fork" if fork else "-"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, "the holder never took the lock"
        time.sleep(0.05)
    child = ready.read_text()
    return proc, int(child) if child else None


def test_a_second_process_is_refused_by_name_until_the_first_lets_go(tmp_path):
    folder = tmp_path / "run"
    proc, _ = hold(folder, tmp_path)
    try:
        with pytest.raises(RunBusy) as busy:
            RunLock(folder).acquire()
        message = str(busy.value)
        assert message.startswith(
            f"{folder} is being trained by pid {proc.pid} on host {HOST} (started "
        ), message
        assert "heartbeat" not in message  # on this host the kernel's flock says it all
        assert json.loads((folder / HOLDER_FILE).read_text())["pid"] == proc.pid
    finally:
        proc.communicate("\n", timeout=60)
    assert proc.returncode == 0
    assert not (folder / HOLDER_FILE).exists() and (folder / LOCK_FILE).exists()
    with RunLock(folder) as lock:  # free again
        assert json.loads((folder / HOLDER_FILE).read_text())["token"] == lock.me["token"]
    assert not (folder / HOLDER_FILE).exists()


def test_a_killed_holder_leaves_no_stale_lock_even_with_a_forked_child_alive(tmp_path):
    folder = tmp_path / "run"
    proc, child = hold(folder, tmp_path, fork=True)
    assert child
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        stale = json.loads((folder / HOLDER_FILE).read_text())
        assert stale["pid"] == proc.pid  # no cleanup ran: its record is left, not its lock
        os.kill(child, 0)  # the holder's forked child still runs
        started = time.monotonic()
        with RunLock(folder) as lock:
            assert read(folder)["token"] == lock.me["token"]
        assert time.monotonic() - started < 5
    finally:
        os.kill(child, signal.SIGKILL)


def read(folder: Path) -> dict:
    return json.loads((folder / HOLDER_FILE).read_text())


def test_the_ranks_of_one_launch_follow_its_rank_0_and_another_launchs_are_refused(
    tmp_path, monkeypatch
):
    folder = tmp_path / "run"
    launch = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}
    proc, _ = hold(folder, tmp_path, env={**launch, "RANK": "0", "TORCHELASTIC_RUN_ID": "a"})
    try:
        monkeypatch.setenv("RANK", "1")
        for key, value in launch.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "a")  # the holder's rank 1: goes on
        with RunLock(folder, leader=False):
            assert read(folder)["pid"] == proc.pid  # takes nothing, writes nothing
        assert read(folder)["pid"] == proc.pid  # and lets nothing go
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "b")  # rank 1 of another launch
        with pytest.raises(RunBusy, match=f"is being trained by pid {proc.pid} on host"):
            RunLock(folder, leader=False).follow()
        monkeypatch.setenv("RANK", "0")  # and its rank 0
        with pytest.raises(RunBusy, match=f"is being trained by pid {proc.pid} on host"):
            RunLock(folder).acquire()
    finally:
        proc.communicate("\n", timeout=60)


def test_launch_ids_are_shared_by_the_ranks_of_a_launch_only():
    torchrun = {"WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "x", "MASTER_ADDR": "n1"}
    ranks = [launch_id({**torchrun, "RANK": str(r), "MASTER_PORT": "1"}) for r in range(4)]
    assert len(set(ranks)) == 1
    assert launch_id({**torchrun, "MASTER_PORT": "2"}) != ranks[0]
    slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "n1"}
    assert launch_id({**slurm, "RANK": "1"}) == launch_id({**slurm, "RANK": "0"})
    requeued = launch_id({**slurm, "SLURM_RESTART_COUNT": "1"})
    assert requeued != launch_id(slurm)
    assert launch_id({}) == f"process:{HOST}:{os.getpid()}"  # one process: its own


def write_holder(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    holder = {
        "pid": 4242,
        "host": "node-b",
        "started": "2025-01-01 00:00:00",
        "heartbeat": time.time(),
        "launch": "slurm:42.0.r0",
        "slurm_job_id": "42",
        "slurm_restart_count": 0,
        "token": "theirs",
        **fields,
    }
    (folder / HOLDER_FILE).write_text(json.dumps(holder))


def test_another_hosts_live_holder_counts_even_where_flock_is_node_local(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    write_holder(folder)  # node-b trains it (flock granted here says nothing about node-b)
    monkeypatch.setenv("SLURM_JOB_ID", "43")
    with pytest.raises(RunBusy) as busy:
        RunLock(folder).acquire()
    assert str(busy.value).startswith(
        f"{folder} is being trained by pid 4242 on host node-b (started 2025-01-01 00:00:00; "
        "SLURM job 42; last heartbeat 0 s ago; if that process is gone, the run is free 90 s "
        "after its last heartbeat)"
    )
    assert read(folder)["token"] == "theirs"  # untouched
    write_holder(folder, heartbeat=time.time() - locks.STALE_S - 1)  # unheard of: gone
    with RunLock(folder) as lock:
        assert read(folder)["token"] == lock.me["token"]


def test_a_requeued_slurm_job_takes_over_from_its_earlier_run(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    write_holder(folder)  # job 42's first run, on node-b, heartbeat fresh (killed just now)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    with pytest.raises(RunBusy):  # the same job, not requeued: another step of it
        RunLock(folder).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued: SLURM runs a job once at a time
    with RunLock(folder) as lock:
        assert read(folder)["slurm_restart_count"] == 1
        assert read(folder)["token"] == lock.me["token"]


def test_without_flock_the_holder_file_is_the_lock(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")  # Lustre without -o flock

    monkeypatch.setattr(fcntl, "flock", no_flock)
    monkeypatch.setattr(locks, "SETTLE_S", 0.05)
    folder = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        write_holder(folder, host=HOST, pid=sleeper.pid, launch="other", slurm_job_id=None)
        with pytest.raises(RunBusy, match=f"pid {sleeper.pid} on host {HOST}"):
            RunLock(folder).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunLock(folder) as lock:  # its process is gone: taken over
        assert read(folder)["token"] == lock.me["token"] and read(folder)["settled"] is True
    assert not (folder / HOLDER_FILE).exists()

    # two starting at once: the one whose record is read back after the settle delay wins
    real_sleep = time.sleep

    def rival_writes_last(seconds):
        write_holder(folder, host="node-c", launch="rival")
        real_sleep(seconds)

    monkeypatch.setattr(locks.time, "sleep", rival_writes_last)
    with pytest.raises(RunBusy, match="on host node-c"):
        RunLock(folder).acquire()
    assert read(folder)["launch"] == "rival"


def test_the_heartbeat_is_refreshed_and_letting_go_removes_the_record(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT_S", 0.05)
    folder = tmp_path / "run"
    with RunLock(folder):
        first = read(folder)["heartbeat"]
        deadline = time.time() + 30
        while read(folder)["heartbeat"] == first:
            assert time.time() < deadline, "no heartbeat"
            time.sleep(0.05)
        assert read(folder)["pid"] == os.getpid() and read(folder)["host"] == HOST
    assert not (folder / HOLDER_FILE).exists() and (folder / LOCK_FILE).exists()


MOUNTS = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:50 / /scratch rw - lustre 10.0.0.1@o2ib:/fs rw,flock
41 27 0:51 / /home rw - nfs4 srv:/home rw
42 27 0:52 / /tmp rw - tmpfs tmpfs rw
43 27 0:53 / /beegfs rw - beegfs beegfs_nodev rw
44 27 0:54 / /mnt/my\\040disk rw - fuse.sshfs host:/x rw
"""


@pytest.mark.parametrize(
    ("path", "shared"),
    [
        ("/scratch/runs/x", True),
        ("/home/me/runs", True),
        ("/beegfs/runs", True),
        ("/mnt/my disk/runs", True),
        ("/tmp/runs", False),
        ("/data/runs", False),  # the root filesystem: ext4
        ("/scratchy/runs", False),  # not under /scratch
    ],
)
def test_network_filesystems_are_told_from_local_ones(path, shared):
    assert locks.shared_fs(Path(path), MOUNTS) is shared


def test_on_a_shared_filesystem_the_other_ranks_wait_for_a_settled_claim(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(locks, "shared_fs", lambda path: True)
    monkeypatch.setattr(locks, "SETTLE_S", 0.3)
    folder = tmp_path / "run"
    launch = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29512"}
    for key, value in launch.items():
        monkeypatch.setenv(key, value)
    leader = RunLock(folder)
    claiming = threading.Thread(target=leader.acquire)
    claiming.start()
    try:
        while not (folder / HOLDER_FILE).exists():
            time.sleep(0.01)
        assert read(folder)["settled"] is False  # written, then read back after SETTLE_S
        monkeypatch.setenv("RANK", "1")
        RunLock(folder, leader=False).follow()
        assert read(folder)["settled"] is True  # the rank went on only then
    finally:
        claiming.join()
        leader.release()


def test_a_plan_of_the_command_never_removes_a_locked_run_directory(tmp_path):
    from conftest import compose

    from phasedsft.jobs import run_dir_for
    from phasedsft.train.run import plan

    cfg = compose([f"run.root={tmp_path}", "plan_only=true", "dataset.source.n=60"])
    folder = run_dir_for(cfg)
    with RunLock(folder):  # a run that has not written run.json yet (scoring, say)
        plan(cfg)
        assert (folder / LOCK_FILE).exists() and (folder / HOLDER_FILE).exists()
    plan(cfg)  # a plan alone leaves nothing of its own
    assert not folder.exists()


# ------------------------------------------------------------------ train.py, for real

SMALL = [
    "dataset.source.n=60",
    "dataset.eval.n=8",
    "model.tokenizer.vocab_size=300",
    "model.loader.hidden_size=16",
    "model.loader.intermediate_size=32",
    "model.loader.num_hidden_layers=1",
    "model.loader.num_attention_heads=2",
    "model.loader.num_key_value_heads=2",
    "trainer.per_device_train_batch_size=8",
    "trainer.max_steps=3",
    "trainer.save_steps=1",
    "eval.max_new_tokens=4",
    "ordering=1-2",
]

# train.py, paused at the end of its first optimizer step until the file GO exists
PAUSED = """
import os, runpy, sys, time
from pathlib import Path
from transformers import TrainerCallback
from phasedsft.train import stage

paused, go, script, *overrides = sys.argv[1:]

class PauseOnce(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1 and not Path(go).exists():
            Path(paused).write_text(str(os.getpid()))
            deadline = time.time() + 600
            while not Path(go).exists() and time.time() < deadline:
                time.sleep(0.1)

init = stage.CurriculumTrainer.__init__

def pausing_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self.add_callback(PauseOnce())

stage.CurriculumTrainer.__init__ = pausing_init
sys.argv = [script, *overrides]
runpy.run_path(script, run_name="__main__")
"""


def env() -> dict[str, str]:
    # the repository root on the path: a wrapper script outside it still finds its hydra_plugins
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": path,
    }


def paused_train(tmp_path: Path, root: Path) -> tuple[list[str], Path, Path]:
    script = tmp_path / "paused_train.py"
    script.write_text(PAUSED)
    paused, go = tmp_path / "paused", tmp_path / "go"
    cmd = [sys.executable, str(script), str(paused), str(go), "train.py", *SMALL]
    return [*cmd, f"run.root={root}"], paused, go


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """``cmd`` in the background, its output in ``log`` (a pipe left unread could fill)."""
    with log.open("w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT)


def wait_for(path: Path, procs: list[subprocess.Popen], timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert all(p.poll() in (None, 2) for p in procs), "a launch ended before the pause"
        assert time.time() < deadline, f"{path.name} never appeared"
        time.sleep(0.1)


def snapshot(run: Path) -> dict[str, tuple[int, int]]:
    """Every file of the run and its (mtime, size), less the lock's own record (heartbeats)
    and what Hydra writes for any launch (.hydra/, train.log), compared apart."""
    return {
        str(p.relative_to(run)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in run.rglob("*")
        if p.is_file() and p.name not in (HOLDER_FILE, "train.log") and ".hydra" not in p.parts
    }


def finished(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    assert [s["fed_matches_plan"] for s in summary["per_stage"]] == [True, True]
    assert [s["global_step"] for s in summary["per_stage"]] == [3, 3]
    assert len(stage_dirs(run)) == 2 and not (run / HOLDER_FILE).exists()


@pytest.mark.integration
def test_a_second_launch_of_the_command_is_refused_while_the_first_trains(tmp_path):
    root = tmp_path / "runs"
    cmd, paused, go = paused_train(tmp_path, root)
    first = start(cmd, tmp_path / "first.log")
    try:
        wait_for(paused, [first])  # stage 1 has trained a step: run.json, stage folder, ...
        run = run_dir(root)
        before = snapshot(run)
        hydra = {p.name: p.read_text() for p in (run / ".hydra").iterdir()}
        refusal = f"error: {run} is being trained by pid {first.pid} on host {HOST} (started "

        again = run_command(
            [sys.executable, "train.py", *SMALL, f"run.root={root}"],
            env=env(),
            check=False,
            no_traceback=True,
            timeout=600,
        )
        assert again.returncode == 2, again.stderr[-3000:]
        assert refusal in again.stderr, again.stderr[-3000:]

        # the same command launched on two ranks: both stop, neither writes
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        ranks = subprocess.run(
            [*torchrun, "--nproc_per_node", "2", "train.py", *SMALL, f"run.root={root}"],
            cwd=ROOT,
            env=env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert ranks.returncode != 0
        assert refusal in ranks.stderr, ranks.stderr[-3000:]
        exits = dict(
            re.findall(r"rank\s*: (\d) \(local_rank[^\n]*\n\s*exitcode\s*: (-?\d+)", ranks.stderr)
        )
        # each rank refused, or was ended by torchrun (SIGTERM) once the other had
        assert set(exits) == {"0", "1"} and "2" in exits.values(), ranks.stderr[-3000:]
        assert set(exits.values()) <= {"2", "-15"}, ranks.stderr[-3000:]

        assert snapshot(run) == before  # no stage folder, no run.json, nothing rewritten
        assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == hydra
        assert run_dir(root) == run
    finally:
        go.touch()
        first.wait(timeout=600)
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
    finished(run)

    rerun = run_command([sys.executable, "train.py", *SMALL, f"run.root={root}"], env=env())
    assert (rerun.stdout + rerun.stderr).count("already done: skipping") == 2
    finished(run)


@pytest.mark.integration
def test_two_launches_started_together_train_the_run_once(tmp_path):
    root = tmp_path / "runs"
    cmd, paused, go = paused_train(tmp_path, root)
    both = [start(cmd, tmp_path / f"launch{k}.log") for k in range(2)]
    try:
        wait_for(paused, both)  # the one holding the lock is in its first step
        holder = int(paused.read_text())
        [refused] = [k for k, p in enumerate(both) if p.pid != holder]
        assert both[refused].wait(timeout=600) == 2
        said = (tmp_path / f"launch{refused}.log").read_text()
        assert f"is being trained by pid {holder} on host {HOST}" in said, said[-3000:]
        assert "Traceback" not in said
    finally:
        go.touch()
        for p in both:
            p.wait(timeout=600)
    [winner] = [k for k, p in enumerate(both) if p.pid == holder]
    assert both[winner].returncode == 0, (tmp_path / f"launch{winner}.log").read_text()[-3000:]
    finished(run_dir(root))


@pytest.mark.integration
def test_a_run_killed_with_sigkill_leaves_no_stale_lock(tmp_path):
    root = tmp_path / "runs"
    overrides = [*SMALL, f"run.root={root}"]
    killed = run_command(
        [sys.executable, "tests/killed_at.py", "stage_1_difficulty-1", "2", "train.py", *overrides],
        env=env(),
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = run_dir(root)
    assert json.loads((run / HOLDER_FILE).read_text())["host"] == HOST  # its record, no lock
    rerun = run_command([sys.executable, "train.py", *overrides], env=env(), no_traceback=True)
    assert "is being trained" not in rerun.stderr
    finished(run)


def test_two_single_host_launches_on_two_nodes_get_two_ids(monkeypatch):
    """Plain torchrun on two nodes: the same loopback master and run id "none" on each."""
    import socket

    env = {"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
           "WORLD_SIZE": "2"}  # fmt: skip
    monkeypatch.setattr(socket, "gethostname", lambda: "node1")
    first = launch_id(env)
    monkeypatch.setattr(socket, "gethostname", lambda: "node2")
    assert launch_id(env) != first
    # a real master address (a multi-node launch): the same id on every node
    shared = {**env, "MASTER_ADDR": "10.0.0.1"}
    node2 = launch_id(shared)
    monkeypatch.setattr(socket, "gethostname", lambda: "node1")
    assert launch_id(shared) == node2
