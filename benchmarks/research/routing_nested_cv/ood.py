"""Out of domain: selection by leave-one-source-out on the training benchmarks only (PREREGISTRATION.md).

For each test benchmark T with sources S1, S2: each variant is scored by training on S1 -> CPT50 on S2 and on
S2 -> CPT50 on S1 (mean); the best variant is trained on S1+S2 and scored once on T. T never influences a choice.
Usage: python ood.py [--features ngram,ngram+task] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from harness import design, length_metrics, load_block, metrics, ridge, rows

TESTS = {"mt_bench_questions": ("mmlu", "gsm8k"), "mmlu": ("mt_bench", "gsm8k"), "gsm8k": ("mt_bench", "mmlu")}
OBJECTIVES = ("per-model", "gap", "weak-fails")
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, float("inf"))


def fit_predict(train_names: tuple[str, ...], test_names: list[str], features: str) -> dict:
    """One fit on the union of train_names; for each test set and objective, the score; plus training stats."""
    train = rows([(b, np.arange(len(b.records))) for b in (load_block(n) for n in train_names)])
    y = np.column_stack([train.q_strong, train.q_weak, train.q_strong - train.q_weak, 1 - train.q_weak])
    out: dict = {}
    weights = bias = None
    for name in [*test_names, "__train__"]:
        block = load_block(name) if name != "__train__" else None
        test = train if block is None else rows([(block, np.arange(len(block.records)))])
        x, z = design(train, test, features)
        if weights is None:
            weights, bias, alphas = ridge.fit_per_model(x, y, train.groups, 5, None)
            out["alphas"] = alphas
        p = z @ weights + bias
        out[name] = {"per-model": p[:, 0] - p[:, 1], "gap": p[:, 2], "weak-fails": p[:, 3]}
    train_len = np.log1p(np.concatenate([load_block(n).lengths for n in train_names]))
    out["stats"] = {"len": (train_len.mean(), train_len.std())}
    for o in OBJECTIVES:
        out["stats"][o] = (out["__train__"][o].mean(), out["__train__"][o].std() + 1e-12)
    return out


def blend(lengths: np.ndarray, learned: np.ndarray, stats: dict, objective: str, w: float) -> np.ndarray:
    zl = (np.log1p(lengths) - stats["len"][0]) / stats["len"][1]
    zs = (learned - stats[objective][0]) / stats[objective][1]
    if w == float("inf"):
        return zs
    return zl + w * zs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", default="ngram,ngram+task")
    parser.add_argument("--tests", default="mmlu,gsm8k,mt_bench_questions")
    parser.add_argument("--out", default="ood.json")
    args = parser.parse_args()
    feature_sets = args.features.split(",")
    fits: dict = {}
    started = time.time()
    names = ("mt_bench_questions", "mt_bench", "mmlu", "gsm8k")

    def ensure(f: str, train_names: tuple[str, ...]) -> None:
        if (f, train_names) in fits:
            return
        targets = [
            n for n in names if n not in train_names and not (n.startswith("mt_bench") and "mt_bench" in train_names)
        ]
        fits[f, train_names] = fit_predict(train_names, targets, f)
        print(f"fit {f} {train_names} alphas {fits[f, train_names]['alphas']} {time.time() - started:.0f}s", flush=True)

    report: dict = {}
    for test in args.tests.split(","):
        sources = TESTS[test]
        for f in feature_sets:
            for t in ((sources[0],), (sources[1],), tuple(sources)):
                ensure(f, t)
        variants = [(f, o, w) for f in feature_sets for o in OBJECTIVES for w in WEIGHTS]
        selection = {}
        for v in variants:
            f, o, w = v
            cpts = []
            for a, b in (sources, sources[::-1]):
                fit = fits[f, (a,)]
                block = load_block(b)
                s = blend(block.lengths, fit[b][o], fit["stats"], o, w)
                cpts.append(metrics(block.records, s)[0])
            selection[v] = float(np.mean(cpts))
        best = min(variants, key=lambda v: (selection[v], variants.index(v)))
        block = load_block(test)
        final = fits[best[0], tuple(sources)]
        chosen = metrics(block.records, blend(block.lengths, final[test][best[1]], final["stats"], best[1], best[2]))
        every = {}
        for v in variants:
            fit = fits[v[0], tuple(sources)]
            every[" | ".join(map(str, v))] = metrics(
                block.records, blend(block.lengths, fit[test][v[1]], fit["stats"], v[1], v[2])
            )
        report[test] = {
            "length": length_metrics(block.records),
            "selected": list(best),
            "selected_metrics": chosen,
            "selection_cpt50": {" | ".join(map(str, v)): c for v, c in selection.items()},
            "every_variant_on_test (information only)": every,
        }
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=1, default=str)
        print(
            f"\n{test}: length {report[test]['length']}  selected {best} (LOSO CPT50 {selection[best]:.3f}) -> {chosen}"
        )
        for name, m in every.items():
            print(
                f"   {name:<40} CPT50 {100 * m[0]:6.2f}%  CPT80 {100 * m[1]:6.2f}%  APGR {m[2]:.3f}  "
                f"(LOSO {100 * selection[(*tuple(name.split(' | ')[:2]), float(name.split(' | ')[2]))]:.1f}%)"
            )
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
