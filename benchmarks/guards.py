"""The guard stage's own time per request: budget reservation and settlement, rate limits, agent caps.

    .venv/bin/python benchmarks/guards.py [--requests 20000] [--redis redis://127.0.0.1:6379/11]

Measured inside the process around ``GuardChain.admit`` + ``settle`` (what the pipeline awaits), with one hard
budget, one rate limit and agent caps all applying to every request; in-process counters (one gateway, SQLite)
and Redis on loopback (replicas). Prints a table and writes benchmarks/results/guards.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from thrifty.guards.budgets import Budget, BudgetGuard
from thrifty.guards.chain import GuardChain
from thrifty.guards.estimate import CostEstimator
from thrifty.guards.limits import AgentCaps, AgentGuard, RateLimit, RateLimiter
from thrifty.guards.stores import GuardStore, MemoryGuardStore, RedisGuardStore
from thrifty.pricing import CatalogPricer
from thrifty.tokens import TiktokenCounter
from thrifty.types import ChatRequest, Cost, Principal, Target, Usage

RESULTS = Path(__file__).parent / "results"
BODY = {
    "model": "fast",
    "max_tokens": 256,
    "messages": [
        {"role": "system", "content": "You are a helpful assistant for an online store."},
        {"role": "user", "content": "Where is my order 12345? It was due yesterday."},
    ],
}


def chain(store: GuardStore) -> GuardChain:
    aliases = {"fast": (Target("openai", "gpt-4o-mini"),)}
    estimator = CostEstimator(CatalogPricer(catalog_providers={"openai": ["openai"]}), TiktokenCounter(), aliases)
    budgets = [Budget("bench", "tenant", "acme", "month", Decimal("1000000"), hard=True)]
    return GuardChain(
        estimator,
        store,
        budgets=BudgetGuard(lambda: budgets, store, estimator, lambda b, since: Decimal(0)),
        limiter=RateLimiter([RateLimit("tenant", "*", rpm=10**9, tpm=10**12)], store),
        agents=AgentGuard(AgentCaps(max_calls=10**9, loop_repeats=5)),
    )


async def measure(store: GuardStore, requests: int) -> dict[str, float]:
    guards = chain(store)
    principal = Principal("acme", "key_1", "u1", "search", "s1")
    samples = []
    for n in range(requests + 500):
        request = ChatRequest(BODY, f"req_{n}")
        started = time.perf_counter()
        admission = await guards.admit(request, principal)
        await admission.settle(Cost(Decimal("0.0001")), Usage(40, 120), "gpt-4o-mini")
        if n >= 500:  # warm-up: encodings loaded, windows created
            samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 4),
        "p99_ms": round(samples[int(len(samples) * 0.99)], 4),
        "mean_ms": round(statistics.fmean(samples), 4),
        "n": len(samples),
    }


async def main(requests: int, redis_url: str) -> dict[str, object]:
    results: dict[str, object] = {"memory": await measure(MemoryGuardStore(), requests)}
    try:
        store = RedisGuardStore(redis_url)
        await store._redis.flushdb()
        results["redis"] = await measure(store, requests)
        await store.aclose()
    except OSError as exc:
        results["redis"] = f"not measured: {exc}"
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    args = parser.parse_args()
    out = asyncio.run(main(args.requests, args.redis))
    print(f"{'store':<8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}   (admit + settle: budget, rate limit, agent caps)")
    for name, row in out.items():
        if isinstance(row, dict):
            print(f"{name:<8} {row['p50_ms']:>8.4f} {row['p99_ms']:>8.4f} {row['mean_ms']:>8.4f}")
        else:
            print(f"{name:<8} {row}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "guards.json").write_text(json.dumps(out, indent=2) + "\n")
    del tempfile
