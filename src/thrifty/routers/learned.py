"""A learned router: for each prompt, each model's expected quality, learned from an outcome file.

"Will the cheap model be good enough for this prompt?" generalised to any number of models: one ridge
regression per model predicts the quality that model would reach on a prompt. The router only scores; which
model to call is decided outside it by an ``OperatingPoint`` (RouteLLM's split of score and threshold):
``argmax_m quality_m - cost_weight * relative_cost_m``, where ``relative_cost_m`` is the model's mean cost per
prompt in the training data over the most expensive model's. With two models this is exactly RouteLLM's threshold
on ``quality_strong - quality_weak``; a negative weight reaches "always the most expensive model".

Features, all computed on the CPU in about a millisecond with numpy only (no model download, no pickle):
- word 1-2-grams and character 3-5-grams within words, signed-hashed into ``dim`` buckets, sublinear TF-IDF,
  L2-normalised: what the prompt is about;
- seven shape features (length in characters and words, numbers, lines, sentences, operators, code punctuation),
  standardised and penalised less than the n-grams: how hard it looks, the part that transfers across domains
  (prompt length alone is a strong baseline on all three RouteLLM benchmarks).

A router is saved as ``router.json`` (models, costs, settings, operating point) and ``weights.npz``.
Needs the ``routing`` extra (numpy).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrifty.routers.outcomes import OutcomeRecord, model_names, read_outcomes

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Array = NDArray[np.float64]

FORMAT = "thrifty-learned-router/1"
_WORD = re.compile(r"\w+")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# Long prompts are hashed by their head and tail only: it bounds decision time, and the ask is usually at an end.
_HEAD_CHARS = 3000
_TAIL_CHARS = 3000


def require_numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError("the learned router needs numpy: pip install 'thrifty[routing]'") from exc
    return numpy


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
    dim: int
    alpha: float
    shape_alpha: float
    idf: Array
    shape_mean: Array
    shape_std: Array
    weights: Array
    """(features, models)."""
    bias: Array
    point: OperatingPoint | None = None
    trained_on: int = 0

    @property
    def relative_cost(self) -> Array:
        np = require_numpy()
        costs = np.array([float(c) for c in self.mean_cost_usd])
        top = costs.max()
        return costs / top if top > 0 else np.zeros_like(costs)  # type: ignore[no-any-return]

    def features(self, prompts: Sequence[str]) -> Array:
        np = require_numpy()
        hashed = np.vstack([hash_counts(p, self.dim) for p in prompts]) if prompts else np.zeros((0, self.dim))
        return encode(hashed, shape_features(prompts), self)

    def predict(self, prompts: Sequence[str]) -> Array:
        """Expected quality of every model on every prompt, shape (prompts, models)."""
        return self.features(prompts) @ self.weights + self.bias

    def score(self, prompt: str) -> dict[str, float]:
        return dict(zip(self.models, (float(v) for v in self.predict([prompt])[0]), strict=True))

    def rank(self, prompt: str, point: OperatingPoint | None = None) -> list[str]:
        """Models best first at ``point`` (default: the calibrated one): the first is the choice, the rest fallbacks."""
        point = point or self.point or OperatingPoint()
        utility = self.predict([prompt])[0] - point.cost_weight * self.relative_cost
        order = [self.models[i] for i in sorted(range(len(self.models)), key=lambda i: -utility[i])]
        if point.model in order:
            order.remove(point.model)
            order.insert(0, point.model)
        return order

    def choose(self, prompt: str, point: OperatingPoint | None = None) -> str:
        return self.rank(prompt, point)[0]

    def with_point(self, point: OperatingPoint) -> LearnedRouter:
        return replace(self, point=point)


def choose_indices(pred: Array, relative_cost: Array, point: OperatingPoint, models: Sequence[str]) -> Array:
    """The chosen model's index for each row of ``pred``; NaN predictions (unavailable models) are never chosen."""
    np = require_numpy()
    if point.model is not None:
        return np.full(len(pred), models.index(point.model))  # type: ignore[no-any-return]
    utility = np.where(np.isnan(pred), -np.inf, pred - point.cost_weight * relative_cost)
    return np.argmax(utility, axis=1)  # type: ignore[no-any-return]


def hash_counts(text: str, dim: int) -> Array:
    """Signed hashed counts of the prompt's word and character n-grams (signs cancel collisions on average)."""
    np = require_numpy()
    if len(text) > _HEAD_CHARS + _TAIL_CHARS:
        text = text[:_HEAD_CHARS] + " " + text[-_TAIL_CHARS:]
    words = _WORD.findall(text.lower())
    grams: Counter[str] = Counter("w " + w for w in words)
    grams.update("b " + a + " " + b for a, b in itertools.pairwise(words))
    for word, count in Counter(words).items():
        padded = f" {word} "
        for n in (3, 4, 5):
            for i in range(len(padded) - n + 1):
                grams[padded[i : i + n]] += count
    if not grams:
        return np.zeros(dim)  # type: ignore[no-any-return]
    hashes = np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.int64, count=len(grams))
    counts = np.fromiter(grams.values(), dtype=np.float64, count=len(grams))
    signs = np.where(hashes & (1 << 31), -1.0, 1.0)
    return np.bincount(hashes % dim, weights=signs * counts, minlength=dim)  # type: ignore[no-any-return]


def shape_features(prompts: Sequence[str]) -> Array:
    np = require_numpy()
    rows = [
        [
            len(p),
            len(_WORD.findall(p)),
            len(_NUMBER.findall(p)),
            p.count("\n"),
            sum(p.count(c) for c in ".?!"),
            sum(p.count(c) for c in "+-*/=^<>%$"),
            sum(p.count(c) for c in "{}[]();_"),
        ]
        for p in prompts
    ]
    return np.log1p(np.array(rows, dtype=np.float64).reshape(len(prompts), 7))  # type: ignore[no-any-return]


def encode(hashed: Array, shapes: Array, router: LearnedRouter) -> Array:
    np = require_numpy()
    tf = np.sign(hashed) * np.log1p(np.abs(hashed)) * router.idf
    tf /= np.maximum(np.linalg.norm(tf, axis=1, keepdims=True), 1e-12)
    # Scaling a block by sqrt(alpha / shape_alpha) under one ridge penalty alpha penalises it by shape_alpha.
    scale = math.sqrt(router.alpha / router.shape_alpha / shapes.shape[1])
    z = (shapes - router.shape_mean) / router.shape_std * scale
    return np.hstack([tf, z])  # type: ignore[no-any-return]


def train(
    records: Sequence[OutcomeRecord], *, dim: int = 4096, alpha: float = 10.0, shape_alpha: float = 1.0
) -> LearnedRouter:
    """Fit one ridge regression per model on the prompts where that model has an outcome.

    ``alpha`` = 10 was chosen once, on cross-validation runs over the three RouteLLM benchmarks together, and is
    used unchanged for every benchmark and setting reported.
    """
    np = require_numpy()
    models = model_names(records)
    prompts = [r.prompt for r in records]
    hashed = np.vstack([hash_counts(p, dim) for p in prompts])
    shapes = shape_features(prompts)
    document_freq = (hashed != 0).sum(axis=0)
    router = LearnedRouter(
        models=models,
        mean_cost_usd=tuple(_mean_cost(records, m) for m in models),
        dim=dim,
        alpha=alpha,
        shape_alpha=shape_alpha,
        idf=np.log((1 + len(records)) / (1 + document_freq)) + 1.0,
        shape_mean=shapes.mean(axis=0),
        shape_std=shapes.std(axis=0) + 1e-6,
        weights=np.zeros((dim + shapes.shape[1], len(models))),
        bias=np.zeros(len(models)),
        trained_on=len(records),
    )
    x = encode(hashed, shapes, router).astype(np.float32)
    quality = np.array([[_quality(r, m) for m in models] for r in records], dtype=np.float64)
    weights, bias = _fit_ridge(x, quality, alpha)
    return replace(router, weights=weights, bias=bias)


def _fit_ridge(x: Array, quality: Array, alpha: float) -> tuple[Array, Array]:
    """Ridge with an unpenalised intercept per model; models measured on the same prompts share one solve."""
    np = require_numpy()
    weights = np.zeros((x.shape[1], quality.shape[1]))
    bias = np.zeros(quality.shape[1])
    present = ~np.isnan(quality)
    patterns: dict[bytes, list[int]] = {}
    for m in range(quality.shape[1]):
        patterns.setdefault(present[:, m].tobytes(), []).append(m)
    for columns in patterns.values():
        rows = present[:, columns[0]]
        xs, ys = x[rows], quality[rows][:, columns]
        x_mean, y_mean = xs.mean(axis=0), ys.mean(axis=0)
        xc = xs - x_mean
        # Solve in whichever space is smaller: n x n (dual) for small data, features x features otherwise.
        if len(xc) <= xc.shape[1]:
            gram = (xc @ xc.T).astype(np.float64) + alpha * np.eye(len(xc))
            w = xc.T.astype(np.float64) @ np.linalg.solve(gram, ys - y_mean)
        else:
            gram = (xc.T @ xc).astype(np.float64) + alpha * np.eye(xc.shape[1])
            w = np.linalg.solve(gram, xc.T.astype(np.float64) @ (ys - y_mean))
        weights[:, columns] = w
        bias[columns] = y_mean - x_mean.astype(np.float64) @ w
    return weights, bias


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
    meta = {
        "format": FORMAT,
        "models": list(router.models),
        "mean_cost_usd": [str(c) for c in router.mean_cost_usd],
        "dim": router.dim,
        "alpha": router.alpha,
        "shape_alpha": router.shape_alpha,
        "trained_on": router.trained_on,
        "operating_point": router.point.to_json() if router.point else None,
    }
    arrays = {k: getattr(router, k) for k in ("idf", "shape_mean", "shape_std", "weights", "bias")}
    np.savez(folder / "weights.npz", **arrays)
    (folder / "router.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load(directory: str | Path) -> LearnedRouter:
    np = require_numpy()
    folder = Path(directory)
    meta = json.loads((folder / "router.json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{folder}: not a learned router of format {FORMAT!r} (found {meta.get('format')!r})")
    with np.load(folder / "weights.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k].astype(np.float64) for k in ("idf", "shape_mean", "shape_std", "weights", "bias")}
    models = tuple(meta["models"])
    if arrays["weights"].shape != (meta["dim"] + 7, len(models)) or arrays["idf"].shape != (meta["dim"],):
        raise ValueError(f"{folder}: weights.npz does not match router.json (dim {meta['dim']}, {len(models)} models)")
    point = meta.get("operating_point")
    return LearnedRouter(
        models=models,
        mean_cost_usd=tuple(Decimal(c) for c in meta["mean_cost_usd"]),
        dim=int(meta["dim"]),
        alpha=float(meta["alpha"]),
        shape_alpha=float(meta["shape_alpha"]),
        point=OperatingPoint.from_json(point) if point else None,
        trained_on=int(meta["trained_on"]),
        **arrays,
    )


def train_command(data: str | Path | Sequence[str | Path], out: str | Path) -> str:
    """``thrifty router train --data OUTCOMES.jsonl [--data MORE.jsonl] --out ROUTER_DIR``: a summary to print."""
    paths = [data] if isinstance(data, str | Path) else list(data)
    records = [record for path in paths for record in read_outcomes(path)]
    router = train(records)
    save(router, out)
    lines = [f"trained on {len(records)} prompts from {len(paths)} file(s); saved to {out}", ""]
    lines.append(f"{'model':<44} {'prompts':>8} {'mean quality':>13} {'mean cost_usd':>14}")
    for model, cost in zip(router.models, router.mean_cost_usd, strict=True):
        measured = [r.outcomes[model].quality for r in records if model in r.outcomes]
        lines.append(f"{model:<44} {len(measured):>8} {sum(measured) / len(measured):>13.4f} {cost:>14.6f}")
    lines.append("")
    lines.append(f"next: thrifty router calibrate --router {out} --data OUTCOMES.jsonl --keep 0.95")
    return "\n".join(lines)
