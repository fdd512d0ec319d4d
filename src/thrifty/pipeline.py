"""``Gateway``: the request path as one straight line of named stages.

1. authenticate  2. guard  3. cache lookup  4. optimize  5. route  6. call provider  7. record

What each stage does is pluggable (``thrifty.protocols``); their order is not. Streaming shares stages 1-6 up to
the first chunk (so a stream that fails before its first token can still fall back) and records when the
stream ends, however it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal

from thrifty.accounting import Trace, split_savings, without_cache
from thrifty.errors import ThriftyError, UpstreamError
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
from thrifty.providers.http import first_item
from thrifty.routers.static import unknown_model
from thrifty.streaming import ChatStream, OpenedStream, replay_stream
from thrifty.tokens import TiktokenCounter, message_text
from thrifty.types import (
    Caller,
    ChatRequest,
    ChatResponse,
    Cost,
    EmbeddingRequest,
    EmbeddingResponse,
    LedgerEntry,
    Payload,
    Route,
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
    ) -> None:
        self.aliases = dict(aliases)
        self.authenticator, self.guard, self.cache = authenticator, guard, cache
        self.optimizer, self.router, self.providers = optimizer, router, dict(providers)
        self.pricer, self.ledger = pricer, ledger
        self.metrics = metrics or GatewayMetrics()
        self.counter = counter or TiktokenCounter()
        self.capture_payloads = capture_payloads
        self.observers = list(observers)

    async def handle(self, request: ChatRequest, caller: Caller) -> tuple[ChatResponse, Cost]:
        """One chat completion, non-streaming; returns the answer and what it cost."""
        trace = Trace(request.request_id, "chat", request.model)
        admission: Admission | None = None
        try:
            trace.principal = self.authenticator.authenticate(caller)  # 1. authenticate
            self.check_model(request.model)
            admission = await self.guard.admit(request, trace.principal)  # 2. guard
            request = admission.request
            response = await self.cache.lookup(request, trace.principal)  # 3. cache lookup
            if response is None:
                optimized = self.optimizer.optimize(request, trace.principal)  # 4. optimize
                route = self.router.route(optimized, trace.principal)  # 5. route
                response = await self._call(optimized, route, trace)  # 6. call provider
                await self.cache.store(request, trace.principal, response)
            cost = self.account(trace, request, response)
            await admission.settle(cost, trace.usage, response.target.model)
        except ThriftyError as exc:
            self._record_failure(trace, exc)
            raise
        finally:
            if admission is not None:
                await admission.settle(ZERO)  # a no-op once settled; releases the reservation otherwise
        self.record(self.finished(trace, cost, request, output_text(response)))  # 7. record
        return response, cost

    async def open_stream(self, request: ChatRequest, caller: Caller) -> ChatStream:
        """Stages 1-6 of a streamed completion, up to its first chunk; the stream records itself when it ends."""
        trace = Trace(request.request_id, "chat", request.model, streamed=True)
        admission: Admission | None = None
        try:
            trace.principal = self.authenticator.authenticate(caller)  # 1. authenticate
            self.check_model(request.model)
            admission = await self.guard.admit(request, trace.principal)  # 2. guard
            request = admission.request
            cached = await self.cache.lookup(request, trace.principal)  # 3. cache lookup
            if cached is not None:
                trace.cache = cached.cache
                opened = await replay_stream(cached)
            else:
                optimized = self.optimizer.optimize(request, trace.principal)  # 4. optimize
                route = self.router.route(optimized, trace.principal)  # 5. route
                opened = await self._open(optimized, route, trace)  # 6. call provider
            stream, admission = ChatStream(self, request, trace, opened, admission), None  # it settles now
            return stream
        except ThriftyError as exc:
            self._record_failure(trace, exc)
            raise
        finally:
            if admission is not None:
                await admission.settle(ZERO)

    async def embed(self, request: EmbeddingRequest, caller: Caller) -> tuple[EmbeddingResponse, Cost]:
        trace = Trace(request.request_id, "embeddings", request.model)
        try:
            trace.principal = self.authenticator.authenticate(caller)
            self.check_model(request.model)
            last: ThriftyError | None = None
            for target in self.aliases[request.model]:
                started = time.perf_counter()
                try:
                    response = await self.providers[target.provider].embed(request, target.model)
                    break
                except ThriftyError as exc:
                    last = exc
                    if not exc.retryable:
                        raise
                finally:
                    trace.upstream_ms += (time.perf_counter() - started) * 1000
            else:
                raise last or UpstreamError("no target answered")
            trace.target, trace.usage = response.target, response.usage
            cost = self.pricer.cost(response.target, response.usage)
        except ThriftyError as exc:
            self._record_failure(trace, exc)
            raise
        self.record(self.finished(trace, cost))
        return response, cost

    def record(self, entry: LedgerEntry) -> None:
        """Stage 7: the durable ledger row and the metrics."""
        self.ledger.record(entry)
        self.metrics.observe(entry)
        for observer in self.observers:
            observer(entry)

    def check_model(self, model: str) -> None:
        if model not in self.aliases:
            raise unknown_model(model, self.aliases)

    async def _call(self, request: ChatRequest, route: Route, trace: Trace) -> ChatResponse:
        last: ThriftyError | None = None
        for target in route.targets:
            started = time.perf_counter()
            try:
                return await self.providers[target.provider].chat(request, target.model)
            except ThriftyError as exc:
                if not exc.retryable:
                    trace.target = target
                    raise
                log.warning("%s failed (%s); trying the next target", target, exc.message)
                last = exc
            finally:
                trace.upstream_ms += (time.perf_counter() - started) * 1000
        raise last or UpstreamError("the route has no targets")

    async def _open(self, request: ChatRequest, route: Route, trace: Trace) -> OpenedStream:
        last: ThriftyError | None = None
        for target in route.targets:
            started = time.perf_counter()
            chunks = self.providers[target.provider].stream(request, target.model)
            try:
                first = await first_item(chunks)
            except ThriftyError as exc:
                await chunks.aclose()
                if not exc.retryable:
                    trace.target = target
                    raise
                log.warning("%s failed before its first token (%s); trying the next target", target, exc.message)
                last = exc
                continue
            finally:
                trace.upstream_ms += (time.perf_counter() - started) * 1000
            trace.ttft_ms = trace.elapsed_ms()
            return OpenedStream(target, first, chunks)
        raise last or UpstreamError("the route has no targets")

    def estimate_usage(self, request: ChatRequest, target: Target, output: str) -> Usage:
        """Usage counted offline, when the provider reported none (marked estimated in the ledger)."""
        return Usage(
            input_tokens=self.counter.count_messages(target.model, request.messages),
            output_tokens=self.counter.count_text(target.model, output),
            estimated=True,
        )

    def account(self, trace: Trace, request: ChatRequest, response: ChatResponse) -> Cost:
        """Who answered, the tokens (counted offline if the provider gave none), and the cost: 0 from the cache."""
        trace.target, trace.cache = response.target, response.cache
        trace.usage = response.usage or self.estimate_usage(request, response.target, output_text(response))
        return ZERO if response.cache else self.pricer.cost(response.target, trace.usage)

    def finished(self, trace: Trace, cost: Cost, request: ChatRequest | None = None, answer: str = "") -> LedgerEntry:
        """The row of a request that was answered. Its baseline is the alias's first target for the same tokens,
        with no cache of any kind: the difference is what the levers saved."""
        uncached = without_cache(trace.usage)
        baseline = self.pricer.cost(self.aliases[trace.requested_model][0], uncached)
        uncached_here = self.pricer.cost(trace.target, uncached) if trace.target else baseline
        payload = None
        if self.capture_payloads and request is not None:
            body = {k: v for k, v in request.body.items() if k not in ("stream", "stream_options")}
            payload = Payload(body, answer)
        savings = split_savings(cost, baseline, uncached_here, trace.cache, "fallback")
        return trace.entry("ok", cost, baseline, savings=savings, payload=payload)

    def _record_failure(self, trace: Trace, exc: ThriftyError) -> None:
        cost = self.pricer.cost(trace.target, trace.usage) if trace.target else Cost(Decimal(0))
        self.record(trace.entry("error", cost, cost, error_type=exc.error_type))


def output_text(response: ChatResponse) -> str:
    return "".join(message_text(choice.get("message") or {}) for choice in response.body.get("choices") or [])
