"""Checksummed checkpoints (#22 item 1): a checkpoint counts once its manifest is written, last;
resume takes the newest one that verifies, saying which it passed over and why; a stage's
final weights are verified before a later stage or evaluate.py reads them.

Unit tests on tiny files first; then real (tiny) stages resumed over a damaged checkpoint:
flipped bytes, a truncated weights file, an empty trainer state, a missing file, no manifest.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from helpers import tiny_stage, weights

from phasedsft.checksums import (
    MANIFEST,
    ManifestError,
    Problem,
    require_verified,
    verify,
    write_manifest,
)
from phasedsft.train.checkpoints import Resume, checkpoint_dirs, choose_resume, superseded

# ------------------------------------------------------------------ damage, as a crash leaves it


def flip(path: Path, offset: int | None = None, n: int = 4096) -> None:
    """Invert ``n`` bytes in the middle of ``path`` (its size unchanged): pages never written."""
    data = bytearray(path.read_bytes())
    start = len(data) // 3 if offset is None else offset
    n = min(n, len(data) - start)
    data[start : start + n] = bytes(b ^ 0xFF for b in data[start : start + n])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def remove(path: Path) -> None:
    path.unlink()


def a_checkpoint(folder: Path, weights_bytes: int = 20_000) -> Path:
    """A directory laid out like a checkpoint (a shard in a sub-folder too), with its manifest."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * (weights_bytes // 256))
    (folder / "trainer_state.json").write_text('{"global_step": 4}\n')
    (folder / "global_step4").mkdir()
    (folder / "global_step4" / "zero_pp_rank_1_mp_rank_00_model_states.pt").write_bytes(b"s" * 999)
    write_manifest(folder)
    return folder


# ------------------------------------------------------------------ the manifest


def test_the_manifest_lists_every_file_with_its_size_and_sha256(tmp_path):
    import hashlib

    ckpt = a_checkpoint(tmp_path / "checkpoint-4")
    manifest = json.loads((ckpt / MANIFEST).read_text())
    assert manifest["format"] == 1 and manifest["algorithm"] == "sha256"
    assert manifest["block_bytes"] == 256 << 20
    files = manifest["files"]
    assert sorted(files) == [
        "global_step4/zero_pp_rank_1_mp_rank_00_model_states.pt",
        "model.safetensors",
        "trainer_state.json",
    ]
    for name, entry in files.items():
        data = (ckpt / name).read_bytes()
        # one block: the file's own sha256, as sha256sum prints it
        assert entry == {"size": len(data), "sha256": [hashlib.sha256(data).hexdigest()]}
    assert verify(ckpt) is None
    assert not list(ckpt.glob(f".{MANIFEST}*"))  # the atomic write left no temporary file


@pytest.mark.parametrize(
    ("damage", "file", "why"),
    [
        (
            flip,
            "model.safetensors",
            r"bytes 0-19967 changed: sha256 [0-9a-f]{12}\.\.\., the manifest says [0-9a-f]{12}\.\.\.",
        ),
        (truncate, "model.safetensors", r"9984 bytes, the manifest says 19968"),
        (empty, "trainer_state.json", r"0 bytes, the manifest says 19"),
        (remove, "global_step4/zero_pp_rank_1_mp_rank_00_model_states.pt", r"missing"),
        (remove, MANIFEST, r"missing \(not completely written"),
        (empty, MANIFEST, r"unreadable \(JSONDecodeError"),
    ],
    ids=["flipped", "truncated", "empty-state", "missing-shard", "no-manifest", "empty-manifest"],
)
def test_verification_names_the_damaged_file_and_what_is_wrong(tmp_path, damage, file, why):
    import re

    ckpt = a_checkpoint(tmp_path / "checkpoint-4")
    damage(ckpt / file)
    problem = verify(ckpt)
    assert isinstance(problem, Problem) and problem.file == file, problem
    assert re.fullmatch(why + ".*", problem.why), problem.why


def test_flipped_bytes_pass_the_size_check_and_fail_the_hash(tmp_path):
    ckpt = a_checkpoint(tmp_path / "checkpoint-4")
    flip(ckpt / "model.safetensors")
    assert verify(ckpt, hashes=False) is None
    assert verify(ckpt) == Problem("model.safetensors", verify(ckpt).why)  # type: ignore[union-attr]


def test_a_big_file_is_hashed_by_blocks_and_the_changed_ones_are_named(tmp_path):
    import hashlib

    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    data = bytes(range(256)) * 20  # 5120 bytes: blocks of 1000, the last one 120
    (ckpt / "optimizer.pt").write_bytes(data)
    manifest = write_manifest(ckpt, block=1000)
    blocks = manifest["files"]["optimizer.pt"]["sha256"]
    assert blocks == [hashlib.sha256(data[i : i + 1000]).hexdigest() for i in range(0, 5120, 1000)]
    flip(ckpt / "optimizer.pt", offset=2500, n=10)
    problem = verify(ckpt)
    assert problem is not None and problem.why.startswith("bytes 2000-2999 changed: sha256 ")
    flip(ckpt / "optimizer.pt", offset=2500, n=10)  # flipped back
    flip(ckpt / "optimizer.pt", offset=5119, n=1)
    assert verify(ckpt).why.startswith("bytes 5000-5119 changed")  # type: ignore[union-attr]


# ------------------------------------------------------------------ which checkpoint to resume


def test_resume_takes_the_newest_checkpoint_that_verifies_and_names_the_others(tmp_path):
    root = tmp_path / "checkpoints"
    for n in (2, 4, 6):
        a_checkpoint(root / f"checkpoint-{n}")
    flip(root / "checkpoint-6" / "model.safetensors")
    (root / "checkpoint-4" / MANIFEST).unlink()  # killed before its manifest
    (root / "checkpoint-x").mkdir()  # not a checkpoint
    resume = choose_resume(root)
    assert resume.checkpoint == root / "checkpoint-2" and resume.step == 2
    assert [name for name, _ in resume.rejected] == ["checkpoint-6", "checkpoint-4"]
    message = resume.message("stage 2 (difficulty-2)")
    assert message is not None
    assert message.startswith(
        "stage 2 (difficulty-2): checkpoint-6 fails verification (model.safetensors: bytes "
    )
    assert message.endswith(
        "checkpoint-4 fails verification (manifest.json: missing (not completely written, or by "
        "a version before manifests)); resuming from checkpoint-2"
    )
    assert resume.record()[0]["checkpoint"] == "checkpoint-6"


def test_no_checkpoint_verifies_the_stage_starts_over_and_says_so(tmp_path):
    root = tmp_path / "checkpoints"
    truncate(a_checkpoint(root / "checkpoint-2") / "model.safetensors")
    resume = choose_resume(root)
    assert resume.checkpoint is None and resume.step == 0
    assert (resume.message("stage 1 (difficulty-1)") or "").endswith(
        "no checkpoint verifies: training the stage from its start"
    )
    assert choose_resume(tmp_path / "none") == Resume(None)
    assert Resume(None).message("stage 1") is None


def test_rotation_keeps_the_newest_verified_and_drops_later_and_unsealed_ones(tmp_path):
    root = tmp_path / "checkpoints"
    for n in (2, 4, 6, 8, 10):
        a_checkpoint(root / f"checkpoint-{n}")
    (root / "checkpoint-4" / MANIFEST).unlink()
    # the stage resumed from checkpoint-6 (8 and 10 failed) and has just sealed checkpoint-7
    a_checkpoint(root / "checkpoint-7")
    gone = {d.name for d in superseded(root, root / "checkpoint-7", keep=2)}
    assert gone == {"checkpoint-10", "checkpoint-8", "checkpoint-4", "checkpoint-2"}
    assert {d.name for d in superseded(root, root / "checkpoint-7", keep=None)} == {
        "checkpoint-10",
        "checkpoint-8",
        "checkpoint-4",
    }
    assert [d.name for d in checkpoint_dirs(root)][:2] == ["checkpoint-10", "checkpoint-8"]


# ------------------------------------------------------------------ a stage's final weights


def test_damaged_final_weights_are_a_plain_error_naming_the_file(tmp_path):
    stage = tmp_path / "stage_1_difficulty-1"
    model = a_checkpoint(stage / "model")
    require_verified(model, stage)
    flip(model / "model.safetensors")
    with pytest.raises(ManifestError) as e:
        require_verified(model, stage)
    assert str(e.value).startswith(
        f"{model}: model.safetensors does not match its manifest (bytes 0-19967 changed: sha256 "
    )
    assert str(e.value).endswith(
        f"; rerun the stage: delete {stage} and run the same training command again"
    )


def test_final_weights_without_a_manifest_are_read_with_a_warning(tmp_path, caplog):
    model = a_checkpoint(tmp_path / "stage_1_x" / "model")
    (model / MANIFEST).unlink()  # saved by a version before manifests
    with caplog.at_level(logging.WARNING, logger="phasedsft"):
        require_verified(model)
        require_verified(model)
    warned = [r.getMessage() for r in caplog.records if "before manifests" in r.getMessage()]
    assert len(warned) == 1 and str(model) in warned[0]


def tiny_model_dir(tmp_path: Path, tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    model_dir = tmp_path / "stage_1_difficulty-1" / "model"
    LlamaForCausalLM(config).save_pretrained(str(model_dir))
    write_manifest(model_dir)
    return model_dir


def test_a_later_stage_and_evaluate_refuse_damaged_weights(tmp_path, tiny_tokenizer):
    """run.load_stage_model (the next stage's start, the in-run evaluation) and evaluate.py's
    checkpoint lookup verify the weights before reading them."""
    from omegaconf import OmegaConf

    from phasedsft.evaluate.generation import Checkpoint
    from phasedsft.train.run import load_stage_model

    model_dir = tiny_model_dir(tmp_path, tiny_tokenizer)
    stage = model_dir.parent
    assert load_stage_model(model_dir, OmegaConf.create({})) is not None
    ckpt = Checkpoint("run", 1, "difficulty-1", 2, stage, "0" * 64)
    assert ckpt.model_dir == model_dir
    flip(
        model_dir / "model.safetensors",
        offset=(model_dir / "model.safetensors").stat().st_size // 2,
    )
    with pytest.raises(ManifestError, match=r"model\.safetensors does not match its manifest"):
        load_stage_model(model_dir, OmegaConf.create({}))
    fresh = Checkpoint("run2", 1, "difficulty-1", 2, stage, "0" * 64)
    with pytest.raises(ManifestError, match=rf"rerun the stage: delete {stage}"):
        fresh.model_dir  # noqa: B018  (the lookup is the check)


# ------------------------------------------------------------------ real stages resumed over damage

STAGE = ("trainer.save_steps=2", "trainer.keep_checkpoints=true", "trainer.save_total_limit=3")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny stage trained uninterrupted: 5 steps, checkpoints 2, 4, 5 kept."""
    stage_dir = tmp_path_factory.mktemp("clean") / "stage"
    _, train = tiny_stage(tiny_tokenizer, stage_dir, *STAGE)
    record = train()
    assert record["resumed_from"] is None and record["checkpoints_failed_verification"] == []
    assert [d.name for d in checkpoint_dirs(stage_dir / "checkpoints")] == [
        "checkpoint-5",
        "checkpoint-4",
        "checkpoint-2",
    ]
    for d in [*checkpoint_dirs(stage_dir / "checkpoints"), stage_dir / "model"]:
        assert verify(d) is None, d
    return stage_dir


def interrupted_copy(finished: Path, dest: Path) -> Path:
    """The finished stage as a kill after step 4's checkpoint would have left it."""
    shutil.copytree(finished, dest)
    for name in ("stage.json", "metrics.json"):
        (dest / name).unlink()
    for name in ("model", "ranks", "checkpoints/checkpoint-5"):
        shutil.rmtree(dest / name)
    return dest


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("damage", "file"),
    [
        (flip, "model.safetensors"),
        (truncate, "model.safetensors"),
        (empty, "trainer_state.json"),
        (remove, "optimizer.pt"),
        (remove, MANIFEST),
    ],
    ids=["flipped", "truncated", "empty-state", "missing-file", "no-manifest"],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    finished, tmp_path, tiny_tokenizer, caplog, damage, file
):
    stage_dir = interrupted_copy(finished, tmp_path / "stage")
    damage(stage_dir / "checkpoints" / "checkpoint-4" / file)
    _, train = tiny_stage(tiny_tokenizer, stage_dir, *STAGE)
    with caplog.at_level(logging.WARNING, logger="phasedsft"):
        record = train()
    said = [r.getMessage() for r in caplog.records if "fails verification" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith(f"stage 1 (difficulty-1): checkpoint-4 fails verification ({file}: ")
    assert said[0].endswith("; resuming from checkpoint-2")
    assert record["resumed_from"] == "checkpoint-2" and record["fed_matches_plan"]
    (failed,) = record["checkpoints_failed_verification"]
    assert failed["checkpoint"] == "checkpoint-4" and failed["problem"].startswith(f"{file}: ")
    clean = json.loads((finished / "stage.json").read_text())
    assert record["fed_sha256"] == clean["fed_sha256"]
    assert_same_weights(stage_dir / "model", finished / "model")
    # the damaged checkpoint was redone whole, and verifies now
    assert verify(stage_dir / "checkpoints" / "checkpoint-4") is None


@pytest.mark.integration
def test_when_no_checkpoint_verifies_the_stage_trains_from_its_start(
    finished, tmp_path, tiny_tokenizer, caplog
):
    stage_dir = interrupted_copy(finished, tmp_path / "stage")
    flip(stage_dir / "checkpoints" / "checkpoint-4" / "model.safetensors")
    empty(stage_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json")
    _, train = tiny_stage(tiny_tokenizer, stage_dir, *STAGE)
    with caplog.at_level(logging.WARNING, logger="phasedsft"):
        record = train()
    assert any(
        "checkpoint-2 fails verification (trainer_state.json: 0 bytes" in r.getMessage()
        and r.getMessage().endswith("no checkpoint verifies: training the stage from its start")
        for r in caplog.records
    )
    assert record["resumed_from"] is None and record["fed_matches_plan"]
    assert [f["checkpoint"] for f in record["checkpoints_failed_verification"]] == [
        "checkpoint-4",
        "checkpoint-2",
    ]
    assert_same_weights(stage_dir / "model", finished / "model")


def test_a_later_stage_refuses_weights_trained_with_another_tokenizer(tmp_path, tiny_tokenizer):
    """The previous stage's weights continue only with the vocabulary saved beside them: a
    tokenizer that changed between a crash and its resume (a hub revision, tiny's BPE learnt
    from other texts) is refused by name before any weights load."""
    from types import SimpleNamespace

    from phasedsft.models import BuildContext, train_bpe_tokenizer
    from phasedsft.records import UserError
    from phasedsft.train.run import check_same_tokenizer, model_loader

    previous = tmp_path / "stage-1"
    tiny_tokenizer.save_pretrained(previous / "model")
    check_same_tokenizer(previous / "model", tiny_tokenizer)  # the same: nothing to say
    check_same_tokenizer(tmp_path / "no-tokenizer-saved", tiny_tokenizer)
    texts = ["quite other texts", "learnt by another tokenizer"] * 30
    other = train_bpe_tokenizer(BuildContext(tmp_path / "cache", 0, lambda: iter(texts)), 300)
    with pytest.raises(UserError, match=r"stage-1/model was trained with another tokenizer"):
        check_same_tokenizer(previous / "model", other)
    load = model_loader(SimpleNamespace(), None, other, previous, None)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="start a new run"):
        load()  # refused before it reads cfg or any weights
