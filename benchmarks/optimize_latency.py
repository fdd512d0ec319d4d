"""How long pruning and compression take, per 1,000 prompt tokens (target: under 5 ms).

    .venv/bin/python benchmarks/optimize_latency.py [--rounds 200] [--seed 0] [--minilm]

Prompts are chat requests whose user message holds N GSM8K test problems (blank-line separated, about 1k, 4k
and 16k tokens) followed by one problem's question. Each round times, back to back in one process and in rotating
order, ``prune_messages`` (budget: a third of the prompt), ``compress_messages`` (3x) and, as the yardstick, one
``count_messages`` of the same request: the token count every request pays anyway (``--minilm`` adds pruning with
embedding relevance, every passage embedded afresh). Milliseconds are per 1,000 prompt tokens (o200k_base):
wall-clock p50 and p99, with the shared machine's noise left in, and the p50 of the thread's CPU time, which that
noise disturbs far less. Prints a table and writes benchmarks/results/optimize_latency.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from thrifty.optimizers.compress import compress_messages
from thrifty.optimizers.prune import Embedder, prune_messages
from thrifty.tokens import TiktokenCounter

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "routellm" / "gsm8k" / "test.jsonl"
RESULTS = Path(__file__).resolve().parent / "results" / "optimize_latency.json"
MODEL = "gpt-4o"
SIZES = {"1k": 17, "4k": 68, "16k": 272}  # problems per prompt
COUNTER = TiktokenCounter()


def request(problems: list[str], size: int, rng: random.Random) -> list[dict[str, Any]]:
    chosen = rng.sample(problems, size)
    question = chosen[rng.randrange(size)].rsplit(". ", 1)[-1]
    return [
        {"role": "system", "content": "Answer from the problems below."},
        {"role": "user", "content": "\n\n".join(chosen) + "\n\n" + question},
    ]


EMBEDDERS: list[Embedder] = []  # filled by --minilm


def operations(messages: list[dict[str, Any]], tokens: int) -> dict[str, Callable[[], object]]:
    ops: dict[str, Callable[[], object]] = {
        "count (yardstick)": lambda: COUNTER.count_messages(MODEL, messages),
        "prune 3x": lambda: prune_messages(messages, tokens // 3, COUNTER, MODEL),
        "compress 3x": lambda: compress_messages(messages, 3.0, COUNTER, MODEL),
    }
    if EMBEDDERS:
        embedder = EMBEDDERS[0]
        ops["prune 3x + minilm"] = lambda: prune_messages(messages, tokens // 3, COUNTER, MODEL, embedder=embedder)
    return ops


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def measure(
    problems: list[str], size: int, rounds: int, rng: random.Random
) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    """Wall and CPU milliseconds per 1k tokens for each operation, and the prompts' mean token count."""
    prompts = [request(problems, size, rng) for _ in range(8)]
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    seen: list[int] = []
    for round_number in range(rounds + 3):
        messages = prompts[round_number % len(prompts)]
        tokens = COUNTER.count_messages(MODEL, messages)
        ops = list(operations(messages, tokens).items())
        ops = ops[round_number % len(ops) :] + ops[: round_number % len(ops)]  # no operation always goes first
        for name, operation in ops:
            started, started_cpu = time.perf_counter(), time.thread_time()
            operation()
            elapsed, elapsed_cpu = time.perf_counter() - started, time.thread_time() - started_cpu
            if round_number >= 3:  # the first rounds warm caches and the allocator
                wall.setdefault(name, []).append(elapsed * 1e6 / tokens)
                cpu.setdefault(name, []).append(elapsed_cpu * 1e6 / tokens)
        seen.append(tokens)
    return wall, cpu, round(statistics.mean(seen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minilm", action="store_true", help="also time pruning with all-MiniLM-L6-v2 relevance")
    args = parser.parse_args()
    if args.minilm:
        from thrifty.caches.embedders import MiniLMEmbedder

        EMBEDDERS.append(MiniLMEmbedder(threads=1))  # one thread, so the thread CPU clock sees all its work
    rng = random.Random(args.seed)
    problems = [" ".join(json.loads(line)["question"].split()) for line in DATA.read_text("utf-8").splitlines()]
    rows: list[dict[str, object]] = []
    print(
        f"{'prompt':<8}{'tokens':>8}  {'operation':<18}{'p50 ms/1k':>10}{'p99 ms/1k':>10}{'cpu p50':>9}{'x count':>9}"
    )
    for label, size in SIZES.items():
        wall, cpu, tokens = measure(problems, size, max(20, args.rounds * 17 // size), rng)
        count_cpu = statistics.median(cpu["count (yardstick)"])
        for name, values in wall.items():
            row = {
                "prompt": label,
                "mean_tokens": tokens,
                "operation": name,
                "rounds": len(values),
                "p50_ms_per_1k_tokens": round(statistics.median(values), 3),
                "p99_ms_per_1k_tokens": round(percentile(values, 0.99), 3),
                "cpu_p50_ms_per_1k_tokens": round(statistics.median(cpu[name]), 3),
                "cpu_p50_vs_count": round(statistics.median(cpu[name]) / count_cpu, 2),
            }
            rows.append(row)
            print(
                f"{label:<8}{tokens:>8}  {name:<18}{row['p50_ms_per_1k_tokens']:>10.2f}"
                f"{row['p99_ms_per_1k_tokens']:>10.2f}{row['cpu_p50_ms_per_1k_tokens']:>9.2f}{row['cpu_p50_vs_count']:>9.1f}"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {"doc": __doc__, "python": platform.python_version(), "machine": platform.machine(), "results": rows}
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
