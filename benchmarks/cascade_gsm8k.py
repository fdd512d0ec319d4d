"""A cascade on GSM8K: Mixtral-8x7B answers first; an answer that fails a production check escalates to GPT-4.

Data: RouteLLM's ``gsm8k_responses.csv`` (both models' recorded answers and correctness on 1,307 problems after
decontamination) and the costs of ``scripts/build_routing_outcomes.py`` (real token counts of the recorded
answers, list prices). Only checks the gateway can run in production decide an escalation; the gold answers are
used to score the result, never to decide:

- final-number: the answer states a final number (``#### N``, "the answer is N", ``\\boxed{N}``);
- arithmetic: every worked equation in the answer recomputes correctly;
- refusal: the answer does not refuse or hedge.

Self-consistency is not measured: the data has one sample per model, and it would need several. Log-probabilities
were not recorded either. An escalated problem pays both calls.

Compared with always-weak, always-strong, the learned router (5-fold cross-validated on GSM8K, the in-domain
setting of ``routing_routellm.py``, and trained on MT-Bench + MMLU only) at equal cost, a router + cascade hybrid
(the router's most doubtful prompts go straight to the strong model, the rest through the cascade) and an oracle
cascade (escalates exactly the weak model's wrong answers: the ceiling for any check).

Run from the repository root: ``.venv/bin/python benchmarks/cascade_gsm8k.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

import build_routing_outcomes as bro  # noqa: E402

from thrifty.routers.checks import (  # noqa: E402
    Answer,
    AnswerCheck,
    ArithmeticCheck,
    FinalNumberCheck,
    RefusalCheck,
    run_checks,
)
from thrifty.routers.evaluate import cross_validated_predictions  # noqa: E402
from thrifty.routers.learned import train  # noqa: E402
from thrifty.routers.outcomes import read_outcomes, to_matrix  # noqa: E402

csv.field_size_limit(sys.maxsize)
CHECK_SETS: dict[str, list[AnswerCheck]] = {
    "final-number": [FinalNumberCheck()],
    "arithmetic": [ArithmeticCheck()],
    "refusal": [RefusalCheck()],
    "all three": [FinalNumberCheck(), ArithmeticCheck(), RefusalCheck()],
}


def load(datasets: Path) -> tuple[list[str], np.ndarray, np.ndarray, list[str], dict[str, list[object]]]:
    """Prompts, quality and cost (n, [strong, weak]), the weak model's answers, and all outcome records."""
    folder = REPO / ".bench" / "routing"
    if not all((folder / f"{n}.jsonl").exists() for n in bro.FILES):
        bro.build(datasets, folder)
    records = {n: read_outcomes(folder / f"{n}.jsonl") for n in ("gsm8k", "mt_bench", "mmlu")}
    data = to_matrix(records["gsm8k"], (bro.STRONG, bro.WEAK))
    with (datasets / "routellm" / "gsm8k" / "gsm8k_responses.csv").open(encoding="utf-8", newline="") as f:
        answers = {row["prompt"]: row[f"{bro.WEAK}_response"] for row in csv.DictReader(f)}
    weak_answers = [answers[p] for p in data.prompts]
    return data.prompts, data.quality, data.cost_usd, weak_answers, records  # type: ignore[return-value]


def frontier(cost: np.ndarray, accuracy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The best accuracy reachable at each cost (splitting traffic between two policies joins them linearly)."""
    order = np.lexsort((-accuracy, cost))
    return cost[order], np.maximum.accumulate(accuracy[order])


def cost_to_reach(cost: np.ndarray, accuracy: np.ndarray, target: float) -> float | None:
    c, a = frontier(cost, accuracy)
    hits = np.nonzero(a >= target - 1e-12)[0]
    if len(hits) == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(c[0])
    return float(c[i - 1] + (target - a[i - 1]) / (a[i] - a[i - 1]) * (c[i] - c[i - 1]))


def accuracy_at(cost: np.ndarray, accuracy: np.ndarray, budget: float) -> float:
    c, a = frontier(cost, accuracy)
    return float(np.interp(budget, c, a, left=np.nan))


def router_curve(score: np.ndarray, quality: np.ndarray, cost: np.ndarray, escalate: np.ndarray | None):
    """Top-k prompts by score go to the strong model; the rest to the weak one, or through the cascade."""
    order = np.argsort(-score, kind="stable")
    strong_q, strong_c = quality[order, 0], cost[order, 0]
    if escalate is None:
        rest_q, rest_c = quality[order, 1], cost[order, 1]
    else:
        esc = escalate[order]
        rest_q = np.where(esc, quality[order, 0], quality[order, 1])
        rest_c = cost[order, 1] + esc * cost[order, 0]
    head_q = np.concatenate([[0.0], np.cumsum(strong_q)])
    head_c = np.concatenate([[0.0], np.cumsum(strong_c)])
    tail_q = np.concatenate([np.cumsum(rest_q[::-1])[::-1], [0.0]])
    tail_c = np.concatenate([np.cumsum(rest_c[::-1])[::-1], [0.0]])
    n = len(score)
    return (head_c + tail_c) / n, (head_q + tail_q) / n


def point(name: str, quality: np.ndarray, cost: np.ndarray, escalated: np.ndarray | None = None) -> dict[str, object]:
    row: dict[str, object] = {"policy": name, "accuracy": float(quality.mean()), "cost_usd": float(cost.mean())}
    if escalated is not None:
        row["escalated"] = float(escalated.mean())
    return row


def run(datasets: Path) -> dict[str, object]:
    prompts, quality, cost, weak_answers, records = load(datasets)
    strong_acc, strong_cost = float(quality[:, 0].mean()), float(cost[:, 0].mean())
    rows = [
        point("always weak (Mixtral)", quality[:, 1], cost[:, 1]),
        point("always strong", quality[:, 0], cost[:, 0]),
    ]
    escalations: dict[str, np.ndarray] = {}
    catch: dict[str, dict[str, float]] = {}
    weak_wrong = quality[:, 1] < 1
    for name, checks in CHECK_SETS.items():
        esc = np.array([not run_checks(Answer(a), checks).passed for a in weak_answers])
        escalations[name] = esc
        q = np.where(esc, quality[:, 0], quality[:, 1])
        rows.append(point(f"cascade: {name}", q, cost[:, 1] + esc * cost[:, 0], esc))
        catch[name] = {
            "escalated": float(esc.mean()),
            "weak_errors_caught": float((esc & weak_wrong).sum() / weak_wrong.sum()),
            "precision": float((esc & weak_wrong).sum() / max(1, esc.sum())),
        }
    rows.append(
        point("cascade: oracle check (gold)", quality.max(axis=1), cost[:, 1] + weak_wrong * cost[:, 0], weak_wrong)
    )
    in_domain = cross_validated_predictions(records["gsm8k"], folds=5)  # type: ignore[arg-type]
    ood = train([*records["mt_bench"], *records["mmlu"]]).predict(prompts)  # type: ignore[list-item]
    curves = {
        "learned router (in domain)": router_curve(in_domain[:, 0] - in_domain[:, 1], quality, cost, None),
        "learned router (out of domain)": router_curve(ood[:, 0] - ood[:, 1], quality, cost, None),
        "router + cascade (in domain)": router_curve(
            in_domain[:, 0] - in_domain[:, 1], quality, cost, escalations["all three"]
        ),
        "router + cascade (out of domain)": router_curve(
            ood[:, 0] - ood[:, 1], quality, cost, escalations["all three"]
        ),
    }
    summary = {}
    for name, (c, a) in curves.items():
        summary[name] = {
            "cost_to_reach_strong_accuracy_usd": cost_to_reach(c, a, strong_acc),
            "accuracy_at_half_strong_cost": accuracy_at(c, a, strong_cost / 2),
        }
    for row in rows:
        for name, (c, a) in curves.items():
            if name.startswith("learned router"):
                row[f"{name} at equal cost"] = accuracy_at(c, a, float(row["cost_usd"]))  # type: ignore[arg-type]
    return {
        "strong_accuracy": strong_acc,
        "strong_cost_usd": strong_cost,
        "points": rows,
        "checks": catch,
        "curves": summary,
    }


def print_report(result: dict[str, object]) -> None:
    strong_cost = float(result["strong_cost_usd"])  # type: ignore[arg-type]
    print(f"\n{'policy':<34} {'accuracy':>9} {'cost/1k':>9} {'vs strong':>10} {'escal.':>7} {'router@=cost':>13}")
    for row in result["points"]:  # type: ignore[attr-defined]
        router = row.get("learned router (in domain) at equal cost")
        router_text = "-" if router is None or np.isnan(router) else f"{router:.4f}"
        escalated = f"{row['escalated']:.1%}" if "escalated" in row else "-"
        print(
            f"{row['policy']:<34} {row['accuracy']:>9.4f} {1000 * row['cost_usd']:>9.3f} "
            f"{row['cost_usd'] / strong_cost:>10.1%} {escalated:>7} {router_text:>13}"
        )
    print(f"\n{'check (on the weak answer)':<28} {'escalates':>10} {'catches errors':>15} {'precision':>10}")
    for name, c in result["checks"].items():  # type: ignore[attr-defined]
        print(f"{name:<28} {c['escalated']:>10.1%} {c['weak_errors_caught']:>15.1%} {c['precision']:>10.1%}")
    print(f"\n{'curve':<34} {'cost to reach strong acc.':>26} {'accuracy at half its cost':>26}")
    for name, s in result["curves"].items():  # type: ignore[attr-defined]
        reach = s["cost_to_reach_strong_accuracy_usd"]
        reach_text = "not reached" if reach is None else f"{reach / strong_cost:.1%} of strong"
        print(f"{name:<34} {reach_text:>26} {s['accuracy_at_half_strong_cost']:>26.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cascade_gsm8k.json")
    args = parser.parse_args()
    started = time.perf_counter()
    result = run(args.datasets)
    print_report(result)
    result["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")


if __name__ == "__main__":
    main()
