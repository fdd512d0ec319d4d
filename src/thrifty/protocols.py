"""One small Protocol per stage of the request path (see ``pipeline.Gateway``).

Implementations do not inherit from these; they only have to fit them. Tests plug fakes in the same way.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol

from thrifty.types import (
    Caller,
    ChatRequest,
    ChatResponse,
    Cost,
    EmbeddingRequest,
    EmbeddingResponse,
    LedgerEntry,
    Principal,
    Route,
    StreamChunk,
    Target,
    Usage,
)


class Authenticator(Protocol):
    """Stage 1: who is calling. Raises ``AuthenticationFailed``."""

    def authenticate(self, caller: Caller) -> Principal: ...


class Admission(Protocol):
    """What a guard reserved for one request (and the request it admitted, ``max_tokens`` perhaps clamped);
    settled exactly once, to the real cost or to zero."""

    @property
    def request(self) -> ChatRequest: ...
    def bounded(self, request: ChatRequest) -> ChatRequest:
        """The request to send (after the optimizers), capped to the output the guard reserved for."""
        ...

    async def extend(self) -> None:
        """Keep what was reserved for a call still running (reservations expire, so that none leak)."""
        ...

    async def settle(
        self, cost: Cost, usage: Usage | None = None, model: str = "", model_output: int | None = None
    ) -> None:
        """``usage``: every call's (cascade steps too: rate limits count them); ``model_output``: the answering
        model's own output tokens, which output estimates learn from (default ``usage``'s)."""
        ...


class Guard(Protocol):
    """Stage 2: refuse early (budgets, rate limits, agent caps) or admit and reserve."""

    async def admit(self, request: ChatRequest, principal: Principal) -> Admission: ...


class ResponseCache(Protocol):
    """Stage 3: an answer already paid for."""

    async def lookup(self, request: ChatRequest, principal: Principal, spend: bool = True) -> ChatResponse | None:
        """``spend=False`` for a request its budget refused: only what costs nothing to look up (no paid embedding:
        nobody would be charged for it but the gateway)."""
        ...

    async def store(
        self, request: ChatRequest, principal: Principal, response: ChatResponse, asked_at: float = 0.0
    ) -> None:
        """``asked_at``: when the request arrived (``time.time()``); an answer asked for before a purge that
        covers it is not stored after it."""
        ...

    def release(self, request: ChatRequest, principal: Principal) -> None:
        """Called when a request that missed ends, answered or not (identical requests may be waiting on it)."""


class Optimizer(Protocol):
    """Stage 4: a cheaper request with the same meaning; the original is kept by the caller."""

    async def optimize(self, request: ChatRequest, principal: Principal) -> ChatRequest: ...

    def plan_key(self, request: ChatRequest, principal: Principal) -> str:
        """A digest of what this stage would do to the request ("" for nothing): the cache keys on it, since a
        plan's stop sequences, caps and rewrites shape the answer."""
        ...


class Router(Protocol):
    """Stage 5: the targets to try, in order."""

    def route(self, request: ChatRequest, principal: Principal) -> Route: ...


class Provider(Protocol):
    """Stage 6: one upstream API. Translates to and from the OpenAI shape and into the error tree."""

    samples: bool
    """Whether one request may ask for several choices (``n``): a cascade's self-consistency check needs it."""

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse: ...
    def stream(self, request: ChatRequest, model: str) -> AsyncGenerator[StreamChunk, None]: ...
    async def embed(self, request: EmbeddingRequest, model: str) -> EmbeddingResponse: ...
    async def aclose(self) -> None: ...


class Pricer(Protocol):
    def cost(self, target: Target, usage: Usage) -> Cost: ...


class Ledger(Protocol):
    """Stage 7: the durable record of every call."""

    def record(self, entry: LedgerEntry) -> None: ...


class TokenCounter(Protocol):
    def count_messages(self, model: str, messages: Sequence[dict[str, object]]) -> int: ...
    def count_text(self, model: str, text: str) -> int: ...
