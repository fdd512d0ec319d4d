"""Would a cross-encoder judge beat the tuned bi-encoder? Measured on the QQP *training* split only.

    .venv/bin/python benchmarks/research/qqp_cross_encoder.py [--epochs 2] [--learning-rate 3e-5] [--out FILE]

A cross-encoder reads the two questions together (one transformer pass over "query [SEP] cached") and outputs
one logit for "duplicate". Started from the bundled all-MiniLM-L6-v2 weights (a new, randomly initialised head),
fine-tuned with binary cross-entropy on exactly the rows the tuned encoder is fine-tuned on
(``tuned_encoder.split_pairs`` with the default options, the training split of ``benchmarks/cache_qqp.py``), each
pair in a random order. Reported on the pairs that fine-tuning never saw, as ``qqp_model_selection.py`` reports the
tuned encoders (the figures to compare: ``benchmarks/results/cache_qqp_model_selection.json``): the raw score's
ROC AUC on the refit and calibration shares, and the guarded decision (the scorer's features with the
cross-encoder's probability in the cosine's place, refitted on the refit share) on the calibration share. The test
split is never read.

Result (``benchmarks/results/cache_qqp_cross_encoder.json``): two epochs gave a raw AUC of 0.908 (both orders)
against the tuned cosine's 0.918 at two epochs, and a guarded decision AUC of 0.887 against 0.899: not added to
the product.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cache_qqp import TRAIN_SHARE, load_pairs, precision_at_recall, roc_auc
from thrifty.caches.embedders import bundled_model_path
from thrifty.caches.pair_training import calibrate, fit_logistic
from thrifty.caches.text_signals import guard_veto, signals
from thrifty.caches.tuned_encoder import TuningOptions, split_pairs

Pair = tuple[str, str]


def fine_tune(pairs: Sequence[Pair], y: np.ndarray, epochs: float, rate: float, seed: int) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    base = bundled_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    batch = 32
    steps = max(1, math.ceil(len(pairs) / batch * epochs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=rate, weight_decay=0.01)
    warmup = max(1, round(0.1 * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()
    step, started = 0, time.perf_counter()
    while step < steps:
        order = rng.permutation(len(pairs))
        for start in range(0, len(order), batch):
            if step >= steps:
                break
            rows = order[start : start + batch].tolist()
            swap = rng.random(len(rows)) < 0.5
            first = [pairs[i][1] if s else pairs[i][0] for i, s in zip(rows, swap, strict=True)]
            second = [pairs[i][0] if s else pairs[i][1] for i, s in zip(rows, swap, strict=True)]
            inputs = tokenizer(first, second, padding=True, truncation=True, max_length=128, return_tensors="pt")
            logits = model(**inputs).logits.squeeze(-1)
            loss = loss_fn(logits, torch.tensor(y[rows], dtype=torch.float32))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step % 100 == 0:
                print(
                    f"step {step}/{steps} loss {float(loss.detach()):.3f} {time.perf_counter() - started:.0f}s",
                    flush=True,
                )
    model.eval()
    return model, tokenizer


def probabilities(model: Any, tokenizer: Any, pairs: Sequence[Pair], both_orders: bool) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(pairs), 64):
            chunk = pairs[start : start + 64]
            orders = [(0, 1), (1, 0)] if both_orders else [(0, 1)]
            logits = []
            for i, j in orders:
                inputs = tokenizer(
                    [p[i] for p in chunk],
                    [p[j] for p in chunk],
                    padding=True,
                    truncation=True,
                    max_length=256,
                    return_tensors="pt",
                )
                logits.append(model(**inputs).logits.squeeze(-1).numpy())
            out.append(1 / (1 + np.exp(-np.mean(logits, axis=0))))
    return np.concatenate(out).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=3e-5)
    parser.add_argument("--save", type=Path, default=None, help="save the cross-encoder to this folder")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = load_pairs()
    cut = int(len(rows) * TRAIN_SHARE)
    pairs = [(str(r["text_a"]), str(r["text_b"])) for r in rows[:cut]]
    y = np.array([float(r["label"]) for r in rows[:cut]])
    options = TuningOptions()
    fit, refit, held = split_pairs(pairs, options)
    started = time.perf_counter()
    model, tokenizer = fine_tune([pairs[i] for i in fit], y[fit], args.epochs, args.learning_rate, options.seed)
    seconds = time.perf_counter() - started
    if args.save is not None:
        model.save_pretrained(str(args.save))
        tokenizer.save_pretrained(str(args.save))
    unseen = sorted(refit + held)
    result: dict[str, Any] = {
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "training_seconds": round(seconds, 1),
        "unseen_pairs": len(unseen),
    }
    for both in (False, True):
        p = probabilities(model, tokenizer, [pairs[i] for i in unseen], both)
        prob = dict(zip(unseen, p.tolist(), strict=True))
        tag = "both_orders" if both else "one_order"
        result[f"raw_auc_{tag}"] = round(roc_auc(p, y[unseen]), 4)
        found = {i: signals(*pairs[i], prob[i]) for i in unseen}
        judged = {i for i, s in found.items() if not s.identical and not guard_veto(s)}
        refit_rows = [i for i in refit if i in judged]
        features = np.array([found[i].features() for i in refit_rows])
        bias, weights = fit_logistic(features, y[refit_rows])
        scores = np.zeros(len(held))
        for k, i in enumerate(held):
            s = found[i]
            if s.identical:
                scores[k] = 1.0
            elif i in judged:
                scores[k] = 1 / (1 + math.exp(-(bias + float(np.dot(weights, s.features())))))
        point = calibrate(scores, y[held], options.precision)
        result[tag] = {
            "decision_auc": round(roc_auc(scores, y[held]), 4),
            "decision_precision_at_recall_0.35": round(precision_at_recall(scores, y[held], 0.35), 4),
            "raw_precision_at_recall_0.35": round(
                precision_at_recall(np.array([prob[i] for i in held]), y[held], 0.35), 4
            ),
            "calibrated": {"precision": round(point.precision, 4), "recall": round(point.recall, 4)},
        }
        print(json.dumps(result), flush=True)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
