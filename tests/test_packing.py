"""Padding-free packing in the planned order (trainer.packing=true): rows of consecutive planned
examples, attention and loss kept per example, the fed-order audit over packs, resume."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY
from helpers import tiny_stage, weights

from phasedsft.prompts import IGNORE_INDEX, Encoded
from phasedsft.train.audit import AuditError, FedLog, FeedShape, audit_fed
from phasedsft.train.packed import PackedCollator, PackedDataset
from phasedsft.train.packing import flat_layout, pack_plan, packed_row
from phasedsft.train.stage import (
    STAGE_FILE,
    Collator,
    SequenceDataset,
)

# ------------------------------------------------------------------ the packs


def test_packs_are_consecutive_in_plan_order_and_within_the_budget():
    lengths = [5, 3, 4, 9, 2, 2, 12, 1]
    packs = pack_plan(lengths, 10)
    assert packs == [[0, 1], [2], [3], [4, 5], [6], [7]]
    assert [p for pack in packs for p in pack] == list(range(len(lengths)))  # order kept
    # an example longer than the budget gets a row of its own; every other row fits
    assert all(sum(lengths[p] for p in pack) <= 10 or len(pack) == 1 for pack in packs)
    assert pack_plan([], 10) == []
    with pytest.raises(ValueError):
        pack_plan([1], 0)


def test_a_row_restarts_positions_and_masks_each_examples_first_token():
    a = Encoded([1, 5, 6], [IGNORE_INDEX, 5, 6])
    b = Encoded([1, 7, 8, 9], [IGNORE_INDEX, IGNORE_INDEX, 8, 9])
    row = packed_row([a, b])
    assert row["input_ids"] == [1, 5, 6, 1, 7, 8, 9]
    assert row["position_ids"] == [0, 1, 2, 0, 1, 2, 3]
    assert row["labels"] == [IGNORE_INDEX, 5, 6, IGNORE_INDEX, IGNORE_INDEX, 8, 9]
    batch = PackedCollator(0)([{**row, "positions": [0, 1]}, {**packed_row([a]), "positions": [2]}])
    assert batch["input_ids"].shape == (2, 7) and "attention_mask" not in batch
    assert batch["labels"][1].tolist()[3:] == [IGNORE_INDEX] * 4  # padding is never a target
    assert batch["positions"].tolist() == [0, 1, 2] and batch["use_cache"] is False


# ------------------------------------------------------------------ same loss as unpacked


def tiny_llama(attn: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).eval()


def examples(n: int = 5) -> dict[str, Encoded]:
    g = torch.Generator().manual_seed(1)
    out = {}
    for i in range(n):
        length = int(torch.randint(5, 12, (1,), generator=g))
        ids = torch.randint(1, 64, (length,), generator=g).tolist()
        prompt = int(torch.randint(1, length - 1, (1,), generator=g))
        out[f"e{i}"] = Encoded(ids, [IGNORE_INDEX] * prompt + ids[prompt:])
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_logits_equal_the_unpacked_ones(attn):
    model, enc = tiny_llama(attn), examples()
    seq = sorted(enc)
    unpacked = Collator(0)([SequenceDataset(enc, seq)[i] for i in range(len(seq))])
    unpacked.pop("positions")
    packed = PackedCollator(0)([PackedDataset(enc, seq, [list(range(len(seq)))])[0]])
    packed.pop("positions")
    with torch.no_grad():
        a, b = model(**unpacked), model(**packed)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)
    # every example's logits, token by token: no attention crosses an example boundary
    start = 0
    for row, key in enumerate(seq):
        n = len(enc[key].input_ids)
        torch.testing.assert_close(
            b.logits[0, start : start + n], a.logits[row, :n], atol=1e-5, rtol=1e-4
        )
        start += n
    # flat: two rows of the batch end to end as one sequence, nothing padded: the same loss
    rows = [PackedDataset(enc, seq, [[0, 1], [2, 3, 4]])[j] for j in range(2)]
    padded, flat = PackedCollator(0)(rows), PackedCollator(0, flat=True)(rows)
    assert flat["input_ids"].shape == (1, sum(len(e.input_ids) for e in enc.values()))
    assert flat["positions"].tolist() == padded["positions"].tolist() == [0, 1, 2, 3, 4]
    for batch in (padded, flat):
        batch.pop("positions")
        with torch.no_grad():
            torch.testing.assert_close(model(**batch).loss, a.loss, rtol=1e-5, atol=1e-6)
    # the same row without restarting positions attends across examples: the check can fail
    naive = {**packed, "position_ids": torch.arange(packed["input_ids"].shape[1])[None]}
    with torch.no_grad():
        assert not torch.allclose(model(**naive).loss, a.loss, atol=1e-4)


@pytest.mark.parametrize(
    ("layout", "attn", "flat"),
    [
        ("auto", "flash_attention_2", True),  # varlen kernels: no attention across examples
        ("auto", "sdpa", False),  # a dense mask over the whole batch: rows instead
        ("auto", "eager", False),
        ("rows", "flash_attention_2", False),
        ("flat", "sdpa", True),
    ],
)
def test_the_packing_layout_is_flat_with_flash_attention_or_when_asked(layout, attn, flat):
    from types import SimpleNamespace

    from phasedsft.config import PackingLayout

    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation=attn))
    assert flat_layout(PackingLayout(layout), model) is flat


def test_a_packing_layout_typo_fails_at_compose_time():
    from conftest import compose
    from hydra.errors import ConfigCompositionException

    assert compose(["trainer.packing_layout=flat"]).trainer.packing_layout.value == "flat"
    with pytest.raises(ConfigCompositionException, match="packing_layout"):
        compose(["trainer.packing_layout=flatt"])


# ------------------------------------------------------------------ the audit over packs


def test_the_audit_expands_packs_and_catches_a_reordered_one(tmp_path):
    packs = [[0, 1, 2], [3], [4, 5], [6, 7, 8, 9]]
    seq = [f"e{i}" for i in range(10)]
    shape = FeedShape(n_planned=len(packs), ranks=1, batch_size=2, units=packs)
    assert shape.steps() == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]
    good = FedLog(tmp_path / "good.jsonl", seq)
    good.record(0, [0, 1, 2, 3])
    good.record(1, [4, 5, 6, 7, 8, 9])
    assert audit_fed({0: good}, shape, 2).ok
    bad = FedLog(tmp_path / "bad.jsonl", seq)
    bad.record(0, [0, 1, 2, 4, 5])  # pack 2 fed in step 0, pack 1 in step 1
    bad.record(1, [3, 6, 7, 8, 9])
    result = audit_fed({0: bad}, shape, 2)
    assert not result.ok and "optimizer step 0: planned position 3" in (result.problem or "")
    two = FeedShape(n_planned=len(packs), ranks=2, batch_size=1, units=packs)
    assert two.padding() == [0, 0] and two.steps()[0] == [0, 1, 2, 3]
    odd = FeedShape(n_planned=3, ranks=2, batch_size=1, units=packs[:3])
    assert odd.steps()[1] == [4, 5, 0, 1, 2] and odd.padding() == [0, 3]


# ------------------------------------------------------------------ a real stage, packed


@pytest.fixture
def packed_stage(tiny_tokenizer, tmp_path):
    """The audit tests' stage, packed into rows of at most 40 tokens, 2 rows a step."""
    return tiny_stage(
        tiny_tokenizer,
        tmp_path / "stage_1_difficulty-1",
        "trainer.save_steps=2",
        "trainer.packing=true",
        "trainer.packing_max_tokens=40",
        "trainer.per_device_train_batch_size=2",
    )


def test_a_packed_stage_feeds_its_plan_in_fewer_rows(packed_stage):
    spec, train = packed_stage
    record = train()
    assert record["fed_matches_plan"] is True and record["n_fed"] == 40
    assert 10 <= record["packed_rows"] < 20  # 3-4 examples of 6-13 tokens per 40-token row
    assert record["global_step"] == -(-record["packed_rows"] // 2)
    logged = (spec.dir / "fed_ids.jsonl").read_text().splitlines()
    assert len(logged) == record["global_step"]  # one micro-batch (2 rows) per step


def test_a_flat_packed_stage_trains_to_the_weights_of_padded_rows(
    packed_stage, tiny_tokenizer, tmp_path
):
    spec, train = packed_stage
    rows = train()
    flat_spec, train_flat = tiny_stage(
        tiny_tokenizer,
        tmp_path / "flat" / "stage_1_difficulty-1",
        "trainer.save_steps=2",
        "trainer.packing=true",
        "trainer.packing_max_tokens=40",
        "trainer.per_device_train_batch_size=2",
        "trainer.packing_layout=flat",
    )
    flat = train_flat()
    assert flat["fed_matches_plan"] is True and flat["fed_sha256"] == rows["fed_sha256"]
    assert flat["global_step"] == rows["global_step"]
    got, want = weights(flat_spec.dir / "model"), weights(spec.dir / "model")
    loss = [r["metrics"]["train"]["train_loss"] for r in (flat, rows)]
    assert loss[0] == pytest.approx(loss[1], rel=1e-4) and loss[0] > 0
    for k, v in got.items():
        torch.testing.assert_close(v, want[k], rtol=1e-4, atol=1e-5)


def test_a_packed_stage_fed_out_of_order_fails(packed_stage, monkeypatch):
    spec, train = packed_stage
    read = PackedDataset.__getitem__
    swap = {0: 5, 5: 0}  # the first row and the sixth trade places
    monkeypatch.setattr(PackedDataset, "__getitem__", lambda self, j: read(self, swap.get(j, j)))
    with pytest.raises(AuditError, match="at optimizer step 0: planned position 0"):
        train()
    assert not (spec.dir / STAGE_FILE).exists()


def test_a_packed_stage_resumed_mid_stage_ends_as_an_uninterrupted_one(packed_stage, monkeypatch):
    spec, train = packed_stage
    clean = train()
    before = {k: v.clone() for k, v in weights(spec.dir / "model").items()}
    # the same stage, stopped after its step-4 checkpoint, then rerun
    import shutil

    shutil.rmtree(spec.dir)
    from transformers import TrainerCallback

    class StopAt4(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise KeyboardInterrupt

    from phasedsft.train import stage as stage_module

    real = stage_module.stage_trainer

    def with_stop(*a, **k):
        trainer = real(*a, **k)
        trainer.add_callback(StopAt4())
        return trainer

    monkeypatch.setattr(stage_module, "stage_trainer", with_stop)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(stage_module, "stage_trainer", real)
    assert not (spec.dir / STAGE_FILE).exists()
    resumed = train()
    assert resumed["resumed_from"] == "checkpoint-4" and resumed["fed_matches_plan"] is True
    assert resumed["fed_sha256"] == clean["fed_sha256"]
    for k, v in weights(spec.dir / "model").items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ train.py, packed


@pytest.mark.integration
def test_train_py_packed_run_and_its_plan_agree(tmp_path):
    import json
    import re
    import sys

    from helpers import run_command, run_dir, stage_dirs

    args = [sys.executable, "train.py", *TINY, "ordering=1-2", "trainer.packing=true"]
    args += ["trainer.packing_max_tokens=1024", "eval.generate=false", f"run.root={tmp_path}"]
    plan = run_command([*args, "plan_only=true"], timeout=600)
    planned = [int(n) for n in re.findall(r"(\d+) steps(?! on)", plan.stdout)]
    run_command(args, timeout=900)
    records = [json.loads((d / STAGE_FILE).read_text()) for d in stage_dirs(run_dir(tmp_path))]
    assert [r["global_step"] for r in records] == planned and len(planned) == 2
    for r in records:
        assert r["fed_matches_plan"] is True and r["packed_rows"] < r["n_fed"]
