"""Publishing each stage's model once it is trained (``publish`` config group).

After the stages are trained, rank 0 publishes every finished stage not yet published: to a
Hugging Face hub repository, one branch per stage (``stage-2-difficulty-2``) and the last stage
also on ``main`` (:class:`HubPublisher`), or to a directory, one folder per stage
(:class:`DirectoryPublisher`: a shared filesystem, and the offline stand-in for the hub in the
tests). A stage's ``published.json`` records where it went; a crash or a failed upload loses
nothing (the weights stay in the run directory) and the same command publishes what is left.
The hub token comes from the environment only (``token_env``), never from a config file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from phasedsft import rundir
from phasedsft.io import atomic_write_json
from phasedsft.records import UserError

MARKER = "published.json"


class Publisher(Protocol):
    def publish(self, model_dir: Path, revision: str, message: str) -> dict[str, Any]:
        """Put ``model_dir`` at ``revision``; what to record of where it went."""
        ...

    def secrets(self) -> list[str]:
        """Values never to repeat in an error message."""
        ...


def stage_revision(stage_dir: Path) -> str:
    """``stage_2_difficulty-2`` -> ``stage-2-difficulty-2`` (a valid git branch name)."""
    return stage_dir.name.replace("_", "-")


@dataclass
class HubPublisher:
    repo_id: str
    private: bool = True
    token_env: str = "HF_TOKEN"
    endpoint: str | None = None  # None: huggingface.co (or HF_ENDPOINT)

    def publish(self, model_dir: Path, revision: str, message: str) -> dict[str, Any]:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=os.environ.get(self.token_env) or None)
        api.create_repo(self.repo_id, private=self.private, exist_ok=True)
        if revision != "main":
            api.create_branch(self.repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=self.repo_id, folder_path=str(model_dir), revision=revision,
            commit_message=message,
        )  # fmt: skip
        return {"repo_id": self.repo_id, "revision": revision, "commit": str(commit.oid)}

    def secrets(self) -> list[str]:
        token = os.environ.get(self.token_env)
        return [token] if token else []


@dataclass
class DirectoryPublisher:
    root: str

    def publish(self, model_dir: Path, revision: str, message: str) -> dict[str, Any]:
        dest = Path(self.root).expanduser() / revision
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{revision}.", dir=dest.parent))
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)  # whole or not at all
        return {"path": str(dest), "revision": revision}

    def secrets(self) -> list[str]:
        return []


def model_dir_of(stage_dir: Path) -> Path:
    adapter = stage_dir / "adapter"
    return adapter if adapter.is_dir() else stage_dir / rundir.MODEL_DIR


def publish_stages(publisher: Publisher, stage_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    """Publish every finished stage in ``stage_dirs`` not yet published; each one's record.

    With LoRA a stage publishes its adapter (``adapter/``); otherwise its model (``model/``).
    The last stage is also published as ``main``.
    """
    records = []
    for i, stage_dir in enumerate(stage_dirs):
        if not (stage_dir / rundir.STAGE_RECORD).is_file():
            continue  # not finished: nothing to publish
        marker = stage_dir / MARKER
        if marker.is_file():
            records.append(json.loads(marker.read_text()))
            continue
        revisions = [stage_revision(stage_dir)]
        if i == len(stage_dirs) - 1:
            revisions.append("main")
        where = []
        for revision in revisions:
            try:
                where.append(
                    publisher.publish(
                        model_dir_of(stage_dir), revision, f"phasedsft {stage_dir.name}"
                    )
                )
            except Exception as e:  # network, auth, quota: say which stage and what is safe
                why = str(e)
                for secret in publisher.secrets():
                    why = why.replace(secret, "[redacted]")
                raise UserError(
                    f"could not publish {stage_dir.name} ({revision}): {type(e).__name__}: {why}. "
                    f"Its weights are safe in {stage_dir}; rerun the same command to publish "
                    "what is left"
                ) from e
        record = {"stage": stage_dir.name, "published": where}
        atomic_write_json(marker, record)
        records.append(record)
    return records
