"""Latency-aware routing: the per-target EWMA, the max-latency wrapper, the learned router's latency weight,
and the wiring through config and a running gateway."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from routing_data import STRONG, WEAK, synthetic_records

from fakes.upstream import FakeUpstream, Fault
from gateway_harness import config_text, ledger_rows
from thrifty.errors import ConfigError
from thrifty.routers.cascade import CascadeRouter, Checks
from thrifty.routers.latency import LatencyAwareRouter, LatencyTracker
from thrifty.routers.learned import train
from thrifty.routers.learned_stage import LearnedRouter
from thrifty.routers.static import StaticRouter
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings, settings_from_dict
from thrifty.types import ChatRequest, LedgerEntry, Principal, Target, Usage

SLOW, FAST, OTHER = Target("up", "slow"), Target("up", "fast"), Target("up", "other")
NOBODY = Principal(tenant="t")


def request(text: str = "hi", model: str = "auto") -> ChatRequest:
    return ChatRequest({"model": model, "messages": [{"role": "user", "content": text}]}, "r1")


def entry(target: Target, upstream_ms: float, **changes: object) -> LedgerEntry:
    row = LedgerEntry(
        "r1", 0.0, "chat", NOBODY, "auto", target.provider, target.model, Usage(1, 1),
        Decimal(0), Decimal(0), upstream_ms + 5, upstream_ms, None, "ok",
    )  # fmt: skip
    return replace(row, **changes)  # type: ignore[arg-type]


def test_the_tracker_starts_from_config_and_follows_what_it_observes() -> None:
    tracker = LatencyTracker({SLOW: 2000.0}, smoothing=0.5)
    assert tracker.expected_ms(SLOW) == 2000.0 and tracker.expected_ms(FAST) is None
    tracker(entry(SLOW, 400.0))
    assert tracker.expected_ms(SLOW) == 400.0  # a measurement replaces the configured guess
    tracker(entry(SLOW, 800.0))
    assert tracker.expected_ms(SLOW) == pytest.approx(600.0)
    # Cache hits, failures and rows without a provider say nothing about a model's speed.
    tracker(entry(SLOW, 5.0, cache="exact"))
    tracker(entry(SLOW, 5.0, status="error"))
    tracker(entry(SLOW, 5.0, provider=""))
    assert tracker.expected_ms(SLOW) == pytest.approx(600.0)
    tracker(entry(FAST, 50.0, status="escalated"))  # a cascade step that was paid for was still timed
    assert tracker.expected_ms(FAST) == 50.0
    with pytest.raises(ValueError, match="smoothing"):
        LatencyTracker(smoothing=0)


def test_targets_over_the_limit_are_kept_for_last() -> None:
    tracker = LatencyTracker({SLOW: 3000.0, FAST: 200.0})
    router = LatencyAwareRouter(StaticRouter({"auto": (SLOW, OTHER, FAST)}), tracker, max_latency_ms=1000)
    route = router.route(request(), NOBODY)
    assert route.targets == (OTHER, FAST, SLOW)  # unknown latency counts as fast: it gets measured
    assert route.router == "static" and "over 1000 ms, kept for last: slow ~3000 ms" in route.reason
    tracker.record(SLOW, 100.0)
    assert router.route(request(), NOBODY).targets == (SLOW, OTHER, FAST)
    # When every target is slow there is nothing faster to prefer: the order stays.
    everyone_slow = LatencyAwareRouter(StaticRouter({"auto": (FAST, SLOW)}), LatencyTracker({FAST: 5e3, SLOW: 6e3}), 10)
    tracker_route = everyone_slow.route(request(), NOBODY)
    assert tracker_route.targets == (FAST, SLOW) and "kept for last" not in tracker_route.reason


def test_a_cascade_keeps_its_tiers_in_order_however_slow() -> None:
    """A cascade's order is its tiers: a slow cheap tier moved last would make it escalate downward."""
    tracker = LatencyTracker({SLOW: 3000.0, FAST: 200.0})
    router = LatencyAwareRouter(CascadeRouter((SLOW, FAST), Checks()), tracker, max_latency_ms=1000)
    route = router.route(request(), NOBODY)
    assert route.targets == (SLOW, FAST) and route.cascade == Checks()


def test_a_latency_weight_avoids_a_slow_strong_model_unless_it_is_worth_it() -> None:
    model = train(synthetic_records(), dim=1024, alpha=10.0)
    strong, weak = Target("up", STRONG), Target("up", WEAK)
    tracker = LatencyTracker({strong: 4000.0, weak: 500.0})
    math_prompt = request("solve integral compute derivative equation 123 + 456")
    score = model.score("solve integral compute derivative equation 123 + 456")
    gain = score[STRONG] - score[WEAK]
    assert gain > 0.2
    # The strong model is 3.5 s slower: worth it while 3.5 s cost less predicted quality than it adds.
    cheap_seconds = LearnedRouter(model, [weak, strong], latency=tracker, latency_weight=gain / 3.5 / 2)
    dear_seconds = LearnedRouter(model, [weak, strong], latency=tracker, latency_weight=gain / 3.5 * 2)
    assert LearnedRouter(model, [weak, strong]).route(math_prompt, NOBODY).targets[0] == strong
    assert cheap_seconds.route(math_prompt, NOBODY).targets[0] == strong
    assert dear_seconds.route(math_prompt, NOBODY).targets == (weak, strong)  # the slow one stays a fallback
    tracker.record(strong, 500.0)  # it got faster: no reason left to avoid it
    assert dear_seconds.route(math_prompt, NOBODY).targets[0] == strong


def test_the_gateway_learns_a_target_is_slow_and_routes_around_it(tmp_path: Path) -> None:
    extra = """
[models.auto]
targets = ["up::slow-model", "up::quick-model"]
max_latency_ms = 150
"""
    with FakeUpstream() as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=extra))
        up.script([Fault.delay(0.4)])
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                ask = client.chat.completions.with_raw_response.create
                first = ask(model="auto", messages=[{"role": "user", "content": "one"}])
                second = ask(model="auto", messages=[{"role": "user", "content": "two"}])
    assert first.headers["x-thrifty-model"] == "slow-model"
    assert second.headers["x-thrifty-model"] == "quick-model"
    assert "kept for last: slow-model" in second.headers["x-thrifty-route"]


def test_a_fallback_is_timed_on_its_own_call_not_on_the_failures_before_it(tmp_path: Path) -> None:
    """The first target hangs to its 1.5 s first-byte timeout and the second answers at once: the second was timed
    with the wait before it, found "slow" and kept behind the third on every request after."""
    extra = """
[models.auto]
targets = ["up::first-model", "up::second-model", "up::third-model"]
max_latency_ms = 1000
"""
    with FakeUpstream() as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=extra))
        up.script([Fault.hang()])
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                ask = client.chat.completions.with_raw_response.create
                first = ask(model="auto", messages=[{"role": "user", "content": "one"}])
                second = ask(model="auto", messages=[{"role": "user", "content": "two"}])
            rows = ledger_rows(gw)
    assert first.headers["x-thrifty-model"] == "second-model"
    assert rows[0]["upstream_ms"] > 1000  # the ledger keeps the whole wait upstream
    assert second.headers["x-thrifty-model"] == "first-model"
    assert "kept for last" not in second.headers["x-thrifty-route"]


def test_latency_settings_are_validated() -> None:
    base = {"providers": {"up": {"kind": "openai"}}}
    ok = settings_from_dict(
        {**base, "pool": {"a": {"target": "up::a", "latency_ms": 900}}, "models": {"m": {"pool": ["a"]}}},
        base_dir=Path.cwd(),
    )
    assert ok.pool["a"].latency_ms == 900 and ok.models["m"].max_latency_ms is None
    for bad in ({"max_latency_ms": 0}, {"latency_weight": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            settings_from_dict({**base, "models": {"m": {"targets": ["up::a"], **bad}}}, base_dir=Path.cwd())
