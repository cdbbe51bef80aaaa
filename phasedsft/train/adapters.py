"""LoRA adapters (``trainer/peft=lora``): one adapter carried through every stage.

Stage 1 wraps the base model in a fresh adapter; each later stage reloads the base model and
the previous stage's adapter and keeps training it (the phased recipe with the same
hyper-parameters, only the trainable weights differ). Every stage writes ``adapter/`` (what the
next stage continues) and ``model/``: the base with the adapter merged, so generation,
evaluation and the next tools load ordinary weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phasedsft.records import DataError


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)  # from the model config
    bias: str = "none"

    def __post_init__(self) -> None:
        if self.bias not in ("none", "all", "lora_only"):
            raise DataError(f"trainer.peft.bias must be none, all or lora_only; got {self.bias!r}")
        if not self.target_modules:
            raise DataError("trainer.peft.target_modules is empty: set model.lora_target_modules")

    def config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias=self.bias,  # type: ignore[arg-type]  # checked in __post_init__
            task_type="CAUSAL_LM",
        )

    def wrap(self, base: Any) -> Any:
        """A fresh adapter on the base model (stage 1)."""
        from peft import get_peft_model, prepare_model_for_kbit_training

        if getattr(base, "is_loaded_in_4bit", False):  # QLoRA: quantized base, trainable adapter
            base = prepare_model_for_kbit_training(base)
        return get_peft_model(base, self.config())

    def resume(self, base: Any, adapter_dir: Path) -> Any:
        """The previous stage's adapter, trainable again (stages 2..k)."""
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)

    def merged(self, base: Any, adapter_dir: Path) -> Any:
        """Base + adapter folded into ordinary weights."""
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
