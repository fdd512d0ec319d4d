from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from routing_data import STRONG, WEAK, synthetic_records

from thrifty.routers.calibrate import calibrate, calibrate_command, describe
from thrifty.routers.learned import LearnedRouter, load, save, train
from thrifty.routers.outcomes import ModelOutcome, OutcomeRecord, write_outcomes


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


def with_model(records: list[OutcomeRecord], name: str, quality: float, cost: str) -> list[OutcomeRecord]:
    return [OutcomeRecord(r.prompt, {**r.outcomes, name: ModelOutcome(quality, Decimal(cost))}) for r in records]


def test_a_model_the_router_does_not_know_is_never_the_operating_point(router: LearnedRouter) -> None:
    """A free, perfect model in the data that the router was never trained on: the gateway cannot send anything to
    it, so calibration must not count on it (it once chose 'always other' and saved a point that meant 'always
    the cheapest' in the gateway)."""
    data = with_model(synthetic_records(300, seed=2), "other", 1.0, "0")
    result = calibrate(router, data, 0.95)
    assert result.point.model != "other" and "other" not in result.shares
    assert result.best_model == STRONG and result.met
    plain = calibrate(router, synthetic_records(300, seed=2), 0.95)
    assert (result.point, result.quality, result.expected_cost_usd) == (
        plain.point,
        plain.quality,
        plain.expected_cost_usd,
    )


def test_a_model_the_router_knows_but_the_data_never_measured_is_refused(router: LearnedRouter, tmp_path: Path) -> None:
    only_weak = [OutcomeRecord(r.prompt, {WEAK: r.outcomes[WEAK]}) for r in synthetic_records(50, seed=2)]
    with pytest.raises(ValueError, match=STRONG):
        calibrate(router, only_weak, 0.95)
    save(router, tmp_path / "r")
    write_outcomes(tmp_path / "o.jsonl", only_weak)
    from thrifty.cli import main

    assert main(["router", "calibrate", "--router", str(tmp_path / "r"), "--data", str(tmp_path / "o.jsonl")]) == 1


def test_outcomes_missing_not_at_random_are_called_out() -> None:
    """Calibration measures every candidate on the prompts that measure every model. Here "d" is perfect and cheap
    but measured on the alpha prompts only, and the weak model fails every beta prompt: what holds on the alpha
    prompts does not hold on the others, and the summary must say so rather than present the point as sound."""

    def outcome(quality: float, cost: str) -> ModelOutcome:
        return ModelOutcome(quality, Decimal(cost))

    training, data = [], []
    for i in range(60):
        alpha = {"d": outcome(1, "0.0001"), STRONG: outcome(1, "0.01"), WEAK: outcome(1, "0.00001")}
        training.append(OutcomeRecord(f"alpha question number {i}", alpha))
        training.append(OutcomeRecord(f"beta question number {i}", {**alpha, STRONG: outcome(0, "0.01")}))
        data.append(OutcomeRecord(f"alpha question {i}", alpha))
        data.append(OutcomeRecord(f"beta question {i}", {STRONG: outcome(1, "0.01"), WEAK: outcome(0, "0.00001")}))
    router = train(training, dim=256, alpha=1.0)
    result = calibrate(router, data, 0.95)
    assert "measured on the 60 of 120 prompts" in result.note
    assert "WARNING: the prompts left out are not like those used" in describe(result)
    random_gaps = [r if i % 4 else OutcomeRecord(r.prompt, {WEAK: r.outcomes[WEAK]}) for i, r in enumerate(data[::2])]
    assert "WARNING" not in calibrate(router, [*random_gaps, *data[::2]], 0.95).note


def test_a_model_measured_on_a_few_prompts_is_never_the_fixed_operating_point() -> None:
    """'Always weak' would send every prompt to a model measured on five of them: it is no candidate."""

    def outcome(quality: float, cost: str) -> ModelOutcome:
        return ModelOutcome(quality, Decimal(cost))

    records = [
        OutcomeRecord(
            f"question {i} about topic {i % 7}",
            {"strong": outcome(1, "0.01"), "mid": outcome(0.5, "0.001")}
            | ({"weak": outcome(0, "0.0001")} if i < 5 else {}),
        )
        for i in range(100)
    ]
    router = train(records, dim=256, alpha=1.0)
    result = calibrate(router, records, 0.9)
    assert result.point.model != "weak" and result.shares.get("weak", 0) < 0.5
    assert result.met


def test_a_model_measured_on_one_prompt_is_not_the_best_single_model() -> None:
    """One lucky outcome (quality 1 at a tiny cost) made a sparse model "the best": the target became 95% of a
    perfect score, and calibration chose an operating point sending most prompts to the dearest model."""

    def outcome(quality: float, cost: str) -> ModelOutcome:
        return ModelOutcome(quality, Decimal(cost))

    records = [
        OutcomeRecord(
            f"question {i} about topic {i % 7}",
            {"strong": outcome(1 if i % 4 else 0.5, "0.01"), "weak": outcome(1 if i % 3 else 0, "0.0001")}
            | ({"lucky": outcome(1, "0.00001")} if i == 0 else {}),
        )
        for i in range(120)
    ]
    router = train(records, dim=256, alpha=1.0)
    result = calibrate(router, records, 0.95)
    assert result.best_model == "strong"
    assert result.met and result.expected_cost_usd < result.best_model_cost_usd
