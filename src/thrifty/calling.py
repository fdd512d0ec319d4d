"""Stage 6: call the route's targets in order until one answers well enough.

Retryable failures (429, 5xx, timeouts, refused connections, a stream that fails before the first chunk that
carries any of the answer) fall through to the next target; targets that keep failing are tried last for a
while (``Cooldowns``). On a cascade route, an answer that fails a check is paid for, recorded by
``on_escalation``, and the next tier is asked; its tiers keep their order (a failing cheap tier is skipped,
never moved behind a stronger one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence

import orjson

from thrifty.accounting import Trace
from thrifty.errors import ThriftyError, Untranslatable, UpstreamError
from thrifty.protocols import Provider
from thrifty.providers.http import first_item
from thrifty.routers.cooldown import Cooldowns
from thrifty.streaming import OpenedStream, replay
from thrifty.tokens import billed_text
from thrifty.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Route,
    StreamChunk,
    Target,
)

log = logging.getLogger("thrifty")

OnEscalation = Callable[[Trace, ChatRequest, ChatResponse, str], None]


class ProviderCaller:
    def __init__(self, providers: Mapping[str, Provider], cooldowns: Cooldowns, on_escalation: OnEscalation) -> None:
        self.providers, self.cooldowns, self._on_escalation = dict(providers), cooldowns, on_escalation

    async def call(self, request: ChatRequest, route: Route, trace: Trace) -> ChatResponse:
        last: ThriftyError | None = None
        cascade = route.cascade is not None
        ordered = self.cooldowns.in_tiers(route.targets) if cascade else self.cooldowns.order(route.targets)
        # A cascade's cooling tiers, skipped while a later tier is warm, are still the last resort when every
        # warm one fails: tried after them (in tier order, checked among themselves), never before.
        targets = [*ordered, *(t for t in route.targets if t not in ordered)]
        if cascade:
            for target in targets[len(ordered) :]:
                trace.detours.append(f"{target} cooling down after repeated failures, skipped for a later tier")
        else:
            self._note_cooling(route.targets, trace)
        for index, target in enumerate(targets):
            checked = cascade and index < len(targets) - 1 and index != len(ordered) - 1
            provider = self.providers[target.provider]
            sent = route.cascade.prepare(request, provider.samples) if checked else request
            started = time.perf_counter()
            try:
                try:
                    response = await provider.chat(sent, target.model)
                except ThriftyError as refused:
                    if sent is request or refused.http_status != 400:
                        raise
                    # The provider refuses what the checks added (n, logprobs): ask as the client did; those
                    # checks then have nothing to judge and pass.
                    log.warning("%s refused a cascade check's n/logprobs (%s); asked without", target, refused)
                    response = await provider.chat(request, target.model)
            except ThriftyError as exc:
                last = self._fall_through(target, exc, trace, last)
                continue
            finally:
                trace.answer_ms = (time.perf_counter() - started) * 1000  # this attempt's own, if it answers
                trace.upstream_ms += trace.answer_ms
            self.cooldowns.succeeded(target)
            if checked:
                failed = route.cascade.first_failure(request, response)
                if failed is not None:
                    trace.detours.append(f"{target.model} failed check {failed}, escalated")
                    self._on_escalation(trace, sent, response, failed)
                    continue
                choices = response.body.get("choices") or ()
                trace.samples = len(choices) or 1
                if trace.samples > 1 and response.usage is None:
                    trace.sampled_texts = tuple(billed_text(c.get("message") or {}) for c in choices)
                finished: ChatResponse = route.cascade.finish(request, response)  # usage kept: all were billed
                return finished
            return response
        raise last or UpstreamError("the route has no targets")

    async def embed(self, request: EmbeddingRequest, targets: Sequence[Target], trace: Trace) -> EmbeddingResponse:
        last: ThriftyError | None = None
        for target in self.cooldowns.order(targets):
            started = time.perf_counter()
            try:
                response = await self.providers[target.provider].embed(request, target.model)
            except ThriftyError as exc:
                last = self._fall_through(target, exc, trace, last)
                continue
            finally:
                trace.answer_ms = (time.perf_counter() - started) * 1000
                trace.upstream_ms += trace.answer_ms
            self.cooldowns.succeeded(target)
            return response
        raise last or UpstreamError("the route has no targets")

    def _note_cooling(self, targets: Sequence[Target], trace: Trace) -> None:
        """Say in ``x-thrifty-route`` why a target was not tried in its place (one already last is in it)."""
        cooling = set(self.cooldowns.cooling_among(targets))
        if not cooling:  # nearly always: nothing to say, and this runs on every request
            return
        warm = [i for i, target in enumerate(targets) if target not in cooling]
        for target in targets[: warm[-1] if warm else 0]:
            if target in cooling:
                trace.detours.append(f"{target} cooling down after repeated failures, tried last")

    def _fall_through(
        self, target: Target, exc: ThriftyError, trace: Trace, last: ThriftyError | None = None
    ) -> ThriftyError:
        """A failure the next target may not repeat is the answer; a retryable one moves on (and counts); a
        request this target's provider cannot take moves on without counting. Returns the error to answer with if
        no later target answers: a retryable one over a format's refusal (the client may retry it)."""
        if isinstance(exc, Untranslatable):
            trace.target = target  # named in the error's row if no target can take the request
            trace.detours.append(f"{target.model} cannot take this request ({exc.message})")
            return last if last is not None and last.retryable else exc
        if not exc.retryable:
            trace.target = target
            raise exc
        self.cooldowns.failed(target)
        trace.detours.append(f"{target.model} failed ({exc.code or exc.error_type}), fell back")
        log.warning("%s failed (%s); trying the next target", target, exc.message)
        return exc

    async def open(self, request: ChatRequest, route: Route, trace: Trace) -> OpenedStream:
        if route.cascade is not None:
            # A cascade judges whole answers: the chosen one is then streamed to the client.
            opened = await replay(await self.call(request, route, trace))
            trace.ttft_ms = trace.elapsed_ms()
            return opened
        last: ThriftyError | None = None
        self._note_cooling(route.targets, trace)
        for target in self.cooldowns.order(route.targets):
            started = time.perf_counter()
            chunks = self.providers[target.provider].stream(request, target.model)
            try:
                lead = await leading_chunks(chunks)
            except ThriftyError as exc:
                await chunks.aclose()
                last = self._fall_through(target, exc, trace, last)
                continue
            finally:
                trace.upstream_ms += (time.perf_counter() - started) * 1000
            # Not yet a success for the cooldowns: the stream tells them how it ended (``ChatStream``).
            trace.ttft_ms = trace.elapsed_ms()
            trace.answer_started = started
            return OpenedStream(target, lead[0], chunks, lead=tuple(lead[1:]))
        raise last or UpstreamError("the route has no targets")


LEAD_LIMIT = 16
"""Chunks read at most before the stream is handed to the client, waiting for the first with any answer."""


async def leading_chunks(chunks: AsyncGenerator[StreamChunk, None]) -> list[StreamChunk]:
    """The chunks up to the first that carries any of the answer (text, a tool call, reasoning, a refusal, a
    finish reason), so that a stream failing before it falls back like one failing before its first byte: a
    role-only opening chunk (OpenAI's, or Anthropic's ``message_start``) is not yet an answer."""
    lead = [await first_item(chunks)]
    while len(lead) < LEAD_LIMIT and not carries_answer(lead[-1]):
        following = await anext(chunks, None)
        if following is None:
            break
        lead.append(following)
    return lead


def carries_answer(chunk: StreamChunk) -> bool:
    if chunk.usage_only:
        return False
    try:
        data = orjson.loads(chunk.payload)
    except orjson.JSONDecodeError:
        return True  # not ours to judge: the client gets it as sent
    choices = data.get("choices") if isinstance(data, dict) else None
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if choice.get("finish_reason") or (
            isinstance(delta, dict) and any(value for key, value in delta.items() if key != "role")
        ):
            return True
    return False
