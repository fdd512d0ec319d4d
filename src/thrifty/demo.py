"""``thrifty demo``: the bundled workload through a real gateway on the embedded default.

The application asks for ``gpt-4-1106-preview`` on every request, as many teams do; a replay provider answers
with what that model (and Mixtral-8x7B, for the levers that route) really answered when RouteLLM recorded it.

Routing in the demo is one plain rule, the kind a team writes after reading its own ledger: the open-ended chat
feature goes to Mixtral (on MT-Bench its answers score 91% of GPT-4 Turbo's), everything else stays on the model
asked for. The ledger credits the difference to routing, and the quality table shows what it gave up.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

from thrifty.render import report_table, table, usd
from thrifty.settings import Settings, settings_from_dict
from thrifty.simulate import SimulationResult, simulate
from thrifty.workload import demo_workload_path, read_workload

STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def demo_settings(semantic: bool = False) -> Settings:
    raw: dict[str, object] = {
        "providers": {"recorded": {"kind": "replay"}},
        "models": {
            STRONG: {
                "targets": [f"recorded::{STRONG}", f"recorded::{WEAK}"],
                "router": "rules",
                "default": f"recorded::{STRONG}",
                "rules": [{"feature": "chat-assistant", "use": f"recorded::{WEAK}"}],
            },
            "mixtral-8x7b": {"targets": [f"recorded::{WEAK}"]},
        },
        # The catalog prices Mixtral under Mistral's own name; the recorded answers came from this checkpoint.
        "prices": {WEAK: {"usd_per_mtok_input": Decimal("0.7"), "usd_per_mtok_output": Decimal("0.7")}},
        "cache": {"exact": True, "semantic": semantic},
    }
    return settings_from_dict(raw, base_dir=Path.cwd(), source="demo config")


def run_demo(*, requests: int = 0, concurrency: int = 8, semantic: bool = False) -> int:
    records = read_workload(demo_workload_path())
    if requests:
        records = records[:requests]
    print(f"Replaying {len(records):,} recorded requests through a gateway on loopback (openai SDK client)...")
    started = time.perf_counter()
    result = simulate(demo_settings(semantic), records, concurrency=concurrency)
    elapsed = time.perf_counter() - started
    print(f"done in {elapsed:.1f} s ({len(records) / elapsed:,.0f} requests/s)\n")
    print_simulation(result)
    return 0 if not any(o.error for o in result.outcomes) else 1


def print_simulation(result: SimulationResult) -> None:
    errors = [o for o in result.outcomes if o.error]
    print("Spend by model (from the ledger)")
    print(report_table("model", result.by_model))
    print("\nSpend by feature (from the ledger)")
    print(report_table("feature", result.by_feature))
    total = sum((r.cost_usd or Decimal(0) for r in result.by_feature), Decimal(0))
    baseline = sum((r.baseline_cost_usd or Decimal(0) for r in result.by_feature), Decimal(0))
    print(f"\nPaid {usd(total)} against a baseline of {usd(baseline)}; saved {usd(baseline - total)}.")
    for lever, amount in sorted(result.savings.items()):
        print(f"  saved by {lever}: {usd(amount)}")
    hits: dict[str, int] = {}
    for outcome in result.outcomes:
        hits[outcome.cache or "miss"] = hits.get(outcome.cache or "miss", 0) + 1
    wrong = sum(outcome.wrong_answer() for outcome in result.outcomes)
    print("  cache: " + ", ".join(f"{kind} {count:,}" for kind, count in sorted(hits.items())))
    print(f"  cached answers that belonged to another question: {wrong}")
    quality = result.quality()
    if quality:
        rows = [
            [f, n, served, asked, served / asked if asked else 0.0] for f, (n, served, asked) in sorted(quality.items())
        ]
        print("\nQuality of the answers served (workload labels: correct = 1, judge score / 10)")
        print(table(["feature", "labelled", "served", "requested model", "kept"], rows))
    standins = sum(outcome.stand_in() for outcome in result.outcomes)
    if standins:
        print(
            f"\n{standins:,} answers were stand-ins: the workload has no answer text of the model they went to, so "
            "their output (and its cost) is a short placeholder's: the spend above understates them"
        )
    if errors:
        print(f"\n{len(errors)} requests failed; first: {errors[0].error}")
    print(f"\nLedger: {result.ledger_url}")
