"""Embeddings of benchmark texts, cached on disk under ``.bench/embeddings/`` (gitignored) in resumable chunks.

Embedding the 105k distinct QQP questions takes a good while on two cores; a chunk that is done survives an
interrupted run. Chunks are named by the hash of their texts, so a changed data set or order recomputes.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from thrifty.caches.embedders import Embedder

CACHE_DIR = Path(__file__).resolve().parent.parent / ".bench" / "embeddings"
CHUNK = 4096


def embed_cached(embedder: Embedder, texts: Sequence[str], chunk: int = CHUNK) -> NDArray[np.float32]:
    """Rows for ``texts`` in order; each chunk is computed once per embedder name and then read back."""
    folder = CACHE_DIR / embedder.name
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    started = time.perf_counter()
    for start in range(0, len(texts), chunk):
        part = list(texts[start : start + chunk])
        digest = hashlib.sha256("\x00".join(part).encode()).hexdigest()[:24]
        path = folder / f"{digest}.npy"
        if path.exists():
            parts.append(np.load(path))
            continue
        vectors = embedder.embed(part)
        np.save(path.with_suffix(".tmp.npy"), vectors)
        path.with_suffix(".tmp.npy").rename(path)
        parts.append(vectors)
        done = min(start + chunk, len(texts))
        print(f"  embedded {done}/{len(texts)} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    if not parts:
        return np.zeros((0, embedder.dimensions), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)
