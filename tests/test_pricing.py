from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from thrifty.pricing import CatalogPricer, ModelPrice
from thrifty.types import Target, Usage

OPENAI = Target("openai", "gpt-4o-mini")


def pricer() -> CatalogPricer:
    return CatalogPricer(catalog_providers={"openai": ["openai"], "anthropic": ["anthropic"]})


def test_catalog_price_of_gpt_4o_mini_is_exact() -> None:
    # $0.15 / $0.60 per million tokens.
    cost = pricer().cost(OPENAI, Usage(input_tokens=1_000_000, output_tokens=1_000_000))
    assert cost.usd == Decimal("0.75")


def test_cached_input_tokens_are_priced_once_at_the_cache_rate() -> None:
    # 1,000 prompt tokens of which 400 were read from cache: 600 x 0.15 + 400 x 0.075 per million.
    cost = pricer().cost(OPENAI, Usage(input_tokens=1000, output_tokens=0, cache_read_tokens=400))
    assert cost.usd == Decimal("0.00012")


def test_anthropic_cache_writes_and_reads_each_have_their_price() -> None:
    haiku = Target("anthropic", "claude-3-5-haiku-latest")
    usage = Usage(input_tokens=1000, output_tokens=100, cache_read_tokens=200, cache_write_tokens=300)
    # 500 uncached x 0.8 + 200 read x 0.08 + 300 written x 1.0 + 100 out x 4.0, per million.
    assert pricer().cost(haiku, usage).usd == Decimal("0.001116")


def test_override_wins_over_the_catalog_and_prices_self_hosted_models() -> None:
    mine = ModelPrice(Decimal("1"), Decimal("2"), Decimal("0.5"), None)
    p = CatalogPricer({"local::llama-3-8b": mine, "gpt-4o-mini": ModelPrice(Decimal(10), Decimal(10))})
    assert p.cost(Target("local", "llama-3-8b"), Usage(1_000_000, 1_000_000, 1_000_000)).usd == Decimal("2.5")
    assert p.cost(OPENAI, Usage(1_000_000, 0)).usd == Decimal("10")


def test_unknown_model_is_unpriced_never_zero_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    p = pricer()
    target = Target("mine", "my-finetune-xyz-123")
    with caplog.at_level(logging.WARNING, logger="thrifty.pricing"):
        first = p.cost(target, Usage(10, 10))
        second = p.cost(target, Usage(20, 20))
    assert first.usd is None and second.usd is None
    assert first.header() == "unpriced"
    assert len([r for r in caplog.records if "my-finetune-xyz-123" in r.message]) == 1


def test_a_call_without_tokens_costs_zero_even_when_unpriced() -> None:
    assert pricer().cost(Target("mine", "nothing-known"), Usage()).usd == Decimal(0)


def test_cache_hits_reported_the_deepseek_way_are_priced_as_cache_reads() -> None:
    from thrifty.providers.openai import usage_from_openai

    deepseek = {"prompt_tokens": 1000, "completion_tokens": 10, "prompt_cache_hit_tokens": 800}
    openai_style = {"prompt_tokens": 1000, "completion_tokens": 10, "prompt_tokens_details": {"cached_tokens": 800}}
    assert usage_from_openai(deepseek) == usage_from_openai(openai_style) == Usage(1000, 10, cache_read_tokens=800)
