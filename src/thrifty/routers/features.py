"""What the learned router sees of a prompt: hashed n-grams, its shape, and optionally a sentence embedding.

- word 1-2-grams and character 3-5-grams within words, signed-hashed into ``dim`` buckets (crc32, stable across
  processes), sublinear TF-IDF, L2-normalised: what the prompt is about;
- seven shape features (length in characters and words, numbers, lines, sentences, operators, code punctuation),
  standardised: how hard it looks, the part that transfers across domains;
- optionally a sentence embedding (``Embedder``, unit rows): what the prompt means, also for words never seen in
  training. MiniLM costs tens of milliseconds per prompt on a CPU, so it is an option, off by default.

Blocks are scaled before one ridge penalty: scaling a block by ``s`` penalises it ``s**2`` times less.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Array = NDArray[np.float64]

SHAPES = 7
_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# Long prompts are hashed by their head and tail only: it bounds decision time, and the ask is usually at an end.
_HEAD_CHARS = 3000
_TAIL_CHARS = 3000


class PromptEmbedder(Protocol):
    """``thrifty.caches.embedders.Embedder``, as far as the router needs it."""

    @property
    def name(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Any: ...


def require_numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError("the learned router needs numpy: pip install 'thrifty[routing]'") from exc
    return numpy


@dataclass(frozen=True)
class FeatureSpace:
    """The fitted part of the features: IDF weights, shape statistics and block scales."""

    dim: int
    idf: Array
    shape_mean: Array
    shape_std: Array
    shape_scale: float
    embedder: PromptEmbedder | None = None
    embedding_scale: float = 1.0

    @property
    def width(self) -> int:
        return self.dim + SHAPES + (self.embedder.dimensions if self.embedder else 0)

    def raw(self, prompts: Sequence[str]) -> tuple[Array, Array, Array | None]:
        """The parts computed from the text alone (the slow part, reusable across fits on the same prompts)."""
        np = require_numpy()
        hashed = np.vstack([hash_counts(p, self.dim) for p in prompts]) if prompts else np.zeros((0, self.dim))
        vectors = None
        if self.embedder is not None:
            vectors = np.asarray(self.embedder.embed(list(prompts)), dtype=np.float64)
            vectors = vectors.reshape(len(prompts), self.embedder.dimensions)
        return hashed, shape_features(prompts), vectors

    def encode(self, hashed: Array, shapes: Array, vectors: Array | None) -> Array:
        np = require_numpy()
        tf = np.sign(hashed) * np.log1p(np.abs(hashed)) * self.idf
        tf /= np.maximum(np.linalg.norm(tf, axis=1, keepdims=True), 1e-12)
        z = (shapes - self.shape_mean) / self.shape_std * (self.shape_scale / np.sqrt(SHAPES))
        blocks = [tf, z]
        if vectors is not None:
            blocks.append(vectors * self.embedding_scale)
        return np.hstack(blocks)  # type: ignore[no-any-return]

    def __call__(self, prompts: Sequence[str]) -> Array:
        return self.encode(*self.raw(prompts))


def fit_space(
    hashed: Array, shapes: Array, dim: int, shape_scale: float, embedder: PromptEmbedder | None
) -> FeatureSpace:
    np = require_numpy()
    document_freq = (hashed != 0).sum(axis=0)
    return FeatureSpace(
        dim=dim,
        idf=np.log((1 + len(hashed)) / (1 + document_freq)) + 1.0,
        shape_mean=shapes.mean(axis=0),
        shape_std=shapes.std(axis=0) + 1e-6,
        shape_scale=shape_scale,
        embedder=embedder,
    )


def hash_counts(text: str, dim: int) -> Array:
    """Signed hashed counts of the prompt's word and character n-grams (signs cancel collisions on average)."""
    np = require_numpy()
    if len(text) > _HEAD_CHARS + _TAIL_CHARS:
        text = text[:_HEAD_CHARS] + " " + text[-_TAIL_CHARS:]
    words = _WORD.findall(text.lower())
    grams: Counter[str] = Counter("w " + w for w in words)
    grams.update("b " + a + " " + b for a, b in itertools.pairwise(words))
    for word, count in Counter(words).items():
        padded = f" {word} "
        for n in (3, 4, 5):
            for i in range(len(padded) - n + 1):
                grams[padded[i : i + n]] += count
    if not grams:
        return np.zeros(dim)  # type: ignore[no-any-return]
    hashes = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.int64, count=len(grams))
    counts = np.fromiter(grams.values(), dtype=np.float64, count=len(grams))
    signs = np.where(hashes & (1 << 31), -1.0, 1.0)
    return np.bincount(hashes % dim, weights=signs * counts, minlength=dim)  # type: ignore[no-any-return]


def shape_features(prompts: Sequence[str]) -> Array:
    """Length, and counts of words, numbers, lines and kinds of punctuation. A long prompt's counts are read on
    its head and tail and scaled to its length: a scan of a whole 1M-character prompt took a quarter second."""
    np = require_numpy()
    rows = []
    for prompt in prompts:
        p, scale = prompt, 1.0
        if len(p) > _HEAD_CHARS + _TAIL_CHARS:
            p = p[:_HEAD_CHARS] + " " + p[-_TAIL_CHARS:]
            scale = len(prompt) / len(p)
        counts = [
            len(_WORD.findall(p)),
            len(_NUMBER.findall(p)),
            p.count("\n"),
            sum(p.count(c) for c in ".?!"),
            sum(p.count(c) for c in "+-*/=^<>%$"),
            sum(p.count(c) for c in "{}[]();_"),
        ]
        rows.append([len(prompt), *(scale * c for c in counts)])
    return np.log1p(np.array(rows, dtype=np.float64).reshape(len(prompts), SHAPES))  # type: ignore[no-any-return]


def embedder_named(name: str) -> PromptEmbedder:
    """The embedder a saved router names: ``all-MiniLM-L6-v2`` (extra ``semantic``) or ``hashing-N``."""
    from thrifty.caches.embedders import HashingEmbedder, MiniLMEmbedder

    if name in (MiniLMEmbedder.name, "minilm"):
        return MiniLMEmbedder()
    if name.startswith("hashing-") and name.removeprefix("hashing-").isdigit():
        return HashingEmbedder(int(name.removeprefix("hashing-")))
    raise ValueError(f"unknown embedder {name!r}: expected 'minilm' ({MiniLMEmbedder.name}) or 'hashing-N'")
