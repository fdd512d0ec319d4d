"""What the record stage needs to know about one request, gathered as it moves through the stages.

A ``Trace`` is the only mutable object on the request path; it exists so that a request that fails at any stage
still becomes exactly one ledger row with whatever is known about it (tokens paid for included).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from decimal import Decimal

from thrifty.types import Cost, LedgerEntry, Payload, Principal, Status, Target, Usage


def new_request_id() -> str:
    """96 random bits from the OS: unique across replicas and forked workers without coordination."""
    return "req_" + secrets.token_hex(12)


@dataclass(slots=True)
class Trace:
    request_id: str
    endpoint: str
    requested_model: str
    streamed: bool = False
    principal: Principal = field(default_factory=Principal)
    started_at: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    target: Target | None = None
    usage: Usage = field(default_factory=Usage)
    upstream_ms: float = 0.0
    ttft_ms: float | None = None
    cache: str = ""

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000

    def entry(
        self,
        status: Status,
        cost: Cost,
        baseline: Cost,
        error_type: str = "",
        savings: dict[str, Decimal] | None = None,
        payload: Payload | None = None,
    ) -> LedgerEntry:
        target = self.target
        return LedgerEntry(
            request_id=self.request_id,
            started_at=self.started_at,
            endpoint=self.endpoint,
            principal=self.principal,
            requested_model=self.requested_model,
            provider=target.provider if target else "",
            model=target.model if target else "",
            usage=self.usage,
            cost_usd=cost.usd,
            baseline_cost_usd=baseline.usd,
            total_ms=self.elapsed_ms(),
            upstream_ms=self.upstream_ms,
            ttft_ms=self.ttft_ms,
            status=status,
            error_type=error_type,
            streamed=self.streamed,
            savings_usd=savings or {},
            payload=payload,
            cache=self.cache,
        )


def savings_by_lever(cost: Cost, baseline: Cost, lever: str) -> dict[str, Decimal]:
    """The whole difference goes to one lever here; later levers split it between them."""
    if cost.usd is None or baseline.usd is None or cost.usd == baseline.usd:
        return {}
    return {lever: baseline.usd - cost.usd}
