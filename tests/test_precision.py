"""fp32 master weights: half-precision hub weights are never updated by a half-precision optimizer."""

from __future__ import annotations

import pytest
import torch
from conftest import compose
from omegaconf import OmegaConf

from phasedsft.train.precision import (
    PrecisionError,
    deepspeed_half,
    guard_master_weights,
    half_trainable,
    resolve_half,
)

HUB_MODELS = ["llama2_7b", "llama2_13b", "mistral_7b"]


def bf16_llama():
    """A small Llama loaded the way the hub configs load theirs: ``dtype: bfloat16``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).to(torch.bfloat16)


def one_paper_step(model, tmp_path, tcfg) -> float:
    """Share of parameter elements changed by one optimizer step under ``trainer=paper``."""
    from transformers import Trainer

    from phasedsft.train.stage import training_arguments

    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 64, (24,), generator=g).tolist()} for _ in range(16)]
    data = [{"input_ids": r["input_ids"], "labels": r["input_ids"]} for r in rows]

    def collate(batch):
        return {k: torch.tensor([b[k] for b in batch]) for k in ("input_ids", "labels")}

    args = training_arguments(tcfg, tmp_path, seed=0, report_to=[])
    args.remove_unused_columns = False
    Trainer(model=model, args=args, train_dataset=data, data_collator=collate).train()
    changed = total = 0
    for n, p in model.named_parameters():
        changed += int((p.detach().float() != before[n]).sum())
        total += p.numel()
    return changed / total


def paper_trainer(**changes):
    """The composed ``trainer=paper`` of a hub model, one step at its learning rate, on CPU."""
    tcfg = compose(["model=llama2_7b"]).trainer
    OmegaConf.set_struct(tcfg, False)
    tcfg.update(
        {
            "max_steps": 1,
            "warmup_ratio": 0.0,  # the first scheduled step would have lr 0
            "per_device_train_batch_size": 16,
            "save_steps": 100,
            "logging_steps": 100,
            "use_cpu": True,
            **changes,
        }
    )
    return tcfg


def test_hub_configs_load_half_weights_and_train_with_the_guard_on():
    for name in HUB_MODELS:
        cfg = compose([f"model={name}"])
        assert cfg.model.loader.dtype == "bfloat16"
        assert cfg.trainer.upcast_half_weights is True
        assert cfg.trainer.bf16 is None  # auto: bf16 autocast wherever a GPU supports it


def test_guarded_paper_step_changes_almost_every_parameter(tmp_path):
    tcfg = paper_trainer()
    model = bf16_llama()
    bf16, fp16 = resolve_half(tcfg.bf16, tcfg.fp16, tcfg.use_cpu)
    model = guard_master_weights(model, deepspeed=None, bf16=bf16, fp16=fp16, upcast=True)
    assert half_trainable(model) == {}
    assert one_paper_step(model, tmp_path, tcfg) >= 0.9


def test_unguarded_bf16_step_rounds_most_updates_away(tmp_path):
    """What the guard prevents: bf16 weights as the optimizer's own weights lose most updates."""
    share = one_paper_step(bf16_llama(), tmp_path, paper_trainer())
    assert share < 0.5


def test_guard_refuses_when_upcasting_is_off():
    with pytest.raises(PrecisionError, match="without fp32 master weights"):
        guard_master_weights(bf16_llama(), deepspeed=None, bf16=True, fp16=False, upcast=False)


def test_deepspeed_in_16_bits_keeps_its_own_fp32_masters():
    zero3 = OmegaConf.to_container(compose(["trainer/deepspeed=zero3"]).trainer.deepspeed)
    assert deepspeed_half(zero3, bf16=True, fp16=False)  # "auto" follows the Trainer
    assert not deepspeed_half(zero3, bf16=False, fp16=False)
    model = bf16_llama()
    kept = guard_master_weights(model, deepspeed=zero3, bf16=True, fp16=False, upcast=False)
    assert half_trainable(kept)  # left as loaded: DeepSpeed's optimizer holds fp32 partitions
    # the same weights under a ZeRO config that trains in fp32 are the unsafe combination
    with pytest.raises(PrecisionError):
        guard_master_weights(bf16_llama(), deepspeed=zero3, bf16=False, fp16=False, upcast=False)


def test_frozen_half_weights_stay_half():
    """LoRA: only trainable parameters need fp32 masters; the frozen base keeps its dtype."""
    model = bf16_llama()
    for name, p in model.named_parameters():
        p.requires_grad = "q_proj" in name
    guard_master_weights(model, deepspeed=None, bf16=True, fp16=False, upcast=True)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "q_proj" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "q_proj" not in n)


def test_bf16_auto_means_autocast_on_a_bf16_gpu_only(monkeypatch):
    import phasedsft.train.precision as precision

    monkeypatch.setattr(precision, "bf16_available", lambda: True)
    assert resolve_half(None, False) == (True, False)
    assert resolve_half(None, False, use_cpu=True) == (False, False)
    assert resolve_half(False, True) == (False, True)
    monkeypatch.setattr(precision, "bf16_available", lambda: False)
    assert resolve_half(None, False) == (False, False)
    with pytest.raises(PrecisionError):
        resolve_half(True, True)
