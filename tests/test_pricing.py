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


def test_cache_writes_kept_for_an_hour_bill_at_the_hour_rate() -> None:
    """Anthropic bills a 1-hour cache write at 2x the input price, a 5-minute one at 1.25x."""
    haiku = Target("anthropic", "claude-3-5-haiku-latest")  # a flat price: 0.8 in, 1.0 write, 1.6 1-hour write
    usage = Usage(input_tokens=1000, output_tokens=0, cache_write_tokens=600, cache_write_1h_tokens=400)
    # 400 uncached x 0.8 + 200 written x 1.0 + 400 written for an hour x 1.6, per million.
    assert pricer().cost(haiku, usage).usd == Decimal("0.00116")
    sonnet = Target("anthropic", "claude-sonnet-4-5")  # a tiered price (dearer above 200k prompt tokens)
    usage = Usage(input_tokens=10_000, output_tokens=100, cache_write_tokens=6000, cache_write_1h_tokens=4000)
    # 4,000 uncached x 3 + 2,000 x 3.75 + 4,000 x 6 + 100 out x 15, per million.
    assert pricer().cost(sonnet, usage).usd == Decimal("0.045")


def test_an_override_prices_hour_writes_at_the_write_price_unless_given_its_own() -> None:
    mine = Target("local", "m")
    usage = Usage(input_tokens=1_000_000, cache_write_tokens=1_000_000, cache_write_1h_tokens=1_000_000)
    plain = CatalogPricer({"m": ModelPrice(Decimal(1), Decimal(1), None, Decimal(2))})
    hourly = CatalogPricer({"m": ModelPrice(Decimal(1), Decimal(1), None, Decimal(2), Decimal(3))})
    assert plain.cost(mine, usage).usd == Decimal(2)
    assert hourly.cost(mine, usage).usd == Decimal(3)


def test_optimizer_shares_add_up_under_tiered_prices() -> None:
    """gemini-2.5-pro bills every prompt token at a higher rate past 200k: 100k tokens pruned from a 250k prompt
    save more than 100k tokens at the base rate, and the levers' shares must still sum to the whole."""
    from thrifty.accounting import counterfactual

    p = CatalogPricer(catalog_providers={"google": ["google"]})
    gemini = Target("google", "gemini-2.5-pro")
    sent = Usage(input_tokens=150_000, output_tokens=1000)
    here = counterfactual(p, gemini, sent, [("summarize", 40_000), ("prune", 60_000)])
    original = p.cost(gemini, Usage(input_tokens=250_000, output_tokens=1000)).usd
    assert here.uncached.usd is not None and here.original.usd == original is not None
    assert sum(here.optimized.values()) == original - here.uncached.usd
    assert here.optimized["summarize"] > 0 and here.optimized["prune"] > 0
    alone = sum(p.cost(gemini, Usage(tokens)).usd or 0 for tokens in (40_000, 60_000))
    assert alone < original - here.uncached.usd  # what pricing each lever's tokens on their own credited


def test_audio_tokens_bill_at_the_audio_rates() -> None:
    """gpt-audio: text $2.50 / $10 per million, audio $32 in / $64 out. Priced as text, an audio call costs an
    eighth of its bill."""
    from thrifty.providers.openai import usage_from_openai

    reported = {
        "prompt_tokens": 1000,
        "completion_tokens": 1000,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 800},
        "completion_tokens_details": {"audio_tokens": 900},
    }
    usage = usage_from_openai(reported)
    assert usage is not None and (usage.input_audio_tokens, usage.output_audio_tokens) == (800, 900)
    cost = pricer().cost(Target("openai", "gpt-audio"), usage).usd
    # 200 text in x 2.5 + 800 audio in x 32 + 100 text out x 10 + 900 audio out x 64, per million.
    assert cost == Decimal("0.0847")
    from thrifty.accounting import without_cache

    assert without_cache(usage) == usage  # the baseline keeps the audio: no cache was involved


def test_audio_with_a_cache_read_is_priced_and_nothing_the_catalog_refuses_crashes() -> None:
    """Gemini through an OpenAI-compatible proxy reports cached tokens and audio tokens without saying which
    cached tokens were audio; the catalog refuses that split. A price must come out (or 'unpriced'), never an
    exception after the call was paid."""
    gemini = Target("google", "gemini-2.5-flash")
    p = CatalogPricer(catalog_providers={"google": ["google"]})
    usage = Usage(1000, 100, cache_read_tokens=200, input_audio_tokens=900)
    # 800 audio not cached x $1 + 200 cached x $0.03 + 100 out x $2.50, per million: audio never overlaps the cache.
    assert p.cost(gemini, usage).usd == Decimal("0.001056")

    def refuses(usage: Usage) -> Decimal:
        raise ValueError("the catalog cannot split this usage")

    broken = CatalogPricer()
    broken._cache[Target("x", "y")] = refuses
    assert broken.cost(Target("x", "y"), Usage(10, 10)).usd is None
