"""Mixed precision that keeps fp32 master weights, and the guard that enforces it.

The hub model configs load their weights in bfloat16 (half the memory). Trained as they are
by a plain optimizer, those bf16 weights would also be the optimizer's master weights: at the
paper's learning rate (5e-6) most updates are smaller than half a bf16 ulp of the weight and
round away (measured on a tiny Llama: 7.6 % of the parameters changed by one step, against
98.8 % in fp32). Correct mixed precision keeps fp32 master weights and computes in bf16:

- plain Trainer: fp32 parameters + ``bf16=True`` (torch autocast);
- DeepSpeed (ZeRO 1-3): ``bf16.enabled`` (or ``fp16``): DeepSpeed keeps fp32 master
  partitions itself, so 16-bit model weights are what it expects.

:func:`resolve_half` turns ``trainer.bf16`` / ``trainer.fp16`` (``null`` = auto: bf16 wherever
a CUDA GPU supports it) into the Trainer's booleans; :func:`guard_master_weights` looks at the
trainable parameters right before training and upcasts them to fp32 (``trainer.upcast_half_weights:
true``, the default) or refuses with a plain error, whenever half-precision weights would meet
an optimizer without fp32 masters.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from phasedsft.records import UserError

log = logging.getLogger(__name__)

HALF = (torch.bfloat16, torch.float16)


class PrecisionError(UserError, RuntimeError):
    """Half-precision weights would be trained without fp32 master weights."""


def bf16_available() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_half(bf16: bool | None, fp16: bool | None, use_cpu: bool = False) -> tuple[bool, bool]:
    """The Trainer's ``(bf16, fp16)``: ``None`` means bf16 autocast where a GPU supports it."""
    gpu_bf16 = bf16_available() and not use_cpu
    want_bf16 = gpu_bf16 if bf16 is None else bool(bf16)
    want_fp16 = False if fp16 is None else bool(fp16)
    if want_bf16 and want_fp16:
        raise PrecisionError("trainer.bf16 and trainer.fp16 are both true: choose one")
    return want_bf16, want_fp16


def deepspeed_half(ds: Mapping[str, Any] | None, bf16: bool, fp16: bool) -> bool:
    """Whether a DeepSpeed config trains in 16 bits (and so keeps fp32 masters itself).

    ``"auto"`` fields are filled by the Trainer from its own ``bf16`` / ``fp16``.
    """
    if not ds:
        return False

    def enabled(key: str, trainer_value: bool) -> bool:
        node = ds.get(key) or {}
        value = node.get("enabled", False) if isinstance(node, Mapping) else False
        return trainer_value if value == "auto" else bool(value)

    return enabled("bf16", bf16) or enabled("fp16", fp16)


def half_trainable(model: Any) -> dict[str, int]:
    """Trainable parameter counts per half-precision dtype (empty: none is half)."""
    out: dict[str, int] = {}
    for p in model.parameters():
        if p.requires_grad and p.dtype in HALF:
            out[str(p.dtype).removeprefix("torch.")] = (
                out.get(str(p.dtype).removeprefix("torch."), 0) + p.numel()
            )
    return out


def guard_master_weights(
    model: Any, *, deepspeed: Mapping[str, Any] | None, bf16: bool, fp16: bool, upcast: bool
) -> Any:
    """Make sure the optimizer will update fp32 weights; return the model to train.

    Safe as it is: every trainable parameter is fp32, or DeepSpeed trains in 16 bits (its
    optimizer holds fp32 masters). Otherwise the trainable parameters are upcast to fp32
    (frozen ones, e.g. a LoRA base, keep their dtype), or, with ``upcast=False``, a
    :class:`PrecisionError` says what to change.
    """
    half = half_trainable(model)
    if not half or deepspeed_half(deepspeed, bf16, fp16):
        return model
    what = ", ".join(f"{n:,} {d}" for d, n in sorted(half.items()))
    if not upcast:
        raise PrecisionError(
            f"{what} trainable parameters would be updated without fp32 master weights (at "
            "lr 5e-6 most bf16 updates round to zero). Load the model in float32 "
            "(model.loader.dtype=float32), train with a DeepSpeed config in bf16 "
            "(trainer/deepspeed=zero3 with trainer.bf16=true), or set "
            "trainer.upcast_half_weights=true"
        )
    for p in model.parameters():
        if p.requires_grad and p.dtype in HALF:
            p.data = p.data.float()
    log.info(
        "upcast %s trainable parameters to float32 master weights%s",
        what,
        " (bf16 autocast computes in bf16)" if bf16 else "",
    )
    return model
