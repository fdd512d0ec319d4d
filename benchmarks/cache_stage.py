"""What the exact-cache stage costs a request: a miss (lookup, then storing the answer) and a hit, per store.

    .venv/bin/python benchmarks/cache_stage.py [--requests 2000] [--stores memory,sqlite,redis] [--out FILE]

The gateway's own ``LayeredCache`` (key, coalescing slot, store round trip, breaker, purge view) on one event loop,
with distinct chat requests of a few hundred tokens; Redis is the local server (db 11, flushed). Prints p50/p99
in microseconds and writes benchmarks/results/cache_stage.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from thrifty.caches.entries import EntryStore, MemoryStore  # noqa: E402
from thrifty.caches.layered import CachePolicy, LayeredCache  # noqa: E402
from thrifty.settings import CacheSettings  # noqa: E402
from thrifty.types import ChatRequest, ChatResponse, Principal, Target, Usage  # noqa: E402

SYSTEM = "You are a helpful support agent for an online bookshop. Answer briefly and politely. " * 6
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris. " * 40}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 300, "completion_tokens": 80, "total_tokens": 380},
}


def store_named(name: str, folder: Path) -> EntryStore:
    if name == "sqlite":
        from thrifty.caches.shared_stores import SqliteStore

        return SqliteStore(folder / "cache.sqlite")
    if name == "redis":
        from thrifty.caches.shared_stores import RedisStore

        return RedisStore("redis://127.0.0.1:6379/11")
    return MemoryStore()


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_us": round(statistics.median(ordered) * 1e6, 1),
        "p99_us": round(ordered[int(0.99 * (len(ordered) - 1))] * 1e6, 1),
    }


async def measure(name: str, requests: int, folder: Path) -> dict[str, Any]:
    store = store_named(name, folder)
    if name == "redis":
        await store._redis.flushdb()  # type: ignore[attr-defined]
    cache = LayeredCache(CachePolicy(CacheSettings(exact=True)), store, {"fast": (Target("up", "gpt-4o-mini"),)})
    principal = Principal("acme", feature="faq")
    answer = ChatResponse(ANSWER, Usage(300, 80), Target("up", "gpt-4o-mini"), 5.0)
    bodies = [
        {
            "model": "fast",
            "temperature": 0,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question {i}: where?"}],
        }
        for i in range(requests)
    ]
    miss, hit = [], []
    for i, body in enumerate(bodies):
        request = ChatRequest(body, f"req_{i}")
        started = time.perf_counter()
        found = await cache.lookup(request, principal)
        await cache.store(request, principal, answer, time.time())
        cache.release(request, principal)
        miss.append(time.perf_counter() - started)
        if found is not None:
            raise RuntimeError(f"request {i} should have been a miss")
    for i, body in enumerate(bodies):
        request = ChatRequest(body, f"hit_{i}")
        started = time.perf_counter()
        found = await cache.lookup(request, principal)
        hit.append(time.perf_counter() - started)
        cache.release(request, principal)
        if found is None or found.cache != "exact":
            raise RuntimeError(f"request {i} should have been an exact hit")
    await cache.aclose()
    return {"store": name, "miss_then_store": percentiles(miss), "hit": percentiles(hit)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--stores", default="memory,sqlite,redis")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cache_stage.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = [asyncio.run(measure(name, args.requests, Path(folder))) for name in args.stores.split(",")]
    for row in rows:
        print(
            f"{row['store']:<7} miss+store p50 {row['miss_then_store']['p50_us']:>7} us  "
            f"p99 {row['miss_then_store']['p99_us']:>7} us   hit p50 {row['hit']['p50_us']:>7} us  "
            f"p99 {row['hit']['p99_us']:>7} us"
        )
    result = {
        "command": "benchmarks/cache_stage.py " + " ".join(sys.argv[1:]),
        "requests": args.requests,
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
