"""Embeddings for the diversity rule (``selection=diverse``): hashed TF-IDF (the default:
deterministic, offline, no model), or a model's (``selection.embedding=model``).

Deita measures how close two examples are by the cosine similarity of a trained model's
embeddings. Here the embedding is TF-IDF over hashed word unigrams and bigrams of the whole
example (instruction, input, output): ``zlib.crc32`` of each feature picks one of ``dims``
columns and its sign, term frequencies are sublinear (log(1 + tf)), IDF is computed over the
examples being selected, and rows are L2-normalised. Why not a model: the offline default
model (``model=tiny``) is random-initialised, so its hidden states carry no meaning, and a
pass of SmolLM2-135M over 52K examples costs about an hour on this project's 2 CPU cores,
against seconds here; hashed TF-IDF is the same on every machine and every run (no floating
point from a forward pass), needs no download, and captures what the rule needs (near
duplicates and paraphrased templates score high). The price: it sees words, not meaning.

``selection.embedding=model`` embeds as Deita does, with a model: each example's text through
``embed_model`` (any transformers model: a hub id or a local directory, a GGUF file in it with
``embed_gguf_file``), its last hidden states mean-pooled over the real tokens and L2-normalised
(:func:`model_embeddings`). Tested offline on SmolLM2-135M-Instruct (the packaged GGUF).
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Iterable, Sequence

import numpy as np

from phasedsft.records import Example

_WORD = re.compile(r"\w+")


def texts(examples: Sequence[Example], positions: Iterable[int]) -> list[str]:
    return [
        f"{examples[i].instruction}\n{examples[i].input}\n{examples[i].output}" for i in positions
    ]


def features(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def hashed(docs: Sequence[str], dims: int = 1024) -> np.ndarray:
    """One unit-length float32 row per document (see the module doc); an empty one stays zero."""
    counts = np.zeros((len(docs), dims), dtype=np.float32)
    for row, doc in enumerate(docs):
        for feat in features(doc):
            h = zlib.crc32(feat.encode("utf-8"))
            counts[row, h % dims] += 1.0 if (h >> 31) & 1 else -1.0
    tf = np.sign(counts) * np.log1p(np.abs(counts))  # log(1 + tf), the hash's sign kept
    df = (counts != 0).sum(axis=0)
    idf = np.log((1 + len(docs)) / (1 + df)).astype(np.float32) + 1.0
    x = tf * idf
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def model_embeddings(
    docs: Sequence[str],
    path: str,
    gguf_file: str | None = None,
    batch_size: int = 16,
    max_tokens: int = 512,
) -> np.ndarray:
    """One unit-length float32 row per document: the mean of ``path``'s last hidden states over
    the document's tokens (padding left out), in batches, in evaluation mode."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModel.from_pretrained(path, gguf_file=gguf_file, torch_dtype=torch.float32)
    model.eval()
    rows = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(docs), batch_size), desc="embed", unit="batch"):
            batch = tokenizer(
                list(docs[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_tokens,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    if not rows:
        return np.zeros((0, int(model.config.hidden_size)), dtype=np.float32)
    return np.concatenate(rows).astype(np.float32)
