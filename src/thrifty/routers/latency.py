"""Latency-aware routing: each target's expected latency, and a router that keeps slow targets for last.

``LatencyTracker`` keeps an exponentially weighted moving average of ``upstream_ms`` per target, fed by the
gateway's ledger observers (every answered call, including cascade steps; cache hits and failures say nothing
about a model's speed). Until a target has answered, its expected latency is the one configured for it in the
pool (``[pool.NAME] latency_ms``), else unknown.

Two ways to use it, per alias:

- ``max_latency_ms``: ``LatencyAwareRouter`` wraps any router; targets expected to be slower than the limit move
  behind those that are not (they stay as fallbacks), so a slow model is called only when no fast one is left.
  Unknown latency counts as fast: a new target gets its first calls and so its first measurement. A cascade's
  tiers keep their order.
- ``latency_weight`` (learned routers): each second of expected latency costs that much predicted quality, so a
  slow model is chosen only where the router predicts it is that much better than a faster one.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from thrifty.protocols import Router
from thrifty.types import ChatRequest, LedgerEntry, Principal, Route, Target


class LatencyTracker:
    def __init__(self, configured_ms: Mapping[Target, float] | None = None, smoothing: float = 0.2) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self._configured = dict(configured_ms or {})
        self._smoothing = smoothing
        self._observed: dict[Target, float] = {}
        self._lock = threading.Lock()

    def expected_ms(self, target: Target) -> float | None:
        return self._observed.get(target, self._configured.get(target))

    def record(self, target: Target, upstream_ms: float) -> None:
        with self._lock:
            previous = self._observed.get(target)
            self._observed[target] = (
                upstream_ms if previous is None else previous + self._smoothing * (upstream_ms - previous)
            )

    def __call__(self, entry: LedgerEntry) -> None:
        """A gateway observer: every ledger row of a call a provider answered."""
        own = entry.answer_ms if entry.answer_ms is not None else entry.upstream_ms
        if entry.status in ("ok", "escalated") and not entry.cache and own > 0 and entry.provider:
            self.record(Target(entry.provider, entry.model), own)


class LatencyAwareRouter:
    """Another router's order, with targets expected to exceed ``max_latency_ms`` moved to the end."""

    def __init__(self, inner: Router, tracker: LatencyTracker, max_latency_ms: float) -> None:
        self._inner, self._tracker, self._max_ms = inner, tracker, max_latency_ms

    def route(self, request: ChatRequest, principal: Principal) -> Route:
        route = self._inner.route(request, principal)
        if route.cascade is not None:
            return route  # a cascade's order is its tiers: a slow cheap tier moved last would escalate downward
        slow = [t for t in route.targets if (self._tracker.expected_ms(t) or 0.0) > self._max_ms]
        if not slow or len(slow) == len(route.targets):
            return route
        fast = [t for t in route.targets if t not in slow]
        shown = ", ".join(f"{t.model} ~{self._tracker.expected_ms(t):.0f} ms" for t in slow)
        reason = f"{route.reason}; over {self._max_ms:.0f} ms, kept for last: {shown}"
        return Route((*fast, *slow), route.router, reason, route.cascade)
