"""What a call cost, in Decimal USD.

Prices come from the ``genai-prices`` catalog (maintained by the pydantic team, shipped with the package, so it
works offline) unless config overrides them per model. A model with no price is *unpriced*: its cost is ``None``,
never $0, and it is warned about once per model.

Cache tokens are priced as providers bill them: ``Usage.input_tokens`` includes cache reads and writes, so the
uncached remainder is billed at the input price, reads at the cache-read price and writes at the cache-write
price (writes kept for an hour at the 1-hour write price, where the model has one); audio tokens, where the
model prices them, at the audio rates. Each token is billed exactly once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from thrifty.types import Cost, Target, Usage

log = logging.getLogger("thrifty.pricing")

MTOK = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens."""

    usd_per_mtok_input: Decimal
    usd_per_mtok_output: Decimal
    usd_per_mtok_cache_read: Decimal | None = None
    usd_per_mtok_cache_write: Decimal | None = None
    usd_per_mtok_cache_write_1h: Decimal | None = None
    """Writes kept for an hour; without it they bill at ``usd_per_mtok_cache_write`` (as the catalog does)."""

    def cost(self, usage: Usage) -> Decimal:
        read_price = self.usd_per_mtok_input if self.usd_per_mtok_cache_read is None else self.usd_per_mtok_cache_read
        write_price = (
            self.usd_per_mtok_input if self.usd_per_mtok_cache_write is None else self.usd_per_mtok_cache_write
        )
        hour_price = write_price if self.usd_per_mtok_cache_write_1h is None else self.usd_per_mtok_cache_write_1h
        uncached = max(usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens, 0)
        hour_writes = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
        total = (
            uncached * self.usd_per_mtok_input
            + usage.cache_read_tokens * read_price
            + (usage.cache_write_tokens - hour_writes) * write_price
            + hour_writes * hour_price
            + usage.output_tokens * self.usd_per_mtok_output
        )
        return total / MTOK


PriceFn = Callable[[Usage], Decimal]


class CatalogPricer:
    """Overrides first, then the genai-prices catalog; lookups are cached per target."""

    def __init__(
        self,
        overrides: Mapping[str, ModelPrice] | None = None,
        catalog_providers: Mapping[str, Sequence[str | None]] | None = None,
    ) -> None:
        """``overrides`` is keyed by ``model`` or ``provider::model``; ``catalog_providers`` maps a configured
        provider name to the genai-prices provider ids to try in order (None matches on the model name alone)."""
        self._overrides = dict(overrides or {})
        self._catalog_providers = dict(catalog_providers or {})
        self._cache: dict[Target, PriceFn | None] = {}
        self._lock = threading.Lock()

    def cost(self, target: Target, usage: Usage) -> Cost:
        if not (usage.input_tokens or usage.output_tokens):
            return Cost(Decimal(0))
        price = self._cache.get(target)
        if price is None and target not in self._cache:
            price = self._resolve(target)
        if price is None:
            return Cost(None)
        try:
            return Cost(price(usage))
        except (ArithmeticError, ValueError, TypeError):  # usage the catalog cannot price: unpriced, never a crash
            log.warning("cannot price %s for %s; recorded as unpriced", usage, target, exc_info=True)
            return Cost(None)

    def is_priced(self, target: Target) -> bool:
        if target not in self._cache:
            self._resolve(target)
        return self._cache[target] is not None

    def _resolve(self, target: Target) -> PriceFn | None:
        with self._lock:
            if target in self._cache:
                return self._cache[target]
            override = self._overrides.get(str(target)) or self._overrides.get(target.model)
            price = override.cost if override else self._from_catalog(target)
            if price is None:
                log.warning(
                    "no price for model %s (provider %s): its calls are recorded as unpriced; "
                    "set [prices.%r] in the config",
                    target.model,
                    target.provider,
                    target.model,
                )
            self._cache[target] = price
            return price

    def _from_catalog(self, target: Target) -> PriceFn | None:
        for provider_id in self._catalog_providers.get(target.provider, (None,)):
            try:
                return catalog_price(target.model, provider_id)
            except LookupError:
                continue
        return None


def catalog_price(model: str, provider_id: str | None) -> PriceFn:
    """A price function from genai-prices; raises LookupError when the catalog does not know the model."""
    from genai_prices import Usage as CatalogUsage
    from genai_prices import calc_price

    probe = calc_price(CatalogUsage(input_tokens=1, output_tokens=1), model_ref=model, provider_id=provider_id)
    simple = _flat_price(probe.model_price)
    if simple is not None:
        return simple.cost

    def tiered(usage: Usage) -> Decimal:
        # Tiered, time-conditional or audio prices: let the catalog do the arithmetic each time. Providers do
        # not say which cached tokens were audio: they are taken as text (the audio read rate is rarely dearer),
        # and audio never overlaps the cached part.
        audio_in = max(min(usage.input_audio_tokens, usage.input_tokens - usage.cache_read_tokens), 0)
        result = calc_price(
            CatalogUsage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                cache_write_1h_tokens=min(usage.cache_write_1h_tokens, usage.cache_write_tokens),
                input_audio_tokens=audio_in,
                cache_audio_read_tokens=0,
                output_audio_tokens=min(usage.output_audio_tokens, usage.output_tokens),
            ),
            model_ref=model,
            provider_id=provider_id,
        )
        return Decimal(result.total_price)

    return tiered


AUDIO_PRICES = ("input_audio_mtok", "output_audio_mtok", "cache_audio_read_mtok")


def _flat_price(model_price: Any) -> ModelPrice | None:
    """The price as plain numbers, or None when the catalog must do the arithmetic: tiers, or audio that bills
    at its own rate."""
    if any(getattr(model_price, name, None) is not None for name in AUDIO_PRICES):
        return None
    prices = {name: getattr(model_price, name, None) for name in ("input_mtok", "output_mtok")}
    cache_keys = ("cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok")
    cache = {name: getattr(model_price, name, None) for name in cache_keys}
    flat_in, flat_out = prices["input_mtok"], prices["output_mtok"]
    if not isinstance(flat_in, Decimal) or not isinstance(flat_out, Decimal):
        return None
    if not all(v is None or isinstance(v, Decimal) for v in cache.values()):
        return None
    return ModelPrice(
        flat_in, flat_out, cache["cache_read_mtok"], cache["cache_write_mtok"], cache["cache_write_1h_mtok"]
    )
