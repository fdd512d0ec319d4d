"""The semantic hit decision: may the answer cached for ``candidate`` be given to ``query``?

Cosine similarity of sentence embeddings is a good ranking signal and a poor judge: "enable 2FA" and "disable 2FA",
or the weather on two different dates, embed almost identically. So the decision has two layers, each of which
can say why:

1. Guards veto the known false-hit patterns outright (score 0): numbers, dates, negation, antonym verbs, a
   named entity swapped for another, and requests that carry a document to act on ("summarize this: ...") whose
   documents are not the same.
2. Whatever passes is scored by a small logistic model over the cosine and a few lexical features (word overlap,
   unmatched words and names, question word, length ratio). Its coefficients were fitted on a training split of
   labelled question pairs (``benchmarks/cache_qqp.py --train``) and ship as a handful of floats in
   ``data/similarity_weights.json``; the score is a probability that both ask the same thing.

A hit needs ``score >= threshold``. The guards are rules rather than features because they must hold whatever the
embedding says, and because "numbers differ" is an explanation an operator can check.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

from thrifty.caches.text_signals import Signals, guard_veto, signals

DEFAULT_THRESHOLD = 0.8
WEIGHTS_FILE = "similarity_weights.json"


@dataclass(frozen=True, slots=True)
class Decision:
    hit: bool
    score: float
    """In [0, 1]; compared with the threshold. 0 when a guard vetoed."""
    reason: str


class SimilarityJudge(Protocol):
    """Decides whether a stored query's answer may serve a new query, given their embedding cosine."""

    def decide(self, query: str, candidate: str, cosine: float) -> Decision: ...


@dataclass(frozen=True, slots=True)
class ScorerWeights:
    """A logistic model: ``sigmoid(bias + sum(weight * feature))`` over ``Signals.features()``."""

    bias: float
    weights: tuple[float, ...]
    names: tuple[str, ...]

    @classmethod
    def bundled(cls) -> ScorerWeights:
        raw = resources.files("thrifty.caches").joinpath("data", WEIGHTS_FILE).read_text(encoding="utf-8")
        data = json.loads(raw)
        names = tuple(str(n) for n in data["features"])
        if names != Signals.feature_names():
            raise ValueError(f"{WEIGHTS_FILE} was fitted on features {names}, not {Signals.feature_names()}")
        return cls(float(data["bias"]), tuple(float(w) for w in data["weights"]), names)

    def probability(self, features: Sequence[float]) -> float:
        z = self.bias + sum(w * x for w, x in zip(self.weights, features, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


def checked_threshold(threshold: float) -> float:
    """A judge's threshold, refused outside (0, 1]."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the semantic threshold must be in (0, 1], not {threshold}")
    return threshold


def thresholded(score: float, threshold: float, what: str, detail: str) -> Decision:
    """A judge's verdict on its score: ``"hit: <what>score 0.912 vs threshold 0.80 (<detail>)"``."""
    hit = score >= threshold
    return Decision(
        hit, score, f"{'hit' if hit else 'miss'}: {what}score {score:.3f} vs threshold {threshold:.2f} ({detail})"
    )


def guarded(found: Signals) -> Decision | None:
    """What the guards settle before any score: identical text is a hit, a vetoed pair a miss; None: score it."""
    if found.identical:
        return Decision(True, 1.0, "identical after normalising case, spacing and punctuation")
    veto = guard_veto(found)
    return Decision(False, 0.0, veto) if veto else None


class GuardedJudge:
    """Guards first, then the calibrated score against the threshold (the gateway's default judge)."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, weights: ScorerWeights | None = None) -> None:
        self.threshold = checked_threshold(threshold)
        self.weights = weights if weights is not None else ScorerWeights.bundled()

    def decide(self, query: str, candidate: str, cosine: float) -> Decision:
        found = signals(query, candidate, cosine)
        settled = guarded(found)
        if settled is not None:
            return settled
        score = self.weights.probability(found.features())
        detail = f"cosine {cosine:.3f}, word overlap {found.word_jaccard:.2f}, unmatched words {found.unmatched}"
        return thresholded(score, self.threshold, "", detail)


class CosineJudge:
    """Cosine against a threshold and nothing else: the baseline every other judge is measured beside."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def decide(self, query: str, candidate: str, cosine: float) -> Decision:
        hit = cosine >= self.threshold
        return Decision(hit, cosine, f"{'hit' if hit else 'miss'}: cosine {cosine:.3f} vs {self.threshold:.2f}")
