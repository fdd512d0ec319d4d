"""Semantic cache lookup latency at 10k, 100k and 1M entries, embedding time per query, and memory.

    .venv/bin/python benchmarks/cache_lookup.py [--sizes 10000,100000,1000000] [--queries 300] [--ann-max-rows N]

Entries are random unit vectors of 384 dimensions in one partition (the worst case: a partition is one tenant's
one context; random vectors are also the hardest case for the graph), or with ``--vectors qqp`` real questions'
MiniLM embeddings (QQP's, up to about 100k; paraphrases as near-duplicates, unstored questions as misses).
Half the queries are near-duplicates of a stored entry (cosine about 0.9: what a hit looks like),
half are fresh random vectors (misses). Exact search (one float32 matrix-vector product) is measured at every
size; the HNSW candidate graph (usearch) where it is enabled, with its recall of the exact nearest neighbour
(``--graph-dtypes i8,f16`` measures the graph with each vector type in one run: the machine's speed drifts
between runs, so compare within one).
Embedding time is MiniLM on one question at a time (the gateway embeds one request at a time), with torch's
default threads and with one thread, and a repeat served from the embedding LRU. The machine is shared: run it
when it is quiet, and read the exact and ANN figures of one run side by side. Prints a table, writes
``benchmarks/results/cache_lookup.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.caches.embedders import CachedEmbedder, HashingEmbedder, MiniLMEmbedder
from thrifty.caches.vector_index import GRAPH_DTYPE, NumpyVectorIndex, search_beam

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "cache_lookup.json"
QUESTIONS = ROOT.parent / "shared" / "datasets" / "gptcache" / "mock_data.json"
DIMENSIONS = 384
ANN_MAX_ROWS = 200_000
"""By default graph builds stop here (minutes at 1M on two cores; ``--ann-max-rows 1000000`` builds one)."""


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, DIMENSIONS), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def random_vectors(n: int, queries: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stored rows, probes (near-duplicates first, then misses), and the row each near-duplicate was made from."""
    rows = unit_rows(rng, n)
    targets = rng.integers(0, n, queries // 2)
    near = rows[targets] + unit_rows(rng, len(targets)) * 0.45
    probes = np.vstack([near / np.linalg.norm(near, axis=1, keepdims=True), unit_rows(rng, queries - len(targets))])
    return rows, probes, targets


def qqp_vectors(n: int, queries: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real questions: MiniLM embeddings of QQP's questions (the cache ``benchmarks/cache_qqp.py`` fills). Stored:
    ``n`` questions; probes: the labelled duplicates of stored ones (their exact nearest stored row is the target),
    then questions that are not stored (misses)."""
    from cache_qqp import load_pairs, pair_vectors

    pairs = load_pairs()
    u, v = pair_vectors(pairs, pairs)
    vectors = {r["text_a"]: a for r, a in zip(pairs, u, strict=True)} | {
        r["text_b"]: b for r, b in zip(pairs, v, strict=True)
    }
    duplicates = [pairs[i] for i in rng.permutation(len(pairs)) if pairs[i]["label"] == 1][: queries // 2]
    held = {r["text_b"] for r in duplicates}
    texts = [t for t in vectors if t not in held]
    order = rng.permutation(len(texts))
    stored = [texts[i] for i in order[:n]]
    if len(stored) < n:
        raise SystemExit(f"QQP has {len(stored)} questions to store, fewer than {n}")
    misses = [texts[i] for i in order[n : n + queries - len(duplicates)]]
    rows = np.stack([vectors[t] for t in stored]).astype(np.float32)
    near = np.stack([vectors[r["text_b"]] for r in duplicates]).astype(np.float32)
    probes = np.vstack([near, np.stack([vectors[t] for t in misses]).astype(np.float32)])
    return rows, probes, np.argmax(near @ rows.T, axis=1)


def measure_size(
    n: int,
    queries: int,
    rng: np.random.Generator,
    ann_max_rows: int,
    vectors: str = "random",
    graph_dtypes: Sequence[str] = (GRAPH_DTYPE,),
    beams: Sequence[int | None] = (None,),
) -> list[dict[str, Any]]:
    rows, probes, targets = (qqp_vectors if vectors == "qqp" else random_vectors)(n, queries, rng)
    results = []
    graphs = [("hnsw", dtype) for dtype in graph_dtypes] if n <= ann_max_rows else []
    for mode, dtype in [("exact", ""), *graphs]:
        index = NumpyVectorIndex(
            DIMENSIONS, ann_rows=None if mode == "exact" else n - 1, graph_dtype=dtype or GRAPH_DTYPE
        )
        build_s, _ = timed(lambda index=index: [index.add("p", str(i), rows[i]) for i in range(n)])
        graph_s, _ = timed(index.wait_for_graphs)
        if mode == "hnsw" and not index.has_graph("p"):
            continue
        for beam in beams if mode == "hnsw" else [None]:
            index.beam = beam
            results.append(
                {
                    "entries": n,
                    "mode": mode,
                    **({"graph_dtype": dtype, "beam": beam or search_beam(n)} if dtype else {}),
                    **_probe(index, probes, targets),
                    "store_s": round(build_s + graph_s, 1),
                }
            )
        del index
    return results


def _probe(index: NumpyVectorIndex, probes: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    samples, found = [], []
    for probe in probes:
        elapsed, result = timed(lambda probe=probe: index.search("p", probe, 1))
        samples.append(elapsed)
        found.append(result[0][0])
    matrix_bytes, graph_bytes = index.memory_bytes("p")
    return {
        **percentiles_ms(samples),
        "near_duplicate_found": round(float(np.mean([f == str(t) for f, t in zip(found, targets, strict=False)])), 4),
        "matrix_mb": round(matrix_bytes / 1e6, 1),
        "graph_mb": round(graph_bytes / 1e6, 1),
    }


def embedding_times(count: int) -> list[dict[str, Any]]:
    pairs = json.loads(QUESTIONS.read_text(encoding="utf-8"))
    questions = [p["similar"] for p in pairs[:count]]
    rows = []
    hashing = HashingEmbedder()
    rows.append(
        {"embedder": hashing.name, **percentiles_ms([timed(lambda q=q: hashing.embed([q]))[0] for q in questions])}
    )
    minilm = MiniLMEmbedder(threads=None)
    minilm.embed(questions[:3])  # the first calls pay for lazy initialisation inside torch
    rows.append({"embedder": "MiniLM, torch default threads", **_per_query(minilm.embed, questions)})
    minilm_1 = MiniLMEmbedder(threads=1)
    rows.append({"embedder": "MiniLM, 1 thread (default)", **_per_query(minilm_1.embed, questions)})
    cached = CachedEmbedder(minilm_1)
    cached.embed(questions)
    rows.append({"embedder": "MiniLM, repeat from the LRU", **_per_query(cached.embed, questions)})
    return rows


def _per_query(embed: Callable[[list[str]], Any], questions: list[str]) -> dict[str, float]:
    return percentiles_ms([timed(lambda q=q: embed([q]))[0] for q in questions])


def print_report(lookups: list[dict[str, Any]], embeddings: list[dict[str, Any]], max_rss_mb: float) -> None:
    header = ("entries", "mode", "beam", "p50 ms", "p99 ms", "found", "matrix MB", "graph MB", "store s")
    print("{:>9} {:<9} {:>5} {:>8} {:>8} {:>6} {:>10} {:>9} {:>8}".format(*header))
    for r in lookups:
        print(
            f"{r['entries']:>9} {r['mode'] + ' ' + r.get('graph_dtype', ''):<9} {r.get('beam', ''):>5} "
            f"{r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
            f"{r['near_duplicate_found']:>6.3f} {r['matrix_mb']:>10.1f} {r['graph_mb']:>9.1f} {r['store_s']:>8.1f}"
        )
    print(f"{'embedder (one question per call)':<34} {'p50 ms':>8} {'p99 ms':>8}")
    for r in embeddings:
        print(f"{r['embedder']:<34} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f}")
    load = os.getloadavg()[0]
    print(f"peak RSS of this process: {max_rss_mb:.0f} MB; load average (1 min) {load:.1f} on {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--embedding-queries", type=int, default=200)
    parser.add_argument("--ann-max-rows", type=int, default=ANN_MAX_ROWS, help="build the HNSW graph up to this size")
    parser.add_argument(
        "--vectors", choices=("random", "qqp"), default="random", help="qqp: real question embeddings (up to ~100k)"
    )
    parser.add_argument(
        "--graph-dtypes",
        default=GRAPH_DTYPE,
        help=f"the graph's vector types to measure side by side, e.g. i8,f16 (the gateway's: {GRAPH_DTYPE})",
    )
    parser.add_argument(
        "--beams",
        default="auto",
        help="search beams to measure on each built graph, e.g. auto,256,512 (auto: the gateway's, by size)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    beams = [None if b == "auto" else int(b) for b in args.beams.split(",")]
    lookups = [
        row
        for n in map(int, args.sizes.split(","))
        for row in measure_size(
            n, args.queries, rng, args.ann_max_rows, args.vectors, args.graph_dtypes.split(","), beams
        )
    ]
    embeddings = embedding_times(args.embedding_queries)
    max_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_report(lookups, embeddings, max_rss_mb)
    result = {
        "command": " ".join([".venv/bin/python benchmarks/cache_lookup.py", *sys.argv[1:]]),
        "lookups": lookups,
        "embedding": embeddings,
        "peak_rss_mb": round(max_rss_mb),
        "dimensions": DIMENSIONS,
        "machine": platform.processor() or platform.machine(),
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
    }
    result["vectors"] = args.vectors
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
