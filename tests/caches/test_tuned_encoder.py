"""The tuned encoder: ``thrifty cache train --finetune`` fine-tunes a copy of MiniLM on labelled pairs, refits the
scorer, calibrates, saves without pickle; ``[cache] pair_model`` wires it into a running gateway."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_cache_pair_model import TEMPLATES, TOPICS, served_with_pair_model

from thrifty.cli import main
from thrifty.errors import ConfigError

if os.environ.get("THRIFTY_REQUIRE_SERVICES") != "1":
    pytest.importorskip("sentence_transformers", reason="the semantic extra is not installed")

from thrifty.caches.embedders import MiniLMEmbedder
from thrifty.caches.pair_model import MODEL_FILE
from thrifty.caches.tuned_encoder import (
    TunedEncoderJudge,
    TunedModel,
    TuningOptions,
    decision_scores,
    pair_cosines,
    recalibrated,
    split_pairs,
)

pytestmark = pytest.mark.timeout(600)  # the module fixture fine-tunes a model
GROUPS = [("for a child", "for a professional"), ("for a beginner", "for my grandmother")]
"""An arbitrary convention of some site: within a group the answer is the same, across groups it differs."""


def audience_pairs(seed: int, count: int, topics: list[str]) -> list[dict[str, object]]:
    """Same topic, two phrasings, two different audiences: a duplicate when both audiences are in one group.
    MiniLM knows nothing of the convention (its cosine ranks these pairs about as well as a coin): fine-tuning
    has to learn it."""
    rng = random.Random(seed)
    pairs: list[dict[str, object]] = []
    for i in range(count):
        a, b = rng.sample(TEMPLATES, 2)
        topic = rng.choice(topics)
        group = rng.randrange(len(GROUPS))
        mine = rng.choice(GROUPS[group])
        theirs = next(x for x in GROUPS[group] if x != mine) if i % 2 else rng.choice(GROUPS[1 - group])
        pairs.append({"query": a.format(f"{topic} {mine}"), "cached": b.format(f"{topic} {theirs}"), "label": i % 2})
    return pairs


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    positives, negatives = scores[labels == 1], scores[labels == 0]
    return float((positives[:, None] > negatives[None, :]).mean())


TRAINING = audience_pairs(1, 320, TOPICS[:15])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fine-tuning run for the module, through the CLI, on the first 15 topics (tens of seconds on a core)."""
    folder = tmp_path_factory.mktemp("tuned")
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in TRAINING))
    argv = ["cache", "train", "--pairs", str(pairs), "--out", str(folder / "model"), "--finetune"]
    assert main([*argv, "--epochs", "4", "--learning-rate", "1e-4", "--threads", "1"]) == 0
    return folder / "model"


@pytest.fixture(scope="module")
def model(trained: Path) -> TunedModel:
    return TunedModel.load(trained)


def test_training_records_its_split_and_calibration(trained: Path) -> None:
    meta = json.loads((trained / MODEL_FILE).read_text())
    assert meta["format"] == "thrifty-cache-tuned-encoder/1" and meta["loss"] == "CoSENT"
    fit, refit, held = split_pairs(_texts(TRAINING), TuningOptions())
    assert meta["trained_on"]["pairs"] == len(fit) and meta["trained_on"]["steps"] == math.ceil(len(fit) / 32) * 4
    assert meta["scorer_fitted_on"]["pairs"] == len(refit) and meta["holdout"]["pairs"] == len(held)
    assert 240 <= len(fit) <= 272 and len(refit) >= 16 and len(held) >= 16
    # Pairs sharing a cached text are never on both sides of a split.
    cached = [{TRAINING[i]["cached"] for i in part} for part in (fit, refit, held)]
    assert not (cached[0] & cached[1] or cached[0] & cached[2] or cached[1] & cached[2])
    assert meta["encoder"].startswith("all-MiniLM-L6-v2+tuned-")
    assert (trained / "encoder" / "model.safetensors").exists()
    assert not list(trained.rglob("*.bin")) and not list(trained.rglob("*.pkl"))  # no pickle anywhere


def test_fine_tuning_learned_what_minilm_did_not_know(model: TunedModel) -> None:
    """On topics it never saw, the tuned cosine separates the audiences far better than the bundled model's."""
    pairs = audience_pairs(2, 200, TOPICS[15:])
    texts = [(str(p["query"]), str(p["cached"])) for p in pairs]
    labels = np.array([p["label"] for p in pairs])
    before = auc(pair_cosines(MiniLMEmbedder(), texts), labels)
    after = auc(model.cosines(texts), labels)
    assert after > before + 0.3 and after > 0.7, (before, after)


def test_decisions_on_unseen_topics_and_guards_still_veto(model: TunedModel) -> None:
    pairs = audience_pairs(3, 200, TOPICS[15:])
    scores = decision_scores(model, [(str(p["query"]), str(p["cached"])) for p in pairs])
    labels = np.array([p["label"] for p in pairs])
    hits = scores >= 0.8
    assert (hits & (labels == 1)).sum() / max(hits.sum(), 1) >= 0.85 and hits.sum() >= 40
    judge = TunedEncoderJudge(model, 0.5)
    vetoed = judge.decide("How do I paint a bedroom wall in 2 days?", "How can I paint a bedroom wall in 3 days?", 0.99)
    assert not vetoed.hit and vetoed.score == 0.0 and "numbers differ" in vetoed.reason
    a, b = "How do I paint a bedroom wall for a child?", "Any tips to paint a bedroom wall for a professional?"
    decided = judge.decide(a, b, 0.5)
    assert decided.score == pytest.approx(decision_scores(model, [(a, b)])[0], abs=1e-6)
    assert "tuned cosine" in decided.reason
    assert not TunedEncoderJudge(model, 0.999999).decide(a, b, 0.5).hit


def test_the_saved_model_reproduces_its_recorded_calibration(trained: Path) -> None:
    """Reloaded from disk, the judge at the default threshold gets the held-out precision and recall that training
    recorded: the threshold was calibrated in the space the judge scores in, and nothing was lost in saving."""
    fresh = TunedModel.load(trained)
    _, _, held = split_pairs(_texts(TRAINING), TuningOptions())
    scores = decision_scores(fresh, [_texts(TRAINING)[i] for i in held])
    labels = np.array([TRAINING[i]["label"] for i in held])
    hits = scores >= 0.8
    recorded = json.loads((trained / MODEL_FILE).read_text())["holdout"]
    assert round(float(labels[hits].mean()), 4) == recorded["precision"]
    assert round(float(hits[labels == 1].mean()), 4) == recorded["recall"]


def test_recalibrating_the_saved_encoder_refits_on_the_same_held_out_pairs(trained: Path, tmp_path: Path) -> None:
    """With unchanged code, refitting the scorer and recalibrating a saved encoder gives back the saved scorer and
    threshold (the same split, the same fit), keeps the fine-tuning's provenance, and saves beside the encoder."""
    saved = TunedModel.load(trained)
    options = TuningOptions(epochs=4, learning_rate=1e-4)  # the fixture's
    fresh = recalibrated(saved, _texts(TRAINING), [float(p["label"]) for p in TRAINING], options)
    assert fresh.encoder is saved.encoder
    assert fresh.weights.weights == pytest.approx(saved.weights.weights, abs=1e-4)
    assert fresh.raw_threshold == pytest.approx(saved.raw_threshold, abs=1e-4)
    assert fresh.info["trained_on"] == saved.info["trained_on"] and fresh.info["holdout"] == saved.info["holdout"]
    shutil.copytree(trained / "encoder", tmp_path / "encoder")
    fresh.save_meta(tmp_path)
    assert TunedModel.load(tmp_path).raw_threshold == pytest.approx(saved.raw_threshold, abs=1e-4)
    # Other options or other pairs than the tuning's would "hold out" pairs the encoder was tuned on: refused.
    labels = [float(p["label"]) for p in TRAINING]
    with pytest.raises(ValueError, match="not the ones the encoder was tuned with"):
        recalibrated(saved, _texts(TRAINING), labels, TuningOptions(epochs=4, learning_rate=1e-4, seed=7))
    with pytest.raises(ValueError, match="not the ones the encoder was tuned with"):
        recalibrated(saved, _texts(TRAINING)[1:], labels[1:], options)


def test_bad_requests_fail_before_any_fine_tuning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in TRAINING[:60]))
    argv = ["cache", "train", "--pairs", str(pairs), "--out", str(tmp_path / "m"), "--finetune"]
    assert main(argv) == 1
    assert "at least 100 labelled pairs" in capsys.readouterr().err
    assert main([*argv, "--threads", "0"]) == 1
    assert "--threads must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_broken_folders_are_config_errors(tmp_path: Path, trained: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the cache pair model"):
        TunedModel.load(tmp_path)
    meta = json.loads((trained / MODEL_FILE).read_text())
    (tmp_path / MODEL_FILE).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="holds no model"):
        TunedModel.load(tmp_path)
    (tmp_path / MODEL_FILE).write_text(json.dumps(meta | {"scorer": {"bias": 0.0}}))
    with pytest.raises(ConfigError, match="incomplete"):
        TunedModel.load(tmp_path)
    # A truncated weights file: a clear error at start-up, not a traceback.
    (tmp_path / MODEL_FILE).write_text(json.dumps(meta))
    shutil.copytree(trained / "encoder", tmp_path / "encoder")
    weights = tmp_path / "encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="cannot load the tuned encoder"):
        TunedModel.load(tmp_path)


def test_the_config_key_wires_it_into_a_gateway(trained: Path, tmp_path: Path) -> None:
    questions = ["How do I paint a bedroom wall for a child?"]
    questions += [f"What is the best way to paint a bedroom wall for a {who}?" for who in ("professional", "beginner")]
    judge, answers, upstream_requests = served_with_pair_model(tmp_path / "thrifty.toml", str(trained), questions)
    assert isinstance(judge, TunedEncoderJudge)
    assert answers == ["miss", "semantic", "miss"]
    assert upstream_requests == 2


def _texts(pairs: list[dict[str, object]]) -> list[tuple[str, str]]:
    return [(str(p["query"]), str(p["cached"])) for p in pairs]
