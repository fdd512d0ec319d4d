"""Learned routing on RouteLLM's three benchmarks: APGR, CPT(50%), CPT(80%) beside baselines and the published best.

Data: ``../shared/datasets/routellm`` converted by ``scripts/build_routing_outcomes.py`` (contaminated prompts
dropped as RouteLLM drops them). Two settings, both with the same router settings (``thrifty.routers.learned``):

- in domain: 5-fold cross-validation on the benchmark itself (MT-Bench folds by question, so both turns of a
  question are on the same side);
- out of domain: trained only on the other two benchmarks (MT-Bench: MMLU + GSM8K; MMLU: MT-Bench + GSM8K;
  GSM8K: MT-Bench + MMLU), as RouteLLM's routers were trained on other data than they were tested on.

MT-Bench is reported twice: as RouteLLM measures it (one decision per question, made on the first turn, quality
= the mean judge score of both turns / 10: the protocol behind the published anchor) and per turn (each turn
routed on the conversation's user turns so far).

Run from the repository root: ``.venv/bin/python benchmarks/routing_routellm.py`` (about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

import build_routing_outcomes  # noqa: E402

from thrifty.routers.evaluate import (  # noqa: E402
    cross_validated_predictions,
    fixed_curve,
    gap_metrics,
    length_rule,
    oracle,
    policy_curve,
    reference,
    router_predictions,
)
from thrifty.routers.learned import LearnedRouter, train  # noqa: E402
from thrifty.routers.outcomes import OutcomeRecord, read_outcomes, to_matrix  # noqa: E402

PUBLISHED = {
    # RouteLLM's best router per benchmark (trained out of domain on Chatbot Arena preferences + augmentation).
    "mt_bench_questions": {"apgr": 0.802, "cpt50": 0.1340, "cpt80": 0.3131},
    "mmlu": {"apgr": None, "cpt50": 0.35, "cpt80": None},
    "gsm8k": {"apgr": None, "cpt50": 0.35, "cpt80": None},
}
BENCHMARKS = {
    # name: (title, the benchmarks an out-of-domain router is trained on)
    "mt_bench_questions": ("MT-Bench, RouteLLM protocol (72 questions)", ("mmlu", "gsm8k")),
    "mt_bench": ("MT-Bench, per turn (144 turns)", ("mmlu", "gsm8k")),
    "mmlu": ("MMLU (14,037 questions)", ("mt_bench", "gsm8k")),
    "gsm8k": ("GSM8K (1,307 problems)", ("mt_bench", "mmlu")),
}
FOLDS = 5


def outcome_files(datasets: Path) -> dict[str, Path]:
    folder = REPO / ".bench" / "routing"
    paths = {name: folder / f"{name}.jsonl" for name in build_routing_outcomes.FILES}
    if not all(p.exists() for p in paths.values()):
        paths = build_routing_outcomes.build(datasets, folder)
    return paths


def metrics_row(name: str, curve_args: tuple[np.ndarray, np.ndarray], data: object) -> dict[str, object]:
    curve = policy_curve(name, *curve_args, data)  # type: ignore[arg-type]
    m = gap_metrics(curve, reference(data), "share")  # type: ignore[arg-type]
    assert m is not None
    return {"policy": name, "apgr": m.apgr, "cpt50": m.cpt50, "cpt80": m.cpt80}


def evaluate_benchmark(
    name: str, records: list[OutcomeRecord], ood_router: LearnedRouter, seconds: dict[str, float]
) -> list[dict[str, object]]:
    data = to_matrix(records)
    ref = reference(data)
    random_curve = fixed_curve("random", [ref.cheapest, ref.best], data)
    rm = gap_metrics(random_curve, ref, "share")
    assert rm is not None
    rows = [{"policy": "random", "apgr": rm.apgr, "cpt50": rm.cpt50, "cpt80": rm.cpt80}]
    rows.append(metrics_row("prompt length", length_rule(data), data))
    started = time.perf_counter()
    in_domain = cross_validated_predictions(records, folds=FOLDS)
    seconds[f"{name} in-domain cv"] = time.perf_counter() - started
    rows.append(metrics_row(f"learned, in domain ({FOLDS}-fold)", (in_domain, _relative(ood_router, data)), data))
    rows.append(metrics_row("learned, out of domain", router_predictions(ood_router, data), data))
    rows.append(metrics_row("oracle", oracle(data, "share"), data))
    published = PUBLISHED.get(name)
    if published:
        rows.append({"policy": "RouteLLM best (published)", **published})
    return rows


def _relative(router: LearnedRouter, data: object) -> np.ndarray:
    # Both benchmarks' models are the same pair; the cost weight's scale does not change a threshold curve.
    return router_predictions(router, data)[1]  # type: ignore[arg-type]


def decision_latency(router: LearnedRouter, prompts: list[str]) -> dict[str, float]:
    for prompt in prompts[:50]:
        router.choose(prompt)
    timings = []
    for prompt in prompts:
        started = time.perf_counter()
        router.choose(prompt)
        timings.append((time.perf_counter() - started) * 1000)
    return {
        "decisions": len(timings),
        "p50_ms": float(np.percentile(timings, 50)),
        "p99_ms": float(np.percentile(timings, 99)),
        "max_ms": float(np.max(timings)),
        "prompt_chars_p50": float(np.percentile([len(p) for p in prompts], 50)),
        "prompt_chars_p99": float(np.percentile([len(p) for p in prompts], 99)),
    }


def fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def pct(value: object) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}%"  # type: ignore[arg-type]


def print_tables(results: dict[str, list[dict[str, object]]], latency: dict[str, float]) -> None:
    for name, rows in results.items():
        print(f"\n{BENCHMARKS[name][0]}")
        print(f"  {'policy':<30} {'APGR':>7} {'CPT(50%)':>10} {'CPT(80%)':>10}")
        for row in rows:
            print(f"  {row['policy']:<30} {fmt(row['apgr']):>7} {pct(row['cpt50']):>10} {pct(row['cpt80']):>10}")
    print(
        f"\ndecision time (one prompt, CPU, features + {latency['models']:.0f} ridge models): "
        f"p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms over {latency['decisions']:.0f} prompts"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "routing_routellm.json")
    args = parser.parse_args()
    started = time.perf_counter()
    records = {name: read_outcomes(path) for name, path in outcome_files(args.datasets).items()}
    seconds: dict[str, float] = {}
    ood_routers: dict[tuple[str, ...], LearnedRouter] = {}
    results = {}
    for name, (_, sources) in BENCHMARKS.items():
        if sources not in ood_routers:
            t = time.perf_counter()
            ood_routers[sources] = train([r for s in sources for r in records[s]])
            seconds[f"train on {'+'.join(sources)}"] = time.perf_counter() - t
        results[name] = evaluate_benchmark(name, records[name], ood_routers[sources], seconds)
        print(f"{name}: done after {time.perf_counter() - started:.0f} s", file=sys.stderr)
    sample = [r.prompt for rs in (records["mmlu"], records["gsm8k"], records["mt_bench"]) for r in rs]
    random.Random(0).shuffle(sample)
    latency = decision_latency(ood_routers["mt_bench", "gsm8k"], sample[:2000])
    latency["models"] = 2
    print_tables(results, latency)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "routing_routellm",
        "settings": {"folds": FOLDS, "router": "hashed word+char n-gram TF-IDF + shape features, ridge alpha=10"},
        "results": results,
        "decision_latency": latency,
        "seconds": {**seconds, "total": time.perf_counter() - started},
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
