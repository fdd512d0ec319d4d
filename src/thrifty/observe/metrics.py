"""Prometheus metrics, one registry per gateway (no import-time globals).

Labels stay bounded: provider and model come from config; tenant and feature are capped at ``MAX_LABEL_VALUES``
distinct values each (the rest are counted as ``other``); users and sessions are never labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from thrifty.types import LedgerEntry

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_OVERHEAD_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1)
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")
MAX_LABEL_VALUES = 100
SERIES = ["tenant", "feature", "provider", "model"]


@dataclass(frozen=True, slots=True)
class _Series:
    tokens: tuple[Counter, ...]
    cost: Counter
    unpriced: Counter
    baseline: Counter
    upstream: Histogram
    ttft: Histogram


class _Bounded:
    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= MAX_LABEL_VALUES:
            return "other"
        self._seen.add(value)
        return value


class GatewayMetrics:
    def __init__(self) -> None:
        self._requests: dict[tuple[str, ...], Counter] = {}
        self._series: dict[tuple[str, ...], _Series] = {}
        self._tenants, self._features = _Bounded(), _Bounded()
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "thrifty_requests", "Requests handled", ["endpoint", "alias", "status", *SERIES], registry=r
        )
        self.tokens = Counter("thrifty_tokens", "Tokens paid for, by kind", ["kind", *SERIES], registry=r)
        self.cost = Counter("thrifty_cost_usd", "Cost paid, USD", SERIES, registry=r)
        self.baseline = Counter("thrifty_baseline_cost_usd", "Cost without Thrifty's levers, USD", SERIES, registry=r)
        # A gauge, not a counter: a lever can cost money (a fallback to a dearer model, a cache write).
        self.savings = Gauge(
            "thrifty_savings_usd",
            "Baseline minus cost, by lever, since start",
            ["lever", "tenant", "feature"],
            registry=r,
        )
        self.unpriced = Counter("thrifty_unpriced_requests", "Requests whose model has no price", SERIES, registry=r)
        self.cache_hits = Counter(
            "thrifty_cache_hits", "Answers served from the cache", ["kind", "tenant", "feature"], registry=r
        )
        self.verifications = Counter(
            "thrifty_semantic_verifications",
            "Semantic hits also asked of the model, by whether the answers agreed",
            ["feature", "outcome"],
            registry=r,
        )
        self.cut_off = Counter(
            "thrifty_cut_off_answers", "Answers cut off by their output cap (finish_reason length)",
            ["feature", "model"], registry=r,
        )  # fmt: skip
        self.structured_tokens = Counter(
            "thrifty_structured_waste_tokens",
            "Output tokens spent on JSON fields the client never reads (unused_field) or on long property names "
            "beyond a one-token name (long_name)",
            ["feature", "model", "kind"], registry=r,
        )  # fmt: skip
        self.structured_usd = Counter(
            "thrifty_structured_waste_usd", "What those output tokens cost, USD", ["feature", "model", "kind"],
            registry=r,
        )  # fmt: skip
        self.refusals = Counter("thrifty_refusals", "Requests a guard refused", ["code", "tenant"], registry=r)
        self.budget_remaining = Gauge(
            "thrifty_budget_remaining_usd", "Left in the current period", ["budget"], registry=r
        )
        self.upstream = Histogram(
            "thrifty_upstream_latency_seconds", "Time spent waiting for the provider", ["provider"],
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            "thrifty_overhead_seconds", "Time the gateway itself adds to a request (total minus upstream)",
            buckets=_OVERHEAD_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "thrifty_time_to_first_token_seconds", "Time to the first streamed token", ["provider"],
            buckets=_LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip

    def observe(self, entry: LedgerEntry) -> None:
        tenant, feature = self._tenants(entry.principal.tenant), self._features(entry.principal.feature)
        labels = (tenant, feature, entry.provider or "none", entry.model or "none")
        key = (entry.endpoint, entry.requested_model, entry.status, *labels)
        requests = self._requests.get(key)
        if requests is None:
            requests = self._requests[key] = self.requests.labels(*key)
        requests.inc()
        if entry.status == "error" and entry.error_type in ("insufficient_quota", "rate_limit_error"):
            self.refusals.labels(entry.error_type, tenant).inc()
        series = self._series.get(labels) or self._new_series(labels)
        if entry.baseline_cost_usd is not None:
            series.baseline.inc(float(entry.baseline_cost_usd))
        for lever, amount in entry.savings_usd.items():
            self.savings.labels(lever, tenant, feature).inc(float(amount))
        if entry.finish_reason == "length":
            self.cut_off.labels(feature, entry.model or "none").inc()
        if entry.cache in ("exact", "semantic"):
            self.cache_hits.labels(entry.cache, tenant, feature).inc()
            self.overhead.observe(entry.total_ms / 1000)
            return
        usage = entry.usage
        counts = (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens)
        for child, count in zip(series.tokens, counts, strict=True):
            if count:
                child.inc(count)
        if entry.cost_usd is not None:
            series.cost.inc(float(entry.cost_usd))
        else:
            series.unpriced.inc()
        if entry.upstream_ms:
            series.upstream.observe(entry.upstream_ms / 1000)
        self.overhead.observe(max(entry.total_ms - entry.upstream_ms, 0.0) / 1000)
        if entry.ttft_ms is not None:
            series.ttft.observe(entry.ttft_ms / 1000)

    def structured_waste(self, feature: str, model: str, kind: str, tokens: int, usd: Decimal | None) -> None:
        feature = self._features(feature)
        self.structured_tokens.labels(feature, model, kind).inc(tokens)
        if usd:
            self.structured_usd.labels(feature, model, kind).inc(float(usd))

    def verified(self, feature: str, agreed: bool) -> None:
        self.verifications.labels(self._features(feature), "agree" if agreed else "disagree").inc()

    def _new_series(self, labels: tuple[str, ...]) -> _Series:
        """Label lookups cost more than the increments; each label combination is looked up once."""
        series = _Series(
            tokens=tuple(self.tokens.labels(kind, *labels) for kind in TOKEN_KINDS),
            cost=self.cost.labels(*labels),
            unpriced=self.unpriced.labels(*labels),
            baseline=self.baseline.labels(*labels),
            upstream=self.upstream.labels(labels[2]),
            ttft=self.ttft.labels(labels[2]),
        )
        self._series[labels] = series
        return series

    def render(self) -> bytes:
        return generate_latest(self.registry)
