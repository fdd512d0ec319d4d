"""``POST /v1/messages``: unmodified Anthropic SDK clients, served through the same gateway.

The Anthropic request is translated to the OpenAI shape the gateway works in, and the answer back, so every
stage (and the ledger) treats both kinds of client alike.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import orjson

from thrifty.providers.anthropic_inbound import (
    OpenAIToAnthropicStream,
    anthropic_error_body,
    anthropic_request_to_openai,
    openai_response_to_anthropic,
)
from thrifty.server.http import Request, Send, json_response
from thrifty.server.sse import relay
from thrifty.server.wire import check_chat, parse_body
from thrifty.streaming import ChatStream
from thrifty.types import ChatRequest

if TYPE_CHECKING:
    from thrifty.server.app import ThriftyApp


async def messages(app: ThriftyApp, request: Request, send: Send) -> None:
    body = check_chat(anthropic_request_to_openai(parse_body(await request.body())))
    caller = request.caller(body.get("user"))
    cache_mode = request.header(b"x-thrifty-cache")
    if body.get("stream"):
        # The usage chunk feeds Anthropic's message_delta usage, so ask for it whatever the client said.
        body["stream_options"] = {"include_usage": True}
        stream = await app.gateway.open_stream(ChatRequest(body, request.request_id, cache_mode), caller)
        await relay(_events(stream), stream, request, send)
        return
    response, cost = await app.gateway.handle(ChatRequest(body, request.request_id, cache_mode), caller)
    out = openai_response_to_anthropic(response.body, response.usage)
    await json_response(
        send,
        200,
        orjson.dumps(out),
        request_id=request.request_id,
        cost=cost,
        model=response.target.model,
        cache=response.cache,
        route=response.route,
    )


async def _events(stream: ChatStream) -> AsyncGenerator[bytes, None]:
    translator = OpenAIToAnthropicStream()
    chunks = stream.chunks()
    try:
        async for payload in chunks:
            chunk = orjson.loads(payload)
            if "error" in chunk and "choices" not in chunk:
                error = chunk["error"]
                yield _event("error", anthropic_error_body(str(error.get("type", "")), str(error.get("message", ""))))
                return
            for name, data in translator.feed(chunk):
                yield _event(name, data)
    finally:
        await chunks.aclose()
    # The usage the stream was charged for: the upstream's, or counted offline when it reported none.
    for name, data in translator.finish(stream.usage):
        yield _event(name, data)
    cost = stream.cost.header() if stream.cost is not None else "unpriced"
    yield b": x-thrifty-cost-usd " + cost.encode() + b"\n\n"  # as on /v1/chat/completions; SDKs skip comments


def _event(name: str, data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
