"""The pair model: trained on labelled pairs, saved without pickle, loaded, deciding behind the guards, and wired
into a running gateway by ``[cache] pair_model``."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import openai
import pytest

from fakes.upstream import FakeUpstream, FakeUsage
from gateway_harness import config_text
from thrifty.caches.embedders import CachedEmbedder, HashingEmbedder
from thrifty.caches.pair_model import MODEL_FILE, WEIGHTS_FILE, PairModel, PairModelJudge, decisions_for
from thrifty.caches.pair_training import PairData, TrainingOptions, calibrate, train_pair_model
from thrifty.cli import main
from thrifty.errors import ConfigError
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings

TOPICS = [
    "reset my account password",
    "learn to play the guitar",
    "bake sourdough bread at home",
    "improve my credit score",
    "train a puppy to sit",
    "grow tomatoes on a balcony",
    "write a cover letter",
    "lose weight without a gym",
    "fix a leaking kitchen tap",
    "become a data scientist",
    "speak French fluently",
    "start a small business",
    "clean a cast iron pan",
    "get better sleep at night",
    "save money on groceries",
    "prepare for a job interview",
    "change a flat bicycle tyre",
    "meditate as a beginner",
    "paint a bedroom wall",
    "invest in index funds",
]
TEMPLATES = ["How do I {}?", "How can I {}?", "What is the best way to {}?", "Any tips to {}?", "How should I {}?"]


def synthetic_pairs(seed: int, count: int) -> list[dict[str, object]]:
    """Duplicates: one topic in two phrasings. Non-duplicates: two topics, often in the same phrasing."""
    rng = random.Random(seed)
    pairs: list[dict[str, object]] = []
    for i in range(count):
        a, b = rng.sample(TEMPLATES, 2)
        topic = rng.choice(TOPICS)
        if i % 2:
            pairs.append({"query": a.format(topic), "cached": b.format(topic), "label": 1})
        else:
            other = rng.choice([t for t in TOPICS if t != topic])
            pairs.append({"query": a.format(topic), "cached": rng.choice([a, b]).format(other), "label": 0})
    return pairs


@pytest.fixture(scope="module")
def embedder() -> CachedEmbedder:
    return CachedEmbedder(HashingEmbedder(256))


@pytest.fixture(scope="module")
def model(embedder: CachedEmbedder) -> PairModel:
    data = PairData.embed(embedder, synthetic_pairs(1, 600))
    return train_pair_model(data, embedder.name, TrainingOptions(hidden=16, max_epochs=30))


def test_training_records_its_calibration(model: PairModel) -> None:
    assert model.dimensions == 256 and model.embedder == "hashing-256"
    assert model.info["trained_on"]["pairs"] > 400 and model.info["holdout"]["pairs"] == 120
    assert model.info["holdout"]["precision"] >= 0.9 and model.info["holdout"]["recall"] > 0.5
    assert model.info["target_reached"] is True


def test_decides_unseen_pairs_and_guards_still_veto(model: PairModel, embedder: CachedEmbedder) -> None:
    judge = PairModelJudge(model, 0.8, embedder)
    fresh = synthetic_pairs(2, 200)
    decisions = [judge.decide(str(p["query"]), str(p["cached"]), _cosine(embedder, p)) for p in fresh]
    hits = [d.hit for d in decisions]
    true_hits = sum(h and p["label"] == 1 for h, p in zip(hits, fresh, strict=True))
    assert true_hits / max(sum(hits), 1) >= 0.9 and true_hits >= 50
    assert all("pair model score" in d.reason for d in decisions)
    veto = judge.decide("How do I bake 2 loaves of bread?", "How do I bake 3 loaves of bread?", 0.99)
    assert not veto.hit and veto.score == 0.0 and "numbers differ" in veto.reason
    assert judge.decide("How do I paint a wall?", "how do i paint a wall", 0.1).hit


def test_batch_scores_match_the_judge(model: PairModel, embedder: CachedEmbedder) -> None:
    """``decisions_for`` (the benchmark's batch path) gives the judge's scores, guards and identical pairs included."""
    fresh = [*synthetic_pairs(6, 40), {"query": "Buy 2 apples?", "cached": "Buy 3 apples?", "label": 0}]
    fresh.append({"query": "How do I paint a wall?", "cached": "how do i paint a wall", "label": 1})
    data = PairData.embed(embedder, fresh)
    batch = decisions_for(model, data.found, data.u, data.v)
    judge = PairModelJudge(model, 0.8, embedder)
    pairs = zip(fresh, data.found, strict=True)
    one_by_one = [judge.decide(str(p["query"]), str(p["cached"]), found.cosine).score for p, found in pairs]
    assert np.allclose(batch, one_by_one) and batch[-2] == 0.0 and batch[-1] == 1.0


def test_a_stricter_threshold_hits_less(model: PairModel, embedder: CachedEmbedder) -> None:
    fresh = synthetic_pairs(3, 200)
    counts = []
    for threshold in (0.5, 0.8, 0.99):
        judge = PairModelJudge(model, threshold, embedder)
        counts.append(sum(judge.decide(str(p["query"]), str(p["cached"]), 0.5).hit for p in fresh))
    assert counts[0] >= counts[1] >= counts[2] and counts[0] > counts[2]


def test_saved_model_loads_with_the_same_scores(model: PairModel, embedder: CachedEmbedder, tmp_path: Path) -> None:
    model.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {MODEL_FILE, WEIGHTS_FILE}
    loaded = PairModel.load(tmp_path / "m")
    data = PairData.embed(embedder, synthetic_pairs(4, 50))
    assert np.allclose(loaded.scores(data.features()), model.scores(data.features()))
    assert loaded.raw_threshold == model.raw_threshold and loaded.info == model.info


def test_a_model_for_another_embedder_is_refused(model: PairModel, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="trained on hashing-256"):
        PairModelJudge(model, 0.8, HashingEmbedder(128))
    with pytest.raises(ConfigError, match="cannot read the cache pair model"):
        PairModel.load(tmp_path)
    model.save(tmp_path / "other")
    meta = json.loads((tmp_path / "other" / MODEL_FILE).read_text())
    (tmp_path / "other" / MODEL_FILE).write_text(json.dumps({**meta, "format": "something-else/1"}))
    with pytest.raises(ConfigError, match="is not a thrifty-cache-pair-model/1 file"):
        PairModel.load(tmp_path / "other")
    (tmp_path / "other" / MODEL_FILE).write_text(json.dumps({**meta, "features": ["cosine"]}))
    with pytest.raises(ConfigError, match="other features"):
        PairModel.load(tmp_path / "other")


def test_calibration_keeps_a_margin_over_the_target() -> None:
    # Ten top scores all right, then one wrong in every other: precision falls from 1.0 towards 0.5.
    labels = np.array([1.0] * 10 + [0.0, 1.0] * 20)
    scores = np.linspace(1.0, 0.01, len(labels))
    point = calibrate(scores, labels, 0.8)
    hits = scores >= point.threshold
    assert point.reached and point.precision == pytest.approx(labels[hits].mean()) and point.precision > 0.85
    assert point.recall == pytest.approx(labels[hits].sum() / labels.sum())
    # Out of reach: the most precise point that can be held, flagged.
    missed = calibrate(scores, labels, 0.999)
    assert not missed.reached and missed.precision == 1.0 and missed.recall == pytest.approx(10 / 30)


def test_calibration_puts_the_threshold_in_the_gap_below_the_last_kept_score() -> None:
    # Cleanly separated held-out pairs: the threshold is halfway (in log-odds) to the first score it drops, so a
    # new duplicate scored a little below every held-out one is still a hit; a vetoed 0 is never the neighbour.
    scores = np.array([0.99, 0.98, 0.2, 0.1])
    point = calibrate(scores, np.array([1.0, 1.0, 0.0, 0.0]), 0.5)
    assert point.threshold == pytest.approx(1 / (1 + math.sqrt(0.02 / 0.98 * 0.8 / 0.2)))
    assert point.precision == 1.0 and point.recall == 1.0
    vetoed_next = calibrate(np.array([0.99, 0.98, 0.0, 0.0]), np.array([1.0, 1.0, 1.0, 0.0]), 0.5)
    assert vetoed_next.threshold == pytest.approx(0.98)


def test_cli_trains_and_the_config_key_wires_it_into_a_gateway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in synthetic_pairs(5, 600)))
    config = tmp_path / "thrifty.toml"
    config.write_text('[cache]\nsemantic = true\nembedder = "hashing"\n')
    argv = ["cache", "train", "--config", str(config), "--pairs", str(pairs), "--out", str(tmp_path / "model")]
    assert main([*argv, "--hidden", "16"]) == 0
    assert "held-out 120 pairs" in capsys.readouterr().out
    questions = ["How do I bake sourdough bread at home?", "How can I bake sourdough bread at home?"]
    questions.append("How do I train a puppy to sit?")
    judge, answers, _ = served_with_pair_model(config, "model", questions)
    assert isinstance(judge, PairModelJudge)
    assert answers == ["miss", "semantic", "miss"]


def test_cli_refuses_too_few_pairs_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in synthetic_pairs(7, 5)))
    config = tmp_path / "thrifty.toml"
    config.write_text('[cache]\nembedder = "hashing"\n')
    argv = ["cache", "train", "--config", str(config), "--pairs", str(pairs), "--out", str(tmp_path / "model")]
    assert main(argv) == 1
    assert "at least 20 labelled pairs" in capsys.readouterr().err and not (tmp_path / "model").exists()


def served_with_pair_model(config: Path, pair_model: str, questions: list[str]) -> tuple[object, list[str], int]:
    """A real gateway with ``[cache] pair_model`` over a fake upstream: its judge, the ``x-thrifty-cache`` header of
    each question asked in turn through the ``openai`` SDK, and how many requests reached the upstream."""
    with FakeUpstream(usage=FakeUsage(input_tokens=100, output_tokens=20)) as up:
        extra = f'\n[cache]\nsemantic = true\nembedder = "hashing"\npair_model = "{pair_model}"\n'
        config.write_text(config_text(up, extra=extra))
        with ServerThread(load_settings(config)) as gw:
            judge = gw.runtime.gateway.cache.semantic.judge(0.8)  # type: ignore[attr-defined]
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                answers = [_ask(client, question) for question in questions]
        return judge, answers, len(up.requests)


def _ask(client: openai.OpenAI, text: str) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model="fast", messages=[{"role": "user", "content": text}], temperature=0
    )
    return raw.headers["x-thrifty-cache"]


def _cosine(embedder: CachedEmbedder, pair: dict[str, object]) -> float:
    vectors = embedder.embed([str(pair["query"]), str(pair["cached"])])
    return float(vectors[0] @ vectors[1])
