"""A learned router: for each prompt, each model's expected quality, learned from an outcome file.

"Will the cheap model be good enough for this prompt?" generalised to any number of models: one ridge
regression per model predicts the quality that model would reach on a prompt. The router only scores; which
model to call is decided outside it by an ``OperatingPoint`` (RouteLLM's split of score and threshold):
``argmax_m quality_m - cost_weight * relative_cost_m``, where ``relative_cost_m`` is the model's mean cost per
prompt in the training data over the most expensive model's. With two models this is exactly RouteLLM's threshold
on ``quality_strong - quality_weak``; a negative weight reaches "always the most expensive model".

Features (``routers.features``): hashed n-gram TF-IDF and shape features, numpy only, about a millisecond a
prompt; optionally a sentence embedding (``embedder="minilm"``: better on open-ended chat, tens of milliseconds a
prompt on a CPU). Each model's ridge penalty is chosen by cross-validation inside the training data
(``routers.ridge``).

A router is saved as ``router.json`` (models, costs, settings, operating point) and ``weights.npz``; the embedding
model, if any, is named, never copied. Needs the ``routing`` extra (numpy), and ``semantic`` for MiniLM.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrifty.routers import ridge
from thrifty.routers.features import (
    FeatureSpace,
    PromptEmbedder,
    embedder_named,
    fit_space,
    hash_counts,
    require_numpy,
    shape_features,
)
from thrifty.routers.outcomes import OutcomeRecord, groups_of, model_names, read_outcomes

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Array = NDArray[np.float64]

FORMAT = "thrifty-learned-router/2"
_FORMATS = (FORMAT, "thrifty-learned-router/1")
_ARRAYS = ("idf", "shape_mean", "shape_std", "weights", "bias")
SHAPE_SCALE = math.sqrt(10.0)
"""Shape features penalised 10x less than n-grams: chosen once, before the per-model penalties were added."""


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """Where on the cost-quality curve the router runs: a cost weight, or one fixed model."""

    cost_weight: float = 0.0
    model: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"cost_weight": self.cost_weight, "model": self.model}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> OperatingPoint:
        return cls(float(obj["cost_weight"]), obj.get("model"))


@dataclass(frozen=True)
class LearnedRouter:
    models: tuple[str, ...]
    mean_cost_usd: tuple[Decimal, ...]
    """Each model's mean cost per prompt in the training data."""
    space: FeatureSpace
    weights: Array
    """(features, models)."""
    bias: Array
    alphas: tuple[float, ...]
    """Each model's ridge penalty, as cross-validation chose it."""
    point: OperatingPoint | None = None
    trained_on: int = 0

    @property
    def dim(self) -> int:
        return self.space.dim

    @property
    def relative_cost(self) -> Array:
        np = require_numpy()
        costs = np.array([float(c) for c in self.mean_cost_usd])
        top = costs.max()
        return costs / top if top > 0 else np.zeros_like(costs)  # type: ignore[no-any-return]

    def features(self, prompts: Sequence[str]) -> Array:
        return self.space(prompts)

    def predict(self, prompts: Sequence[str]) -> Array:
        """Expected quality of every model on every prompt, shape (prompts, models)."""
        return self.features(prompts) @ self.weights + self.bias

    def score(self, prompt: str) -> dict[str, float]:
        return dict(zip(self.models, (float(v) for v in self.predict([prompt])[0]), strict=True))

    def rank(self, prompt: str, point: OperatingPoint | None = None, penalty: Array | None = None) -> list[str]:
        """Models best first at ``point`` (default: the calibrated one): the first is the choice, the rest fallbacks.

        ``penalty`` (per model, in quality units) is subtracted too: the gateway's latency weight uses it.
        """
        point = point or self.point or OperatingPoint()
        utility = self.predict([prompt])[0] - point.cost_weight * self.relative_cost
        if penalty is not None:
            utility = utility - penalty
        order = [self.models[i] for i in sorted(range(len(self.models)), key=lambda i: -utility[i])]
        if point.model in order:
            order.remove(point.model)
            order.insert(0, point.model)
        return order

    def choose(self, prompt: str, point: OperatingPoint | None = None) -> str:
        return self.rank(prompt, point)[0]

    def with_point(self, point: OperatingPoint) -> LearnedRouter:
        return replace(self, point=point)


def replace_embedder(router: LearnedRouter, embedder: PromptEmbedder) -> LearnedRouter:
    """The same router computing its embeddings with ``embedder`` (same model, other instance or cache)."""
    if router.space.embedder is None or router.space.embedder.name != embedder.name:
        raise ValueError(f"the router was not trained with {embedder.name} embeddings")
    return replace(router, space=replace(router.space, embedder=embedder))


def choose_indices(pred: Array, relative_cost: Array, point: OperatingPoint, models: Sequence[str]) -> Array:
    """The chosen model's index for each row of ``pred``; NaN predictions (unavailable models) are never chosen."""
    np = require_numpy()
    if point.model is not None:
        return np.full(len(pred), models.index(point.model))  # type: ignore[no-any-return]
    utility = np.where(np.isnan(pred), -np.inf, pred - point.cost_weight * relative_cost)
    return np.argmax(utility, axis=1)  # type: ignore[no-any-return]


def train(
    records: Sequence[OutcomeRecord],
    *,
    dim: int = 4096,
    embedder: PromptEmbedder | str | None = None,
    alpha: float | None = None,
    folds: int = 5,
) -> LearnedRouter:
    """Fit one ridge regression per model on the prompts where that model has an outcome.

    ``alpha`` None (the default) chooses each model's penalty by ``folds``-fold cross-validation on ``records``
    (records sharing a group share a fold); a number fixes it for every model.
    """
    np = require_numpy()
    if isinstance(embedder, str):
        embedder = embedder_named(embedder)
    models = model_names(records)
    prompts = [r.prompt for r in records]
    hashed, shapes = np.vstack([hash_counts(p, dim) for p in prompts]), shape_features(prompts)
    space = fit_space(hashed, shapes, dim, SHAPE_SCALE, embedder)
    vectors = space.raw(prompts)[2] if embedder is not None else None
    x = space.encode(hashed, shapes, vectors)
    quality = np.array([[_quality(r, m) for m in models] for r in records], dtype=np.float64)
    groups = groups_of(records)  # a prompt asked twice stays on one side of the penalty's folds
    weights, bias, alphas = ridge.fit_per_model(x, quality, groups, folds, alpha)
    return LearnedRouter(
        models=models,
        mean_cost_usd=tuple(_mean_cost(records, m) for m in models),
        space=space,
        weights=weights,
        bias=bias,
        alphas=tuple(alphas),
        trained_on=len(records),
    )


def _quality(record: OutcomeRecord, model: str) -> float:
    outcome = record.outcomes.get(model)
    return math.nan if outcome is None else outcome.quality


def _mean_cost(records: Sequence[OutcomeRecord], model: str) -> Decimal:
    costs = [r.outcomes[model].cost_usd for r in records if model in r.outcomes]
    return sum(costs, Decimal(0)) / len(costs)


def save(router: LearnedRouter, directory: str | Path) -> None:
    np = require_numpy()
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    space = router.space
    meta = {
        "format": FORMAT,
        "models": list(router.models),
        "mean_cost_usd": [str(c) for c in router.mean_cost_usd],
        "dim": space.dim,
        "alphas": list(router.alphas),
        "shape_scale": space.shape_scale,
        "embedder": space.embedder.name if space.embedder else None,
        "embedding_scale": space.embedding_scale,
        "trained_on": router.trained_on,
        "operating_point": router.point.to_json() if router.point else None,
    }
    arrays = {"idf": space.idf, "shape_mean": space.shape_mean, "shape_std": space.shape_std}
    np.savez(folder / "weights.npz", weights=router.weights, bias=router.bias, **arrays)
    (folder / "router.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load(directory: str | Path, embedder: PromptEmbedder | None = None) -> LearnedRouter:
    """A saved router; ``embedder`` stands in for the one the router names (tests, a shared instance).
    ``ValueError`` naming the folder for anything missing or unreadable."""
    folder = Path(directory)
    try:
        return _load(folder, embedder)
    except ValueError as exc:
        if str(exc).startswith(str(folder)):
            raise
        raise ValueError(f"{folder}: not a usable learned router ({exc})") from exc
    except (OSError, KeyError, TypeError, ArithmeticError) as exc:
        what = f"no {exc.filename}" if isinstance(exc, FileNotFoundError) else f"{exc.__class__.__name__}: {exc}"
        raise ValueError(f"{folder}: not a usable learned router ({what})") from exc


def _load(folder: Path, embedder: PromptEmbedder | None) -> LearnedRouter:
    np = require_numpy()
    meta = json.loads((folder / "router.json").read_text(encoding="utf-8"))
    if meta.get("format") not in _FORMATS:
        raise ValueError(f"{folder}: not a learned router of format {FORMAT!r} (found {meta.get('format')!r})")
    with np.load(folder / "weights.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k].astype(np.float64) for k in _ARRAYS}
    models = tuple(meta["models"])
    if meta.get("embedder") and embedder is None:
        embedder = embedder_named(meta["embedder"])
    if "alphas" in meta:
        alphas, shape_scale = tuple(float(a) for a in meta["alphas"]), float(meta["shape_scale"])
    else:  # format 1: one penalty, the shape block's expressed as its own penalty
        alphas = (float(meta["alpha"]),) * len(models)
        shape_scale = math.sqrt(float(meta["alpha"]) / float(meta["shape_alpha"]))
    space = FeatureSpace(
        int(meta["dim"]),
        arrays["idf"],
        arrays["shape_mean"],
        arrays["shape_std"],
        shape_scale,
        embedder if meta.get("embedder") else None,
        float(meta.get("embedding_scale", 1.0)),
    )
    if arrays["weights"].shape != (space.width, len(models)) or arrays["idf"].shape != (space.dim,):
        raise ValueError(f"{folder}: weights.npz does not match router.json (dim {meta['dim']}, {len(models)} models)")
    point = meta.get("operating_point")
    return LearnedRouter(
        models=models,
        mean_cost_usd=tuple(Decimal(c) for c in meta["mean_cost_usd"]),
        space=space,
        weights=arrays["weights"],
        bias=arrays["bias"],
        alphas=alphas,
        point=OperatingPoint.from_json(point) if point else None,
        trained_on=int(meta["trained_on"]),
    )


def train_command(data: str | Path | Sequence[str | Path], out: str | Path, embedder: str | None = None) -> str:
    """``thrifty router train --data OUTCOMES.jsonl [--data MORE.jsonl] --out ROUTER_DIR``: a summary to print."""
    paths = [data] if isinstance(data, str | Path) else list(data)
    records = [record for path in paths for record in read_outcomes(path)]
    router = train(records, embedder=embedder)
    save(router, out)
    lines = [f"trained on {len(records)} prompts from {len(paths)} file(s); saved to {out}", ""]
    lines.append(f"{'model':<44} {'prompts':>8} {'mean quality':>13} {'mean cost_usd':>14} {'penalty':>8}")
    for model, cost, alpha in zip(router.models, router.mean_cost_usd, router.alphas, strict=True):
        measured = [r.outcomes[model].quality for r in records if model in r.outcomes]
        mean = sum(measured) / len(measured)
        lines.append(f"{model:<44} {len(measured):>8} {mean:>13.4f} {cost:>14.6f} {alpha:>8.3g}")
    lines.append("")
    lines.append(f"next: thrifty router calibrate --router {out} --data OUTCOMES.jsonl --keep 0.95")
    return "\n".join(lines)
