"""Server-sent events out of a ``ChatStream``, with the client's departure noticed promptly.

A watcher task waits for ``http.disconnect``; when the client goes away it cancels the relay, which closes the
upstream stream and lets the ``ChatStream`` record what was already paid for.

The final cost cannot be a response header (headers leave before the answer exists), so a stream ends with an
SSE comment line, ``: x-thrifty-cost-usd <value>``, which every SSE client ignores, and the cost is in the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable

from thrifty.server.http import Request, Send, thrifty_headers
from thrifty.streaming import ChatStream

SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def relay_openai_stream(stream: ChatStream, request: Request, send: Send) -> None:
    async def events() -> AsyncGenerator[bytes, None]:
        chunks = stream.chunks()
        try:
            async for payload in chunks:
                yield b"data: " + payload + b"\n\n"
        finally:
            # Closing explicitly runs the stream's recording now, not whenever it is garbage-collected.
            await chunks.aclose()
        cost = stream.cost.header() if stream.cost is not None else "unpriced"
        yield b": x-thrifty-cost-usd " + cost.encode() + b"\n\ndata: [DONE]\n\n"

    await relay(events(), stream, request, send)


async def relay(events: AsyncGenerator[bytes, None], stream: ChatStream, request: Request, send: Send) -> None:
    headers = SSE_HEADERS + thrifty_headers(stream.request_id, None, stream.target.model, stream.cache, stream.route)
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
    except BaseException:
        await stream.abandon()  # the stream was opened (and may have cost tokens): it still gets its row
        raise
    task = asyncio.current_task()
    watcher = asyncio.create_task(_cancel_on_disconnect(request, task.cancel if task else lambda: False))
    try:
        async for event in events:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        if not watcher.done() or task is None or task.cancelling() == 0:
            raise
        task.uncancel()
    except OSError:
        pass  # the client went away while we wrote; the stream has recorded itself
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await events.aclose()
        await stream.abandon()  # a no-op once the stream recorded itself


async def _cancel_on_disconnect(request: Request, cancel: Callable[[], object]) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel()
            return
