"""What the record stage needs to know about one request, gathered as it moves through the stages.

A ``Trace`` is the only mutable object on the request path; it exists so that a request that fails at any stage
still becomes exactly one ledger row with whatever is known about it (tokens paid for included).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal

from thrifty.protocols import Admission, Pricer
from thrifty.types import (
    ChatResponse,
    Cost,
    JsonObject,
    LedgerEntry,
    Payload,
    Principal,
    Route,
    Status,
    Target,
    Usage,
)

log = logging.getLogger("thrifty")


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
    route: Route | None = None
    saved_tokens: tuple[tuple[str, int], ...] = ()
    finish_reason: str | None = None
    max_output_tokens: int | None = None
    escalated_usd: Decimal = Decimal(0)
    """What the cascade steps before the answer cost (each has its own ledger row); budgets are charged for them."""
    escalated_usage: Usage = field(default_factory=Usage)
    escalations: int = 0
    escalated_unpriced: bool = False
    answer_ms: float | None = None
    """The answering call's own time (``LedgerEntry.answer_ms``); a stream's runs from ``answer_started``."""
    answer_started: float | None = None
    samples: int = 1
    """Choices the answering call returned of which the client got one (a self-consistency cascade's)."""
    sampled_texts: tuple[str, ...] = ()
    """Every sample's billed text, when there were several and the provider reported no usage: the offline count
    is of all that was billed, not of the one answer the client got."""
    detours: list[str] = field(default_factory=list)
    """Why the answer is not the route's first target's: each target passed over, and why (``x-thrifty-route``)."""

    def answered(self, request: JsonObject, answer: JsonObject) -> None:
        """Note how a complete answer ended and the output cap its request carried."""
        self.finish_reason, self.max_output_tokens = finish_reason_of(answer), max_output_tokens_of(request)

    def route_header(self) -> str:
        """Which router decided and why (``x-thrifty-route``); a cache hit was decided by the cache."""
        if self.cache:
            return f"cache; {self.cache} hit"
        if self.route is None:
            return ""
        shown = self.detours[:3] + ([f"{len(self.detours) - 3} more"] if len(self.detours) > 3 else [])
        return "; ".join([self.route.header(), *shown])

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
            finish_reason=self.finish_reason,
            max_output_tokens=self.max_output_tokens,
            answer_ms=self.answer_ms,
        )


def finish_reason_of(answer: JsonObject) -> str | None:
    """A ``chat.completion``'s finish reason: ``length`` if any choice was cut off, else the first choice's."""
    reasons = [choice.get("finish_reason") for choice in answer.get("choices") or [] if isinstance(choice, dict)]
    if "length" in reasons:
        return "length"
    return next((str(reason) for reason in reasons if reason), None)


def max_output_tokens_of(request: JsonObject) -> int | None:
    cap = request.get("max_completion_tokens") or request.get("max_tokens")
    return cap if isinstance(cap, int) and not isinstance(cap, bool) else None


def as_asked(response: ChatResponse, saved_tokens: Sequence[tuple[str, int]]) -> ChatResponse:
    """The answer to keep in the cache, with the prompt tokens the client's request would have taken before the
    optimizers shortened it: a hit's baseline is priced on them (the lever that saved them was paid for once)."""
    saved = sum(tokens for _, tokens in saved_tokens)
    if not saved or response.usage is None:
        return response
    return replace(response, usage=replace(response.usage, input_tokens=response.usage.input_tokens + saved))


def without_cache(usage: Usage) -> Usage:
    """The same tokens as if no provider cache had been read or written."""
    return replace(usage, cache_read_tokens=0, cache_write_tokens=0, cache_write_1h_tokens=0)


@dataclass(frozen=True, slots=True)
class Counterfactual:
    """What the model that answered would have charged: without its prompt cache (``uncached``), and for the
    client's original prompt before any optimizer shortened it (``original``), with each optimizer's share."""

    uncached: Cost
    original: Cost
    optimized: dict[str, Decimal]


def counterfactual(
    pricer: Pricer, target: Target, uncached: Usage, saved_tokens: Sequence[tuple[str, int]]
) -> Counterfactual:
    """What ``target`` would have charged without its prompt cache, and for the client's original prompt.

    Each optimizer's share is the price of its tokens at the point it ran, stepping back from the prompt sent
    through the levers in reverse: the shares add up to the original's price minus the sent one's even where the
    price per token grows with the prompt (tiered prices), which pricing each lever's tokens alone would miss."""
    sent = pricer.cost(target, uncached)
    optimized: dict[str, Decimal] = {}
    before, prompt = sent, uncached
    for lever, tokens in reversed(saved_tokens):
        prompt = replace(prompt, input_tokens=prompt.input_tokens + tokens)
        cost = pricer.cost(target, prompt)
        if before.usd is not None and cost.usd is not None:
            optimized[lever] = optimized.get(lever, Decimal(0)) + cost.usd - before.usd
        before = cost
    return Counterfactual(sent, before, optimized)


def split_savings(cost: Cost, baseline: Cost, here: Counterfactual, cache: str, model_lever: str) -> dict[str, Decimal]:
    """Baseline minus cost, split by the lever that earned each part; the parts add up to the whole.

    The gap between the original prompt and the one sent is the optimizers' (each credited with its own tokens);
    between the uncached price and the cost, the provider cache's (negative when a cache write cost more than it
    saved); between the baseline and the original prompt on the model that answered, the choice of model (a
    fallback or a router). A cache hit earns everything.
    """
    if cost.usd is None or baseline.usd is None:
        return {}
    if cache:
        return {"cache": baseline.usd - cost.usd} if baseline.usd != cost.usd else {}
    if here.uncached.usd is None or here.original.usd is None:
        return {}
    parts = {
        "prompt_cache": here.uncached.usd - cost.usd,
        model_lever: baseline.usd - here.original.usd,
        **here.optimized,
    }
    return {lever: amount for lever, amount in parts.items() if amount}


def with_escalations(cost: Cost, trace: Trace) -> Cost:
    """What a request cost in all: its answer and the cascade steps before it (each step has its own row);
    unpriced if any part is."""
    if not trace.escalations:
        return cost
    if cost.usd is None or trace.escalated_unpriced:
        return Cost(None)
    return Cost(cost.usd + trace.escalated_usd)


async def settle(admission: Admission, cost: Cost, trace: Trace, model: str = "") -> None:
    """Settle a request's budget holds and limits to what it cost, cascade steps included (the priced parts:
    budgets count dollars); ``model`` names who answered (no model: only escalated steps were paid for).

    Never raises: by now the call is in the ledger, and a budget store that is down must not turn a paid answer
    into an error that the client would retry and pay for twice. Shielded: a client leaving mid-settle must not
    leave the spend uncounted."""
    usd, usage = cost.usd, trace.usage if model else None
    # What the answering model writes for one answer: its own tokens (not the cascade steps'), per sample kept.
    own = usage.output_tokens // max(trace.samples, 1) if usage is not None else None
    if trace.escalations:
        usd = (usd or Decimal(0)) + trace.escalated_usd
        usage = trace.escalated_usage if usage is None else usage + trace.escalated_usage
    settling = _settle_logged(admission, Cost(usd), usage, model, trace.request_id, own)
    # In process a settle never yields, so nothing can interrupt it; a shield there would cost ~30 us.
    await (asyncio.shield(settling) if getattr(admission, "remote", True) else settling)


async def _settle_logged(
    admission: Admission, cost: Cost, usage: Usage | None, model: str, request_id: str, own: int | None
) -> None:
    """Logs its own failure: when the client has gone, nobody else is left to see it."""
    try:
        await admission.settle(cost, usage, model, own)
    except Exception:
        log.exception("could not settle the budgets of %s; the ledger has its cost", request_id)
