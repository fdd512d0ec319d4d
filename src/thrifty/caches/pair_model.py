"""A pair model: the semantic hit decision learned from the user's own labelled pairs (``thrifty cache train``).

The bundled scorer (``similarity.GuardedJudge``) sees the two questions through one number, their cosine, plus a
few word counts. A pair model sees the two embeddings themselves: ``|u - v|`` says on which dimensions of meaning
the questions differ, ``u * v`` on which they agree, and a small network learns which of those differences
matter on the user's traffic. It only knows what its pairs taught it, so it is trained by users on their own
data and never shipped pre-trained: on Quora's question pairs it lifts ROC AUC from 0.857 to 0.867 and precision
at recall 0.35 from 0.851 to 0.868 (``benchmarks/cache_qqp.py``), while the same model on GPTCache's paraphrases,
another kind of traffic, hits far less often than the bundled scorer (``benchmarks/cache_gptcache.py``).

The guards still come first (numbers, dates, names, negation, documents to act on): a model that has never seen
"2FA" against "3FA" must not be able to hit it. The score is shifted so that the default threshold (0.8) is the
operating point calibrated at training time for the precision target; a higher ``semantic_threshold`` is stricter.

Saved as ``pair_model.json`` (format, embedder, feature names, calibration, provenance) and ``weights.npz`` (the
arrays, loaded without pickle). Needs numpy; the embeddings come from the cache's own embedder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from thrifty.caches.similarity import DEFAULT_THRESHOLD, Decision, checked_threshold, guarded, thresholded
from thrifty.caches.text_signals import Signals, guard_veto, signals
from thrifty.errors import ConfigError

if TYPE_CHECKING:
    from thrifty.caches.embedders import Embedder
    from thrifty.caches.similarity import SimilarityJudge
    from thrifty.settings import Settings

FORMAT = "thrifty-cache-pair-model/1"
TUNED_ENCODER_FORMAT = "thrifty-cache-tuned-encoder/1"
"""Written by ``thrifty cache train --finetune`` (``tuned_encoder.py``); the same ``[cache] pair_model`` setting."""
MODEL_FILE = "pair_model.json"
WEIGHTS_FILE = "weights.npz"
Floats = NDArray[np.float64]


def pair_features(u: NDArray[Any], v: NDArray[Any], text_features: NDArray[Any]) -> Floats:
    """Rows of ``[|u - v|, u * v, text signals]`` for pairs of unit vectors (one pair a row).

    Both embedding parts are symmetric, so the decision does not depend on which side was cached first.
    """
    u64, v64 = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    return np.hstack([np.abs(u64 - v64), u64 * v64, np.asarray(text_features, dtype=np.float64)])


def feature_names() -> list[str]:
    """What ``pair_features`` computes, as saved with a model: the embedding parts, then the text signals."""
    return ["|u - v|", "u * v", *Signals.feature_names()]


@dataclass(frozen=True)
class PairModel:
    """Standardised features, one ReLU hidden layer (none: logistic regression), a sigmoid out."""

    embedder: str
    dimensions: int
    mean: Floats
    scale: Floats
    layers: tuple[tuple[Floats, Floats], ...]
    """(weights, bias) per layer; the last one has a single output."""
    raw_threshold: float
    """The raw probability calibrated for the precision target; scores are shifted so it lands on 0.8."""
    info: dict[str, Any] = field(default_factory=dict)
    """Provenance and calibration figures, written to ``pair_model.json`` as they are."""

    def probabilities(self, features: Floats) -> Floats:
        """The network's raw probability that each pair asks the same thing."""
        hidden = (features - self.mean) / self.scale
        for weights, bias in self.layers[:-1]:
            hidden = np.maximum(hidden @ weights + bias, 0.0)
        weights, bias = self.layers[-1]
        logits = (hidden @ weights + bias)[:, 0]
        result: Floats = 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))
        return result

    def scores(self, features: Floats) -> Floats:
        """Probabilities moved monotonically so that ``raw_threshold`` maps to the default threshold."""
        return calibrated(self.probabilities(features), self.raw_threshold)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"mean": self.mean, "scale": self.scale}
        for i, (weights, bias) in enumerate(self.layers):
            arrays[f"w{i}"], arrays[f"b{i}"] = weights, bias
        np.savez(folder / WEIGHTS_FILE, **arrays)  # type: ignore[arg-type]
        meta = {
            "format": FORMAT,
            "embedder": self.embedder,
            "dimensions": self.dimensions,
            "layers": len(self.layers),
            "features": feature_names(),
            "raw_threshold": self.raw_threshold,
            "default_threshold": DEFAULT_THRESHOLD,
            **self.info,
        }
        (folder / MODEL_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> PairModel:
        meta = read_meta(folder)
        try:
            with np.load(folder / WEIGHTS_FILE, allow_pickle=False) as arrays:
                stored = {name: np.asarray(arrays[name], dtype=np.float64) for name in arrays.files}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the cache pair model in {folder}: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{folder / MODEL_FILE} is not a {FORMAT} file")
        dimensions = int(meta["dimensions"])
        if meta.get("features") != feature_names():
            raise ConfigError(f"{folder} was trained on other features than this version computes: train it again")
        layers = tuple((stored[f"w{i}"], stored[f"b{i}"]) for i in range(int(meta["layers"])))
        known = {"format", "embedder", "dimensions", "layers", "features", "raw_threshold", "default_threshold"}
        info = {k: v for k, v in meta.items() if k not in known}
        return cls(
            str(meta["embedder"]),
            dimensions,
            stored["mean"],
            stored["scale"],
            layers,
            float(meta["raw_threshold"]),
            info,
        )


def read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / MODEL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the cache pair model in {folder}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ConfigError(f"{folder / MODEL_FILE} is not a JSON object")
    return meta


def calibrated(probabilities: Floats, raw_threshold: float) -> Floats:
    """A shift in log-odds: ``raw_threshold`` becomes ``DEFAULT_THRESHOLD``, the order of the scores is kept."""
    shift = logit(DEFAULT_THRESHOLD) - logit(raw_threshold)
    logits = np.log(np.clip(probabilities, 1e-12, 1.0)) - np.log(np.clip(1.0 - probabilities, 1e-12, 1.0))
    result: Floats = 1.0 / (1.0 + np.exp(-np.clip(logits + shift, -60.0, 60.0)))
    return result


def logit(p: float) -> float:
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    return math.log(p / (1.0 - p))


def decisions_for(model: PairModel, found: Sequence[Signals], u: NDArray[Any], v: NDArray[Any]) -> Floats:
    """The judge's score for many pairs at once: 1 when identical, 0 when a guard vetoes, else the model's."""
    text = np.array([s.features() for s in found], dtype=np.float64).reshape(len(found), -1)
    scores = model.scores(pair_features(u, v, text))
    scores[[bool(guard_veto(s)) for s in found]] = 0.0
    scores[[s.identical for s in found]] = 1.0
    return scores


def same_embedder(trained: str, current: str) -> bool:
    """Whether a model trained on ``trained`` embeddings can judge ``current`` ones: the same name, or a remote
    embedder named before its model was part of the name (``remote:ALIAS``, now ``remote:ALIAS=MODEL``)."""
    return trained == current or ("=" not in trained and current.startswith(trained + "="))


class PairModelJudge:
    """Guards first, then the pair model's calibrated score against the threshold.

    It reads both embeddings from the cache's embedder: that is an LRU in front of the model, which already holds
    the query (just embedded for the search) and usually the candidate (embedded when it was stored); a candidate
    that fell out of the LRU, or was stored by another replica, is embedded once more.
    """

    def __init__(self, model: PairModel, threshold: float, embedder: Embedder) -> None:
        checked_threshold(threshold)
        if not same_embedder(model.embedder, embedder.name) or embedder.dimensions != model.dimensions:
            raise ConfigError(
                f"the cache pair model was trained on {model.embedder} embeddings ({model.dimensions} dimensions); "
                f"the cache uses {embedder.name} ({embedder.dimensions}): train it again with this embedder"
            )
        self.model, self.threshold, self._embedder = model, threshold, embedder

    def decide(self, query: str, candidate: str, cosine: float) -> Decision:
        found = signals(query, candidate, cosine)
        settled = guarded(found)
        if settled is not None:
            return settled
        vectors = self._embedder.embed([query, candidate])
        text = np.array([found.features()], dtype=np.float64)
        score = float(self.model.scores(pair_features(vectors[:1], vectors[1:], text))[0])
        return thresholded(score, self.threshold, "pair model ", f"cosine {cosine:.3f}")


def configured_judges(settings: Settings, embedder: Embedder) -> Callable[[float], SimilarityJudge]:
    """The judge for a threshold, as configured: the pair model of ``[cache] pair_model``, or the bundled scorer.

    The model is loaded (and checked against the embedder) here, at start-up, not at the first lookup.
    """
    from thrifty.caches.similarity import GuardedJudge

    folder = settings.cache.pair_model
    if not folder:
        return GuardedJudge
    path = settings.path(folder)
    meta = read_meta(path)
    if meta.get("format") == TUNED_ENCODER_FORMAT:
        from thrifty.caches.tuned_encoder import TunedEncoderJudge, TunedModel

        tuned = TunedModel.load(path, meta)
        TunedEncoderJudge(tuned, DEFAULT_THRESHOLD)
        return lambda threshold: TunedEncoderJudge(tuned, threshold)
    model = PairModel.load(path)
    PairModelJudge(model, DEFAULT_THRESHOLD, embedder)
    return lambda threshold: PairModelJudge(model, threshold, embedder)
