"""Combined pre-registered OOD selection over feature sets A-D (ood_AB.json + ood_CD.json)."""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
ab = json.loads((HERE / "ood_AB.json").read_text())
cd = json.loads((HERE / "ood_CD.json").read_text())
EVERY = "every_variant_on_test (information only)"
for test in ("mt_bench_questions", "mmlu", "gsm8k"):
    sel = {**ab[test]["selection_cpt50"], **cd[test]["selection_cpt50"]}
    every = {**ab[test][EVERY], **cd[test][EVERY]}
    order = list(sel)  # grid order: A, B, then C, D
    best = min(order, key=lambda v: (sel[v], order.index(v)))
    m, length = every[best], ab[test]["length"]
    print(
        f"{test:<20} length CPT50 {100 * length[0]:.2f}%  selected [{best}] (LOSO {100 * sel[best]:.1f}%) -> "
        f"CPT50 {100 * m[0]:.2f}% CPT80 {100 * m[1]:.2f}% APGR {m[2]:.3f}  beats length: {m[0] < length[0]}"
    )
    top = min(every, key=lambda v: every[v][0])
    print(
        f"{'':<20} (information only, picked on the test set, NOT a valid result: best variant [{top}] "
        f"{100 * every[top][0]:.2f}%)"
    )
