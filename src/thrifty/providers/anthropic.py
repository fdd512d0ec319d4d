"""Anthropic's Messages API: the I/O part. The translation lives in ``anthropic_format`` (pure functions)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import orjson

from thrifty.caches.prompt_cache import PrefixWatch, add_cache_breakpoints
from thrifty.errors import UpstreamError
from thrifty.providers.anthropic_format import (
    AnthropicStreamTranslator,
    anthropic_error,
    from_anthropic,
    to_anthropic,
)
from thrifty.providers.http import HttpClient, Timeouts, parse_json
from thrifty.providers.openai import reject_embeddings
from thrifty.tokens import TiktokenCounter
from thrifty.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    JsonObject,
    StreamChunk,
    Target,
)

API_VERSION = "2023-06-01"


class AnthropicProvider:
    samples = False  # one choice per request

    def __init__(
        self, name: str, base_url: str, api_key: str, timeouts: Timeouts, cache_counter: TiktokenCounter | None = None
    ) -> None:
        """With ``cache_counter``, the stable prefix of each request is marked for Anthropic's prompt cache."""
        self.name = name
        self._cache_counter = cache_counter
        self._watch = PrefixWatch()
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        self._http = HttpClient(base_url, headers, timeouts, anthropic_error)

    def _body(self, request: ChatRequest, model: str) -> JsonObject:
        body = to_anthropic(request.body, model)  # Untranslatable where Anthropic lacks what the request uses
        if self._cache_counter is not None:
            self._watch.check(request.body, model)
            body = add_cache_breakpoints(body, model, self._cache_counter)
        return body

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        body = self._body(request, model)
        body.pop("stream", None)
        raw, upstream_ms = await self._http.post_json("/v1/messages", body)
        parsed = parse_json(raw, "a response")
        if not isinstance(parsed, dict) or parsed.get("type") != "message":
            raise UpstreamError(f"upstream sent something that is not a message: {raw[:80]!r}")
        out, usage = from_anthropic(parsed)
        return ChatResponse(out, usage, Target(self.name, model), upstream_ms)

    async def stream(self, request: ChatRequest, model: str) -> AsyncGenerator[StreamChunk, None]:
        body = self._body(request, model)
        body["stream"] = True
        translator = AnthropicStreamTranslator()
        stopped = False
        async for line in self._http.post_stream("/v1/messages", body):
            if not line.startswith(b"data:"):
                continue
            event = parse_json(line[5:].strip(), "a stream event")
            if not isinstance(event, dict):
                raise UpstreamError("upstream sent a stream event that is not an object")
            kind = str(event.get("type", ""))
            for chunk in translator.feed(kind, event):
                yield StreamChunk(orjson.dumps(chunk), prompt_usage=translator.usage)
            if kind == "message_stop":
                stopped = True
                break
        if not stopped:
            raise UpstreamError("upstream stream ended before message_stop: the answer is incomplete")
        usage = translator.usage
        if usage is not None:
            yield StreamChunk(orjson.dumps(translator.usage_chunk()), usage, usage_only=True)

    async def embed(self, request: EmbeddingRequest, model: str) -> EmbeddingResponse:
        raise reject_embeddings(self.name)

    async def aclose(self) -> None:
        await self._http.aclose()
