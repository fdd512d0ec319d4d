"""Prometheus metrics, one registry per gateway (no import-time globals).

Labels stay bounded: provider, model and endpoint come from config; users and sessions are never labels.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from thrifty.types import LedgerEntry

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_OVERHEAD_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1)


TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")


@dataclass(frozen=True, slots=True)
class _Series:
    tokens: tuple[Counter, ...]
    cost: Counter
    unpriced: Counter
    baseline: Counter
    upstream: Histogram
    ttft: Histogram


class GatewayMetrics:
    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, str, str], Counter] = {}
        self._series: dict[tuple[str, str], _Series] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "thrifty_requests", "Requests handled", ["endpoint", "model", "provider", "status"], registry=r
        )
        self.tokens = Counter("thrifty_tokens", "Tokens by kind", ["kind", "provider", "model"], registry=r)
        self.cost = Counter("thrifty_cost_usd", "Cost paid, USD", ["provider", "model"], registry=r)
        self.baseline = Counter(
            "thrifty_baseline_cost_usd",
            "Cost without Thrifty's levers, USD",
            ["provider", "model"],
            registry=r,
        )
        self.unpriced = Counter(
            "thrifty_unpriced_requests",
            "Requests whose model has no price",
            ["provider", "model"],
            registry=r,
        )
        self.upstream = Histogram(
            "thrifty_upstream_latency_seconds",
            "Time spent waiting for the provider",
            ["provider"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.overhead = Histogram(
            "thrifty_overhead_seconds",
            "Time the gateway itself adds to a request (total minus upstream)",
            buckets=_OVERHEAD_BUCKETS_S,
            registry=r,
        )
        self.cache_hits = Counter("thrifty_cache_hits", "Answers served from the cache", ["kind"], registry=r)
        self.ttft = Histogram(
            "thrifty_time_to_first_token_seconds",
            "Time to the first streamed token",
            ["provider"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )

    def observe(self, entry: LedgerEntry) -> None:
        provider, model, usage = entry.provider or "none", entry.model or "none", entry.usage
        key = (entry.endpoint, entry.requested_model, provider, entry.status)
        requests = self._requests.get(key)
        if requests is None:
            requests = self._requests[key] = self.requests.labels(*key)
        requests.inc()
        series = self._series.get((provider, model)) or self._new_series(provider, model)
        if entry.cache:
            self.cache_hits.labels(entry.cache).inc()
            if entry.baseline_cost_usd is not None:
                series.baseline.inc(float(entry.baseline_cost_usd))
            self.overhead.observe(entry.total_ms / 1000)
            return
        for child, count in zip(
            series.tokens,
            (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens),
            strict=True,
        ):
            if count:
                child.inc(count)
        if entry.cost_usd is not None:
            series.cost.inc(float(entry.cost_usd))
        else:
            series.unpriced.inc()
        if entry.baseline_cost_usd is not None:
            series.baseline.inc(float(entry.baseline_cost_usd))
        if entry.upstream_ms:
            series.upstream.observe(entry.upstream_ms / 1000)
        self.overhead.observe(max(entry.total_ms - entry.upstream_ms, 0.0) / 1000)
        if entry.ttft_ms is not None:
            series.ttft.observe(entry.ttft_ms / 1000)

    def _new_series(self, provider: str, model: str) -> _Series:
        """Label lookups cost more than the increments; each (provider, model) pair is looked up once."""
        series = _Series(
            tokens=tuple(self.tokens.labels(kind, provider, model) for kind in TOKEN_KINDS),
            cost=self.cost.labels(provider, model),
            unpriced=self.unpriced.labels(provider, model),
            baseline=self.baseline.labels(provider, model),
            upstream=self.upstream.labels(provider),
            ttft=self.ttft.labels(provider),
        )
        self._series[(provider, model)] = series
        return series

    def render(self) -> bytes:
        return generate_latest(self.registry)
