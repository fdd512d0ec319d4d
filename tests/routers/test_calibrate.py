from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from routing_data import STRONG, WEAK, synthetic_records

from thrifty.routers.calibrate import calibrate, calibrate_command
from thrifty.routers.learned import LearnedRouter, load, save, train
from thrifty.routers.outcomes import write_outcomes


@pytest.fixture(scope="module")
def router() -> LearnedRouter:
    # A fixed penalty: these tests are about calibration, not about the penalty cross-validation would choose.
    return train(synthetic_records(400, seed=1), dim=1024, alpha=10.0)


@pytest.mark.parametrize("keep", [0.8, 0.9, 0.95, 1.0])
def test_calibration_meets_the_target_on_its_data(router: LearnedRouter, keep: float) -> None:
    data = synthetic_records(300, seed=2)
    result = calibrate(router, data, keep)
    best_quality = np.mean([r.outcomes[STRONG].quality for r in data])
    assert result.best_model == STRONG
    assert result.best_model_quality == pytest.approx(best_quality)
    assert result.target_quality == pytest.approx(keep * best_quality)
    assert result.met and result.quality >= result.target_quality - 1e-9
    assert isinstance(result.expected_cost_usd, Decimal)
    assert result.expected_cost_usd <= result.best_model_cost_usd
    assert sum(result.shares.values()) == pytest.approx(1.0)


def test_a_looser_target_is_cheaper(router: LearnedRouter) -> None:
    data = synthetic_records(300, seed=2)
    costs = [calibrate(router, data, keep).expected_cost_usd for keep in (0.7, 0.9, 0.99)]
    assert costs == sorted(costs)
    assert costs[0] < costs[-1]
    # The synthetic chat prompts need no strong model, so 90% of its quality costs far less than it.
    loose = calibrate(router, data, 0.9)
    assert loose.expected_cost_usd < loose.best_model_cost_usd / 2
    assert 0.2 < loose.shares[WEAK] < 0.9


def test_a_useless_router_falls_back_to_the_best_model() -> None:
    # Trained on data where the prompt says nothing: it cannot tell prompts apart, so only a fixed model meets 100%.
    noise = synthetic_records(200, seed=3)
    router = train(noise, dim=256)
    result = calibrate(router, noise, 1.0)
    assert result.met
    assert result.point.model in {STRONG, None}


def test_keep_must_be_a_fraction(router: LearnedRouter) -> None:
    with pytest.raises(ValueError, match="keep"):
        calibrate(router, synthetic_records(20), 1.5)


def test_calibrate_command_saves_the_point(router: LearnedRouter, tmp_path: Path) -> None:
    save(router, tmp_path / "r")
    write_outcomes(tmp_path / "o.jsonl", synthetic_records(200, seed=5))
    text = calibrate_command(tmp_path / "r", tmp_path / "o.jsonl", 0.95)
    assert "meets the target" in text and "per 1k prompts" in text
    point = load(tmp_path / "r").point
    assert point is not None
    again = calibrate(load(tmp_path / "r"), synthetic_records(200, seed=5), 0.95)
    assert again.point == point
