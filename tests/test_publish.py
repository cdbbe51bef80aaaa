"""publish=dir|hub: every finished stage published once, the last also as main; nothing lost."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose
from helpers import run_command, run_dir, stage_dirs, weights

from phasedsft.records import UserError
from phasedsft.train.publish import DirectoryPublisher, HubPublisher, publish_stages


def fake_stage(root: Path, name: str, finished: bool = True) -> Path:
    d = root / name
    (d / "model").mkdir(parents=True)
    (d / "model" / "weights.bin").write_text(f"weights of {name}")
    if finished:
        (d / "stage.json").write_text("{}")
    return d


def test_finished_stages_are_published_once_the_last_also_as_main(tmp_path):
    stages = [fake_stage(tmp_path / "run", f"stage_{i}_difficulty-{i}") for i in (1, 2)]
    out = tmp_path / "published"
    records = publish_stages(DirectoryPublisher(str(out)), stages)
    assert sorted(p.name for p in out.iterdir()) == [
        "main",
        "stage-1-difficulty-1",
        "stage-2-difficulty-2",
    ]
    assert (out / "main" / "weights.bin").read_text() == "weights of stage_2_difficulty-2"
    assert (
        out / "stage-1-difficulty-1" / "weights.bin"
    ).read_text() == "weights of stage_1_difficulty-1"
    assert [r["stage"] for r in records] == [s.name for s in stages]
    assert json.loads((stages[1] / "published.json").read_text()) == records[1]
    # a rerun publishes nothing again
    stamp = (out / "main" / "weights.bin").stat().st_mtime_ns
    assert publish_stages(DirectoryPublisher(str(out)), stages) == records
    assert (out / "main" / "weights.bin").stat().st_mtime_ns == stamp


def test_an_unfinished_stage_waits_and_a_failed_publish_is_retried(tmp_path, monkeypatch):
    done = fake_stage(tmp_path / "run", "stage_1_difficulty-1")
    unfinished = fake_stage(tmp_path / "run", "stage_2_difficulty-2", finished=False)

    class Failing(DirectoryPublisher):
        def publish(self, model_dir, revision, message):
            raise ConnectionError(f"hub said no to token {self.secret}")

        def secrets(self):
            return [self.secret]

    failing = Failing(str(tmp_path / "out"))
    failing.secret = "hf_SECRET123"
    with pytest.raises(UserError) as e:
        publish_stages(failing, [done, unfinished])
    message = str(e.value)
    assert "stage_1_difficulty-1" in message and "rerun the same command" in message
    assert "hf_SECRET123" not in message and "[redacted]" in message
    assert not (done / "published.json").exists()
    records = publish_stages(DirectoryPublisher(str(tmp_path / "out")), [done, unfinished])
    assert [r["stage"] for r in records] == ["stage_1_difficulty-1"]
    assert not (unfinished / "published.json").exists()


def test_hub_publisher_pushes_a_branch_per_stage_with_the_token_from_the_environment(
    tmp_path, monkeypatch
):
    """The calls HubPublisher makes of huggingface_hub (recorded: no network here)."""
    import huggingface_hub

    calls = []

    class Commit:
        oid = "abc123"

    class RecordingApi:
        def __init__(self, endpoint=None, token=None):
            calls.append(("init", endpoint, token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create_repo", repo_id, private, exist_ok))

        def create_branch(self, repo_id, branch, exist_ok):
            calls.append(("create_branch", repo_id, branch, exist_ok))

        def upload_folder(self, repo_id, folder_path, revision, commit_message):
            calls.append(("upload_folder", repo_id, Path(folder_path).parent.name, revision))
            return Commit()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    stages = [fake_stage(tmp_path, f"stage_{i}_difficulty-{i}") for i in (1, 2)]
    records = publish_stages(HubPublisher("me/model"), stages)
    uploads = [c for c in calls if c[0] == "upload_folder"]
    assert uploads == [
        ("upload_folder", "me/model", "stage_1_difficulty-1", "stage-1-difficulty-1"),
        ("upload_folder", "me/model", "stage_2_difficulty-2", "stage-2-difficulty-2"),
        ("upload_folder", "me/model", "stage_2_difficulty-2", "main"),
    ]
    assert {c for c in calls if c[0] == "init"} == {("init", None, "hf_from_env")}
    assert ("create_branch", "me/model", "stage-2-difficulty-2", True) in calls
    assert records[1]["published"][1] == {
        "repo_id": "me/model",
        "revision": "main",
        "commit": "abc123",
    }
    assert "hf_from_env" not in json.dumps(records)


def test_publishing_renames_no_run(tmp_path):
    plain = compose([f"run.root={tmp_path}"])
    published = compose([f"run.root={tmp_path}", "publish=dir", f"publish.root={tmp_path}/out"])
    assert plain.run.name == published.run.name


@pytest.mark.integration
def test_train_py_publishes_each_stage(tmp_path):
    out = tmp_path / "published"
    cmd = [
        sys.executable,
        "train.py",
        *TINY,
        f"run.root={tmp_path / 'runs'}",
        "ordering=1-2",
        "trainer.max_steps=2",
        "eval.generate=false",
        "publish=dir",
        f"publish.root={out}",
    ]
    run_command(cmd, no_traceback=True)
    run = run_dir(tmp_path / "runs", "summary.json")
    s1, s2 = stage_dirs(run)
    for stage, name in ((s1, "stage-1-difficulty-1"), (s2, "stage-2-difficulty-2"), (s2, "main")):
        a, b = weights(stage / "model"), weights(out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "main" / "tokenizer_config.json").is_file()
