"""Cache MiniLM vectors of the outcome files' prompts (``python embed.py mt_bench_questions mmlu gsm8k``)."""

from __future__ import annotations

import sys
import time

from harness import BENCH

from routing_routellm import CachedMiniLM
from thrifty.routers.outcomes import read_outcomes

embedder = CachedMiniLM(BENCH / "minilm.npz")
for name in sys.argv[1:]:
    started = time.time()
    records = read_outcomes(BENCH / f"{name}.jsonl")
    embedder.embed([r.prompt for r in records])
    print(name, len(records), f"{time.time() - started:.0f}s", flush=True)
