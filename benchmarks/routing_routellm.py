"""Learned routing on RouteLLM's three benchmarks: APGR, CPT(50%), CPT(80%) beside baselines and the published best.

Data: ``../shared/datasets/routellm`` converted by ``scripts/build_routing_outcomes.py`` (contaminated prompts
dropped as RouteLLM drops them). Two feature sets (``thrifty.routers.features``): hashed n-grams + shape (the
default, about a millisecond a decision) and the same plus MiniLM sentence embeddings (``--no-minilm`` skips it).
Each model's ridge penalty is chosen by cross-validation inside the training data only, never on a test fold.
Two settings, both with the same router settings (``thrifty.routers.learned``):

- in domain: 5-fold cross-validation on the benchmark itself (MT-Bench folds by question, so both turns of a
  question are on the same side); MT-Bench's 72 questions give noisy folds, so its in-domain figures are the
  mean over 5 fold assignments (seeds 0-4), MMLU's and GSM8K's are one assignment (seed 0);
- out of domain: trained only on the other two benchmarks (MT-Bench: MMLU + GSM8K; MMLU: MT-Bench + GSM8K;
  GSM8K: MT-Bench + MMLU), as RouteLLM's routers were trained on other data than they were tested on.

MT-Bench is reported twice: as RouteLLM measures it (one decision per question, made on the first turn, quality
= the mean judge score of both turns / 10: the protocol behind the published anchor) and per turn (each turn
routed on the conversation's user turns so far).

Run from the repository root: ``.venv/bin/python benchmarks/routing_routellm.py`` (about 30 minutes on 2 cores;
MiniLM vectors of the 15k prompts are cached in ``.bench/routing/minilm.npz`` after the first run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
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
from thrifty.routers.features import PromptEmbedder  # noqa: E402
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
SEEDS = {"mt_bench_questions": 5, "mt_bench": 5, "mmlu": 1, "gsm8k": 1}


class CachedMiniLM:
    """MiniLM vectors by prompt, kept on disk: embedding the 15k prompts once takes long on a shared CPU."""

    name = "all-MiniLM-L6-v2"
    dimensions = 384

    def __init__(self, path: Path) -> None:
        self._path, self._inner = path, None
        self._vectors: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path) as npz:
                self._vectors = dict(zip(npz["keys"].tolist(), npz["vectors"], strict=True))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [_key(t) for t in texts]
        missing = [t for t, k in zip(texts, keys, strict=True) if k not in self._vectors]
        if missing:
            self._vectors.update(zip((_key(t) for t in missing), self._miniLM().embed(missing), strict=True))
            self._save()
        return np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, self.dimensions))

    def _miniLM(self) -> PromptEmbedder:
        if self._inner is None:
            from thrifty.caches.embedders import MiniLMEmbedder

            self._inner = MiniLMEmbedder(threads=1)  # type: ignore[assignment]
        return self._inner  # type: ignore[return-value]

    def _save(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self._vectors)
        np.savez(self._path, keys=np.array(keys), vectors=np.stack([self._vectors[k] for k in keys]))


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


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


def mean_row(name: str, rows: list[dict[str, object]]) -> dict[str, object]:
    """The mean of several fold assignments' metrics (a CPT never reached counts as 1)."""
    row: dict[str, object] = {"policy": name}
    for key in ("apgr", "cpt50", "cpt80"):
        values = [1.0 if r[key] is None else float(r[key]) for r in rows]  # type: ignore[arg-type]
        row[key] = float(np.mean(values))
        row[key + "_per_seed"] = values
    return row


def in_domain(
    name: str, records: list[OutcomeRecord], label: str, relative: np.ndarray, embedder: PromptEmbedder | None
) -> dict[str, object]:
    data = to_matrix(records)
    rows = []
    for seed in range(SEEDS[name]):
        predicted = cross_validated_predictions(records, folds=FOLDS, seed=seed, embedder=embedder)
        rows.append(metrics_row(label, (predicted, relative), data))
    return rows[0] if len(rows) == 1 else mean_row(label + f", mean of {len(rows)} fold seeds", rows)


def evaluate_benchmark(
    name: str,
    records: list[OutcomeRecord],
    ood: dict[str, LearnedRouter],
    embedders: dict[str, PromptEmbedder | None],
    seconds: dict[str, float],
) -> list[dict[str, object]]:
    data = to_matrix(records)
    ref = reference(data)
    random_curve = fixed_curve("random", [ref.cheapest, ref.best], data)
    rm = gap_metrics(random_curve, ref, "share")
    assert rm is not None
    rows = [{"policy": "random", "apgr": rm.apgr, "cpt50": rm.cpt50, "cpt80": rm.cpt80}]
    rows.append(metrics_row("prompt length", length_rule(data), data))
    for features, router in ood.items():
        relative = router_predictions(router, data)[1]
        started = time.perf_counter()
        label = f"learned ({features}), in domain ({FOLDS}-fold)"
        rows.append(in_domain(name, records, label, relative, embedders[features]))
        seconds[f"{name} in-domain cv, {features}"] = time.perf_counter() - started
    for features, router in ood.items():
        rows.append(metrics_row(f"learned ({features}), out of domain", router_predictions(router, data), data))
    rows.append(metrics_row("oracle", oracle(data, "share"), data))
    published = PUBLISHED.get(name)
    if published:
        rows.append({"policy": "RouteLLM best (published)", **published})
    return rows


def decision_latency(router: LearnedRouter, prompts: list[str]) -> dict[str, float]:
    for prompt in prompts[:20]:
        router.choose(prompt)
    timings = []
    for prompt in prompts:
        started = time.perf_counter()
        router.choose(prompt)
        timings.append((time.perf_counter() - started) * 1000)
    return {
        "decisions": len(timings),
        "models": len(router.models),
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


def print_tables(results: dict[str, list[dict[str, object]]], latency: dict[str, dict[str, float]]) -> None:
    for name, rows in results.items():
        print(f"\n{BENCHMARKS[name][0]}")
        print(f"  {'policy':<70} {'APGR':>7} {'CPT(50%)':>10} {'CPT(80%)':>10}")
        for row in rows:
            print(f"  {row['policy']:<70} {fmt(row['apgr']):>7} {pct(row['cpt50']):>10} {pct(row['cpt80']):>10}")
    print("\ndecision time (one prompt, CPU, features + 2 ridge models):")
    for features, t in latency.items():
        print(f"  {features:<18} p50 {t['p50_ms']:.2f} ms, p99 {t['p99_ms']:.2f} ms over {t['decisions']:.0f} prompts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "routing_routellm.json")
    parser.add_argument("--no-minilm", action="store_true", help="only the n-gram features (no sentence embeddings)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = time.perf_counter()
    records = {name: read_outcomes(path) for name, path in outcome_files(args.datasets).items()}
    embedders: dict[str, PromptEmbedder | None] = {"n-grams": None}
    if not args.no_minilm:
        embedders["n-grams + MiniLM"] = CachedMiniLM(REPO / ".bench" / "routing" / "minilm.npz")
    seconds: dict[str, float] = {}
    ood_routers: dict[tuple[str, str], LearnedRouter] = {}
    results = {}
    for name, (_, sources) in BENCHMARKS.items():
        for features, embedder in embedders.items():
            if (features, "+".join(sources)) not in ood_routers:
                t = time.perf_counter()
                training = [r for s in sources for r in records[s]]
                ood_routers[features, "+".join(sources)] = train(training, embedder=embedder)
                seconds[f"train on {'+'.join(sources)}, {features}"] = time.perf_counter() - t
        ood = {features: ood_routers[features, "+".join(sources)] for features in embedders}
        results[name] = evaluate_benchmark(name, records[name], ood, embedders, seconds)
        print(f"{name}: done after {time.perf_counter() - started:.0f} s", file=sys.stderr)
    sample = [r.prompt for rs in (records["mmlu"], records["gsm8k"], records["mt_bench"]) for r in rs]
    random.Random(0).shuffle(sample)
    latency = {"n-grams": decision_latency(ood_routers["n-grams", "mt_bench+gsm8k"], sample[:2000])}
    if not args.no_minilm:
        from thrifty.caches.embedders import MiniLMEmbedder
        from thrifty.routers.learned import replace_embedder

        live = replace_embedder(ood_routers["n-grams + MiniLM", "mt_bench+gsm8k"], MiniLMEmbedder(threads=1))
        latency["n-grams + MiniLM"] = decision_latency(live, sample[:300])
    print_tables(results, latency)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "routing_routellm",
        "settings": {
            "folds": FOLDS,
            "fold_seeds": SEEDS,
            "router": "hashed word+char n-gram TF-IDF + shape features (+ MiniLM), ridge per model, penalty per "
            "model by 5-fold CV inside the training data",
        },
        "results": results,
        "decision_latency": latency,
        "seconds": {**seconds, "total": time.perf_counter() - started},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
