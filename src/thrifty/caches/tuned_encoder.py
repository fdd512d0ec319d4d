"""A tuned encoder: the semantic hit decision with an embedding fine-tuned on the user's own pairs
(``thrifty cache train --finetune``).

The bundled scorer and the pair model read the two questions through all-MiniLM-L6-v2 as it was published,
trained on other people's notion of "the same question". Its cosine ranks pairs well but puts many of a site's
near-misses above some of its true rewordings. Fine-tuning the encoder on labelled pairs (CoSENT loss: every
labelled duplicate in a batch must come out more similar than every non-duplicate) moves exactly those pairs,
which no model on top of frozen embeddings can: on Quora's question pairs it lifts the cosine's ROC AUC from
0.870 to the figure in the README (``benchmarks/cache_qqp.py --finetune``).

At a lookup the cache's own embedder still finds the nearest stored question; this judge then embeds both
questions with the tuned copy (an LRU in front of it, so a popular question is embedded once), and scores the
pair with the bundled scorer's features over the tuned cosine, refitted on held-out pairs. The guards still come
first. The score is shifted so that the default threshold (0.8) is the operating point calibrated on other
held-out pairs for the precision target (``pair_training.calibrate``). Never shipped pre-trained.

Saved as ``pair_model.json`` (format, scorer, calibration, provenance) beside the tuned sentence-transformers
model in ``encoder/`` (safetensors, no pickle).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.caches.embedders import CachedEmbedder, Embedder, MiniLMEmbedder, bundled_model_path, model_dimensions
from thrifty.caches.pair_model import MODEL_FILE, TUNED_ENCODER_FORMAT, Floats, calibrated, read_meta
from thrifty.caches.pair_training import calibrate, fit_logistic
from thrifty.caches.similarity import (
    DEFAULT_THRESHOLD,
    Decision,
    ScorerWeights,
    checked_threshold,
    guarded,
    thresholded,
)
from thrifty.caches.text_signals import Signals, guard_veto, signals
from thrifty.errors import ConfigError

FORMAT = TUNED_ENCODER_FORMAT
ENCODER_DIR = "encoder"
MIN_PAIRS = 100
"""Fewer cannot tune, refit and calibrate on three disjoint parts with both kinds of pair in each."""
Pair = tuple[str, str]


@dataclass(frozen=True, slots=True)
class TuningOptions:
    precision: float = 0.9
    epochs: float = 1.0
    """Passes over the training pairs (fractions allowed)."""
    batch: int = 32
    learning_rate: float = 3e-5
    scale: float = 20.0
    """CoSENT's temperature: cosine differences are multiplied by it before the log-sum-exp."""
    holdout: float = 0.2
    """Share of the pairs kept out of the fine-tuning: half refit the scorer, half calibrate the threshold
    (``split_pairs``: pairs sharing their cached text stay together, so the shares are approximate)."""
    max_length: int = 128
    threads: int | None = None
    """torch's intra-op threads while training (None: torch's default, all cores)."""
    seed: int = 20240501
    base: str | None = None
    """A sentence-transformers folder to start from; default: the bundled all-MiniLM-L6-v2."""
    progress: Callable[[str], None] | None = None


@dataclass
class TunedModel:
    """The tuned encoder, the scorer over its cosine, and the calibration."""

    encoder: Embedder
    weights: ScorerWeights
    raw_threshold: float
    info: dict[str, Any] = field(default_factory=dict)

    def cosines(self, pairs: Sequence[Pair]) -> Floats:
        return pair_cosines(self.encoder, pairs)

    def score(self, found: Signals) -> float:
        """The calibrated score of one pair whose ``found.cosine`` is the tuned cosine."""
        raw = self.weights.probability(found.features())
        return float(calibrated(np.array([raw]), self.raw_threshold)[0])

    def save(self, folder: Path, model: Any) -> None:
        """``model``: the tuned SentenceTransformer this model's encoder wraps."""
        folder.mkdir(parents=True, exist_ok=True)
        model.save(str(folder / ENCODER_DIR), create_model_card=False, safe_serialization=True)
        self.save_meta(folder)

    def save_meta(self, folder: Path) -> None:
        """The scorer, the calibration and the provenance, beside an encoder already saved in ``folder``."""
        meta = {
            "format": FORMAT,
            "encoder": self.encoder.name,
            "scorer": {
                "features": list(self.weights.names),
                "bias": self.weights.bias,
                "weights": list(self.weights.weights),
            },
            "raw_threshold": self.raw_threshold,
            "default_threshold": DEFAULT_THRESHOLD,
            **self.info,
        }
        (folder / MODEL_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any] | None = None, *, threads: int | None = 1) -> TunedModel:
        meta = read_meta(folder) if meta is None else meta
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{folder / MODEL_FILE} is not a {FORMAT} file")
        try:
            scorer = meta["scorer"]
            weights = ScorerWeights(
                float(scorer["bias"]), tuple(float(w) for w in scorer["weights"]), tuple(scorer["features"])
            )
            raw_threshold, name = float(meta["raw_threshold"]), str(meta["encoder"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{folder / MODEL_FILE} is incomplete: {exc!r}") from exc
        if weights.names != Signals.feature_names() or len(weights.weights) != len(weights.names):
            raise ConfigError(f"{folder} was trained on other features than this version computes: train it again")
        if not (folder / ENCODER_DIR / "modules.json").is_file():
            raise ConfigError(f"cannot load the tuned encoder: {folder / ENCODER_DIR} holds no model")
        try:
            inner = MiniLMEmbedder(str(folder / ENCODER_DIR), threads=threads, name=name)
        except ConfigError:
            raise
        except Exception as exc:  # torch, safetensors and tokenizers each raise their own kinds
            raise ConfigError(f"cannot load the tuned encoder in {folder / ENCODER_DIR}: {exc}") from exc
        encoder = CachedEmbedder(inner)
        known = {"format", "encoder", "scorer", "raw_threshold", "default_threshold"}
        return cls(encoder, weights, raw_threshold, {k: v for k, v in meta.items() if k not in known})


def pair_cosines(encoder: Embedder, pairs: Sequence[Pair]) -> Floats:
    """The cosine of each pair, every distinct text embedded once."""
    texts = list(dict.fromkeys(t for pair in pairs for t in pair))
    row = {t: i for i, t in enumerate(texts)}
    vectors = encoder.embed(texts)
    a = vectors[[row[p[0]] for p in pairs]]
    b = vectors[[row[p[1]] for p in pairs]]
    result: Floats = np.einsum("ij,ij->i", a, b).astype(np.float64).reshape(len(pairs))
    return result


def decision_scores(model: TunedModel, pairs: Sequence[Pair]) -> Floats:
    """The judge's score for many pairs at once: 1 when identical, 0 when a guard vetoes, else the model's."""
    found = [signals(a, b, 0.0) for a, b in pairs]  # the guards read words only, never the cosine
    scores = np.zeros(len(pairs))
    judged = [i for i, s in enumerate(found) if not s.identical and not guard_veto(s)]
    cosines = model.cosines([pairs[i] for i in judged])
    for i, cosine in zip(judged, cosines, strict=True):
        scores[i] = model.score(replace(found[i], cosine=float(cosine)))
    scores[[s.identical for s in found]] = 1.0
    return scores


def _torch() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing file is an error, never a download
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        from thrifty.caches.embedders import SEMANTIC_EXTRA

        raise ConfigError(f"fine-tuning the encoder needs torch and sentence-transformers: {SEMANTIC_EXTRA}") from exc
    return torch, SentenceTransformer


class _Tuned:
    """The model being tuned, as an ``Embedder`` (for calibration before it is saved)."""

    def __init__(self, model: Any, name: str) -> None:
        self.model, self.name = model, name
        self.dimensions = model_dimensions(model)

    def embed(self, texts: Sequence[str]) -> Any:
        vectors = self.model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimensions)


def tune(
    pairs: Sequence[Pair], labels: Sequence[float], options: TuningOptions | None = None
) -> tuple[TunedModel, Any]:
    """Fine-tune on most pairs, refit the scorer on half the rest, calibrate on the other half.

    Returns the model and the tuned SentenceTransformer (for ``TunedModel.save``); figures in ``info``.
    """
    options = options or TuningOptions()
    y = np.asarray(labels, dtype=np.float64)
    if len(pairs) < MIN_PAIRS or len(set(y.tolist())) < 2:
        raise ValueError(f"fine-tuning needs at least {MIN_PAIRS} labelled pairs of both kinds")
    fit, refit_rows, held = split_pairs(pairs, options)
    for part, rows in (("the scorer's", refit_rows), ("the calibration's", held)):
        judged = [i for i in rows if guarded(signals(*pairs[i], 0.0)) is None]
        if len(set(y[judged].tolist())) < 2:
            raise ValueError(f"{part} share of the pairs holds no judged pairs of both kinds: give more pairs")
    torch, sentence_transformer = _torch()
    if options.threads is not None:
        torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    base = options.base or bundled_model_path()
    network = sentence_transformer(base, device="cpu")
    serving_length = network.max_seq_length
    network.max_seq_length = min(options.max_length, serving_length)  # shorter while training: less padding
    started = time.perf_counter()
    steps = _fine_tune(network, [pairs[i] for i in fit], y[fit], options, rng, torch)
    seconds = time.perf_counter() - started
    network.max_seq_length = serving_length  # it reads what the bundled model reads, as saved and served
    name = f"{Path(base).name if options.base else 'all-MiniLM-L6-v2'}+tuned-{_fingerprint(pairs, y, options)}"
    model = _fit_scorer(CachedEmbedder(_Tuned(network, name)), pairs, y, refit_rows, held, options)
    model.info |= {
        "trained_on": {"pairs": len(fit), "positives": int(y[fit].sum()), "epochs": options.epochs, "steps": steps},
        "loss": "CoSENT",
        "training_seconds": round(seconds, 1),
    }
    return model, network


def recalibrated(
    model: TunedModel, pairs: Sequence[Pair], labels: Sequence[float], options: TuningOptions
) -> TunedModel:
    """The same tuned encoder with its scorer refitted and its threshold recalibrated by this version's code, on
    the held-out shares of the pairs it was tuned with (the same split: same pairs, same seed). For when the
    guards or the features changed since the encoder was tuned: the fine-tuning itself never reads them."""
    y = np.asarray(labels, dtype=np.float64)
    if not model.encoder.name.endswith(_fingerprint(pairs, y, options)):
        raise ValueError(
            "these pairs and options are not the ones the encoder was tuned with (its name carries their "
            "fingerprint): held-out pairs would not be held out"
        )
    _, refit_rows, held = split_pairs(pairs, options)
    kept = {k: v for k, v in model.info.items() if k in ("trained_on", "loss", "training_seconds")}
    fresh = _fit_scorer(model.encoder, pairs, y, refit_rows, held, options)
    fresh.info |= kept
    return fresh


def _fit_scorer(
    encoder: Embedder, pairs: Sequence[Pair], y: Floats, rows: list[int], held: list[int], options: TuningOptions
) -> TunedModel:
    """Refit the scorer on ``rows``, calibrate the threshold on ``held``."""
    weights = _refit_scorer(encoder, [pairs[i] for i in rows], y[rows])
    # Calibrated on raw probabilities: a model whose raw threshold is the default one scores them unshifted.
    model = TunedModel(encoder, weights, DEFAULT_THRESHOLD)
    point = calibrate(decision_scores(model, [pairs[i] for i in held]), y[held], options.precision)
    model.raw_threshold = point.threshold
    model.info = {
        "precision_target": options.precision,
        "target_reached": point.reached,
        "holdout": {"pairs": len(held), "precision": round(point.precision, 4), "recall": round(point.recall, 4)},
        "scorer_fitted_on": {"pairs": len(rows)},
    }
    return model


def split_pairs(pairs: Sequence[Pair], options: TuningOptions) -> tuple[list[int], list[int], list[int]]:
    """Rows to fine-tune on, to refit the scorer on, to calibrate on (in that order; seeded).

    Pairs that share their cached text go to the same part: in cache logs one stored question is compared with
    many queries, and a text the encoder was tuned on must not make the held-out figures look better than the
    traffic will.
    """
    groups: dict[str, list[int]] = {}
    for i, (_, cached) in enumerate(pairs):
        groups.setdefault(cached, []).append(i)
    order = np.random.default_rng(options.seed).permutation(len(groups))
    members = list(groups.values())
    fit_until = round(len(pairs) * (1.0 - options.holdout))
    refit_until = fit_until + (len(pairs) - fit_until) // 2
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    taken = 0
    for g in order.tolist():
        part = 0 if taken < fit_until else 1 if taken < refit_until else 2
        parts[part].extend(members[g])
        taken += len(members[g])
    return parts[0], sorted(parts[1]), sorted(parts[2])


def _fingerprint(pairs: Sequence[Pair], y: Floats, options: TuningOptions) -> str:
    """Names the tuned encoder after its training data and settings: two different tunings never share vectors."""
    settings = [float(options.epochs), options.batch, float(options.learning_rate), options.scale, options.holdout]
    digest = hashlib.sha256(repr([*settings, options.max_length, options.seed, options.base]).encode())
    for (a, b), label in zip(pairs, y.tolist(), strict=True):
        digest.update(f"{a}\x00{b}\x00{label}\x01".encode())
    return digest.hexdigest()[:12]


def _refit_scorer(encoder: Embedder, pairs: Sequence[Pair], y: Floats) -> ScorerWeights:
    """The bundled scorer's features, the tuned cosine first, fitted on pairs the fine-tuning never saw."""
    found = [signals(a, b, 0.0) for a, b in pairs]
    judged = [i for i, s in enumerate(found) if not s.identical and not guard_veto(s)]
    if len(judged) < 2 or len(set(y[judged].tolist())) < 2:
        raise ValueError("too few held-out pairs of both kinds to fit the scorer: give more labelled pairs")
    cosines = pair_cosines(encoder, [pairs[i] for i in judged])
    features = np.array(
        [replace(found[i], cosine=float(c)).features() for i, c in zip(judged, cosines, strict=True)],
        dtype=np.float64,
    )
    bias, weights = fit_logistic(features, y[judged])
    return ScorerWeights(bias, tuple(float(w) for w in weights), Signals.feature_names())


def _fine_tune(network: Any, pairs: Sequence[Pair], y: Floats, options: TuningOptions, rng: Any, torch: Any) -> int:
    """AdamW with linear warm-up and decay on the CoSENT loss; batches of pairs of similar length."""
    steps = max(1, math.ceil(len(pairs) / options.batch * options.epochs))
    optimizer = torch.optim.AdamW(network.parameters(), lr=options.learning_rate, weight_decay=0.01)
    warmup = max(1, round(0.1 * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    # sentence-transformers v5 renamed ``tokenize`` to ``preprocess``; accept both, as the embedder does.
    prepare = getattr(network, "preprocess", None) or network.tokenize
    network.train()
    step = 0
    while step < steps:
        for batch in _length_batches(pairs, options.batch, rng):
            if step >= steps:
                break
            texts = [pairs[i][0] for i in batch] + [pairs[i][1] for i in batch]
            features = prepare(texts)
            vectors = torch.nn.functional.normalize(network(features)["sentence_embedding"], dim=-1)
            cosines = (vectors[: len(batch)] * vectors[len(batch) :]).sum(dim=-1)
            loss = _cosent(cosines, torch.tensor(y[batch], dtype=torch.float32), options.scale, torch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if options.progress is not None and step % 50 == 0:
                options.progress(f"step {step}/{steps}: loss {float(loss.detach()):.3f}")
    network.eval()
    return steps


def _cosent(cosines: Any, labels: Any, scale: float, torch: Any) -> Any:
    """log(1 + sum over (duplicate i, non-duplicate j) of exp(scale * (cos_j - cos_i)))."""
    scaled = cosines * scale
    differences = scaled[None, :] - scaled[:, None]  # [i, j] = s_j - s_i
    ordered = labels[:, None] > labels[None, :]
    differences = differences.masked_fill(~ordered, -1e12)
    return torch.logsumexp(torch.cat([torch.zeros(1), differences.flatten()]), dim=0)


def _length_batches(pairs: Sequence[Pair], size: int, rng: Any) -> list[list[int]]:
    """Shuffled batches of pairs of similar length (less padding), from shuffled windows of 50 batches."""
    order = rng.permutation(len(pairs))
    batches: list[list[int]] = []
    window = size * 50
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window].tolist(), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        batches += [chunk[i : i + size] for i in range(0, len(chunk), size)]
    rng.shuffle(batches)
    return batches


class TunedEncoderJudge:
    """Guards first, then the scorer over the tuned cosine, calibrated, against the threshold."""

    def __init__(self, model: TunedModel, threshold: float) -> None:
        self.model, self.threshold = model, checked_threshold(threshold)

    def decide(self, query: str, candidate: str, cosine: float) -> Decision:
        found = signals(query, candidate, cosine)
        settled = guarded(found)
        if settled is not None:
            return settled
        tuned = float(self.model.cosines([(query, candidate)])[0])
        score = self.model.score(replace(found, cosine=tuned))
        return thresholded(score, self.threshold, "tuned-encoder ", f"tuned cosine {tuned:.3f}, cosine {cosine:.3f}")


def train_command(pairs_path: Path, out: Path, options: TuningOptions) -> str:
    """Read the labelled pairs, fine-tune, refit, calibrate, save; a summary to print."""
    from thrifty.caches.eval_pairs import read_pairs, same_context

    try:
        rows = [p for p in read_pairs(pairs_path) if "label" in p and same_context(p)]
        model, network = tune(
            [(str(p["query"]), str(p["cached"])) for p in rows], [float(p["label"]) for p in rows], options
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot train on {pairs_path}: {exc}") from exc
    try:
        model.save(out, network)
    except OSError as exc:
        raise ConfigError(f"cannot write the tuned encoder to {out}: {exc}") from exc
    held, trained = model.info["holdout"], model.info["trained_on"]
    return "\n".join(
        [
            f"fine-tuned the encoder on {trained['pairs']} of {len(rows)} labelled pairs "
            f"({trained['steps']} steps, {model.info['training_seconds']} s); scorer refitted on "
            f"{model.info['scorer_fitted_on']['pairs']} others",
            f"held-out {held['pairs']} pairs at the default threshold {DEFAULT_THRESHOLD}: precision "
            f"{held['precision']}, recall {held['recall']} (target precision {options.precision}"
            + ("" if model.info["target_reached"] else ": not reached, this is the most precise point found")
            + ")",
            f'wrote {out}; use it with [cache] pair_model = "{out}"',
        ]
    )
