"""Shared pieces for the routing experiments: data, feature blocks, variants, metrics."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(HERE))

from tasktype import task_features  # noqa: E402

from thrifty.routers import ridge  # noqa: E402
from thrifty.routers.evaluate import gap_metrics, length_rule, policy_curve, reference  # noqa: E402
from thrifty.routers.features import fit_space, hash_counts, shape_features  # noqa: E402
from thrifty.routers.outcomes import read_outcomes, to_matrix  # noqa: E402

BENCH = REPO / ".bench" / "routing"
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
DIM = 4096
SHAPE_SCALE = math.sqrt(10.0)


@dataclass
class Block:
    """Raw features of one record set, plus what every variant needs."""

    name: str
    records: list
    groups: list[str]
    hashed: np.ndarray
    shapes: np.ndarray
    task: np.ndarray
    minilm: np.ndarray | None
    q_strong: np.ndarray
    q_weak: np.ndarray
    lengths: np.ndarray


_CACHE: dict[str, Block] = {}


def load_block(name: str, minilm: bool = True) -> Block:
    if name in _CACHE:
        return _CACHE[name]
    records = read_outcomes(BENCH / f"{name}.jsonl")
    prompts = [r.prompt for r in records]
    vectors = None
    if minilm:
        with np.load(BENCH / "minilm.npz") as npz:
            table = dict(zip(npz["keys"].tolist(), npz["vectors"], strict=True))
        from routing_routellm import _key

        keys = [_key(p) for p in prompts]
        if all(k in table for k in keys):
            vectors = np.stack([table[k] for k in keys]).astype(np.float64)
    block = Block(
        name,
        records,
        [r.group or f"{name}#{i}" for i, r in enumerate(records)],
        np.vstack([hash_counts(p, DIM) for p in prompts]),
        shape_features(prompts),
        task_features(prompts),
        vectors,
        np.array([r.outcomes[STRONG].quality for r in records]),
        np.array([r.outcomes[WEAK].quality for r in records]),
        np.array([len(p) for p in prompts], dtype=np.float64),
    )
    _CACHE[name] = block
    return block


@dataclass
class Rows:
    hashed: np.ndarray
    shapes: np.ndarray
    task: np.ndarray
    minilm: np.ndarray | None
    q_strong: np.ndarray
    q_weak: np.ndarray
    groups: list[str]


def rows(parts: list[tuple[Block, np.ndarray]]) -> Rows:
    """Concatenate the chosen rows (index arrays) of several blocks."""
    mini = [b.minilm[i] if b.minilm is not None else None for b, i in parts]
    return Rows(
        np.vstack([b.hashed[i] for b, i in parts]),
        np.vstack([b.shapes[i] for b, i in parts]),
        np.vstack([b.task[i] for b, i in parts]),
        None if any(m is None for m in mini) else np.vstack(mini),  # type: ignore[arg-type]
        np.concatenate([b.q_strong[i] for b, i in parts]),
        np.concatenate([b.q_weak[i] for b, i in parts]),
        [b.groups[j] for b, i in parts for j in i],
    )


def design(train: Rows, test: Rows, features: str) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrices for train and test, fitted on train only. features: subset of 'ngram', 'task', 'minilm'."""
    space = fit_space(train.hashed, train.shapes, DIM, SHAPE_SCALE, None)
    xs = [space.encode(train.hashed, train.shapes, None), space.encode(test.hashed, test.shapes, None)]
    if "task" in features:
        mean, std = train.task.mean(axis=0), train.task.std(axis=0) + 1e-6
        scale = SHAPE_SCALE / math.sqrt(train.task.shape[1])
        xs = [np.hstack([x, (t - mean) / std * scale]) for x, t in zip(xs, (train.task, test.task), strict=True)]
    if "minilm" in features:
        assert train.minilm is not None
        assert test.minilm is not None
        xs = [np.hstack([x, m]) for x, m in zip(xs, (train.minilm, test.minilm), strict=True)]
    return xs[0], xs[1]


def ridge_scores(train: Rows, test: Rows, features: str, objective: str) -> np.ndarray:
    """Score = predicted 'strong needed' for test rows."""
    x, z = design(train, test, features)
    if objective == "per-model":
        y = np.column_stack([train.q_strong, train.q_weak])
    elif objective == "gap":
        y = (train.q_strong - train.q_weak)[:, None]
    elif objective == "weak-fails":
        y = (1.0 - train.q_weak)[:, None]
    else:
        raise ValueError(objective)
    w, b, _ = ridge.fit_per_model(x, y, train.groups, 5, None)
    p = z @ w + b
    return p[:, 0] - p[:, 1] if objective == "per-model" else p[:, 0]


def knn_scores(train: Rows, test: Rows, k: int) -> np.ndarray:
    assert train.minilm is not None
    assert test.minilm is not None
    a = train.minilm / np.linalg.norm(train.minilm, axis=1, keepdims=True)
    b = test.minilm / np.linalg.norm(test.minilm, axis=1, keepdims=True)
    sim = b @ a.T
    k = min(k, len(a))
    top = np.argsort(-sim, axis=1)[:, :k]
    gap = train.q_strong - train.q_weak
    return gap[top].mean(axis=1)


def metrics(records: list, scores: np.ndarray) -> tuple[float, float, float]:
    """(CPT50, CPT80, APGR) of routing by score, as the benchmark computes them (never reached -> 1)."""
    data = to_matrix(records, (STRONG, WEAK))
    predicted = np.column_stack([scores, np.zeros(len(scores))])
    curve = policy_curve("x", predicted, np.array([1.0, 0.0]), data)
    m = gap_metrics(curve, reference(data), "share")
    assert m is not None
    return (1.0 if m.cpt50 is None else m.cpt50, 1.0 if m.cpt80 is None else m.cpt80, m.apgr)


def length_metrics(records: list) -> tuple[float, float, float]:
    data = to_matrix(records, (STRONG, WEAK))
    m = gap_metrics(policy_curve("len", *length_rule(data), data), reference(data), "share")
    assert m is not None
    return (1.0 if m.cpt50 is None else m.cpt50, 1.0 if m.cpt80 is None else m.cpt80, m.apgr)
