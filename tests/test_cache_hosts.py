"""One score cache used by several hosts (a cache directory on NFS, Lustre, GPFS written by jobs
on several nodes): each host writes its own live file and reads the others' answers only from
sealed, read-only segments (phasedsft/llm/sealed.py).

In-process tests name the host through ``phasedsft.llm.cache.host_name``; the end-to-end test
runs real processes in UTS + network namespaces of their own (another hostname, another network
stack: two hosts' worth of processes), writing one cache directory at once.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from phasedsft.llm import cache as cache_module
from phasedsft.llm import sealed
from phasedsft.llm.cache import Result, ScoreCache


def result(key: str, status: str = "ok", score: float | None = 3.0, requests: int = 1) -> Result:
    return Result(key, key, "test", status, score if status == "ok" else None, requests=requests)


def on_host(monkeypatch, host: str, path) -> ScoreCache:
    monkeypatch.setattr(cache_module, "host_name", lambda: host)
    return ScoreCache(path)


def test_the_first_host_writes_the_named_file_and_every_other_host_a_file_of_its_own(
    tmp_path, monkeypatch
):
    a = on_host(monkeypatch, "node1", tmp_path / "scores.sqlite")
    b = on_host(monkeypatch, "node2", tmp_path / "scores.sqlite")
    again = on_host(monkeypatch, "node1", tmp_path / "scores.sqlite")
    assert a.path == again.path == tmp_path / "scores.sqlite"  # one machine: nothing changes
    assert b.path == tmp_path / "scores.node2.sqlite"
    assert (tmp_path / "scores.sqlite.host").read_text() == "node1\n"


def test_another_hosts_answers_are_read_once_sealed_never_from_its_live_file(tmp_path, monkeypatch):
    opened: list[str] = []
    real_connect = sqlite3.connect

    def connect(database, *args, **kwargs):
        opened.append(str(database))
        return real_connect(database, *args, **kwargs)

    a = on_host(monkeypatch, "node1", tmp_path / "scores.sqlite")
    b = on_host(monkeypatch, "node2", tmp_path / "scores.sqlite")
    a.put(result("k1"))
    b.refresh()
    assert b.get_many(["k1"]) == {}  # not sealed yet: node2 cannot see it
    segment = a.publish()
    assert segment is not None and segment.parent == tmp_path / "scores.sqlite.sealed"
    monkeypatch.setattr(sqlite3, "connect", connect)
    b.refresh()
    assert b.get_many(["k1"])["k1"].score == 3.0
    assert b.try_claim("k1").state == "done"  # an answer on another host is not asked again
    # node2 opened node1's sealed copy read-only, never node1's live file
    assert opened and all("immutable=1" in p for p in opened)
    assert not any(p.endswith("/scores.sqlite") for p in opened)
    assert a.publish() is None  # nothing new: no empty segment


def test_of_several_records_of_one_key_an_answer_wins_then_ok_then_the_newest(
    tmp_path, monkeypatch
):
    a = on_host(monkeypatch, "node1", tmp_path / "scores.sqlite")
    b = on_host(monkeypatch, "node2", tmp_path / "scores.sqlite")
    a.put(result("gave-up", "failed", requests=0))  # a setting gave up: no answer
    b.put(result("gave-up", "ok", 4.0))
    a.put(result("newer", "ok", 1.0))
    time.sleep(0.01)
    b.put(result("newer", "ok", 5.0))
    a.put(result("ok-first", "ok", 2.0))
    time.sleep(0.01)
    b.put(result("ok-first", "failed"))  # answered (a request was sent), but failed
    b.publish()
    a.refresh()
    got = a.get_many(["gave-up", "newer", "ok-first"])
    assert got["gave-up"].status == "ok" and got["gave-up"].score == 4.0
    assert got["newer"].score == 5.0
    assert got["ok-first"].status == "ok" and got["ok-first"].score == 2.0


def test_paid_replies_kept_on_one_host_are_continued_on_another(tmp_path, monkeypatch):
    a = on_host(monkeypatch, "node1", tmp_path / "scores.sqlite")
    b = on_host(monkeypatch, "node2", tmp_path / "scores.sqlite")
    a.put_partial(
        Result("k", "ex", "test", "partial", None, {"attempts": 2}, '["r1"]', cost_usd=0.5)
    )
    a.close()  # a job ending seals what it recorded
    b.refresh()
    (kept,) = b.partials(["k"]).values()
    assert kept.detail == {"attempts": 2} and kept.raw == '["r1"]' and kept.cost_usd == 0.5


def older_cache(tmp_path, *upgrades: str):
    """A cache file as an earlier version left it: its tables (plus ``upgrades``' DDL) and one
    answer, ``old`` scored 2.5."""
    path = tmp_path / "scores.sqlite"
    with sqlite3.connect(path) as db:
        for ddl in (cache_module.SCHEMA, cache_module.UNMETERED, *upgrades):
            db.execute(ddl)
        db.execute(
            "INSERT INTO results (key, example_id, scorer, status, score, detail, created) "
            "VALUES ('old', 'old', 'test', 'ok', 2.5, '{}', 0)"
        )
    return path


def test_a_cache_written_before_sealing_is_sealed_whole_on_its_first_open(tmp_path, monkeypatch):
    path = older_cache(tmp_path)  # the layout of earlier versions: no changes log
    on_host(monkeypatch, "node1", path)
    b = on_host(monkeypatch, "node2", path)
    assert b.get_many(["old"])["old"].score == 2.5


def test_many_small_segments_of_a_host_are_merged_into_one(tmp_path, monkeypatch):
    monkeypatch.setattr(sealed, "MERGE_ABOVE", 3)
    a = on_host(monkeypatch, "node1", tmp_path / "scores.sqlite")
    for n in range(5):
        a.put(result("same", score=float(n % 5 + 1)))  # one key, replaced each time
        a.put(result(f"k{n}"))
        a.publish()
    segments = sorted((tmp_path / "scores.sqlite.sealed").glob("node1.*.sqlite"))
    assert len(segments) <= 3
    b = on_host(monkeypatch, "node2", tmp_path / "scores.sqlite")
    got = b.get_many(["same", *(f"k{n}" for n in range(5))])
    assert len(got) == 6 and got["same"].score == 5.0  # the last record of the key


def test_a_seal_that_fails_is_logged_and_the_rows_stay_for_the_next(tmp_path, monkeypatch, caplog):
    a = on_host(monkeypatch, "node1", tmp_path / "scores.sqlite")
    a.put(result("k"))
    real_write = a.segments.write

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(a.segments, "write", full)
    assert a.publish() is None
    assert "could not seal" in caplog.text
    monkeypatch.setattr(a.segments, "write", real_write)
    assert a.publish() is not None  # the same rows, sealed now
    b = on_host(monkeypatch, "node2", tmp_path / "scores.sqlite")
    assert "k" in b.get_many(["k"])


# ------------------------------------------------------------ two hosts' worth of processes

WRITER = textwrap.dedent(
    """
    import json, sqlite3, sys, time
    from phasedsft.llm.cache import Result, ScoreCache
    path, host, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    opened = []
    real = sqlite3.connect
    def connect(database, *a, **k):
        opened.append(str(database))
        return real(database, *a, **k)
    sqlite3.connect = connect
    cache = ScoreCache(path)
    assert cache.host == host, (cache.host, host)
    while time.time() < go:  # both hosts start writing at the same moment
        time.sleep(0.01)
    for i in range(n):
        key = f"{host}-{i}"
        assert cache.claim([key]) == [key]
        cache.put(Result(key, key, "t", "ok", float(i % 5 + 1), {"host": host}, requests=1))
        if i % 25 == 0:
            cache.publish()
    cache.close()
    print(json.dumps({"live": str(cache.path), "opened": opened}))
    """
)

READER = textwrap.dedent(
    """
    import json, sys
    from phasedsft.llm.cache import ScoreCache
    path, keys = sys.argv[1], json.loads(sys.argv[2])
    cache = ScoreCache(path)
    got = cache.get_many(keys)
    print(json.dumps({k: [r.score, r.detail["host"]] for k, r in got.items()}))
    """
)


def in_namespace(host: str, script: str, *args: str) -> subprocess.Popen[str]:
    """``script`` in a UTS and network namespace of its own, named ``host``."""
    cmd = ["unshare", "--uts", "--net", "--fork", "sh", "-c", 'hostname "$0" && exec "$@"', host]
    return subprocess.Popen(
        [*cmd, sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def namespaces_allowed() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--uts", "--net", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.integration
@pytest.mark.skipif(
    not namespaces_allowed(), reason="unshare --uts --net is not allowed here (needs root)"
)
def test_two_hosts_write_one_cache_directory_at_once_and_each_reads_all(tmp_path):
    path = str(tmp_path / "scores.sqlite")
    n = 150
    go = str(time.time() + 3)
    procs = {h: in_namespace(h, WRITER, path, h, str(n), go) for h in ("nodea", "nodeb")}
    reports = {}
    for host, p in procs.items():
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        reports[host] = json.loads(out.strip().splitlines()[-1])
    lives = {h: r["live"] for h, r in reports.items()}
    assert len(set(lives.values())) == 2  # a live file per host
    for host, report in reports.items():
        other = next(v for h, v in lives.items() if h != host)
        assert other not in report["opened"], f"{host} opened {other}, another host's live file"
    for live in lives.values():
        with sqlite3.connect(live) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    keys = [f"{h}-{i}" for h in ("nodea", "nodeb") for i in range(n)]
    reader = in_namespace("nodec", READER, path, json.dumps(keys))
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    assert sorted(got) == sorted(keys)  # a third host reads both hosts' answers as one cache
    assert all(got[k] == [float(int(k.split("-")[1]) % 5 + 1), k.split("-")[0]] for k in keys)


def test_merges_on_one_host_at_once_lose_no_row(tmp_path, monkeypatch):
    """Two processes of a host merging at the same moment (a file lock: one after the other,
    the second listing again) never delete what the other wrote."""
    import threading

    monkeypatch.setattr(sealed, "MERGE_ABOVE", 3)
    a = on_host(monkeypatch, "node1", tmp_path / "scores.sqlite")
    monkeypatch.setattr(sealed, "MERGE_ABOVE", 10_000)  # no merge while sealing here
    for n in range(8):
        a.put(result(f"k{n}"))
        a.publish()
    monkeypatch.setattr(sealed, "MERGE_ABOVE", 3)
    mergers = [sealed.Segments(a.home, "node1", cache_module.SEGMENT_TABLES) for _ in range(2)]
    threads = [threading.Thread(target=m.merge_own) for m in mergers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    b = on_host(monkeypatch, "node2", tmp_path / "scores.sqlite")
    assert sorted(b.get_many([f"k{n}" for n in range(8)])) == [f"k{n}" for n in range(8)]


def test_a_segment_gone_before_it_is_opened_leaves_no_file(tmp_path):
    gone = tmp_path / "node1.000000000001-000000000002.abcdef01.sqlite"
    assert sealed.open_segment(gone) is None
    assert not gone.exists()  # opening never creates it (an empty file would break merging)


def test_segments_never_replace_one_another(tmp_path):
    segs = sealed.Segments(tmp_path / "scores.sqlite", "node1", cache_module.SEGMENT_TABLES)
    one = segs.write(1, 2, {"results": [], "partials": []})
    two = segs.write(1, 2, {"results": [], "partials": []})  # a live file started over
    assert one != two and one.exists() and two.exists()


def test_an_upgrade_interrupted_before_its_commit_is_done_again(tmp_path, monkeypatch):
    # an older cache, upgraded up to the DDL, then killed
    path = older_cache(tmp_path, cache_module.CHANGES, cache_module.SEALED)
    on_host(monkeypatch, "node1", path)
    b = on_host(monkeypatch, "node2", path)
    assert b.get_many(["old"])["old"].score == 2.5


def test_a_cache_left_open_is_sealed_when_its_process_exits(tmp_path, monkeypatch):
    path = tmp_path / "scores.sqlite"
    script = textwrap.dedent(
        """
        import sys
        from phasedsft.llm.cache import Result, ScoreCache
        cache = ScoreCache(sys.argv[1])
        cache.put(Result("k", "k", "t", "ok", 4.0, requests=1))  # never closed
        """
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=120)
    b = on_host(monkeypatch, "some-other-host", path)
    assert b.get_many(["k"])["k"].score == 4.0
