"""In-domain MT-Bench (72 questions): nested-CV selection among pre-registered variants (PREREGISTRATION.md).

Usage: python indomain.py [--grid small|full] [--seeds 0,1,2,3,4] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import time

import numpy as np
from harness import knn_scores, load_block, metrics, ridge_scores, rows

FEATURES = ("ngram", "ngram+task", "ngram+minilm", "ngram+task+minilm")
OBJECTIVES = ("per-model", "gap")


def grid(extras: tuple[str, ...]) -> list[tuple]:
    out: list[tuple] = [("ridge", f, o, e) for e in extras for f in FEATURES for o in OBJECTIVES]
    out += [("knn", k) for k in (5, 10, 20)]
    return out


def outer_folds(groups: list[str], seed: int, folds: int = 5) -> np.ndarray:
    distinct = sorted(set(groups))
    random.Random(seed).shuffle(distinct)
    fold_of = {g: i % folds for i, g in enumerate(distinct)}
    return np.array([fold_of[g] for g in groups])


def score(variant: tuple, train_q: np.ndarray, test_q: np.ndarray) -> np.ndarray:
    q, t = load_block("mt_bench_questions"), load_block("mt_bench")
    train_parts = [(q, train_q)]
    if variant[0] == "ridge" and variant[3] in ("turns", "turns+gsm8k"):
        keep = {q.groups[i] for i in train_q}
        train_parts.append((t, np.array([i for i, g in enumerate(t.groups) if g in keep])))
    if variant[0] == "ridge" and variant[3] == "turns+gsm8k":
        g = load_block("gsm8k")
        train_parts.append((g, np.arange(len(g.records))))
    train, test = rows(train_parts), rows([(q, test_q)])
    if variant[0] == "knn":
        return knn_scores(train, test, variant[1])
    return ridge_scores(train, test, variant[1], variant[2])


def cv_scores(variant: tuple, idx: np.ndarray, fold: np.ndarray) -> np.ndarray:
    out = np.zeros(len(idx))
    for k in np.unique(fold):
        out[fold == k] = score(variant, idx[fold != k], idx[fold == k])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extras", default="none,turns")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--out", default="indomain.json")
    args = parser.parse_args()
    variants = grid(tuple(args.extras.split(",")))
    q = load_block("mt_bench_questions")
    records = q.records
    result: dict = {"variants": [list(v) for v in variants], "seeds": {}}
    for seed in (int(s) for s in args.seeds.split(",")):
        started = time.time()
        fold = outer_folds(q.groups, seed)
        outer = {v: np.zeros(len(records)) for v in variants}
        nested = np.zeros(len(records))
        chosen = []
        for k in range(5):
            tr, te = np.where(fold != k)[0], np.where(fold == k)[0]
            inner_fold = outer_folds([q.groups[i] for i in tr], 0)
            inner = {}
            for v in variants:
                s = cv_scores(v, tr, inner_fold)
                inner[v] = metrics([records[i] for i in tr], s)
                outer[v][te] = score(v, tr, te)
            # lowest inner CPT50, then higher APGR, then grid order
            best = min(variants, key=lambda v: (inner[v][0], -inner[v][2], variants.index(v)))
            chosen.append(list(best))
            nested[te] = outer[best][te]
        seed_out = {
            "nested": metrics(records, nested),
            "chosen": chosen,
            "variants": {" | ".join(map(str, v)): metrics(records, outer[v]) for v in variants},
        }
        result["seeds"][seed] = seed_out
        print(f"seed {seed} ({time.time() - started:.0f}s): nested {seed_out['nested']} chosen {chosen}", flush=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    summary = {}
    for name in [" | ".join(map(str, v)) for v in variants] + ["NESTED"]:
        vals = [s["nested"] if name == "NESTED" else s["variants"][name] for s in result["seeds"].values()]
        arr = np.array(vals)
        summary[name] = {
            "cpt50_mean": arr[:, 0].mean(),
            "cpt50_per_seed": arr[:, 0].tolist(),
            "cpt80_mean": arr[:, 1].mean(),
            "apgr_mean": arr[:, 2].mean(),
        }
        print(
            f"{name:<45} CPT50 {100 * arr[:, 0].mean():6.2f}% (sd {100 * arr[:, 0].std():5.2f}; "
            f"{' '.join(f'{100 * x:.1f}' for x in arr[:, 0])}) CPT80 {100 * arr[:, 1].mean():6.2f}% "
            f"APGR {arr[:, 2].mean():.3f}"
        )
    result["summary"] = summary
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    itertools  # noqa: B018
    main()
