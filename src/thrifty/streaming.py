"""A streamed completion after its first chunk: relays the rest and records the request however it ends.

The ledger row is written in ``finally``: when the stream completes (before the server sends ``[DONE]``, so a
crash after the client saw the end cannot lose it), when the upstream fails mid-stream, and when the client
goes away. If the provider never reported usage (a cancelled or broken stream), the tokens it already produced
are counted offline and marked estimated: they were billed, so they are never dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING

import orjson

from thrifty.accounting import Trace, as_asked, max_output_tokens_of, settle, with_escalations
from thrifty.completions import assemble, chunks_of
from thrifty.errors import ThriftyError
from thrifty.protocols import Admission
from thrifty.tokens import billed_text, message_text
from thrifty.types import ChatRequest, ChatResponse, Cost, Status, StreamChunk, Target, Usage

if TYPE_CHECKING:
    from thrifty.pipeline import Gateway

log = logging.getLogger("thrifty")

RENEW_HOLDS_EVERY_S = 300.0
"""A third of a reservation's life (``RESERVATION_TTL_S``): a long stream renews its holds this often."""


@dataclass(frozen=True, slots=True)
class OpenedStream:
    target: Target
    first: StreamChunk
    rest: AsyncGenerator[StreamChunk, None]
    usage: Usage | None = None
    """Known before the first chunk when a whole answer is replayed (a cache hit, a cascade's chosen answer): it
    was paid for in full, however little of it the client stays to read."""
    lead: tuple[StreamChunk, ...] = ()
    """Chunks already read after ``first`` (while waiting for one with any of the answer): sent before ``rest``."""


async def replay(response: ChatResponse) -> OpenedStream:
    """A whole answer, opened as if a provider were streaming it."""
    chunks = chunks_of(response)
    return OpenedStream(response.target, await anext(chunks), chunks, response.usage)


class ChatStream:
    def __init__(
        self,
        gateway: Gateway,
        request: ChatRequest,
        sent: ChatRequest,
        trace: Trace,
        opened: OpenedStream,
        admission: Admission | None,
    ) -> None:
        """``request`` is the client's (the cache's key), ``sent`` what the provider was sent (after the
        optimizers: what its tokens are counted from, if they must be)."""
        self._gateway, self._request, self._sent, self._trace = gateway, request, sent, trace
        self._opened, self._admission = opened, admission
        """None: a cache hit served to a principal whose budget had no room (it costs nothing)."""
        self._payloads: list[bytes] = []
        self._usage: Usage | None = opened.usage
        self._prompt_usage: Usage | None = opened.first.prompt_usage
        self.renew_every_s = RENEW_HOLDS_EVERY_S
        self._renewed_at = time.monotonic()
        self.cost: Cost | None = None
        self.error: ThriftyError | None = None
        trace.target = opened.target

    @property
    def request_id(self) -> str:
        return self._trace.request_id

    @property
    def target(self) -> Target:
        return self._opened.target

    @property
    def cache(self) -> str:
        return self._trace.cache

    @property
    def route(self) -> str:
        return self._trace.route_header()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The JSON payloads to send as SSE ``data:`` events (an error object last if the upstream failed)."""
        status: Status = "cancelled"
        wants_usage = self._request.client_wants_usage
        allowance = getattr(self._admission, "output_allowance", None)
        chunk: StreamChunk | None = self._opened.first
        lead = list(self._opened.lead)
        try:
            while chunk is not None:
                if allowance is not None and self._past(allowance):
                    self._trace.finish_reason = "budget"
                    yield self._stop_chunk()  # the budget paid for no more: end cleanly, as the model would
                    break
                if time.monotonic() - self._renewed_at >= self.renew_every_s:
                    await self._renew()
                if chunk.usage is not None:
                    self._usage = chunk.usage
                if chunk.prompt_usage is not None:
                    self._prompt_usage = chunk.prompt_usage
                if not chunk.usage_only:
                    self._payloads.append(chunk.payload)
                if wants_usage or not chunk.usage_only:
                    yield chunk.payload
                chunk = lead.pop(0) if lead else await anext(self._opened.rest, None)
            status = "ok"
            await self._store()
        except ThriftyError as exc:
            status, self.error = "error", exc
            if exc.retryable and not self._trace.cache:  # failing mid-stream counts toward a cooldown too
                self._gateway.caller.cooldowns.failed(self.target)
            # Recorded before the client hears of the failure, as a finished stream is before [DONE].
            await self._finish(status, exc.error_type)
            yield orjson.dumps(exc.to_openai())
        except Exception as exc:  # a fault of ours or a library's: the row and the client both hear of it
            log.exception("stream %s failed", self._trace.request_id)
            failure = ThriftyError(f"the stream failed in the gateway ({exc.__class__.__name__})")
            status, self.error = "error", failure
            await self._finish(status, "internal_error")
            yield orjson.dumps(failure.to_openai())
        finally:
            await self._opened.rest.aclose()
            if self.cost is None:
                await self._finish(status, "")

    @property
    def usage(self) -> Usage | None:
        """What the stream was charged for, reported or counted, once it has ended (None before)."""
        return self._trace.usage if self.cost is not None else None

    async def _renew(self) -> None:
        """Reservations expire, so that none leak; a stream that runs long keeps its own alive."""
        self._renewed_at = time.monotonic()
        try:
            if self._admission is not None:
                await self._admission.extend()
        except Exception:  # the stream goes on; its cost is settled all the same when it ends
            log.warning("could not renew the budget holds of %s", self._trace.request_id, exc_info=True)

    async def abandon(self) -> None:
        """Record a stream whose chunks were never asked for (the client was gone before the status line)."""
        if self.cost is None:
            await self._opened.rest.aclose()
            await self._finish("cancelled", "")

    def _past(self, allowance: int) -> bool:
        """Whether the text streamed so far passes the output the budget reserved for (checked every 16 chunks,
        from a count of four characters a token; the usage recorded is counted exactly afterwards)."""
        if len(self._payloads) % 16 or not self._payloads:
            return False
        return len(streamed_text(self._payloads, billed=True)) > allowance * 4

    def _stop_chunk(self) -> bytes:
        first = orjson.loads(self._payloads[0]) if self._payloads else {}
        choice = {"index": 0, "delta": {}, "finish_reason": "length"}
        return orjson.dumps({**{k: first.get(k) for k in ("id", "object", "created", "model")}, "choices": [choice]})

    async def _store(self) -> None:
        """A fresh, complete answer goes to the cache like a non-streamed one (not one a budget cut short)."""
        if self._trace.cache or self._trace.finish_reason == "budget":
            return
        # A provider that reports no usage: counted offline (marked estimated), as the ledger row is.
        usage = self._usage or self._estimated(streamed_text(self._payloads, billed=True))
        body = assemble(self._payloads, self.target.model)
        response = ChatResponse(body, usage, self.target, self._trace.upstream_ms)
        stored = as_asked(response, self._trace.saved_tokens)
        await self._gateway.cache.store(self._request, self._trace.principal, stored, self._trace.started_at)

    def _estimated(self, text: str) -> Usage:
        """The usage of a stream that never reported it: the prompt as the provider told it, if it did, and the
        output counted offline from the text streamed."""
        counted = self._gateway.estimate_usage(self._sent, self.target, text)
        prompt = self._prompt_usage
        if prompt is None:
            return counted
        return replace(prompt, output_tokens=counted.output_tokens, estimated=True)

    async def _finish(self, status: Status, error_type: str) -> None:
        trace = self._trace
        # Done: the provider did its part. A stream its client left says nothing either way (it may have been
        # stalled: counted as a success, that ended the provider's cooldown).
        if status == "ok" and not trace.cache:
            self._gateway.caller.cooldowns.succeeded(self.target)
        trace.max_output_tokens = max_output_tokens_of(self._sent.body)
        trace.finish_reason = trace.finish_reason or last_finish_reason(self._payloads)
        trace.upstream_ms = 0.0 if trace.cache else trace.elapsed_ms()
        if trace.answer_started is not None and not trace.cache:  # from the answering target's own request
            trace.answer_ms = (time.perf_counter() - trace.answer_started) * 1000
        text = streamed_text(self._payloads) if self._gateway.capture_payloads else ""
        trace.usage = self._usage or self._estimated(streamed_text(self._payloads, billed=True))
        cost = Cost(Decimal(0)) if trace.cache else self._gateway.pricer.cost(self.target, trace.usage)
        if status == "ok":
            entry = self._gateway.finished(trace, cost, self._request, text)
        else:
            entry = trace.entry(status, cost, cost, error_type=error_type or "client_disconnected")
        self.cost = with_escalations(cost, trace)
        try:
            self._gateway.record(entry)  # before settling: a budget store that fails must not lose the row
        finally:
            if self._admission is not None:
                await settle(self._admission, cost, trace, "" if trace.cache else self.target.model)


def streamed_text(payloads: list[bytes], billed: bool = False) -> str:
    """The text streamed; ``billed``: with the reasoning and refusal text a provider charges for too."""
    read = billed_text if billed else message_text
    parts: list[str] = []
    for payload in payloads:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        for choice in chunk.get("choices") or []:
            parts.append(read(choice.get("delta") or {}))
    return "".join(parts)


def last_finish_reason(payloads: list[bytes], look_back: int = 8) -> str | None:
    """The finish reason the stream's last chunks carried (``length`` if any choice was cut off); None when the
    stream stopped before its end (a disconnect, an upstream failure)."""
    reasons: list[str] = []
    for payload in payloads[-look_back:]:
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        reasons += [str(c["finish_reason"]) for c in chunk.get("choices") or [] if c.get("finish_reason")]
    return "length" if "length" in reasons else (reasons[-1] if reasons else None)
