"""Token counts of many texts, in batches, without keeping the tokens, cached by content.

:func:`token_counts` gives ``len(tokenizer(text, add_special_tokens=False)["input_ids"])`` for
every text, the way Table 1 and the length scorer count, but a batch at a time (only one batch
of texts and encodings alive at once, never one per example) and through the fast tokenizer's
Rust backend directly (``encode_batch_fast``: no offsets, no Python lists of ids) where that
counts the same: a fast tokenizer whose backend pads or truncates on its own is counted
through ``tokenizer(...)``, which turns both off.

With a ``cache_dir``, counts are kept in ``<cache_dir>/token_counts/<tokenizer>.npz``: the
tokenizer's key is the hash of its whole definition (``tokenizer.json``), each text's the
BLAKE2b-128 of its UTF-8 bytes, so a count is reused only for the same text under the same
tokenizer, and a second run (another method, a subsample) tokenizes nothing it counted before.
A slow (Python) tokenizer has no such definition and is never cached. The file is replaced
atomically; two jobs writing at once can only lose each other's new counts, never corrupt them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from phasedsft.io import current_umask

log = logging.getLogger(__name__)

BATCH = 2048
CACHE_VERSION = 1


def _batches(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(texts)
    while batch := list(islice(it, size)):
        yield batch


def _backend(tokenizer: Any) -> Any | None:
    """The Rust tokenizer that counts exactly as ``tokenizer(texts, add_special_tokens=False)``
    does, or ``None``."""
    if not getattr(tokenizer, "is_fast", False):
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None
    return backend


def _count(tokenizer: Any, backend: Any | None, batch: list[str]) -> list[int]:
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
        return [len(e) for e in encode(batch, add_special_tokens=False)]
    return [len(t) for t in tokenizer(batch, add_special_tokens=False)["input_ids"]]


def _text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class CountCache:
    """Known counts of one tokenizer: sorted 16-byte text hashes and their counts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys = np.empty(0, dtype="S16")
        self.counts = np.empty(0, dtype=np.int64)
        self.new_keys: list[bytes] = []
        self.new_counts: list[int] = []
        if path.exists():
            try:
                with np.load(path) as f:
                    self.keys, self.counts = f["keys"], f["counts"]
            except Exception as e:  # a damaged cache is recounted, never trusted
                log.warning("ignoring unreadable token-count cache %s: %s", path, e)

    def lookup(self, keys: list[bytes]) -> list[int | None]:
        if not len(self.keys):
            return [None] * len(keys)
        wanted = np.array(keys, dtype="S16")
        at = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        hit = self.keys[at] == wanted
        return [int(c) if h else None for c, h in zip(self.counts[at], hit, strict=True)]

    def add(self, keys: list[bytes], counts: list[int]) -> None:
        self.new_keys += keys
        self.new_counts += counts

    def save(self) -> None:
        if not self.new_keys:
            return
        keys = np.concatenate([self.keys, np.array(self.new_keys, dtype="S16")])
        counts = np.concatenate([self.counts, np.array(self.new_counts, dtype=np.int64)])
        keys, first = np.unique(keys, return_index=True)  # sorted, each text once
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            os.fchmod(fd, 0o666 & ~current_umask())  # a shared cache: readable as the others are
            with os.fdopen(fd, "wb") as f:
                np.savez(f, keys=keys, counts=counts[first])
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.keys, self.counts = keys, counts[first]
        self.new_keys, self.new_counts = [], []


def cache_path(tokenizer: Any, cache_dir: Path) -> Path | None:
    """Where this tokenizer's counts are kept, or ``None`` when they cannot be (slow tokenizer)."""
    backend = _backend(tokenizer)
    if backend is None:
        return None
    definition = f"v{CACHE_VERSION}\n{backend.to_str()}"  # normalizer, pre-tokenizer, model...
    key = hashlib.sha256(definition.encode("utf-8")).hexdigest()[:24]
    return cache_dir / "token_counts" / f"{key}.npz"


def token_counts(
    tokenizer: Any,
    texts: Iterable[str],
    cache_dir: Path | None = None,
    batch_size: int = BATCH,
) -> list[int]:
    """The number of tokens (no special tokens added) of each of ``texts``, in order; with
    ``cache_dir``, read from and added to the token-count cache there."""
    backend = _backend(tokenizer)
    path = cache_path(tokenizer, cache_dir) if cache_dir is not None else None
    if path is None:
        return [
            n for batch in _batches(texts, batch_size) for n in _count(tokenizer, backend, batch)
        ]
    cache = CountCache(path)
    counts: list[int] = []
    for batch in _batches(texts, batch_size):
        keys = [_text_key(t) for t in batch]
        known = cache.lookup(keys)
        missing = [i for i, n in enumerate(known) if n is None]
        if missing:
            fresh = _count(tokenizer, backend, [batch[i] for i in missing])
            cache.add([keys[i] for i in missing], fresh)
            for i, n in zip(missing, fresh, strict=True):
                known[i] = n
        counts.extend(n for n in known if n is not None)  # (every None was filled above)
    cache.save()
    return counts
