"""The operating point for a quality target: the least expected cost that keeps ``keep`` of the best model's quality.

``thrifty router calibrate --router ROUTER_DIR --data OUTCOMES.jsonl --keep 0.95`` runs ``calibrate_command``: every
cost weight that changes a decision on the data is tried, and so is "always model m" for each model the router
knows that the data measured on every prompt (a router that cannot beat the best model at the target falls back to
it rather than missing the target).
The cheapest candidate whose mean quality on the data reaches ``keep`` x the best single model's is saved in the
router directory, and the gateway routes with it from then on.

The expected cost is measured on the calibration data itself: calibrate on data that looks like the traffic.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from thrifty.routers.evaluate import comparable, policy_curve, realized, reference, router_predictions
from thrifty.routers.features import require_numpy
from thrifty.routers.learned import LearnedRouter, OperatingPoint, choose_indices, load, save
from thrifty.routers.outcomes import OutcomeMatrix, OutcomeRecord, read_outcomes, to_matrix

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


EXACT_POINTS = 1 << 16
"""Switch points tried in full; past this many (tens of thousands of prompts, a dozen models) a quantile sample."""


@dataclass(frozen=True)
class Calibration:
    point: OperatingPoint
    keep: float
    quality: float
    """Mean quality on the data at ``point``."""
    target_quality: float
    expected_cost_usd: Decimal
    """Mean cost per prompt on the data at ``point``."""
    best_model: str
    best_model_quality: float
    best_model_cost_usd: Decimal
    shares: dict[str, float]
    """Share of prompts each model gets at ``point``."""
    note: str = ""
    """What the figures were measured on, when not every prompt (``evaluate.comparable``)."""

    @property
    def met(self) -> bool:
        return self.quality >= self.target_quality - 1e-12


def calibrate(router: LearnedRouter, records: list[OutcomeRecord], keep: float = 0.95) -> Calibration:
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    unmeasured = [m for m in router.models if not any(m in r.outcomes for r in records)]
    if unmeasured:
        raise ValueError(
            f"the data has no outcome of {', '.join(unmeasured)}, which the router may choose: calibrate on data "
            "that measures every model the router was trained on"
        )
    # Only the router's models: one it does not know is never chosen in the gateway, so no operating point may
    # lean on it; and the target and every candidate measured on the same prompts (``comparable``).
    used, note = comparable(records, router.models)
    data = to_matrix(used, router.models)
    ref = reference(data)
    target = keep * float(ref.quality[ref.best])
    predicted, relative = router_predictions(router, data)
    # Every weight that changes a choice, not a sample of them: "the least expected cost" is exact.
    curve = policy_curve("router", predicted, relative, data, max_points=EXACT_POINTS)
    # (cost, -quality) orders candidates: the cheapest first, and among equal costs the better one.
    candidates = [
        (float(curve.cost_usd[i]), -float(curve.quality[i]), OperatingPoint(float(curve.weights[i])))
        for i in range(len(curve.weights))
    ]
    measured_everywhere = [bool(column.all()) for column in data.available.T]
    for j, model in enumerate(data.models):
        # "Always m" sends every prompt to m: it is a candidate only where the data measured m on every prompt
        # (scored elsewhere on a mix, or on m's measured prompts alone, it could look like what it is not).
        if measured_everywhere[j]:
            candidates.append((float(ref.cost_usd[j]), -float(ref.quality[j]), OperatingPoint(0.0, model)))
    meeting = [c for c in candidates if -c[1] >= target - 1e-12]
    _, _, point = min(meeting, key=lambda c: c[:2]) if meeting else min(candidates, key=lambda c: (c[1], c[0]))
    choice = _choice(data, predicted, relative, point)
    quality, cost = realized(data, choice)
    shares = {model: float((choice == j).mean()) for j, model in enumerate(data.models)}
    return Calibration(
        point=point,
        keep=keep,
        quality=quality,
        target_quality=target,
        expected_cost_usd=_usd(cost),
        best_model=data.models[ref.best],
        best_model_quality=float(ref.quality[ref.best]),
        best_model_cost_usd=_usd(float(ref.cost_usd[ref.best])),
        shares=shares,
        note=note,
    )


def _choice(
    data: OutcomeMatrix, predicted: NDArray[np.float64], relative: NDArray[np.float64], point: OperatingPoint
) -> NDArray[np.float64]:
    np = require_numpy()
    if point.model is not None:  # measured on every prompt (a candidate only then)
        return np.full(len(data.prompts), data.models.index(point.model))  # type: ignore[no-any-return]
    masked = np.where(data.available, predicted, np.nan)
    return choose_indices(masked, relative, point, data.models)


def _usd(value: float) -> Decimal:
    return Decimal(repr(value)).quantize(Decimal("1e-12"))


def describe(c: Calibration) -> str:
    point = f"always {c.point.model}" if c.point.model else f"cost weight {c.point.cost_weight:.6g}"
    verdict = "meets" if c.met else "MISSES"
    saving = 1 - c.expected_cost_usd / c.best_model_cost_usd if c.best_model_cost_usd > 0 else Decimal(0)
    shares = ", ".join(f"{m} {s:.1%}" for m, s in sorted(c.shares.items(), key=lambda kv: -kv[1]) if s > 0)
    return "\n".join(
        [
            f"operating point: {point}",
            f"quality {c.quality:.4f}, {verdict} the target {c.target_quality:.4f} "
            f"({c.keep:.0%} of {c.best_model}'s {c.best_model_quality:.4f})",
            f"expected cost ${c.expected_cost_usd * 1000:.6f} per 1k prompts, "
            f"against ${c.best_model_cost_usd * 1000:.6f} for always {c.best_model} ({saving:.1%} less)",
            f"traffic: {shares}",
            *([c.note] if c.note else []),
        ]
    )


def calibrate_command(router_dir: str | Path, data: str | Path, keep: float = 0.95) -> str:
    """Calibrate on ``data``, save the operating point into ``router_dir``, and return the summary to print."""
    router = load(router_dir)
    calibration = calibrate(router, read_outcomes(data), keep)
    save(router.with_point(calibration.point), router_dir)
    return describe(calibration) + f"\nsaved the operating point to {Path(router_dir) / 'router.json'}"
