"""The in-process vector index: exact nearest neighbours, partitions that never leak, removal, the HNSW path."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from thrifty.caches.vector_index import MAX_SEARCH_BEAM, NumpyVectorIndex, search_beam

DIM = 16


def unit(rng: np.random.Generator, n: int) -> NDArray[np.float32]:
    rows = rng.standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def exact(rows: NDArray[np.float32], keys: list[str], query: NDArray[np.float32], k: int) -> list[str]:
    scores = rows @ query
    return [keys[i] for i in np.argsort(-scores)[:k]]


def test_search_returns_the_nearest_keys_best_first_with_cosines() -> None:
    rng = np.random.default_rng(1)
    rows = unit(rng, 500)
    index = NumpyVectorIndex(DIM, initial_rows=8)
    for i, row in enumerate(rows):
        index.add("p", f"k{i}", row)
    assert len(index) == 500
    query = unit(rng, 1)[0]
    found = index.search("p", query, 5)
    assert [key for key, _ in found] == exact(rows, [f"k{i}" for i in range(500)], query, 5)
    cosines = [c for _, c in found]
    assert cosines == sorted(cosines, reverse=True)
    assert cosines[0] == pytest.approx(float(rows[int(found[0][0][1:])] @ query), abs=1e-5)
    assert index.search("p", rows[42], 1)[0] == ("k42", pytest.approx(1.0, abs=1e-5))


def test_partitions_never_leak() -> None:
    rng = np.random.default_rng(2)
    shared = unit(rng, 1)[0]
    index = NumpyVectorIndex(DIM)
    index.add("tenant-a", "a-secret", shared)
    for i, row in enumerate(unit(rng, 20)):
        index.add("tenant-b", f"b{i}", row)
    found = index.search("tenant-b", shared, 50)
    assert len(found) == 20
    assert all(key.startswith("b") for key, _ in found)
    assert index.search("tenant-c", shared, 5) == []
    assert index.search("tenant-a", shared, 5) == [("a-secret", pytest.approx(1.0, abs=1e-5))]


def test_remove_and_replace() -> None:
    rng = np.random.default_rng(3)
    rows = unit(rng, 10)
    index = NumpyVectorIndex(DIM, initial_rows=2)
    for i, row in enumerate(rows):
        index.add("p", str(i), row)
    assert index.remove("0") is True
    assert index.remove("0") is False
    assert "0" not in index and len(index) == 9
    assert all(key != "0" for key, _ in index.search("p", rows[0], 10))
    # The last row moved into the hole: it must still be found under its own key.
    assert index.search("p", rows[9], 1)[0][0] == "9"
    index.add("q", "5", rows[5])  # re-adding a key moves it, even across partitions
    assert index.partition_size("p") == 8 and index.partition_size("q") == 1
    assert all(key != "5" for key, _ in index.search("p", rows[5], 10))


def test_removing_the_last_entry_drops_the_partition() -> None:
    index = NumpyVectorIndex(DIM)
    index.add("p", "only", unit(np.random.default_rng(4), 1)[0])
    assert index.remove("only")
    assert index.partition_size("p") == 0 and len(index) == 0
    assert index.search("p", unit(np.random.default_rng(5), 1)[0], 3) == []


def test_remove_partition() -> None:
    rng = np.random.default_rng(6)
    index = NumpyVectorIndex(DIM)
    for i, row in enumerate(unit(rng, 5)):
        index.add("p" if i < 3 else "q", str(i), row)
    assert index.remove_partition("p") == 3
    assert len(index) == 2 and "0" not in index and "4" in index


def test_wrong_dimensions_are_refused() -> None:
    index = NumpyVectorIndex(DIM)
    with pytest.raises(ValueError, match="16 dimensions"):
        index.add("p", "k", np.ones(DIM + 1, dtype=np.float32))
    with pytest.raises(ValueError, match="16 dimensions"):
        index.search("p", np.ones(3, dtype=np.float32))


def test_k_larger_than_the_partition_and_k_zero() -> None:
    rng = np.random.default_rng(7)
    index = NumpyVectorIndex(DIM)
    for i, row in enumerate(unit(rng, 3)):
        index.add("p", str(i), row)
    assert len(index.search("p", unit(rng, 1)[0], 10)) == 3
    assert index.search("p", unit(rng, 1)[0], 0) == []


def test_large_partitions_search_through_the_graph_and_stay_exact_in_scores() -> None:
    pytest.importorskip("usearch", reason="the semantic extra is not installed")
    rng = np.random.default_rng(8)
    rows = unit(rng, 400)
    index = NumpyVectorIndex(DIM, ann_rows=200)
    for i, row in enumerate(rows[:300]):
        index.add("p", str(i), row)
    index.wait_for_graphs(timeout_s=60)
    assert index.has_graph("p") and not index.has_graph("other")
    assert index.memory_bytes("p")[1] > 0
    for i, row in enumerate(rows[300:], start=300):
        index.add("p", str(i), row)  # added to the built graph one by one
    for i in range(0, 400, 7):
        index.remove(str(i))
    assert index.has_graph("p")
    for i in (1, 150, 299, 302, 398):  # none a multiple of 7
        key, cosine = index.search("p", rows[i], 1)[0]
        assert key == str(i)
        assert cosine == pytest.approx(1.0, abs=1e-5)  # rescored from the float32 matrix
    assert all(key != "7" for key, _ in index.search("p", rows[7], 5))
    assert index.search("other", rows[1], 1) == []


def test_an_unknown_graph_type_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="graph_dtype must be one of"):
        NumpyVectorIndex(DIM, graph_dtype="int4")


def test_the_search_beam_widens_with_the_partition() -> None:
    """128 up to 100k rows (p99 under 5 ms there), then four times wider for ten times the rows: at a million,
    512 finds 97% of near-duplicates among random vectors where 128 found 69%."""
    assert [search_beam(n) for n in (1, 100_000, 200_000, 1_000_000)] == [128, 128, 194, 512]
    assert all(search_beam(n) <= search_beam(n + 50_000) for n in range(0, 3_000_000, 50_000))
    assert search_beam(10**9) == MAX_SEARCH_BEAM


def test_a_fixed_beam_reaches_the_graph() -> None:
    pytest.importorskip("usearch", reason="the semantic extra is not installed")
    rows = unit(np.random.default_rng(9), 300)
    index = NumpyVectorIndex(DIM, ann_rows=200, beam=40)
    for i, row in enumerate(rows):
        index.add("p", str(i), row)
    index.wait_for_graphs(timeout_s=60)
    assert index.search("p", rows[5], 1)[0][0] == "5"
    assert index._partitions["p"].graph.expansion_search == 40
    index.beam = None
    index.search("p", rows[5], 1)
    assert index._partitions["p"].graph.expansion_search == search_beam(300)
