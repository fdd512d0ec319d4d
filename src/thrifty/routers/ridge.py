"""Ridge regression, one per model, each with its own penalty chosen by cross-validation on the training data.

Why per model: how predictable a model's quality is differs. On MT-Bench the strong model's judge score hardly
varies with the prompt, and the best penalty for it is "predict its mean"; the weak model's failures follow the
prompt's kind closely and want little penalty. One shared penalty would either overfit the first or underfit the
second. Choosing the penalties by k-fold cross-validation inside the training data (folds by group) keeps the
choice away from any data the router is later judged on.

One eigendecomposition per fold gives the fit for every penalty at once, in the smaller of the two spaces
(prompts x prompts when there are fewer prompts than features, features x features otherwise).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from thrifty.routers.features import require_numpy

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    Array = NDArray[np.float64]

# 1e6 is "the mean only": for unit-scale features no prompt moves the prediction measurably.
ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1e6)


def fold_numbers(groups: Sequence[str], folds: int, seed: int = 0) -> Array:
    """A fold per record; records that share a group share a fold."""
    np = require_numpy()
    distinct = sorted(set(groups))
    random.Random(seed).shuffle(distinct)
    fold_of = {g: i % folds for i, g in enumerate(distinct)}
    return np.array([fold_of[g] for g in groups])  # type: ignore[no-any-return]


def ridge_path(x: Array, y: Array, z: Array, alphas: Sequence[float]) -> Array:
    """Predictions on ``z`` of ridge fits of ``y`` (n, k) on ``x``, one per alpha: shape (alphas, len(z), k)."""
    np = require_numpy()
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, zc, yc = x - x_mean, z - x_mean, y - y_mean
    if len(xc) <= xc.shape[1]:
        lam, u = np.linalg.eigh(xc @ xc.T)
        left, right = zc @ xc.T @ u, u.T @ yc
    else:
        lam, u = np.linalg.eigh(xc.T @ xc)
        left, right = zc @ u, u.T @ (xc.T @ yc)
    lam = np.maximum(lam, 0.0)[:, None]
    return np.stack([left @ (right / (lam + a)) + y_mean for a in alphas])  # type: ignore[no-any-return]


def fit(x: Array, y: Array, alphas: Sequence[float]) -> tuple[Array, Array]:
    """Weights (features, k) and bias (k,) with column j of ``y`` penalised by ``alphas[j]``."""
    np = require_numpy()
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    weights = np.zeros((x.shape[1], y.shape[1]))
    for alpha in sorted(set(alphas)):
        cols = [j for j, a in enumerate(alphas) if a == alpha]
        if len(xc) <= xc.shape[1]:
            gram = xc @ xc.T + alpha * np.eye(len(xc))
            weights[:, cols] = xc.T @ np.linalg.solve(gram, yc[:, cols])
        else:
            gram = xc.T @ xc + alpha * np.eye(xc.shape[1])
            weights[:, cols] = np.linalg.solve(gram, xc.T @ yc[:, cols])
    return weights, y_mean - x_mean @ weights


def choose_alphas(x: Array, y: Array, fold: Array, alphas: Sequence[float] = ALPHAS) -> list[float]:
    """Per column of ``y``, the alpha with the least squared error over held-out folds (on a tie, the larger)."""
    np = require_numpy()
    error = np.zeros((len(alphas), y.shape[1]))
    for k in np.unique(fold):
        train, test = fold != k, fold == k
        if train.sum() < 2:
            continue
        predicted = ridge_path(x[train], y[train], x[test], alphas)
        error += ((predicted - y[test][None]) ** 2).sum(axis=1)
    last = len(alphas) - 1
    return [float(alphas[last - i]) for i in error[::-1].argmin(axis=0)]


def fit_per_model(
    x: Array, quality: Array, groups: Sequence[str], folds: int = 5, fixed_alpha: float | None = None
) -> tuple[Array, Array, list[float]]:
    """Weights, bias and the chosen alpha per model; NaN quality (a model not tried on a prompt) is left out.

    Models measured on the same prompts share the folds and the eigendecompositions.
    """
    np = require_numpy()
    weights = np.zeros((x.shape[1], quality.shape[1]))
    bias = np.zeros(quality.shape[1])
    chosen = [fixed_alpha or 0.0] * quality.shape[1]
    present = ~np.isnan(quality)
    patterns: dict[bytes, list[int]] = {}
    for m in range(quality.shape[1]):
        patterns.setdefault(present[:, m].tobytes(), []).append(m)
    for columns in patterns.values():
        rows = present[:, columns[0]]
        xs, ys = x[rows], quality[rows][:, columns]
        if fixed_alpha is None:
            fold = fold_numbers([g for g, keep in zip(groups, rows, strict=True) if keep], folds)
            alphas = choose_alphas(xs, ys, fold) if len(set(fold.tolist())) > 1 else [ALPHAS[-1]] * len(columns)
        else:
            alphas = [fixed_alpha] * len(columns)
        w, b = fit(xs, ys, alphas)
        weights[:, columns], bias[columns] = w, b
        for j, alpha in zip(columns, alphas, strict=True):
            chosen[j] = alpha
    return weights, bias, chosen
