"""Frozen value types that flow through the gateway's stages.

Request and response bodies stay in OpenAI's wire shape (plain dicts) inside the gateway: the OpenAI format is
the lingua franca, every provider translates to and from it exactly once, and unknown fields pass through
untouched. The dataclasses here carry what the gateway itself needs to know about a call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

JsonObject = dict[str, Any]

Status = Literal["ok", "error", "cancelled", "escalated"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a call belongs to: every ledger row is attributed to one."""

    tenant: str = "default"
    key_id: str = ""
    user: str = ""
    feature: str = ""
    session: str = ""
    admin: bool = False
    """May use the admin endpoints (purges, ...): admin keys, or any loopback caller while no key is issued."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call.

    ``input_tokens`` is the whole prompt, cache reads and writes included (OpenAI's ``prompt_tokens``
    convention). Anthropic reports its cache tokens beside ``input_tokens``; its adapter adds them in, so that
    no cached token is ever priced twice or forgotten. ``cache_write_1h_tokens`` are the part of the cache
    writes kept for an hour (Anthropic's ``ttl: "1h"``), which bill at a higher rate than the 5-minute ones.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    estimated: bool = False
    cache_write_1h_tokens: int = 0
    input_audio_tokens: int = 0
    """The part of ``input_tokens`` that is audio (OpenAI's ``prompt_tokens_details.audio_tokens``)."""
    output_audio_tokens: int = 0
    """The part of ``output_tokens`` that is audio; audio bills at several times the text price."""

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.estimated or other.estimated,
            self.cache_write_1h_tokens + other.cache_write_1h_tokens,
            self.input_audio_tokens + other.input_audio_tokens,
            self.output_audio_tokens + other.output_audio_tokens,
        )


@dataclass(frozen=True, slots=True)
class Target:
    """One provider model a request may be sent to, written ``provider::model`` in config."""

    provider: str
    model: str

    @classmethod
    def parse(cls, text: str) -> Target:
        provider, sep, model = text.partition("::")
        if not sep or not provider or not model:
            raise ValueError(f"target {text!r} is not of the form 'provider::model'")
        return cls(provider, model)

    def __str__(self) -> str:
        return f"{self.provider}::{self.model}"


@dataclass(frozen=True, slots=True)
class Route:
    """Targets in the order they are tried, and who decided that and why."""

    targets: tuple[Target, ...]
    router: str = "static"
    reason: str = ""
    cascade: Any = None
    """For cascades: the checks (``routers.cascade.Checks``) an answer must pass before the next tier is spared."""

    def header(self) -> str:
        return f"{self.router}; {self.reason}"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """An OpenAI Chat Completions request as the gateway received it.

    ``body`` is the client's JSON object, validated but otherwise untouched, so that every field the gateway
    does not interpret (tools, ``response_format``, ``seed``, ``logit_bias`` ...) reaches the provider as sent.
    """

    body: JsonObject
    request_id: str
    cache_mode: str = ""
    """The client's ``x-thrifty-cache`` request header; ``bypass`` skips cache lookup and store."""
    saved_tokens: tuple[tuple[str, int], ...] = ()
    """Prompt tokens each optimizer removed from the client's request (for the ledger's savings by lever)."""
    charged_to: str = ""
    """Set on the gateway's own calls (a history summary): the lever their cost is charged to. Such a call has
    no baseline (without the lever it would not exist) and skips the optimize stage."""
    plan_key: str = ""
    """A digest of the optimizer plan that applies to this request ("" for none), for the cache's keys: the plan
    (stop sequences, output caps, prompt rewrites) shapes the answer, and differs between features."""

    @property
    def model(self) -> str:
        return str(self.body["model"])

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def client_wants_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and bool(options.get("include_usage"))

    @property
    def messages(self) -> list[JsonObject]:
        messages: list[JsonObject] = self.body["messages"]
        return messages


@dataclass(frozen=True, slots=True)
class ChatResponse:
    """A provider's complete answer, already in OpenAI's ``chat.completion`` shape."""

    body: JsonObject
    usage: Usage | None
    """None when the provider reported no usage; the gateway then counts it offline, marked estimated."""
    target: Target
    upstream_ms: float
    raw: bytes | None = None
    """The provider's bytes when they already are the OpenAI body (pass-through avoids re-encoding)."""
    cache: str = ""
    """``exact`` or ``semantic`` when the answer came from the cache (``target`` then names who first gave it)."""
    route: str = ""
    """Which router decided and why (the ``x-thrifty-route`` header)."""
    matched: tuple[str, float] | None = None
    """A semantic hit: the stored question whose answer this is, and the decision's score (for verification)."""


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One ``chat.completion.chunk`` of a stream, plus the usage it reported if any."""

    payload: bytes
    usage: Usage | None = None
    usage_only: bool = False
    """A chunk that carries nothing but usage: forwarded only to clients that asked for it."""
    prompt_usage: Usage | None = None
    """The prompt's tokens (cache reads and writes included) where the provider tells them before the answer
    is complete (Anthropic's ``message_start``): a stream that breaks off keeps them exact, and only its output
    is then counted offline."""


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    body: JsonObject
    request_id: str
    charged_to: str = ""
    """Set on the gateway's own calls (the semantic cache's embeddings): the lever their cost is charged to."""

    @property
    def model(self) -> str:
        return str(self.body["model"])


@dataclass(frozen=True, slots=True)
class EmbeddingResponse:
    body: JsonObject
    usage: Usage
    target: Target
    upstream_ms: float


@dataclass(frozen=True, slots=True)
class Cost:
    """What a usage record costs; ``usd`` is None when the model has no known price (never $0)."""

    usd: Decimal | None

    @property
    def priced(self) -> bool:
        return self.usd is not None

    def header(self) -> str:
        return "unpriced" if self.usd is None else format(self.usd, "f")


@dataclass(frozen=True, slots=True)
class Payload:
    request: JsonObject
    answer: str


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One row of the ledger: one request, whatever happened to it."""

    request_id: str
    started_at: float
    """Unix time in seconds."""
    endpoint: str
    principal: Principal
    requested_model: str
    provider: str
    model: str
    usage: Usage
    cost_usd: Decimal | None
    baseline_cost_usd: Decimal | None
    total_ms: float
    upstream_ms: float
    ttft_ms: float | None
    status: Status
    error_type: str = ""
    streamed: bool = False
    savings_usd: dict[str, Decimal] = field(default_factory=dict)
    """The difference between baseline and cost, split by the lever that earned it."""
    payload: Payload | None = None
    """The prompt and answer, kept only when ``[ledger] capture_payloads`` is on (for ``thrifty export``)."""
    cache: str = ""
    """``exact`` or ``semantic`` for an answer served from the cache (no provider was paid)."""
    finish_reason: str | None = None
    """Why the answer ended, in OpenAI's terms (``stop``, ``length``, ``tool_calls`` ...), or ``budget`` for a
    stream the gateway ended where its budget ran out; None when no answer finished (errors, disconnects)."""
    max_output_tokens: int | None = None
    """The output cap the client's request carried (``max_completion_tokens`` or ``max_tokens``), if any."""
    answer_ms: float | None = None
    """The answering call's own upstream time, without the failed or escalated attempts before it (which
    ``upstream_ms`` includes): what latency-aware routing learns of that model. Not stored."""

    @property
    def unpriced(self) -> bool:
        return self.cost_usd is None


@dataclass(frozen=True, slots=True)
class Caller:
    """What the gateway knows of a caller before authentication: its key and the attribution it claims."""

    api_key: str | None = None
    loopback: bool = True
    user: str = ""
    feature: str = ""
    session: str = ""
