"""``Gateway``: the request path as one straight line of named stages.

1. authenticate  2. guard  3. cache lookup  4. optimize  5. route  6. call provider  7. record

What each stage does is pluggable (``thrifty.protocols``); their order is not. Streaming shares stages 1-6 up to
the first chunk (so a stream that fails before its first token can still fall back) and records when the
stream ends, however it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from decimal import Decimal

from thrifty.accounting import (
    Trace,
    as_asked,
    counterfactual,
    settle,
    split_savings,
    with_escalations,
    without_cache,
)
from thrifty.caches.verify import SemanticVerifier
from thrifty.calling import ProviderCaller
from thrifty.errors import BudgetExceeded, ThriftyError
from thrifty.guards.estimate import prompt_tokens
from thrifty.observe.metrics import GatewayMetrics
from thrifty.protocols import (
    Admission,
    Authenticator,
    Guard,
    Ledger,
    Optimizer,
    Pricer,
    Provider,
    ResponseCache,
    Router,
)
from thrifty.routers.cooldown import Cooldowns
from thrifty.routers.static import unknown_model
from thrifty.streaming import ChatStream, replay
from thrifty.tokens import TiktokenCounter, billed_text, message_text
from thrifty.types import (
    Caller,
    ChatRequest,
    ChatResponse,
    Cost,
    EmbeddingRequest,
    EmbeddingResponse,
    LedgerEntry,
    Payload,
    Principal,
    Target,
    Usage,
)

log = logging.getLogger("thrifty")

ZERO = Cost(Decimal(0))


class Gateway:
    def __init__(
        self,
        *,
        aliases: Mapping[str, tuple[Target, ...]],
        authenticator: Authenticator,
        guard: Guard,
        cache: ResponseCache,
        optimizer: Optimizer,
        router: Router,
        providers: Mapping[str, Provider],
        pricer: Pricer,
        ledger: Ledger,
        metrics: GatewayMetrics | None = None,
        counter: TiktokenCounter | None = None,
        capture_payloads: bool = False,
        observers: Sequence[Callable[[LedgerEntry], None]] = (),
        baselines: Mapping[str, Target] | None = None,
        cooldowns: Cooldowns | None = None,
    ) -> None:
        self.aliases = dict(aliases)
        self.authenticator, self.guard, self.cache = authenticator, guard, cache
        self.optimizer, self.router, self.providers = optimizer, router, dict(providers)
        self.caller = ProviderCaller(self.providers, cooldowns or Cooldowns(), self._record_escalation)
        self.baselines = {alias: (baselines or {}).get(alias, targets[0]) for alias, targets in self.aliases.items()}
        self.pricer, self.ledger = pricer, ledger
        self.metrics = metrics or GatewayMetrics()
        self.counter = counter or TiktokenCounter()
        self.capture_payloads = capture_payloads
        self.observers = list(observers)
        self.verifier: SemanticVerifier | None = None

    async def handle(
        self, request: ChatRequest, caller: Caller, principal: Principal | None = None
    ) -> tuple[ChatResponse, Cost]:
        """One chat completion, non-streaming; returns the answer and what it cost. ``principal`` instead of
        authenticating is for the gateway's own calls (a history summary, charged to its lever)."""
        trace = Trace(request.request_id, "chat", request.model)
        admission: Admission | None = None
        cost: Cost | None = None
        answered_by, recorded = "", False
        try:
            try:
                trace.principal = principal or self.authenticator.authenticate(caller)  # 1. authenticate
                self.check_model(request.model)
                admission, refused = await self.admit(request, trace.principal)  # 2. guard
                # The cache keys on what the client asked: a budget's clamp of max_tokens reaches the call only
                # (through ``bounded``), or every repeat near the end of a budget would be a miss, paid again.
                request = sent = self.planned(request, trace.principal)
                response = await self.cache.lookup(request, trace.principal, admission is not None)  # 3. cache
                fresh = response is None
                if response is None:
                    if admission is None:
                        raise refused or AssertionError("neither admitted nor refused")
                    sent = admission.bounded(await self.optimizer.optimize(request, trace.principal))  # 4. optimize
                    trace.saved_tokens = sent.saved_tokens
                    route = trace.route = self.router.route(sent, trace.principal)  # 5. route
                    response = await self.caller.call(sent, route, trace)  # 6. call provider
                cost = self.account(trace, sent, response)
                # A hit called no model: it neither counts tokens against rate limits nor teaches output sizes.
                answered_by = "" if response.cache else response.target.model
                # 7. record, before anything else can fail or be cancelled: the call is paid for.
                self.record(self.finished(trace, cost, request, output_text(response)))
                recorded = True
            except ThriftyError as exc:
                if not recorded:
                    self.record_failure(trace, exc.error_type)
                raise
            except Exception:
                if not recorded:  # a fault of ours still leaves the row of what was paid for
                    self.record_failure(trace, "internal_error")
                raise
            if fresh:  # a provider that reports no usage: kept with the usage counted offline, marked estimated
                stored = as_asked(replace(response, usage=response.usage or trace.usage), trace.saved_tokens)
                await self.cache.store(request, trace.principal, stored, trace.started_at)
            elif response.cache == "semantic" and self.verifier is not None:
                self.verifier.sample(request, trace.principal, response)
        finally:
            self.cache.release(request, trace.principal)  # identical requests waiting on this one go on
            if admission is not None:  # to the cost, or to zero (releasing the reservation) if none was paid
                await settle(admission, cost or ZERO, trace, answered_by)
        # The usage charged: the upstream's, or counted offline when it reported none (for /v1/messages' reply).
        usage = response.usage or trace.usage
        return replace(response, route=trace.route_header(), usage=usage), with_escalations(cost, trace)

    async def admit(self, request: ChatRequest, principal: Principal) -> tuple[Admission | None, BudgetExceeded | None]:
        """The guard's admission; or, when a budget has no room, its refusal, kept until the cache is asked: an
        answer already cached costs nothing, so a spent budget still gets it (rate limits and agent caps, which
        count requests, refuse at once)."""
        try:
            return await self.guard.admit(request, principal), None
        except BudgetExceeded as refused:
            return None, refused

    def planned(self, request: ChatRequest, principal: Principal) -> ChatRequest:
        """The request marked with the optimizer plan that applies to it, which the cache keys on."""
        key = self.optimizer.plan_key(request, principal)
        return replace(request, plan_key=key) if key else request

    async def open_stream(self, request: ChatRequest, caller: Caller) -> ChatStream:
        """Stages 1-6 of a streamed completion, up to its first chunk; the stream records itself when it ends."""
        trace = Trace(request.request_id, "chat", request.model, streamed=True)
        admission: Admission | None = None
        try:
            trace.principal = self.authenticator.authenticate(caller)  # 1. authenticate
            self.check_model(request.model)
            admission, refused = await self.admit(request, trace.principal)  # 2. guard
            request = self.planned(request, trace.principal)  # the client's, not the clamped (see handle)
            cached = await self.cache.lookup(request, trace.principal, admission is not None)  # 3. cache lookup
            sent = request
            if cached is not None:
                trace.cache = cached.cache
                if cached.cache == "semantic" and self.verifier is not None:
                    self.verifier.sample(request, trace.principal, cached)
                opened = await replay(cached)
            elif admission is None:
                raise refused or AssertionError("neither admitted nor refused")
            else:
                sent = admission.bounded(await self.optimizer.optimize(request, trace.principal))  # 4. optimize
                trace.saved_tokens = sent.saved_tokens
                route = trace.route = self.router.route(sent, trace.principal)  # 5. route
                opened = await self.caller.open(sent, route, trace)  # 6. call provider
            stream, admission = ChatStream(self, request, sent, trace, opened, admission), None  # it settles now
            return stream
        except ThriftyError as exc:
            self.record_failure(trace, exc.error_type)
            raise
        except Exception:
            self.record_failure(trace, "internal_error")
            raise
        finally:
            if admission is not None:
                await settle(admission, ZERO, trace)

    async def embed(
        self, request: EmbeddingRequest, caller: Caller, principal: Principal | None = None
    ) -> tuple[EmbeddingResponse, Cost]:
        """Embeddings; ``principal`` instead of authenticating is for the gateway's own calls (its cache's)."""
        trace = Trace(request.request_id, "embeddings", request.model)
        try:
            trace.principal = principal or self.authenticator.authenticate(caller)
            self.check_model(request.model)
            response = await self.caller.embed(request, self.aliases[request.model], trace)
            trace.target, trace.usage = response.target, response.usage
            if not response.usage.input_tokens:  # the provider reported none: counted offline, never $0
                trace.usage = Usage(self._embedded_tokens(request, response.target), estimated=True)
            cost = self.pricer.cost(response.target, trace.usage)
        except ThriftyError as exc:
            self.record_failure(trace, exc.error_type)
            raise
        if request.charged_to:  # the gateway's own call (the semantic cache's): no baseline, its lever pays
            self.record(trace.entry("ok", cost, ZERO, savings={request.charged_to: -cost.usd} if cost.usd else {}))
        else:
            self.record(self.finished(trace, cost))
        return response, cost

    def _embedded_tokens(self, request: EmbeddingRequest, target: Target) -> int:
        """The inputs' tokens: texts counted offline, token arrays by their length."""
        inputs = request.body.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        total = 0
        for item in inputs if isinstance(inputs, list) else []:
            total += self.counter.count_text(target.model, item) if isinstance(item, str) else len(item)
        return total

    def record(self, entry: LedgerEntry) -> None:
        """Stage 7: the durable ledger row and the metrics."""
        self.ledger.record(entry)
        self.metrics.observe(entry)
        for observer in self.observers:
            observer(entry)

    def check_model(self, model: str) -> None:
        if model not in self.aliases:
            raise unknown_model(model, self.aliases)

    def estimate_usage(self, request: ChatRequest, target: Target, *outputs: str) -> Usage:
        """Usage counted offline, when the provider reported none (marked estimated in the ledger); ``request`` is
        the one sent (after the optimizers), not the client's; ``outputs``: each choice billed."""
        return Usage(
            input_tokens=prompt_tokens(self.counter, request, target.model),
            output_tokens=sum(self.counter.count_text(target.model, output) for output in outputs),
            estimated=True,
        )

    def account(self, trace: Trace, request: ChatRequest, response: ChatResponse) -> Cost:
        """Who answered, the tokens (counted offline if the provider gave none), and the cost: 0 from the cache.
        ``request`` is the one sent to the provider (or the client's, for a cache hit)."""
        trace.target, trace.cache = response.target, response.cache
        trace.answered(request.body, response.body)
        trace.usage = response.usage or self.estimate_usage(
            request, response.target, *(trace.sampled_texts or (output_text(response, True),))
        )  # every sample billed, where the client got one
        return ZERO if response.cache else self.pricer.cost(response.target, trace.usage)

    def finished(self, trace: Trace, cost: Cost, request: ChatRequest | None = None, answer: str = "") -> LedgerEntry:
        """The row of a request that was answered. Its baseline is the alias's first target for the same tokens,
        with no cache of any kind: the difference is what the levers saved."""
        uncached = without_cache(trace.usage)
        # Without the levers: the client's whole prompt, and one answer (not a self-consistency cascade's samples).
        original = replace(
            uncached,
            input_tokens=uncached.input_tokens + sum(t for _, t in trace.saved_tokens),
            output_tokens=uncached.output_tokens // max(trace.samples, 1),
        )
        baseline = self.pricer.cost(self.baselines[trace.requested_model], original)
        target = trace.target or self.baselines[trace.requested_model]
        here = counterfactual(self.pricer, target, uncached, trace.saved_tokens)
        payload = None
        if self.capture_payloads and request is not None:
            body = {k: v for k, v in request.body.items() if k not in ("stream", "stream_options")}
            payload = Payload(body, answer)
        if request is not None and request.charged_to:  # the gateway's own call: no baseline, its lever pays
            return trace.entry("ok", cost, ZERO, savings={request.charged_to: -cost.usd} if cost.usd else {})
        # A plain list saves by falling back; when its first target answered, what it saves against an explicit
        # baseline is the configured choice of a cheaper model: routing's.
        configured = self.aliases.get(trace.requested_model) or (None,)
        static = trace.route is None or trace.route.router == "static"
        lever = "fallback" if static and trace.target != configured[0] else "routing"
        savings = split_savings(cost, baseline, here, trace.cache, lever)
        return trace.entry("ok", cost, baseline, savings=savings, payload=payload)

    def _record_escalation(self, trace: Trace, request: ChatRequest, response: ChatResponse, check: str) -> None:
        """A cascade step whose answer failed a check: paid for, so recorded, and charged to routing (or to the
        lever that made the gateway's own call)."""
        usage = response.usage or self.estimate_usage(request, response.target, output_text(response, True))
        cost = self.pricer.cost(response.target, usage)
        trace.escalations += 1  # the step's id stays short whatever the model's name (ids are 64 characters at most)
        step = Trace(f"{trace.request_id}.e{trace.escalations}", trace.endpoint, trace.requested_model)
        step.principal, step.target, step.usage, step.started_at = (
            trace.principal,
            response.target,
            usage,
            trace.started_at,
        )
        step.upstream_ms = response.upstream_ms
        # The gateway's own call (a summary through a cascade alias) charges its lever, as its answer does.
        savings = {request.charged_to or "routing": -cost.usd} if cost.usd else {}
        trace.escalated_usd += cost.usd or Decimal(0)
        trace.escalated_unpriced = trace.escalated_unpriced or cost.usd is None
        trace.escalated_usage += usage
        self.record(step.entry("escalated", cost, ZERO, error_type=f"check:{check}", savings=savings))

    def record_failure(self, trace: Trace, error_type: str) -> None:
        cost = self.pricer.cost(trace.target, trace.usage) if trace.target else Cost(Decimal(0))
        self.record(trace.entry("error", cost, cost, error_type=error_type))


def output_text(response: ChatResponse, billed: bool = False) -> str:
    """The answer's text; ``billed``: with the reasoning and refusal text a provider charges for too."""
    read = billed_text if billed else message_text
    return "".join(read(choice.get("message") or {}) for choice in response.body.get("choices") or [])
