import json

import pytest

from phasedsft.records import DataError, Example, stage_of
from phasedsft.segment.manifest import (
    StageManifest,
    build_manifest,
    load_or_build_manifest,
    random_stages,
    split_by_thresholds,
)
from phasedsft.segment.methods import ManualThresholds


def scored(scores):
    return [Example(f"e{i}", "q", "", "a", score=s) for i, s in enumerate(scores)]


def test_half_open_intervals_ties_go_up():
    t = [1.5, 3.5]
    assert [stage_of(s, t) for s in (1.0, 1.49, 1.5, 2.0, 3.49, 3.5, 3.75, 5.0)] == [
        1,
        1,
        2,
        2,
        2,
        3,
        3,
        3,
    ]


def test_split_and_any_number_of_stages():
    ex = scored([1, 2, 3, 4, 5, 1.5, 3.5])
    assert split_by_thresholds(ex, [1.5, 3.5]) == [["e0"], ["e1", "e2", "e5"], ["e3", "e4", "e6"]]
    assert [len(s) for s in split_by_thresholds(ex, [1.5, 2.5, 3.5, 4.5])] == [1, 2, 1, 2, 1]


def test_thresholds_validated():
    with pytest.raises(DataError, match="strictly increasing"):
        ManualThresholds([3.5, 1.5])
    with pytest.raises(DataError, match="empty"):
        ManualThresholds([])


def test_random_stages_same_sizes_seeded():
    ids = [f"e{i}" for i in range(100)]
    a = random_stages(ids, [50, 30, 20], seed=1)
    assert [len(s) for s in a] == [50, 30, 20]
    assert sorted(x for s in a for x in s) == sorted(ids)
    assert a == random_stages(ids, [50, 30, 20], seed=1)
    assert a != random_stages(ids, [50, 30, 20], seed=2)


def test_manifest_stats_and_hash():
    ex = scored([1.0] * 6 + [2.0] * 3 + [4.0])
    m = build_manifest(ex, ManualThresholds(), random_seed=0)
    assert [s["count"] for s in m.stats] == [6, 3, 1]
    assert [s["mean_score"] for s in m.stats] == [1.0, 2.0, 4.0]
    assert [len(s) for s in m.random_stages] == [6, 3, 1]
    assert [len(s) for s in m.random_equal_stages] == [4, 3, 3]
    assert m.hash == build_manifest(ex, ManualThresholds(), random_seed=0).hash
    assert m.hash != build_manifest(ex, ManualThresholds([2.5]), random_seed=0).hash


def test_manifest_written_once_and_reused(tmp_path):
    ex = scored([1, 2, 3, 4, 5] * 4)
    m1, path = load_or_build_manifest(ex, ManualThresholds(), 0, tmp_path)
    mtime = path.stat().st_mtime_ns
    m2, path2 = load_or_build_manifest(ex, ManualThresholds(), 0, tmp_path)
    assert path2 == path and path.stat().st_mtime_ns == mtime and m2.hash == m1.hash
    _, other = load_or_build_manifest(ex, ManualThresholds([2.5]), 0, tmp_path)
    assert other != path


def test_edited_manifest_is_refused(tmp_path):
    ex = scored([1, 2, 3, 4, 5])
    _, path = load_or_build_manifest(ex, ManualThresholds(), 0, tmp_path)
    obj = json.loads(path.read_text())
    obj["stages"][0], obj["stages"][1] = obj["stages"][1], obj["stages"][0]
    path.write_text(json.dumps(obj))
    with pytest.raises(DataError, match="does not match its content"):
        StageManifest.load(path)


def test_manifest_must_cover_the_data():
    m = build_manifest(scored([1, 2, 4]), ManualThresholds(), 0)
    m.check_covers(scored([1, 2, 4]), "m.json")
    with pytest.raises(DataError, match="does not match the training data"):
        m.check_covers(scored([1, 2, 4, 5]), "m.json")
