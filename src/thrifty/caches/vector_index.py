"""In-process nearest-neighbour search over unit vectors, partitioned so that a search never sees another partition.

A partition is the semantic cache's context fingerprint (tenant, alias, system prompt, conversation so far ...).
Each partition is a float32 matrix scanned exactly with one matrix-vector product: at a few tens of thousands of
rows that is a millisecond, and nothing approximate can miss the right entry. A scan reads the whole matrix, so
it grows linearly: a partition past ``ann_rows`` also gets an HNSW graph (``usearch``, part of the semantic extra)
that proposes candidates, which are then rescored exactly from the matrix. The graph is built in a background
thread (tens of seconds at 50k rows on two cores); searches scan exactly until it is ready.

Rows are removed by moving the last row into the hole, so removal is O(1) and the matrix stays dense.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float32]
ANN_ROWS = 50_000
ANN_CANDIDATES = 32
GRAPH_DTYPE = "i8"
"""The graph's copy of the vectors: int8 (see ``_new_graph``); ``f16`` and ``f32`` also work (benchmarks compare)."""
GRAPH_DTYPES = ("i8", "f16", "f32")
SEARCH_BEAM = 128
"""How many candidates the graph search keeps in view (usearch's ``expansion_search``) up to ``BEAM_ROWS`` rows."""
BEAM_ROWS = 100_000


MAX_SEARCH_BEAM = 2048


def search_beam(rows: int) -> int:
    """The graph's search beam for a partition of ``rows`` entries: 128 up to ``BEAM_ROWS``, then four times
    wider for every ten times more rows (512 at a million).

    A fixed beam finds less as the graph grows: among a million random vectors (the hard case), a beam of 128
    found the near-duplicate 69% of the time, 256 87%, 512 97% (p50 21 ms), 1024 100% (p50 38 ms), where the exact
    scan takes p50 86 ms (``benchmarks/results/cache_lookup_1m.json``). A missed neighbour is a paid model call,
    which costs seconds and money, so the lookup spends a few more milliseconds instead.
    """
    if rows <= BEAM_ROWS:
        return SEARCH_BEAM
    return min(int(SEARCH_BEAM * (rows / BEAM_ROWS) ** math.log10(4)), MAX_SEARCH_BEAM)


class VectorIndex(Protocol):
    def add(self, partition: str, key: str, vector: Vector) -> None: ...
    def search(self, partition: str, vector: Vector, k: int = 1) -> list[tuple[str, float]]: ...
    def remove(self, key: str) -> bool: ...
    def __len__(self) -> int: ...


@dataclass(slots=True)
class _Partition:
    matrix: Vector
    keys: list[str] = field(default_factory=list)
    graph: Any = None
    """A usearch ``Index`` keyed by row id once the partition is large; ``None`` below ``ann_rows``."""
    builder: threading.Thread | None = None
    row_ids: list[int] = field(default_factory=list)
    rows_by_id: dict[int, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.keys)


class NumpyVectorIndex:
    """Exact cosine search per partition; HNSW candidates for partitions larger than ``ann_rows``.

    Vectors must be unit length (every ``Embedder`` returns them so): the dot product is then the cosine.
    Thread-safe, because the gateway may search from worker threads while another request stores.
    """

    def __init__(
        self,
        dimensions: int,
        *,
        ann_rows: int | None = ANN_ROWS,
        initial_rows: int = 256,
        graph_dtype: str = GRAPH_DTYPE,
        beam: int | None = None,
    ) -> None:
        if graph_dtype not in GRAPH_DTYPES:
            raise ValueError(f"graph_dtype must be one of {', '.join(GRAPH_DTYPES)}, not {graph_dtype!r}")
        self.dimensions = dimensions
        self.ann_rows = ann_rows
        self.graph_dtype = graph_dtype
        self.beam = beam
        """A fixed search beam for every graph (benchmarks compare); ``None`` sizes it by ``search_beam``."""
        self._initial_rows = initial_rows
        self._partitions: dict[str, _Partition] = {}
        self._where: dict[str, tuple[str, int]] = {}
        self._next_id = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def partition_size(self, partition: str) -> int:
        found = self._partitions.get(partition)
        return 0 if found is None else found.size

    def has_graph(self, partition: str) -> bool:
        found = self._partitions.get(partition)
        return found is not None and found.graph is not None

    def memory_bytes(self, partition: str) -> tuple[int, int]:
        """What a partition holds in memory: its float32 matrix (capacity included) and its graph, if any."""
        found = self._partitions.get(partition)
        if found is None:
            return 0, 0
        return found.matrix.nbytes, 0 if found.graph is None else int(found.graph.memory_usage)

    def add(self, partition: str, key: str, vector: Vector) -> None:
        """Store ``vector`` under ``key``; a key that exists (in any partition) is replaced."""
        row = self._checked(vector)
        with self._lock:
            self._remove_locked(key)
            part = self._partitions.get(partition)
            if part is None:
                part = _Partition(np.empty((self._initial_rows, self.dimensions), dtype=np.float32))
                self._partitions[partition] = part
            if part.size == part.matrix.shape[0]:
                grown = np.empty((part.matrix.shape[0] * 2, self.dimensions), dtype=np.float32)
                grown[: part.size] = part.matrix[: part.size]
                part.matrix = grown
            index = part.size
            part.matrix[index] = row
            part.keys.append(key)
            part.row_ids.append(self._next_id)
            part.rows_by_id[self._next_id] = index
            self._where[key] = (partition, index)
            if part.graph is not None:
                part.graph.add(self._next_id, row)
            elif self.ann_rows is not None and part.size > self.ann_rows and part.builder is None:
                part.builder = threading.Thread(target=self._build_graph, args=(part,), daemon=True)
                part.builder.start()
            self._next_id += 1

    def search(self, partition: str, vector: Vector, k: int = 1) -> list[tuple[str, float]]:
        """The ``k`` nearest keys of the partition by cosine, best first."""
        query = self._checked(vector)
        with self._lock:
            part = self._partitions.get(partition)
            if part is None or part.size == 0 or k <= 0:
                return []
            rows = self._candidate_rows(part, query, k)
            scores = part.matrix[rows] @ query
            order = np.argsort(-scores, kind="stable")[:k]
            return [(part.keys[rows[i]], float(scores[i])) for i in order]

    def remove(self, key: str) -> bool:
        with self._lock:
            return self._remove_locked(key)

    def remove_partition(self, partition: str) -> int:
        with self._lock:
            part = self._partitions.pop(partition, None)
            if part is None:
                return 0
            for key in part.keys:
                del self._where[key]
            return part.size

    def wait_for_graphs(self, timeout_s: float | None = None) -> None:
        """Block until background graph builds finish (benchmarks and tests; the gateway never waits)."""
        for part in list(self._partitions.values()):
            if part.builder is not None:
                part.builder.join(timeout_s)

    def _build_graph(self, part: _Partition) -> None:
        with self._lock:
            ids = np.asarray(part.row_ids, dtype=np.uint64)
            vectors = part.matrix[: part.size].copy()
        graph = _new_graph(self.dimensions, self.graph_dtype)
        if graph is None:
            self.ann_rows = None
            return
        graph.add(ids, vectors)
        with self._lock:
            # Catch up with the stores and removals that happened while the graph was being built.
            built = {int(i) for i in ids}
            for row_id in built - part.rows_by_id.keys():
                graph.remove(row_id)
            for row_id in part.rows_by_id.keys() - built:
                graph.add(row_id, part.matrix[part.rows_by_id[row_id]])
            part.graph = graph

    def _candidate_rows(self, part: _Partition, query: Vector, k: int) -> NDArray[np.intp]:
        if part.graph is not None:
            beam = self.beam or search_beam(part.size)
            if part.graph.expansion_search != beam:
                part.graph.expansion_search = beam
            found = part.graph.search(query, max(k, ANN_CANDIDATES))
            return np.fromiter((part.rows_by_id[int(i)] for i in found.keys), dtype=np.intp)
        scores = part.matrix[: part.size] @ query
        if part.size <= k:
            return np.arange(part.size, dtype=np.intp)
        return np.argpartition(-scores, k - 1)[:k].astype(np.intp)

    def _remove_locked(self, key: str) -> bool:
        location = self._where.pop(key, None)
        if location is None:
            return False
        partition, index = location
        part = self._partitions[partition]
        last = part.size - 1
        removed_id = part.row_ids[index]
        if part.graph is not None:
            part.graph.remove(removed_id)
        del part.rows_by_id[removed_id]
        if index != last:
            part.matrix[index] = part.matrix[last]
            part.keys[index], part.row_ids[index] = part.keys[last], part.row_ids[last]
            part.rows_by_id[part.row_ids[index]] = index
            self._where[part.keys[index]] = (partition, index)
        part.keys.pop()
        part.row_ids.pop()
        if last == 0:
            del self._partitions[partition]
        return True

    def _checked(self, vector: Vector) -> Vector:
        row = np.asarray(vector, dtype=np.float32).reshape(-1)
        if row.shape[0] != self.dimensions:
            raise ValueError(f"expected a vector of {self.dimensions} dimensions, got {row.shape[0]}")
        return row


def _new_graph(dimensions: int, dtype: str) -> Any:
    """An empty HNSW graph, or None when usearch is not installed (exact scans only, then)."""
    try:
        from usearch.index import Index
    except ImportError:
        return None
    # Inner product on unit vectors is the cosine. The graph keeps its own copy of the vectors in int8 (usearch
    # normalises each vector, then scales it by 127): a quarter of float32, and on this x86 machine, without
    # native half-precision arithmetic, faster to search than f16. The graph only proposes candidates; the exact
    # rescoring from the float32 matrix removes its rounding from the returned scores. A lookup wants the one right
    # neighbour, so the graph is denser than usearch's default (32 links a node, not 16): among 100k random
    # vectors (the hard case; real embeddings cluster) that found 99.8% of near-duplicates at a beam of 128, raw
    # p99 3.9 ms, where 16 links needed a beam of 256 for 98.4% (p99 4.3 ms); building takes twice as long (in the
    # background) and the graph a third more memory (``benchmarks/cache_lookup.py --graph-dtypes i8,f16``).
    return Index(
        ndim=dimensions, metric="ip", dtype=dtype, connectivity=32, expansion_add=64, expansion_search=SEARCH_BEAM
    )
