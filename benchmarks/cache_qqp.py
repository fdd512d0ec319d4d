"""Precision and recall of the semantic hit decision on labelled Quora question pairs (QQP).

    .venv/bin/python benchmarks/cache_qqp.py [--max-pairs N] [--train] [--threshold T] [--no-pair-model]
        [--finetune [--reuse-tuned]] [--train-share S --out FILE]

The pairs (``../shared/datasets/gptcache/similiar_qqp_full.json``, Quora's terms: non-commercial research) are
shuffled with a fixed seed; the first 40% are the training split, the rest the test split, and every number
reported is from the test split. ``--train`` fits the scorer's coefficients on the training split and writes them
to ``src/thrifty/caches/data/similarity_weights.json`` (a handful of floats: no text of the data set is kept).

Beside the decision: random (AUC 0.5), a one-line heuristic (word Jaccard), MiniLM cosine alone, and the
scorer without its guards; the published anchor is cosine alone on 8,000 pairs (AUC 0.874, precision 0.83 at
recall 0.35). Embeddings are cached under ``.bench/embeddings/``. Prints a table, writes
``benchmarks/results/cache_qqp.json``.

Then a pair model (``thrifty cache train``'s code, its defaults) is trained on the training split, saved under
``.bench/qqp_pair_model/`` (never in the package: the data is non-commercial) and reported on the test split
(``--no-pair-model`` skips it).

``--finetune``: the encoder is also fine-tuned on the training split (``thrifty cache train --finetune``'s code and
defaults: 80% tune it, 10% refit the scorer, 10% calibrate), saved under ``.bench/qqp_tuned_encoder*/`` and
reported on the test split beside the rest (7 to 12 minutes an epoch here). ``--epochs 4`` at the default
learning rate is the setting chosen on the training split (``benchmarks/research/qqp_model_selection.py``).
``--reuse-tuned`` loads the saved encoder and refits its scorer and threshold with this version's guards.
Without ``--finetune`` the previous results file's tuned-encoder figures are kept, marked
``measured_in_an_earlier_run``.

``--train-share 0.8 --out benchmarks/results/cache_qqp_split80.json``: a learning-curve point, the same
shuffle with the first 80% as the training split (twice the labelled pairs to tune on) and the last 20% as the
test split (a subset of the default test split, so the bundled scorer, fitted on the first 40%, has still never
seen it). Models trained this way are saved under names ending ``_split80``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from embedding_store import CHUNK, embed_cached
from thrifty.caches.embedders import MiniLMEmbedder
from thrifty.caches.pair_model import decisions_for
from thrifty.caches.pair_training import PairData, TrainingOptions, fit_logistic, train_pair_model
from thrifty.caches.similarity import DEFAULT_THRESHOLD, WEIGHTS_FILE, GuardedJudge, ScorerWeights, guarded
from thrifty.caches.text_signals import Signals, guard_veto, signals
from thrifty.caches.tuned_encoder import (
    TunedEncoderJudge,
    TunedModel,
    TuningOptions,
    decision_scores,
    recalibrated,
    tune,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "gptcache" / "similiar_qqp_full.json"
RESULTS = ROOT / "benchmarks" / "results" / "cache_qqp.json"
WEIGHTS = ROOT / "src" / "thrifty" / "caches" / "data" / WEIGHTS_FILE
PAIR_MODEL = ROOT / ".bench" / "qqp_pair_model"
TUNED = ROOT / ".bench" / "qqp_tuned_encoder"
RECALLS = (0.1, 0.2, 0.35, 0.5, 0.6, 0.7, 0.8)
SEED = 20240501
TRAIN_SHARE = 0.4
ANCHOR = {"source": "issue 3, MiniLM cosine alone on 8,000 pairs", "auc": 0.874, "precision_at_recall_0.35": 0.83}
Floats = NDArray[np.float64]
Vectors = NDArray[np.float32]


def load_pairs() -> list[dict[str, Any]]:
    """All pairs in the seeded order."""
    rows = json.loads(DATA.read_text(encoding="utf-8"))
    order = np.random.default_rng(SEED).permutation(len(rows))
    return [rows[i] for i in order]


def pair_vectors(everything: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> tuple[Vectors, Vectors]:
    """Embeddings of both sides of ``rows``, a prefix of ``everything``.

    Texts are embedded in the order they first appear in the whole shuffled list, in whole chunks, so a prefix
    reuses exactly the chunks a full run caches (and the other way round).
    """
    texts = list(dict.fromkeys(t for r in everything for t in (r["text_a"], r["text_b"])))
    row_of = {t: i for i, t in enumerate(texts)}
    needed = 1 + max(row_of[t] for r in rows for t in (r["text_a"], r["text_b"]))
    vectors = embed_cached(MiniLMEmbedder(), texts[: -(-needed // CHUNK) * CHUNK])
    return vectors[[row_of[r["text_a"]] for r in rows]], vectors[[row_of[r["text_b"]] for r in rows]]


def all_signals(rows: Sequence[dict[str, Any]], cosines: Floats) -> list[Signals]:
    return [signals(r["text_a"], r["text_b"], float(c)) for r, c in zip(rows, cosines, strict=True)]


def roc_auc(scores: Floats, labels: Floats) -> float:
    """Mann-Whitney U with average ranks, so tied scores (every vetoed pair is 0) count half."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    _, starts, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(starts, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_recall(hits: NDArray[np.bool_], labels: Floats) -> tuple[float, float]:
    true_hits = float((hits & (labels == 1)).sum())
    return true_hits / max(float(hits.sum()), 1.0), true_hits / max(float((labels == 1).sum()), 1.0)


def precision_at_recall(scores: Floats, labels: Floats, recall: float) -> float:
    """The best precision among thresholds whose recall is at least ``recall``."""
    order = np.argsort(-scores, kind="mergesort")
    true_hits = np.cumsum(labels[order] == 1)
    recalls = true_hits / max((labels == 1).sum(), 1)
    precisions = true_hits / np.arange(1, len(scores) + 1)
    reached = recalls >= recall
    return float(precisions[reached].max()) if reached.any() else 0.0


def curve(scores: Floats, labels: Floats, recalls: Sequence[float]) -> list[dict[str, float]]:
    return [{"recall": r, "precision": round(precision_at_recall(scores, labels, r), 4)} for r in recalls]


def scorer_inputs(found: Sequence[Signals]) -> tuple[Floats, NDArray[np.bool_]]:
    features = np.array([s.features() for s in found], dtype=np.float64)
    vetoed = np.array([bool(guard_veto(s)) for s in found])
    return features, vetoed


def train(found: Sequence[Signals], labels: Floats) -> ScorerWeights:
    """Fit on the training pairs the guards let through: vetoed pairs never reach the scorer."""
    features, vetoed = scorer_inputs(found)
    bias, weights = fit_logistic(features[~vetoed], labels[~vetoed])
    names = Signals.feature_names()
    payload = {
        "features": list(names),
        "bias": round(bias, 6),
        "weights": [round(float(w), 6) for w in weights],
        "fitted_on": f"QQP pairs, training split: seed {SEED}, first {TRAIN_SHARE:.0%}, {int((~vetoed).sum())} pairs",
        "command": "benchmarks/cache_qqp.py --train",
    }
    WEIGHTS.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return ScorerWeights(bias, tuple(float(w) for w in weights), names)


def evaluate(found: Sequence[Signals], labels: Floats, judge: GuardedJudge) -> dict[str, Any]:
    features, vetoed = scorer_inputs(found)
    cosine = features[:, 0]
    raw = np.array([judge.weights.probability(f) for f in features])
    decision = np.where(vetoed, 0.0, raw)
    decision[[s.identical for s in found]] = 1.0
    jaccard = np.array([s.word_jaccard for s in found])
    random = np.random.default_rng(SEED).random(len(labels))
    recalls = RECALLS
    methods = {"random": random, "word jaccard": jaccard, "MiniLM cosine": cosine, "scorer, no guards": raw}
    methods["guarded decision"] = decision
    table = {
        name: {"auc": round(roc_auc(s, labels), 4), "curve": curve(s, labels, recalls)} for name, s in methods.items()
    }
    precision, recall = precision_recall(decision >= judge.threshold, labels)
    same_recall_cosine = _cosine_at_recall(cosine, labels, recall)
    return {
        "methods": table,
        "default_threshold": judge.threshold,
        "at_default_threshold": {"precision": round(precision, 4), "recall": round(recall, 4)},
        "cosine_at_same_recall": same_recall_cosine,
        "vetoed": {"pairs": int(vetoed.sum()), "duplicates": int((vetoed & (labels == 1)).sum())},
        "threshold_sweep": [_sweep_point(decision, labels, t) for t in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)],
    }


def pair_model_result(
    u: Vectors, v: Vectors, found: Sequence[Signals], labels: Floats, cut: int, suffix: str = ""
) -> dict[str, Any]:
    """Train a pair model on the training split exactly as ``thrifty cache train`` does, report on the test split.

    The model is saved under ``.bench/`` (gitignored): weights fitted on QQP are never bundled (non-commercial).
    """
    data = PairData(u[:cut], v[:cut], found[:cut], labels[:cut])
    started = time.perf_counter()
    model = train_pair_model(data, MiniLMEmbedder.name, TrainingOptions())
    saved = PAIR_MODEL.with_name(PAIR_MODEL.name + suffix)
    model.save(saved)
    seconds = time.perf_counter() - started
    scores = decisions_for(model, found[cut:], u[cut:], v[cut:])
    test = labels[cut:]
    precision, recall = precision_recall(scores >= DEFAULT_THRESHOLD, test)
    return {
        "auc": round(roc_auc(scores, test), 4),
        "curve": curve(scores, test, RECALLS),
        "at_default_threshold": {"precision": round(precision, 4), "recall": round(recall, 4)},
        "threshold_sweep": [_sweep_point(scores, test, t) for t in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)],
        "training": model.info | {"seconds": round(seconds, 1), "saved_to": str(saved.relative_to(ROOT))},
    }


def tuned_encoder_result(
    rows: Sequence[dict[str, Any]],
    labels: Floats,
    cut: int,
    reuse: bool,
    threads: int,
    options: TuningOptions,
    suffix: str = "",
) -> dict[str, Any]:
    """Fine-tune the encoder on the training split exactly as ``thrifty cache train --finetune`` does (its defaults),
    report the decision on the test split. Saved under ``.bench/`` (gitignored), never bundled; ``reuse`` loads
    the saved one instead of training again (the figures then say so)."""
    pairs = [(str(r["text_a"]), str(r["text_b"])) for r in rows]
    epochs, rate = options.epochs, options.learning_rate
    folder = TUNED if epochs == 1 else TUNED.with_name(f"{TUNED.name}_{epochs:g}ep")
    if rate != TuningOptions().learning_rate:
        folder = folder.with_name(f"{folder.name}_lr{rate:g}")
    folder = folder.with_name(folder.name + suffix)
    started = time.perf_counter()
    if reuse and (folder / "pair_model.json").exists():
        # The saved encoder, its scorer refitted and recalibrated by this version's guards and features.
        model = recalibrated(TunedModel.load(folder, threads=threads), pairs[:cut], labels[:cut].tolist(), options)
        model.save_meta(folder)
        reused = True
    else:
        progress = lambda line: print(f"  fine-tuning: {line}", flush=True)  # noqa: E731
        model, network = tune(pairs[:cut], labels[:cut].tolist(), replace(options, threads=threads, progress=progress))
        model.save(folder, network)
        reused = False
    trained_seconds = time.perf_counter() - started
    started = time.perf_counter()
    test_pairs, test = pairs[cut:], labels[cut:]
    cosine = model.cosines(test_pairs)
    scores = decision_scores(model, test_pairs)
    precision, recall = precision_recall(scores >= DEFAULT_THRESHOLD, test)
    return {
        "auc": round(roc_auc(scores, test), 4),
        "curve": curve(scores, test, RECALLS),
        "tuned_cosine": {"auc": round(roc_auc(cosine, test), 4), "curve": curve(cosine, test, RECALLS)},
        "at_default_threshold": {"precision": round(precision, 4), "recall": round(recall, 4)},
        "threshold_sweep": [_sweep_point(scores, test, t) for t in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)],
        "training": model.info | {"reused_saved_model": reused, "seconds": round(trained_seconds, 1)},
        "saved_to": str(folder.relative_to(ROOT)),
        "test_seconds": round(time.perf_counter() - started, 1),
        "decision_latency": judge_latency(folder, test_pairs[-300:]),
    }


def judge_latency(folder: Path, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """One decision at a time on one torch thread, as the gateway makes them: the tuned encoder embeds the query
    (the candidate is usually in its LRU already: stored questions are embedded when the judge first sees them).
    Pairs the guards let through, with the candidate warmed, so each decision embeds one text."""
    import torch

    torch.set_num_threads(1)
    pairs = [(a, b) for a, b in pairs if guarded(signals(a, b, 0.0)) is None]  # vetoed pairs embed nothing
    fresh = TunedModel.load(folder, threads=1)
    fresh.encoder.embed([b for _, b in pairs])
    judge = TunedEncoderJudge(fresh, DEFAULT_THRESHOLD)
    times = []
    for a, b in pairs:
        started = time.perf_counter()
        judge.decide(a, b, 0.9)
        times.append((time.perf_counter() - started) * 1000)
    return {
        "decisions": len(times),
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p99_ms": round(float(np.percentile(times, 99)), 2),
        "threads": 1,
    }


def _sweep_point(scores: Floats, labels: Floats, threshold: float) -> dict[str, float]:
    precision, recall = precision_recall(scores >= threshold, labels)
    return {"threshold": threshold, "precision": round(precision, 4), "recall": round(recall, 4)}


def _cosine_at_recall(cosine: Floats, labels: Floats, recall: float) -> dict[str, float]:
    threshold = float(np.quantile(cosine[labels == 1], 1 - recall))
    precision, got = precision_recall(cosine >= threshold, labels)
    return {"threshold": round(threshold, 4), "precision": round(precision, 4), "recall": round(got, 4)}


def print_report(result: dict[str, Any]) -> None:
    recalls = [p["recall"] for p in next(iter(result["methods"].values()))["curve"]]
    print(f"QQP test split: {result['test_pairs']} pairs ({result['test_duplicates']} duplicates), "
          f"trained on {result['train_pairs']}")  # fmt: skip
    print(f"{'method':<20} {'AUC':>6}  " + "  ".join(f"P@R{r:<4}" for r in recalls))
    for name, row in result["methods"].items():
        print(f"{name:<20} {row['auc']:>6.3f}  " + "  ".join(f"{p['precision']:>7.3f}" for p in row["curve"]))
    at = result["at_default_threshold"]
    cos = result["cosine_at_same_recall"]
    print(f"anchor (cosine alone, 8,000 pairs): AUC {ANCHOR['auc']}, precision 0.83 at recall 0.35")
    print(f"default threshold {result['default_threshold']}: precision {at['precision']:.3f}, recall {at['recall']:.3f}"
          f"  (cosine >= {cos['threshold']:.3f} at that recall: precision {cos['precision']:.3f})")  # fmt: skip
    print(f"guards vetoed {result['vetoed']['pairs']} test pairs, {result['vetoed']['duplicates']} of them duplicates")
    _print_sweep(result["threshold_sweep"])
    for key, what in (("pair_model", "thrifty cache train"), ("tuned_encoder", "thrifty cache train --finetune")):
        model = result.get(key)
        if model:
            at, trained = model["at_default_threshold"], model["training"]
            name, seconds, target = key.replace("_", " "), trained["seconds"], trained["precision_target"]
            print(
                f"{name} ({what} on the train split, {seconds} s): AUC {model['auc']:.3f}; default threshold: "
                f"precision {at['precision']:.3f}, recall {at['recall']:.3f} (calibrated for {target} on "
                f"{trained['holdout']['pairs']} held-out training pairs)"
            )
            _print_sweep(model["threshold_sweep"])


def _print_sweep(rows: Sequence[dict[str, float]]) -> None:
    for row in rows:
        print(f"  threshold {row['threshold']:.2f}: precision {row['precision']:.3f}  recall {row['recall']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-pairs", type=int, default=None, help="use a prefix of the shuffled pairs")
    parser.add_argument("--train", action="store_true", help="refit the scorer on the training split")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--no-pair-model", action="store_true", help="skip training the pair model")
    parser.add_argument("--finetune", action="store_true", help="also fine-tune the encoder (~30 min on 2 cores)")
    parser.add_argument("--reuse-tuned", action="store_true", help="with --finetune: load .bench's tuned encoder")
    parser.add_argument("--epochs", type=float, default=1.0, help="with --finetune: passes over the training pairs")
    parser.add_argument("--learning-rate", type=float, default=TuningOptions().learning_rate, help="with --finetune")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads to fine-tune with (more than the idle cores thrash)"
    )
    parser.add_argument("--train-share", type=float, default=TRAIN_SHARE, help="share of the shuffled pairs that train")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results file")
    args = parser.parse_args()
    if not 0.0 < args.train_share < 1.0:
        parser.error("--train-share must lie strictly between 0 and 1")
    if args.train_share != TRAIN_SHARE and args.out == RESULTS:
        parser.error(
            f"--train-share {args.train_share:g} needs its own --out (the default file is the {TRAIN_SHARE:g} split)"
        )
    if args.train and args.train_share != TRAIN_SHARE:
        parser.error("--train refits the bundled weights, which are fitted on the default split only")
    suffix = "" if args.train_share == TRAIN_SHARE else f"_split{round(args.train_share * 100)}"
    everything = load_pairs()
    rows = everything[: args.max_pairs] if args.max_pairs else everything
    started = time.perf_counter()
    u, v = pair_vectors(everything, rows)
    found = all_signals(rows, np.einsum("ij,ij->i", u, v).astype(np.float64))
    labels = np.array([float(r["label"]) for r in rows])
    cut = int(len(rows) * args.train_share)
    weights = train(found[:cut], labels[:cut]) if args.train else ScorerWeights.bundled()
    result = evaluate(found[cut:], labels[cut:], GuardedJudge(args.threshold, weights))
    if not args.no_pair_model:
        result["pair_model"] = pair_model_result(u, v, found, labels, cut, suffix)
        result["methods"]["pair model"] = {k: result["pair_model"][k] for k in ("auc", "curve")}
    earlier = json.loads(args.out.read_text(encoding="utf-8")) if args.out.exists() else {}
    if args.finetune:
        result["tuned_encoder"] = tuned_encoder_result(
            rows,
            labels,
            cut,
            args.reuse_tuned,
            args.threads,
            TuningOptions(epochs=args.epochs, learning_rate=args.learning_rate),
            suffix,
        )
    elif "tuned_encoder" in earlier and earlier.get("test_pairs") == len(rows) - cut:
        # Not re-measured (it takes a fine-tuning): the previous run's figures, marked as such.
        result["tuned_encoder"] = earlier["tuned_encoder"] | {"measured_in_an_earlier_run": True}
    if "tuned_encoder" in result:
        result["methods"]["tuned cosine"] = result["tuned_encoder"]["tuned_cosine"]
        result["methods"]["tuned encoder"] = {k: result["tuned_encoder"][k] for k in ("auc", "curve")}
    result |= {
        "data": "similiar_qqp_full.json",
        "split": f"seed {SEED}; first {args.train_share:.0%} of the shuffled pairs train, the rest test",
        "train_pairs": cut,
        "test_pairs": len(rows) - cut,
        "test_duplicates": int(labels[cut:].sum()),
        "anchor": ANCHOR,
        "weights": {"bias": weights.bias, "weights": dict(zip(weights.names, weights.weights, strict=True))},
        "seconds": round(time.perf_counter() - started, 1),
        "machine": platform.processor() or platform.machine(),
    }
    print_report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
