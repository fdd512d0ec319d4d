"""How good a router is on an outcome file: its cost-quality curve, APGR and CPT(x%), beside baselines.

Definitions (RouteLLM's): a router sends a share p of prompts to the strong model; the quality gap recovered at p
is (q(p) - q_weak) / (q_strong - q_weak); CPT(x%) is the smallest p that recovers x% of the gap; APGR is the area
under the gap-recovered curve over p in [0, 1] (a random router scores 0.5).

With more than two models the same definitions are used against the cheapest model (lowest mean cost) and the
best single model (highest mean quality), on a cost axis: x = (cost - cost_cheapest) / (cost_best - cost_cheapest).
Every policy is a family of choices ``argmax_m predicted_m - weight * relative_cost_m``; sweeping the weight
from +inf to -inf traces its curve from "always the cheapest" to "always the most expensive". Points are joined by
straight lines, which is what splitting traffic at random between two neighbouring points achieves; for ties in a
score this is also the expected curve of breaking them at random.

Every policy and every single model is measured on the same prompts: those where every model compared was measured
(``comparable``). Scoring a policy on all prompts (choosing among the models measured on each) against single models
averaged over their own prompts compared different prompt sets: with the strong model missing on 40% of prompts,
the oracle scored no better than random. Only when fewer than ``MIN_COMPLETE`` prompts measure every model does a
policy choose among the models measured on each prompt, and the output says so.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from thrifty.routers.features import PromptEmbedder, require_numpy
from thrifty.routers.learned import LearnedRouter, OperatingPoint, choose_indices, load, train
from thrifty.routers.outcomes import (
    OutcomeMatrix,
    OutcomeRecord,
    groups_of,
    model_names,
    read_outcomes,
    to_matrix,
)

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Array = NDArray[np.float64]

Axis = Literal["share", "cost"]
_CELLS = 4_000_000
"""Weights x prompts x models evaluated at once (memory bound: 32 MB a float64 array)."""
MIN_COMPLETE = 10
"""Fewer prompts than this measuring every model: each prompt is scored on the models measured there."""


def comparable(records: Sequence[OutcomeRecord], models: Sequence[str]) -> tuple[list[OutcomeRecord], str]:
    """The records to compare policies on (see the module's docstring), and a note saying what was left out."""
    relevant = [r for r in records if any(m in r.outcomes for m in models)]
    complete = [r for r in relevant if all(m in r.outcomes for m in models)]
    if len(complete) == len(relevant):
        return relevant, ""
    if len(complete) >= MIN_COMPLETE:
        note = (
            f"measured on the {len(complete)} of {len(relevant)} prompts where every model was measured: policies "
            "and single models compared on the same prompts"
        )
        left = [r for r in relevant if not all(m in r.outcomes for m in models)]
        return complete, note + _left_out_differ(complete, left, models)
    return relevant, (
        f"note: only {len(complete)} of {len(relevant)} prompts measure every model; on the others a policy chooses "
        "among the models measured there, and single models are averaged over their own prompts (not like for like)"
    )


@dataclass(frozen=True)
class Curve:
    """A policy's operating points, cheapest first."""

    name: str
    cost_usd: Array
    """Mean cost per prompt."""
    quality: Array
    share: Array
    """Share of prompts not sent to the cheapest model: the strong-model share with two models."""
    weights: Array
    """The cost weight of each point (NaN for points that are not a weight, like a single model)."""


@dataclass(frozen=True)
class GapMetrics:
    apgr: float
    cpt50: float | None
    """None when the curve never recovers half the gap."""
    cpt80: float | None


@dataclass(frozen=True)
class Reference:
    """The two ends every curve is measured between."""

    cheapest: int
    best: int
    quality: Array
    """Per model: mean quality over the prompts it was measured on."""
    cost_usd: Array

    def axis_value(self, curve: Curve, axis: Axis) -> Array:
        if axis == "share":
            return curve.share
        span = self.cost_usd[self.best] - self.cost_usd[self.cheapest]
        if not span > 0:
            return curve.share
        return (curve.cost_usd - self.cost_usd[self.cheapest]) / span  # type: ignore[no-any-return]


def reference(data: OutcomeMatrix) -> Reference:
    """The cheapest and the best single model, among those measured on at least half as many prompts as the
    most-measured one: a model measured on a handful is no end of the scale (one lucky prompt at quality 1 made it
    "the best", so every target and metric was measured against it)."""
    np = require_numpy()
    quality = np.nanmean(data.quality, axis=0)
    cost = np.nanmean(data.cost_usd, axis=0)
    measured = data.available.sum(axis=0)
    ends = np.flatnonzero(2 * measured >= measured.max())
    cheapest = int(ends[np.lexsort((-quality[ends], cost[ends]))[0]])
    best = int(ends[np.lexsort((cost[ends], -quality[ends]))[0]])
    return Reference(cheapest, best, quality, cost)


def _left_out_differ(used: Sequence[OutcomeRecord], left: Sequence[OutcomeRecord], models: Sequence[str]) -> str:
    """A warning when the prompts left out are not like those used: a model whose mean quality differs between
    the two by more than chance would (three standard errors, and 0.05), so the outcomes are not missing at
    random, and what holds on the prompts used may not hold on the others."""
    for model in models:
        a = [r.outcomes[model].quality for r in used]
        b = [r.outcomes[model].quality for r in left if model in r.outcomes]
        if len(b) < 2:
            continue
        mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
        var = sum((q - mean_a) ** 2 for q in a) / len(a) + 1e-9, sum((q - mean_b) ** 2 for q in b) / len(b) + 1e-9
        error = math.sqrt(var[0] / len(a) + var[1] / len(b))
        if abs(mean_a - mean_b) > max(0.05, 3 * error):
            return (
                f"\nWARNING: the prompts left out are not like those used ({model} scores {mean_b:.3f} on them "
                f"against {mean_a:.3f}): outcomes are not missing at random, and these figures may not hold there"
            )
    return ""


def default_axis(data: OutcomeMatrix) -> Axis:
    return "share" if len(data.models) == 2 else "cost"


def policy_curve(
    name: str, predicted: Array, relative_cost: Array, data: OutcomeMatrix, max_points: int = 2048
) -> Curve:
    """The curve traced by ``argmax predicted - w * relative_cost`` over every weight w that changes a choice.

    ``relative_cost`` is per model (m,) or per prompt and model (n, m), like the oracle's true costs.
    """
    np = require_numpy()
    rel = np.broadcast_to(relative_cost, predicted.shape)
    weights = _switch_points(predicted, rel, data.available, max_points)
    cheapest = reference(data).cheapest
    rows = np.arange(len(predicted))
    cost, quality, share = (np.empty(len(weights)) for _ in range(3))
    chunk = max(1, _CELLS // max(1, predicted.size))
    for start in range(0, len(weights), chunk):
        w = weights[start : start + chunk, None, None]
        choice = np.argmax(np.where(data.available, predicted - w * rel, -np.inf), axis=2)
        quality[start : start + chunk] = data.quality[rows, choice].mean(axis=1)
        cost[start : start + chunk] = data.cost_usd[rows, choice].mean(axis=1)
        share[start : start + chunk] = (choice != cheapest).mean(axis=1)
    return Curve(name, cost, quality, share, weights)


def _switch_points(predicted: Array, rel: Array, available: NDArray[np.bool_], max_points: int) -> Array:
    """Weights between the values where some prompt's choice flips, from +inf side to -inf side."""
    np = require_numpy()
    flips = []
    m = predicted.shape[1]
    for i in range(m):
        for j in range(i + 1, m):
            both = available[:, i] & available[:, j] & (rel[:, i] != rel[:, j])
            flips.append((predicted[both, i] - predicted[both, j]) / (rel[both, i] - rel[both, j]))
    values = np.unique(np.concatenate(flips)) if flips else np.zeros(0)
    values = values[np.isfinite(values)]
    if len(values) > max_points:
        values = np.unique(np.quantile(values, np.linspace(0, 1, max_points)))
    if len(values) == 0:
        return np.array([0.0])  # type: ignore[no-any-return]
    mids = (values[1:] + values[:-1]) / 2
    spread = max(1.0, float(values[-1] - values[0]))
    return np.concatenate([[values[-1] + spread], mids[::-1], [values[0] - spread]])  # type: ignore[no-any-return]


def fixed_curve(name: str, points: Sequence[int], data: OutcomeMatrix) -> Curve:
    """Single models as points; two of them joined by a line is the random router between them."""
    np = require_numpy()
    ref = reference(data)
    order = sorted(points, key=lambda m: ref.cost_usd[m])
    share = np.array([0.0 if m == ref.cheapest else 1.0 for m in order])
    nan = np.full(len(order), np.nan)
    return Curve(name, ref.cost_usd[order], ref.quality[order], share, nan)


def gap_metrics(curve: Curve, ref: Reference, axis: Axis) -> GapMetrics | None:
    """APGR, CPT(50%) and CPT(80%); None when the cheapest model is also the best (there is no gap)."""
    np = require_numpy()
    gap = ref.quality[ref.best] - ref.quality[ref.cheapest]
    if not gap > 0:
        return None
    x, g = _unit_polyline(ref.axis_value(curve, axis), (curve.quality - ref.quality[ref.cheapest]) / gap)
    apgr = float(np.sum((x[1:] - x[:-1]) * (g[1:] + g[:-1]) / 2))
    return GapMetrics(apgr, _first_crossing(x, g, 0.5), _first_crossing(x, g, 0.8))


def _unit_polyline(x: Array, g: Array) -> tuple[Array, Array]:
    """The curve restricted to [0, 1]: cut where it crosses an end, held flat beyond its own ends."""
    np = require_numpy()
    keep = (x > 0) & (x < 1)
    xs, gs = [0.0], [float(np.interp(0.0, x, g))]
    xs.extend(x[keep])
    gs.extend(g[keep])
    xs.append(1.0)
    gs.append(float(np.interp(1.0, x, g)))
    return np.array(xs), np.array(gs)


def _first_crossing(x: Array, g: Array, target: float) -> float | None:
    hits = [i for i in range(len(g)) if g[i] >= target - 1e-12]
    if not hits:
        return None
    i = hits[0]
    if i == 0:
        return float(x[0])
    return float(x[i - 1] + (target - g[i - 1]) / (g[i] - g[i - 1]) * (x[i] - x[i - 1]))


def length_rule(data: OutcomeMatrix) -> tuple[Array, Array]:
    """The one-line heuristic: the longer the prompt, the likelier it goes to the best model, else the cheapest."""
    np = require_numpy()
    ref = reference(data)
    lengths = np.array([len(p) for p in data.prompts], dtype=np.float64)
    predicted = np.full(data.quality.shape, -1e6)
    predicted[:, ref.cheapest] = 0.0
    predicted[:, ref.best] = lengths / max(1.0, lengths.max())
    relative = np.zeros(len(data.models))
    relative[ref.best] = 1.0
    return predicted, relative


def oracle(data: OutcomeMatrix, axis: Axis) -> tuple[Array, Array]:
    """Knows every outcome: the best any router could do on this data (on the cost axis, per-prompt costs)."""
    np = require_numpy()
    ref = reference(data)
    scale = max(float(np.max(ref.cost_usd)), 1e-300)
    if axis == "share":
        return data.quality, ref.cost_usd / scale
    return data.quality, np.nan_to_num(data.cost_usd, nan=0.0) / scale


def router_predictions(router: LearnedRouter, data: OutcomeMatrix) -> tuple[Array, Array]:
    """The router's predictions in the data's model order; models it does not know are never chosen."""
    np = require_numpy()
    predicted = np.full(data.quality.shape, -1e6)
    relative = np.zeros(len(data.models))
    raw = router.predict(data.prompts)
    rel = router.relative_cost
    for j, model in enumerate(data.models):
        if model in router.models:
            predicted[:, j] = raw[:, router.models.index(model)]
            relative[j] = rel[router.models.index(model)]
    return predicted, relative


def cross_validated_predictions(
    records: Sequence[OutcomeRecord],
    folds: int = 5,
    seed: int = 0,
    embedder: PromptEmbedder | None = None,
    extra: Sequence[OutcomeRecord] = (),
) -> Array:
    """Each prompt scored by a router trained on the other folds (plus ``extra``, records from elsewhere);
    records sharing a group share a fold."""
    np = require_numpy()
    groups = groups_of(records)
    distinct = sorted(set(groups))
    random.Random(seed).shuffle(distinct)
    fold_of = {g: i % folds for i, g in enumerate(distinct)}
    fold = np.array([fold_of[g] for g in groups])
    models = to_matrix(records).models
    predicted = np.full((len(records), len(models)), np.nan)
    for k in range(folds):
        training = [r for r, f in zip(records, fold, strict=True) if f != k]
        router = train([*training, *extra], embedder=embedder)
        test = [r.prompt for r, f in zip(records, fold, strict=True) if f == k]
        raw = router.predict(test)
        for j, model in enumerate(models):
            if model in router.models:
                predicted[fold == k, j] = raw[:, router.models.index(model)]
    return np.nan_to_num(predicted, nan=-1e6)  # type: ignore[no-any-return]


def realized(data: OutcomeMatrix, choice: Array) -> tuple[float, float]:
    """Mean quality and cost of a choice per prompt."""
    np = require_numpy()
    rows = np.arange(len(choice))
    return float(data.quality[rows, choice].mean()), float(data.cost_usd[rows, choice].mean())


def decisions(router: LearnedRouter, prompts: Sequence[str], point: OperatingPoint) -> list[dict[str, str]]:
    """What the gateway would call for each prompt at ``point``, among all the router's models."""
    chosen = choose_indices(router.predict(prompts), router.relative_cost, point, router.models)
    return [{"prompt": p, "model": router.models[int(i)]} for p, i in zip(prompts, chosen, strict=True)]


def standard_curves(data: OutcomeMatrix, predicted: Array, relative: Array, name: str) -> list[Curve]:
    """The router's curve with random, the prompt-length rule and the oracle beside it."""
    ref = reference(data)
    axis = default_axis(data)
    return [
        policy_curve(name, predicted, relative, data),
        fixed_curve("random", [ref.cheapest, ref.best], data),
        policy_curve("prompt length", *length_rule(data), data),
        policy_curve("oracle", *oracle(data, axis), data),
    ]


def format_pct(value: float | None) -> str:
    return "not reached" if value is None else f"{100 * value:.2f}%"


def metrics_table(curves: Sequence[Curve], data: OutcomeMatrix) -> str:
    ref = reference(data)
    axis = default_axis(data)
    unit = "strong-model calls" if axis == "share" else "share of the cost gap"
    lines = [f"{'policy':<22} {'APGR':>7} {'CPT(50%)':>12} {'CPT(80%)':>12}   (CPT in {unit})"]
    for curve in curves:
        m = gap_metrics(curve, ref, axis)
        if m is None:
            lines.append(f"{curve.name:<22} {'n/a: the cheapest model is also the best':>33}")
        else:
            lines.append(f"{curve.name:<22} {m.apgr:>7.3f} {format_pct(m.cpt50):>12} {format_pct(m.cpt80):>12}")
    return "\n".join(lines)


def curve_table(curves: Sequence[Curve], data: OutcomeMatrix, steps: int = 10) -> str:
    """Quality of each policy at evenly spaced points of the axis (interpolated between operating points)."""
    np = require_numpy()
    ref = reference(data)
    axis = default_axis(data)
    head = "strong share" if axis == "share" else "cost gap"
    lines = [f"{head:>12} {'cost/1k usd':>12} " + " ".join(f"{c.name[:14]:>14}" for c in curves)]
    span = ref.cost_usd[ref.best] - ref.cost_usd[ref.cheapest]
    for k in range(steps + 1):
        x = k / steps
        values = []
        for curve in curves:
            xs = ref.axis_value(curve, axis)
            values.append(f"{float(np.interp(x, xs, curve.quality)):>14.4f}")
        if axis == "cost":
            cost = ref.cost_usd[ref.cheapest] + x * span
        else:
            cost = float(np.interp(x, ref.axis_value(curves[0], axis), curves[0].cost_usd))
        lines.append(f"{100 * x:>11.0f}% {1000 * cost:>12.4f} " + " ".join(values))
    return "\n".join(lines)


def models_table(data: OutcomeMatrix) -> str:
    ref = reference(data)
    lines = [f"{'model':<44} {'measured':>9} {'quality':>8} {'cost/1k usd':>12}"]
    for j, model in enumerate(data.models):
        role = " (cheapest)" if j == ref.cheapest else " (best)" if j == ref.best else ""
        measured = int(data.available[:, j].sum())
        label = (model + role)[:44]
        lines.append(f"{label:<44} {measured:>9} {ref.quality[j]:>8.4f} {1000 * ref.cost_usd[j]:>12.4f}")
    return "\n".join(lines)


def eval_command(data: str | Path, router_dir: str | Path, decisions_out: str | Path | None = None) -> str:
    """``thrifty eval router --data OUTCOMES.jsonl --router ROUTER_DIR [--decisions OUT.jsonl]``: tables to print."""
    from thrifty.routers.calibrate import calibrate, describe

    records = read_outcomes(data)
    router = load(router_dir)
    # Only the router's models: one it does not know is never chosen in the gateway, so its curve may not use it
    # (given no prediction and no cost, a high cost weight chose it), and the baselines are among what it can call.
    named = model_names(records)
    models = [m for m in named if m in router.models]
    if not models:
        raise ValueError(f"{data} measures none of the router's models ({', '.join(router.models)})")
    used, note = comparable(records, models)
    matrix = to_matrix(used, models)
    out = [f"{len(used)} prompts, {len(matrix.models)} models ({data})"]
    unknown = [m for m in named if m not in router.models]
    if unknown:
        out.append(f"left out {', '.join(unknown)}: not among the router's models, never chosen by it")
    out += [note] if note else []
    out += ["", models_table(matrix), ""]
    curves = standard_curves(matrix, *router_predictions(router, matrix), name="learned router")
    out += [metrics_table(curves, matrix), "", curve_table(curves, matrix), ""]
    point = router.point
    if point is None:
        try:
            calibration = calibrate(router, records)
        except ValueError as exc:  # the curves above stand; only an operating point cannot be chosen here
            out.append(f"router not calibrated, and this data cannot calibrate it: {exc}")
            if decisions_out is not None:
                out.append("no decisions written: calibrate the router first (`thrifty router calibrate`)")
            return "\n".join(out)
        point = calibration.point
        out.append("router not calibrated: calibrated here on this data to keep 95% of the best model's quality")
        out.append(describe(calibration))
    else:
        out.append(_at_point(router, matrix, point))
    unmeasured = _unmeasured_choices(router, matrix, point)
    if unmeasured:
        out.append(
            f"note: on {unmeasured} of {len(matrix.prompts)} prompts the model the router would call (as in "
            "--decisions) has no outcome in this data; the figures above choose among the measured models there"
        )
    if decisions_out is not None:
        rows = decisions(router, [r.prompt for r in records], point)
        _write_jsonl(Path(decisions_out), rows)
        out.append(f"wrote {len(rows)} decisions to {decisions_out}")
    return "\n".join(out)


def _unmeasured_choices(router: LearnedRouter, data: OutcomeMatrix, point: OperatingPoint) -> int:
    """Prompts where the gateway's choice (among all the router's models) was not measured in ``data``."""
    chosen = [row["model"] for row in decisions(router, data.prompts, point)]
    return sum(
        1
        for i, model in enumerate(chosen)
        if model not in data.models or not bool(data.available[i, data.models.index(model)])
    )


def _at_point(router: LearnedRouter, data: OutcomeMatrix, point: OperatingPoint) -> str:
    np = require_numpy()
    ref = reference(data)
    predicted, relative = router_predictions(router, data)
    if point.model is not None and point.model in data.models:
        choice = np.full(len(data.prompts), data.models.index(point.model))
    else:
        free = OperatingPoint(point.cost_weight)
        masked = np.where(data.available, predicted, np.nan)
        choice = choose_indices(masked, relative, free, data.models)
    quality, cost = realized(data, choice)
    best_q, best_c = ref.quality[ref.best], ref.cost_usd[ref.best]
    saving = f"{1 - cost / best_c:.1%} less than the best model" if best_c > 0 else "the best model costs nothing"
    return (
        f"at the calibrated operating point (cost weight {point.cost_weight:.4g}"
        f"{', fixed ' + point.model if point.model else ''}): quality {quality:.4f} "
        f"({quality / best_q:.1%} of the best model's {best_q:.4f}), cost/1k ${Decimal(str(1000 * cost)):.4f} "
        f"({saving})"
    )


def _write_jsonl(path: Path, rows: Sequence[dict[str, str]]) -> None:
    import json

    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
