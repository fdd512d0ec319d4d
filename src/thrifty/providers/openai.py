"""OpenAI and every OpenAI-compatible server (vLLM, llama.cpp, Ollama, Together, Groq ...), by ``base_url``.

The gateway already speaks this format, so translation is nearly the identity: the body goes through with the
provider's model name, and streams always ask for usage (the gateway needs it for the ledger; the usage chunk
reaches the client only when the client asked for it).
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from typing import Any

from thrifty.caches.prompt_cache import PrefixWatch
from thrifty.caches.prompt_cache import prompt_cache_key as prefix_key
from thrifty.errors import BadRequest, UpstreamError, upstream_error_for_status
from thrifty.providers.anthropic_format import cache_write_split
from thrifty.providers.http import HttpClient, Timeouts, parse_json
from thrifty.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    JsonObject,
    StreamChunk,
    Target,
    Usage,
)

_REASONING_MODEL = re.compile(r"^(?:[\w.-]+/)?(?:o\d|gpt-5)")
"""OpenAI's reasoning models (o1, o3, o4-mini, gpt-5 ...), which refuse ``max_tokens`` for ``max_completion_tokens``."""


def to_openai(body: JsonObject, model: str, *, stream: bool, cache_key: bool = False) -> JsonObject:
    out = dict(body)
    out["model"] = model
    if "max_tokens" in out and _REASONING_MODEL.match(model):
        # A cap set the older way (by an Anthropic client through /v1/messages, which must send one, or by the
        # gateway's own budget and caps) would be refused with a 400: it is sent the way these models take it.
        cap = out.pop("max_tokens")
        out.setdefault("max_completion_tokens", cap)
    if cache_key and "prompt_cache_key" not in out:
        out["prompt_cache_key"] = prefix_key(body)
    if stream:
        out["stream"] = True
        options = dict(out.get("stream_options") or {})
        options["include_usage"] = True
        out["stream_options"] = options
    else:
        out.pop("stream", None)
        out.pop("stream_options", None)
    return out


def usage_from_openai(usage: Any) -> Usage | None:
    """OpenAI's usage object; ``prompt_tokens`` already includes the cached tokens. OpenAI-compatible providers
    that report cache hits their own way are read too (DeepSeek: ``prompt_cache_hit_tokens``), so their cached
    tokens are not billed at the full input price."""
    if not isinstance(usage, dict):
        return None
    details = usage.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        cache_read_tokens=int(details.get("cached_tokens") or usage.get("prompt_cache_hit_tokens") or 0),
        cache_write_tokens=int(details.get("cache_write_tokens") or usage.get("cache_creation_input_tokens") or 0),
        cache_write_1h_tokens=cache_write_split(usage)[1],
        input_audio_tokens=_count(details.get("audio_tokens")),
        output_audio_tokens=_count((usage.get("completion_tokens_details") or {}).get("audio_tokens")),
    )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def from_openai(raw: bytes) -> tuple[JsonObject, Usage | None]:
    body = parse_json(raw, "a response")
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise UpstreamError(f"upstream sent a response without choices: {raw[:80]!r}")
    return body, usage_from_openai(body.get("usage"))


def chunk_from_sse(data: bytes) -> StreamChunk:
    chunk = parse_json(data, "a stream chunk")
    if not isinstance(chunk, dict):
        raise UpstreamError(f"upstream sent a stream chunk that is not an object: {data[:80]!r}")
    choices = chunk.get("choices")
    failed = any(isinstance(c, dict) and c.get("finish_reason") == "error" for c in choices or ())
    if chunk.get("error") or failed:
        # OpenRouter's error event also carries a choice, finished "error": it is no answer (nor an empty one).
        raise stream_error(chunk.get("error"))
    usage = usage_from_openai(chunk.get("usage"))
    return StreamChunk(payload=data, usage=usage, usage_only=usage is not None and not chunk.get("choices"))


# Error types an error event names, as the HTTP status the same failure has before a stream starts.
_EVENT_STATUS = {
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "authentication_error": 401,
    "insufficient_quota": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "api_error": 500,
}


def stream_error(error: object) -> UpstreamError:
    """An error event's failure, retryable or not as its status would be: a request the provider refuses (a 400)
    is not asked of the next target, nor counted against this one."""
    fields = error if isinstance(error, dict) else {}
    message = f"upstream failed mid-stream: {fields.get('message', error) if error else 'finish_reason error'}"
    code, kind = fields.get("code"), fields.get("type")
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600:
        status = code
    else:
        named = [_EVENT_STATUS.get(str(v)) for v in (code, kind) if isinstance(v, str)]
        status = next((s for s in named if s is not None), 502)
    return upstream_error_for_status(status, message, code=code if isinstance(code, str) else None)


class OpenAIProvider:
    samples = True

    def __init__(
        self, name: str, base_url: str, api_key: str, timeouts: Timeouts, *, prompt_cache_key: bool = False
    ) -> None:
        self.name = name
        self._cache_key = prompt_cache_key
        self._watch = PrefixWatch()
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = HttpClient(base_url, headers, timeouts)

    def _body(self, request: ChatRequest, model: str, *, stream: bool) -> JsonObject:
        if self._cache_key:
            self._watch.check(request.body, model)
        return to_openai(request.body, model, stream=stream, cache_key=self._cache_key)

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        body = self._body(request, model, stream=False)
        raw, upstream_ms = await self._http.post_json("/chat/completions", body)
        body, usage = from_openai(raw)
        return ChatResponse(body, usage, Target(self.name, model), upstream_ms, raw=raw)

    async def stream(self, request: ChatRequest, model: str) -> AsyncGenerator[StreamChunk, None]:
        done = False
        body = self._body(request, model, stream=True)
        lines = self._http.post_stream("/chat/completions", body)
        async for line in lines:
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            yield chunk_from_sse(data)
        if not done:
            raise UpstreamError("upstream stream ended without [DONE]: the answer is incomplete")

    async def embed(self, request: EmbeddingRequest, model: str) -> EmbeddingResponse:
        body = dict(request.body, model=model)
        raw, upstream_ms = await self._http.post_json("/embeddings", body)
        parsed = parse_json(raw, "an embeddings response")
        if not isinstance(parsed, dict) or not isinstance(parsed.get("data"), list):
            raise UpstreamError(f"upstream sent an embeddings response without data: {raw[:80]!r}")
        usage = usage_from_openai(parsed.get("usage")) or Usage(estimated=True)
        return EmbeddingResponse(parsed, usage, Target(self.name, model), upstream_ms)

    async def aclose(self) -> None:
        await self._http.aclose()


def reject_embeddings(provider: str) -> BadRequest:
    return BadRequest(f"provider {provider!r} does not serve embeddings")
