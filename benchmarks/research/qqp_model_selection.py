"""Choosing the encoder fine-tuning's epochs and learning rate on the QQP *training* split only.

    .venv/bin/python benchmarks/research/qqp_model_selection.py FOLDER:EPOCHS:LEARNING_RATE [...] [--out FILE]

Each FOLDER is a tuned encoder trained on the training split of ``benchmarks/cache_qqp.py`` (the same seeded
40%: ``cache_qqp.py --finetune --epochs E --learning-rate R`` or ``thrifty cache train --finetune`` on those
pairs). It is recalibrated with this version's guards (``tuned_encoder.recalibrated``: the same held-out shares
of the training split) and measured on the pairs its fine-tuning never saw: the tuned cosine's ROC AUC on the
refit and calibration shares, the guarded decision's AUC and precision at recall 0.35 on the calibration share
(the scorer was fitted on the other), and the calibrated operating point. The test split is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cache_qqp import TRAIN_SHARE, load_pairs, precision_at_recall, roc_auc
from thrifty.caches.tuned_encoder import (
    TunedModel,
    TuningOptions,
    decision_scores,
    recalibrated,
    split_pairs,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="FOLDER:EPOCHS:LEARNING_RATE")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    rows = load_pairs()
    cut = int(len(rows) * TRAIN_SHARE)
    pairs = [(str(r["text_a"]), str(r["text_b"])) for r in rows[:cut]]
    labels = np.array([float(r["label"]) for r in rows[:cut]])
    results = []
    for spec in args.models:
        folder, epochs, rate = spec.rsplit(":", 2)
        options = TuningOptions(epochs=float(epochs), learning_rate=float(rate))
        model = recalibrated(TunedModel.load(Path(folder), threads=1), pairs, labels.tolist(), options)
        _, refit, held = split_pairs(pairs, options)
        unseen = sorted(refit + held)
        cosines = model.cosines([pairs[i] for i in unseen])
        scores = decision_scores(model, [pairs[i] for i in held])
        row = {
            "epochs": float(epochs),
            "learning_rate": float(rate),
            "unseen_pairs": len(unseen),
            "tuned_cosine_auc": round(roc_auc(cosines, labels[unseen]), 4),
            "calibration_pairs": len(held),
            "decision_auc": round(roc_auc(scores, labels[held]), 4),
            "decision_precision_at_recall_0.35": round(precision_at_recall(scores, labels[held], 0.35), 4),
            "calibrated": model.info["holdout"],
            "training_seconds": model.info.get("training_seconds"),
        }
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.out is not None:
        args.out.write_text(json.dumps({"split": "QQP training split only", "models": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
