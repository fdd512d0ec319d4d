from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from routing_data import STRONG, WEAK, synthetic_records

from thrifty.caches.embedders import HashingEmbedder
from thrifty.routers import ridge
from thrifty.routers.features import hash_counts
from thrifty.routers.learned import (
    LearnedRouter,
    OperatingPoint,
    load,
    replace_embedder,
    save,
    train,
    train_command,
)
from thrifty.routers.outcomes import ModelOutcome, OutcomeRecord, write_outcomes


@pytest.fixture(scope="module")
def router() -> LearnedRouter:
    return train(synthetic_records(), dim=1024)


def test_it_learns_which_prompts_need_the_strong_model(router: LearnedRouter) -> None:
    test = synthetic_records(n=100, seed=99)
    predicted = router.predict([r.prompt for r in test])
    gain = predicted[:, router.models.index(STRONG)] - predicted[:, router.models.index(WEAK)]
    is_math = np.array([i % 2 == 0 for i in range(len(test))])
    assert gain[is_math].mean() > gain[~is_math].mean() + 0.3
    # Ranking by gain puts the math prompts first far more often than chance.
    top = np.argsort(-gain)[:50]
    assert is_math[top].mean() > 0.9


def test_save_and_load_give_identical_scores(router: LearnedRouter, tmp_path: Path) -> None:
    router = router.with_point(OperatingPoint(0.25))
    save(router, tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["router.json", "weights.npz"]
    back = load(tmp_path / "r")
    prompts = [r.prompt for r in synthetic_records(n=20, seed=3)]
    assert np.array_equal(back.predict(prompts), router.predict(prompts))
    assert back.models == router.models and back.mean_cost_usd == router.mean_cost_usd
    assert back.point == OperatingPoint(0.25)
    with np.load(tmp_path / "r" / "weights.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)


def test_load_refuses_other_formats_and_mismatched_weights(router: LearnedRouter, tmp_path: Path) -> None:
    save(router, tmp_path)
    meta = json.loads((tmp_path / "router.json").read_text())
    (tmp_path / "router.json").write_text(json.dumps({**meta, "dim": 2048}))
    with pytest.raises(ValueError, match="does not match"):
        load(tmp_path)
    (tmp_path / "router.json").write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(ValueError, match="not a learned router"):
        load(tmp_path)


def test_the_operating_point_trades_cost_for_quality(router: LearnedRouter) -> None:
    math_prompt = "solve integral compute 123 + 456"
    assert router.choose(math_prompt, OperatingPoint(0.0)) == STRONG
    assert router.choose(math_prompt, OperatingPoint(100.0)) == WEAK
    assert router.choose("poem email story", OperatingPoint(-100.0)) == STRONG
    assert router.rank(math_prompt, OperatingPoint(100.0, model=STRONG)) == [STRONG, WEAK]
    score = router.score(math_prompt)
    assert set(score) == {STRONG, WEAK} and score[STRONG] > score[WEAK]


def test_relative_costs_come_from_the_training_data(router: LearnedRouter) -> None:
    costs = dict(zip(router.models, router.relative_cost, strict=True))
    assert costs[STRONG] == 1.0
    assert costs[WEAK] == pytest.approx(1 / 30)
    assert all(isinstance(c, Decimal) for c in router.mean_cost_usd)


def test_models_missing_on_some_prompts_and_many_models() -> None:
    records = []
    for i, r in enumerate(synthetic_records(n=120)):
        outcomes = dict(r.outcomes)
        if i % 3 == 0:
            del outcomes[STRONG]
        outcomes["mid-model"] = ModelOutcome(0.5, Decimal("0.001"))
        records.append(OutcomeRecord(r.prompt, outcomes))
    router = train(records, dim=512)
    assert set(router.models) == {WEAK, STRONG, "mid-model"}
    assert router.predict(["poem"]).shape == (1, 3)
    assert router.score("anything")["mid-model"] == pytest.approx(0.5, abs=1e-6)


def test_dual_and_primal_solutions_agree() -> None:
    records = synthetic_records(n=80)
    small = train(records, dim=64)  # more prompts than features: primal
    large = train(records, dim=4096)  # fewer prompts than features: dual
    assert small.weights.shape == (64 + 7, 2) and large.weights.shape == (4096 + 7, 2)
    x = np.random.default_rng(0).normal(size=(30, 8))
    y = x @ np.arange(8.0)[:, None] + np.random.default_rng(1).normal(size=(30, 1))
    for wide in (x, np.hstack([x, np.zeros((30, 40))])):  # primal, then dual (more features than rows)
        w, b = ridge.fit(wide, y, [1.0])
        path = ridge.ridge_path(wide, y, wide, [1.0])[0]
        assert np.allclose(wide @ w + b, path)
    for router in (small, large):
        prediction = router.predict([r.prompt for r in records])
        quality = np.array([[r.outcomes[m].quality for m in router.models] for r in records])
        assert np.abs(prediction - quality).mean() < np.abs(quality - quality.mean(axis=0)).mean()


def test_hashing_is_stable_across_processes() -> None:
    # crc32, not Python's salted hash(): a router saved by one process must score the same in another.
    counts = hash_counts("Hello world", 1 << 20)
    assert np.array_equal(counts, hash_counts("hello   WORLD", 1 << 20))
    # Two words, one bigram, and per word five 3-grams, four 4-grams and three 5-grams of " hello ".
    assert np.abs(counts).sum() == 2 + 1 + 2 * (5 + 4 + 3)
    first = np.nonzero(counts)[0][:4]
    assert first.tolist() == [2852, 42630, 60298, 67558]
    assert counts[first].tolist() == [-1.0, 1.0, 1.0, 1.0]


def test_train_command_writes_a_router_and_a_summary(tmp_path: Path) -> None:
    data = tmp_path / "o.jsonl"
    write_outcomes(data, synthetic_records(n=60))
    text = train_command(data, tmp_path / "r")
    assert "trained on 60 prompts" in text and STRONG in text
    assert load(tmp_path / "r").trained_on == 60


def test_each_model_gets_the_penalty_cross_validation_prefers() -> None:
    # The large model's quality is noise here, whatever the prompt; the small model's follows the prompt: the
    # best penalty for the first is "predict the mean", for the second a small one.
    rng = np.random.default_rng(0)
    records = [
        OutcomeRecord(
            r.prompt,
            {WEAK: r.outcomes[WEAK], STRONG: ModelOutcome(float(rng.random() < 0.9), r.outcomes[STRONG].cost_usd)},
        )
        for r in synthetic_records(n=200)
    ]
    router = train(records, dim=512)
    alphas = dict(zip(router.models, router.alphas, strict=True))
    assert alphas[STRONG] == max(ridge.ALPHAS) and alphas[WEAK] < 100
    assert train(records, dim=512, alpha=3.0).alphas == (3.0, 3.0)
    assert ridge.fold_numbers(["a", "b", "a", "c"], 3)[0] == ridge.fold_numbers(["a", "b", "a", "c"], 3)[2]


def test_an_embedding_block_is_saved_by_name_and_rebuilt_on_load(tmp_path: Path) -> None:
    records = synthetic_records(n=120)
    router = train(records, dim=256, embedder=HashingEmbedder(64), alpha=1.0)
    assert router.weights.shape == (256 + 7 + 64, 2)
    save(router, tmp_path)
    assert json.loads((tmp_path / "router.json").read_text())["embedder"] == "hashing-64"
    back = load(tmp_path)
    prompts = [r.prompt for r in synthetic_records(n=10, seed=5)]
    assert np.allclose(back.predict(prompts), router.predict(prompts))
    assert replace_embedder(back, HashingEmbedder(64)).space.embedder is not back.space.embedder
    with pytest.raises(ValueError, match="not trained with"):
        replace_embedder(back, HashingEmbedder(32))


def test_routers_saved_in_the_first_format_still_load(router: LearnedRouter, tmp_path: Path) -> None:
    fixed = train(synthetic_records(), dim=1024, alpha=10.0)
    save(fixed, tmp_path)
    meta = json.loads((tmp_path / "router.json").read_text())
    for key in ("alphas", "shape_scale", "embedder", "embedding_scale"):
        del meta[key]
    meta |= {"format": "thrifty-learned-router/1", "alpha": 10.0, "shape_alpha": 1.0}
    (tmp_path / "router.json").write_text(json.dumps(meta))
    prompts = [r.prompt for r in synthetic_records(n=10, seed=5)]
    assert np.allclose(load(tmp_path).predict(prompts), fixed.predict(prompts))


def test_a_long_prompts_shape_is_read_on_its_head_and_tail() -> None:
    """Decision time is bounded: the counts of a long prompt come from its ends, scaled to its length (a scan of a
    whole 1M-character prompt took a quarter of a second per decision)."""
    from thrifty.routers.features import shape_features

    middle_numbers = "word " * 2000 + "12 34 56 " * 100_000 + "word " * 2000
    even = "what is 12 + 30? explain. " * 40_000
    rows = np.expm1(shape_features([middle_numbers, even]))
    assert rows[0, 0] == pytest.approx(len(middle_numbers))
    assert rows[0, 2] == 0  # the numbers in the middle were not read
    exact = [200_000, 80_000, 0, 80_000, 40_000, 0]  # words, numbers, lines, .?!, operators, brackets
    assert rows[1, 1:] == pytest.approx(exact, rel=0.01)
