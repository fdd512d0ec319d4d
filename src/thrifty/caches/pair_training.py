"""``thrifty cache train``: fit a pair model on labelled pairs and calibrate it for a precision target.

The training pairs are split once (seeded): most fit the network, the rest, never seen by the fit, stop it
early and set the threshold. The threshold is the lowest raw probability at which the decision (guards
included) keeps a *lower confidence bound* of precision at or above the target on those held-out pairs, so a
model calibrated for 0.9 on a few thousand pairs does not land at 0.89 on the next ones by chance alone.

Plain numpy: Adam on the log-loss with an L2 penalty, one ReLU hidden layer (``hidden=0``: logistic regression).
A few tens of thousands of pairs train in about a minute on one core.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from thrifty.caches.pair_model import Floats, PairModel, logit, pair_features
from thrifty.caches.similarity import DEFAULT_THRESHOLD
from thrifty.caches.text_signals import Signals, guard_veto, signals
from thrifty.errors import ConfigError

if TYPE_CHECKING:
    from thrifty.caches.embedders import Embedder
    from thrifty.settings import Settings

Layers = list[tuple[Floats, Floats]]
CONFIDENCE_Z = 1.0
"""How many standard errors the held-out precision must clear the target by (Wilson lower bound)."""
MIN_PAIRS = 20


@dataclass(frozen=True, slots=True)
class TrainingOptions:
    precision: float = 0.9
    hidden: int = 64
    holdout: float = 0.2
    l2: float = 1e-4
    learning_rate: float = 1e-3
    batch: int = 256
    max_epochs: int = 60
    patience: int = 5
    seed: int = 20240501


@dataclass(frozen=True, slots=True)
class PairData:
    """Pairs ready to learn from: both embeddings, the text signals, the labels."""

    u: NDArray[Any]
    v: NDArray[Any]
    found: Sequence[Signals]
    labels: Floats

    @classmethod
    def embed(cls, embedder: Embedder, pairs: Sequence[dict[str, Any]]) -> PairData:
        texts = list(dict.fromkeys(t for p in pairs for t in (p["query"], p["cached"])))
        rows = {t: i for i, t in enumerate(texts)}
        vectors = embedder.embed(texts)
        u = vectors[[rows[p["query"]] for p in pairs]]
        v = vectors[[rows[p["cached"]] for p in pairs]]
        cosines = np.einsum("ij,ij->i", u, v)
        found = [signals(p["query"], p["cached"], float(c)) for p, c in zip(pairs, cosines, strict=True)]
        return cls(u, v, found, np.array([float(p["label"]) for p in pairs]))

    def __len__(self) -> int:
        return len(self.labels)

    def features(self) -> Floats:
        text = np.array([s.features() for s in self.found], dtype=np.float64).reshape(len(self), -1)
        return pair_features(self.u, self.v, text)

    def judged(self) -> NDArray[np.bool_]:
        """Pairs that reach the model: neither identical (always a hit) nor vetoed by a guard (never one)."""
        return np.array([not s.identical and not guard_veto(s) for s in self.found], dtype=bool)

    def decision_scores(self, raw: Floats) -> Floats:
        """Raw probabilities turned into the judge's scores: identical pairs 1, vetoed pairs 0."""
        scores = raw.copy()
        scores[[bool(guard_veto(s)) for s in self.found]] = 0.0
        scores[[s.identical for s in self.found]] = 1.0
        return scores


def train_pair_model(data: PairData, embedder_name: str, options: TrainingOptions | None = None) -> PairModel:
    """Fit on most of ``data``, stop early and calibrate on the rest; the figures go into ``info``."""
    options = options or TrainingOptions()
    if len(data) < MIN_PAIRS or len(set(data.labels.tolist())) < 2:
        raise ValueError(f"training needs at least {MIN_PAIRS} labelled pairs of both kinds")
    features, judged = data.features(), data.judged()
    order = np.random.default_rng(options.seed).permutation(len(data))
    cut = round(len(data) * (1.0 - options.holdout))
    fit_rows = order[:cut][judged[order[:cut]]]
    held = np.sort(order[cut:])
    mean = features[fit_rows].mean(axis=0)
    scale = features[fit_rows].std(axis=0) + 1e-6
    x = (features - mean) / scale
    stop_rows = held[judged[held]]  # early stopping on what the model will be asked, calibration on everything
    layers, epochs = _fit(x[fit_rows], data.labels[fit_rows], x[stop_rows], data.labels[stop_rows], options)
    model = PairModel(embedder_name, data.u.shape[1], mean, scale, tuple(layers), 0.5)
    held_scores = data_subset(data, held).decision_scores(model.probabilities(features[held]))
    point = calibrate(held_scores, data.labels[held], options.precision)
    info = {
        "precision_target": options.precision,
        "target_reached": point.reached,
        "holdout": {"pairs": len(held), "precision": round(point.precision, 4), "recall": round(point.recall, 4)},
        "trained_on": {"pairs": len(fit_rows), "positives": int(data.labels[fit_rows].sum()), "epochs": epochs},
        "hidden": options.hidden,
    }
    return PairModel(model.embedder, model.dimensions, mean, scale, tuple(layers), point.threshold, info)


def data_subset(data: PairData, rows: NDArray[np.intp]) -> PairData:
    return PairData(data.u[rows], data.v[rows], [data.found[int(i)] for i in rows], data.labels[rows])


@dataclass(frozen=True, slots=True)
class Calibration:
    threshold: float
    precision: float
    recall: float
    reached: bool
    """Whether the precision's lower bound reached the target at ``threshold``."""


def calibrate(scores: Floats, labels: Floats, target: float) -> Calibration:
    """The lowest score threshold whose precision's lower bound reaches ``target``, on held-out pairs (placed in the
    gap below the last score it keeps).

    When no threshold reaches it, the one with the highest lower bound: the most precise operating point the
    model can hold on these pairs (the summary says that the target was missed).
    """
    order = np.argsort(-scores, kind="mergesort")
    hits = np.arange(1, len(scores) + 1, dtype=np.float64)
    true_hits = np.cumsum(labels[order] == 1).astype(np.float64)
    precision = true_hits / hits
    bound = _wilson_lower(precision, hits, CONFIDENCE_Z)
    # Only where the next score differs (a threshold cannot split tied scores), and never at a vetoed pair's 0.
    usable = np.append(scores[order][1:] != scores[order][:-1], True) & (scores[order] > 0.0)
    if not usable.any():
        return Calibration(1.0, 0.0, 0.0, False)
    ok = np.flatnonzero(usable & (bound >= target))
    cut = int(ok[-1]) if len(ok) else int(np.flatnonzero(usable)[np.argmax(bound[usable])])
    positives = max(float((labels == 1).sum()), 1.0)
    recall = float(true_hits[cut] / positives)
    return Calibration(_in_the_gap(scores[order], cut), float(precision[cut]), recall, len(ok) > 0)


def _in_the_gap(descending: Floats, cut: int) -> float:
    """The threshold that keeps scores down to ``descending[cut]`` and drops the next: halfway between the two in
    log-odds, not at the last kept score, so that a pair scored a little below the held-out ones still lands on
    the side the held-out pairs put it (which matters when few pairs separate cleanly). Vetoed pairs (score 0)
    do not count as a next score."""
    kept = float(descending[cut])
    if cut + 1 >= len(descending) or descending[cut + 1] <= 0.0:
        return kept
    middle = (logit(kept) + logit(float(descending[cut + 1]))) / 2
    return 1.0 / (1.0 + math.exp(-middle))


def fit_logistic(features: Floats, labels: Floats, l2: float = 1e-3, steps: int = 50) -> tuple[float, Floats]:
    """Newton's method on the L2-penalised log-likelihood (bias not penalised): a dozen features converge in a
    few steps. Returns the bias and the weights."""
    x = np.hstack([np.ones((features.shape[0], 1)), features])
    w = np.zeros(x.shape[1])
    penalty = l2 * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -60, 60)))
        gradient = x.T @ (p - labels) / len(labels) + penalty @ w
        hessian = (x * (p * (1 - p))[:, None]).T @ x / len(labels) + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return float(w[0]), w[1:]


def _wilson_lower(p: Floats, n: Floats, z: float) -> Floats:
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    result: Floats = (centre - spread) / (1 + z * z / n)
    return result


def _fit(x: Floats, y: Floats, x_held: Floats, y_held: Floats, options: TrainingOptions) -> tuple[Layers, int]:
    """Adam on mini-batches; keeps the weights of the epoch with the lowest held-out log-loss."""
    rng = np.random.default_rng(options.seed)
    params = _initial(x.shape[1], options.hidden, rng)
    adam = Adam(params, options.learning_rate)
    best, best_loss, best_epoch = [p.copy() for p in params], math.inf, 0
    for epoch in range(1, options.max_epochs + 1):
        shuffled = rng.permutation(len(y))
        for start in range(0, len(y), options.batch):
            rows = shuffled[start : start + options.batch]
            adam.step(_gradients(params, x[rows], y[rows], options.l2))
        loss = _log_loss(_forward(params, x_held)[-1], y_held)
        if loss < best_loss - 1e-5:
            best, best_loss, best_epoch = [p.copy() for p in params], loss, epoch
        elif epoch - best_epoch >= options.patience:
            break
    return [(best[i], best[i + 1]) for i in range(0, len(best), 2)], best_epoch


def _initial(inputs: int, hidden: int, rng: np.random.Generator) -> list[Floats]:
    """He-initialised weights and zero biases, flat: ``[w0, b0, w1, b1]`` (``[w0, b0]`` without a hidden layer)."""
    sizes = [inputs, hidden, 1] if hidden > 0 else [inputs, 1]
    params: list[Floats] = []
    for n_in, n_out in itertools.pairwise(sizes):
        params += [rng.normal(0.0, math.sqrt(2.0 / n_in), (n_in, n_out)), np.zeros(n_out)]
    return params


def _forward(params: Sequence[Floats], x: Floats) -> list[Floats]:
    """Each layer's input, then the output probabilities (a vector)."""
    activations = [x]
    for i in range(0, len(params) - 2, 2):
        activations.append(np.maximum(activations[-1] @ params[i] + params[i + 1], 0.0))
    logits = (activations[-1] @ params[-2] + params[-1])[:, 0]
    activations.append(1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0))))
    return activations


def _gradients(params: Sequence[Floats], x: Floats, y: Floats, l2: float) -> list[Floats]:
    """Backpropagation of the mean log-loss plus ``l2 * |w|^2 / 2`` on the weights (not the biases)."""
    activations = _forward(params, x)
    delta = ((activations[-1] - y) / len(y))[:, None]
    grads: list[Floats] = [np.zeros(0)] * len(params)
    for layer in range(len(params) // 2 - 1, -1, -1):
        inputs, weights = activations[layer], params[2 * layer]
        grads[2 * layer] = inputs.T @ delta + l2 * weights
        grads[2 * layer + 1] = delta.sum(axis=0)
        if layer > 0:
            delta = (delta @ weights.T) * (inputs > 0.0)
    return grads


class Adam:
    def __init__(self, params: list[Floats], learning_rate: float) -> None:
        self.params, self.learning_rate, self.t = params, learning_rate, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: Sequence[Floats], beta1: float = 0.9, beta2: float = 0.999) -> None:
        self.t += 1
        rate = self.learning_rate * math.sqrt(1 - beta2**self.t) / (1 - beta1**self.t)
        for param, grad, mean, square in zip(self.params, grads, self.m, self.v, strict=True):
            # In place: the lists hold the arrays the model is made of.
            np.add(beta1 * mean, (1 - beta1) * grad, out=mean)
            np.add(beta2 * square, (1 - beta2) * grad * grad, out=square)
            np.subtract(param, rate * mean / (np.sqrt(square) + 1e-8), out=param)


def _log_loss(p: Floats, y: Floats) -> float:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def train_command(settings: Settings, pairs_path: Path, out: Path, options: TrainingOptions) -> str:
    """Embed the labelled pairs with the configured embedder, train, calibrate, save; a summary to print."""
    from thrifty.caches.eval_pairs import read_pairs, same_context
    from thrifty.caches.evaluate_cli import configured_embedder, spend_line

    with configured_embedder(settings) as embedder:
        try:
            pairs = [p for p in read_pairs(pairs_path) if "label" in p and same_context(p)]
            model = train_pair_model(PairData.embed(embedder, pairs), embedder.name, options)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot train on {pairs_path}: {exc}") from exc
        spend = spend_line(embedder)
    model.save(out)
    held = model.info["holdout"]
    return "\n".join(
        [
            f"trained on {model.info['trained_on']['pairs']} of {len(pairs)} labelled pairs "
            f"({embedder.name} embeddings, hidden layer {options.hidden}, {model.info['trained_on']['epochs']} epochs)",
            f"held-out {held['pairs']} pairs at the default threshold {DEFAULT_THRESHOLD}: precision "
            f"{held['precision']}, recall {held['recall']} (target precision {options.precision}"
            + ("" if model.info["target_reached"] else ": not reached, this is the most precise point found")
            + ")",
            f'wrote {out}; use it with [cache] pair_model = "{out}"',
            *([spend] if spend else []),
        ]
    )
