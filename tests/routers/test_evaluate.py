from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from routing_data import STRONG, WEAK, synthetic_records

from thrifty.routers.evaluate import (
    cross_validated_predictions,
    decisions,
    eval_command,
    fixed_curve,
    gap_metrics,
    length_rule,
    oracle,
    policy_curve,
    reference,
    router_predictions,
)
from thrifty.routers.learned import OperatingPoint, save, train
from thrifty.routers.outcomes import ModelOutcome, OutcomeRecord, to_matrix, write_outcomes


def tiny() -> list[OutcomeRecord]:
    """Four prompts: q_weak = 0.5, q_strong = 0.75; the strong model helps on p1 and p2, hurts on p3."""
    weak = [1.0, 0.0, 0.0, 1.0]
    strong = [1.0, 1.0, 1.0, 0.0]
    return [
        OutcomeRecord(f"p{i}", {WEAK: ModelOutcome(w, Decimal("0.001")), STRONG: ModelOutcome(s, Decimal("0.01"))})
        for i, (w, s) in enumerate(zip(weak, strong, strict=True))
    ]


def test_cpt_and_apgr_on_a_hand_computed_example() -> None:
    data = to_matrix(tiny())
    ref = reference(data)
    assert (data.models[ref.cheapest], data.models[ref.best]) == (WEAK, STRONG)
    # Score order p1, p2, p0, p3: gap recovered 0 -> 1 -> 2 -> 2 -> 1 at p = 0, .25, .5, .75, 1.
    predicted = np.zeros((4, 2))
    predicted[:, data.models.index(STRONG)] = [0.5, 0.9, 0.8, 0.1]
    curve = policy_curve("r", predicted, np.array([0.1, 1.0]), data)
    assert curve.share.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve.quality.tolist() == [0.5, 0.75, 1.0, 1.0, 0.75]
    m = gap_metrics(curve, ref, "share")
    assert m is not None
    assert m.cpt50 == pytest.approx(0.125)
    assert m.cpt80 == pytest.approx(0.2)
    # Trapezoids: .25 * (0.5 + 1.5 + 2 + 1.5) = 1.375.
    assert m.apgr == pytest.approx(1.375)


def test_a_curve_that_never_recovers_the_gap_has_no_cpt() -> None:
    data = to_matrix(tiny())
    predicted = np.zeros((4, 2))
    predicted[:, data.models.index(STRONG)] = [0.0, 0.1, 0.2, 0.9]  # the worst order first: p3 hurts
    m = gap_metrics(policy_curve("bad", predicted, np.array([0.1, 1.0]), data), reference(data), "share")
    assert m is not None
    assert m.cpt50 is not None and m.cpt50 > 0.5
    worst = np.zeros((4, 2))
    worst[:, data.models.index(WEAK)] = 1.0  # ties everywhere: all or nothing, joined by a line
    line = gap_metrics(policy_curve("tie", worst, np.array([0.1, 1.0]), data), reference(data), "share")
    assert line is not None and line.apgr == pytest.approx(0.5)


def test_oracle_beats_router_beats_random_on_synthetic_data() -> None:
    train_records, test_records = synthetic_records(400, seed=1), synthetic_records(300, seed=2)
    router = train(train_records, dim=1024)
    data = to_matrix(test_records)
    ref = reference(data)
    apgr = {}
    for name, (pred, rel) in {
        "router": router_predictions(router, data),
        "oracle": oracle(data, "share"),
        "length": length_rule(data),
    }.items():
        m = gap_metrics(policy_curve(name, pred, rel, data), ref, "share")
        assert m is not None
        apgr[name] = m.apgr
    rnd = gap_metrics(fixed_curve("random", [ref.cheapest, ref.best], data), ref, "share")
    assert rnd is not None and rnd.apgr == pytest.approx(0.5) and rnd.cpt50 == pytest.approx(0.5)
    assert apgr["oracle"] > apgr["router"] > 0.6
    assert apgr["router"] > apgr["length"]


def twelve_models(n: int = 150) -> list[OutcomeRecord]:
    """A dozen models with real-looking per-query costs; each misses about a tenth of the prompts."""
    rng = np.random.default_rng(5)
    records = []
    for i, base in enumerate(synthetic_records(n, seed=11)):
        hard = i % 2 == 0
        outcomes = {}
        for k in range(12):
            if rng.random() < 0.1 and k not in (0, 11):
                continue
            skill = k / 11
            quality = float(rng.random() < (0.2 + 0.75 * skill if hard else 0.85))
            outcomes[f"m{k:02d}"] = ModelOutcome(quality, Decimal(str(round(0.0001 * (1 + k) ** 2 * (1 + i % 5), 8))))
        records.append(OutcomeRecord(base.prompt, outcomes))
    return records


def test_many_models_with_missing_outcomes_trace_a_cost_curve() -> None:
    records = twelve_models()
    data = to_matrix(records)
    ref = reference(data)
    assert data.models[ref.cheapest] == "m00" and data.models[ref.best] in {"m10", "m11"}
    assert 0.8 < data.available.mean() < 0.95
    router = train(records, dim=512)
    curve = policy_curve("router", *router_predictions(router, data), data)
    assert np.all(np.diff(curve.cost_usd) >= -1e-12)  # cheapest first
    assert curve.cost_usd[0] == pytest.approx(ref.cost_usd[ref.cheapest])
    for name, args in {"router": router_predictions(router, data), "oracle": oracle(data, "cost")}.items():
        m = gap_metrics(policy_curve(name, *args, data), ref, "cost")
        assert m is not None and m.apgr > 0.5, name


def test_eval_command_prints_tables_and_writes_decisions(tmp_path: Path) -> None:
    records = twelve_models(80)
    write_outcomes(tmp_path / "o.jsonl", records)
    router = train(records, dim=256)
    save(router, tmp_path / "r")
    text = eval_command(tmp_path / "o.jsonl", tmp_path / "r", tmp_path / "d.jsonl")
    for expected in ("learned router", "random", "prompt length", "oracle", "APGR", "CPT(50%)", "not calibrated"):
        assert expected in text
    lines = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(lines) == 80 and {row["prompt"] for row in lines} == {r.prompt for r in records}
    assert {row["model"] for row in lines} <= set(router.models)


def test_eval_says_what_it_measured_on_and_survives_a_missing_model(
    tmp_path: Path,
) -> None:
    records = twelve_models(80)
    router = train(records, dim=256)
    save(router, tmp_path / "r")
    write_outcomes(tmp_path / "o.jsonl", records)
    text = eval_command(tmp_path / "o.jsonl", tmp_path / "r")
    # About a tenth of each model's outcomes are missing: compared on the prompts that measure all twelve.
    assert "measured on the 26 of 80 prompts where every model was measured" in text
    # A file that never measures m05: the router may choose it, so no operating point; the curves still print.
    without = [OutcomeRecord(r.prompt, {m: o for m, o in r.outcomes.items() if m != "m05"}) for r in records]
    write_outcomes(tmp_path / "w.jsonl", without)
    text = eval_command(tmp_path / "w.jsonl", tmp_path / "r", tmp_path / "d.jsonl")
    assert "APGR" in text and "cannot calibrate it" in text and "no decisions written" in text
    assert not (tmp_path / "d.jsonl").exists()


def test_decisions_follow_the_operating_point() -> None:
    router = train(synthetic_records(), dim=512)
    prompts = [r.prompt for r in synthetic_records(40, seed=4)]
    assert {d["model"] for d in decisions(router, prompts, OperatingPoint(1e6))} == {WEAK}
    assert {d["model"] for d in decisions(router, prompts, OperatingPoint(0.0, model=STRONG))} == {STRONG}


def test_cross_validation_keeps_groups_in_one_fold() -> None:
    base = synthetic_records(60)
    # Each prompt appears twice under one group: if twins were split, the held-out copy would be memorised.
    records = [OutcomeRecord(r.prompt, r.outcomes, group=f"g{i}") for i, r in enumerate(base) for _ in range(2)]
    predicted = cross_validated_predictions(records, folds=3)
    assert predicted.shape == (120, 2)
    assert np.allclose(predicted[0::2], predicted[1::2])


def test_outcomes_missing_at_random_do_not_move_the_figures(tmp_path: Path) -> None:
    """The strong model unmeasured on 40% of prompts at random: policies were scored on every prompt (forced to
    the weak model where the strong one was missing) against single models averaged over their own prompts, so
    the oracle scored no better than random and calibration missed its target sending nearly all to strong."""
    import random

    from thrifty.routers.calibrate import calibrate

    records = synthetic_records(600, seed=3)
    rng = random.Random(5)
    gappy = [r if rng.random() > 0.4 else OutcomeRecord(r.prompt, {WEAK: r.outcomes[WEAK]}) for r in records]
    router = train(synthetic_records(), dim=512)

    def oracle_apgr(recs: list[OutcomeRecord]) -> float:
        from thrifty.routers.evaluate import comparable

        data = to_matrix(comparable(recs, [WEAK, STRONG])[0])
        m = gap_metrics(policy_curve("oracle", *oracle(data, "share"), data), reference(data), "share")
        assert m is not None
        return m.apgr

    assert oracle_apgr(gappy) == pytest.approx(oracle_apgr(records), abs=0.05)
    full, missing = calibrate(router, records), calibrate(router, gappy)
    assert full.met and missing.met and "where every model was measured" in missing.note
    assert missing.shares[STRONG] == pytest.approx(full.shares[STRONG], abs=0.1)
    save(router, tmp_path / "r")
    write_outcomes(tmp_path / "o.jsonl", gappy)
    text = eval_command(tmp_path / "o.jsonl", tmp_path / "r", tmp_path / "d.jsonl")
    assert "prompts where every model was measured" in text and "WARNING" not in text
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 600  # every prompt of the file


def test_eval_leaves_out_models_the_router_cannot_call(tmp_path: Path) -> None:
    """A cheap model the router was not trained on had no prediction and no cost in the router's curve: at a high
    cost weight the curve chose it, and the learned router scored a negative APGR."""
    records = synthetic_records(200, seed=3)
    router = train(records, dim=512)
    save(router, tmp_path / "r")
    cheap = [OutcomeRecord(r.prompt, {**r.outcomes, "z": ModelOutcome(0.1, Decimal("0.0000001"))}) for r in records]
    write_outcomes(tmp_path / "z.jsonl", cheap)
    text = eval_command(tmp_path / "z.jsonl", tmp_path / "r")
    assert "left out z" in text
    (row,) = [line for line in text.splitlines() if line.startswith("learned router")]
    assert float(row.split()[2]) > 0.5  # APGR
