"""A very fast OpenAI-compatible fake upstream for gateway-overhead benchmarks.

It answers ``POST /v1/chat/completions`` with a canned ``chat.completion`` (with usage) or, when the body
asks for ``"stream": true``, a short SSE stream in chunked transfer encoding. It is a raw ``asyncio.Protocol``
(on uvloop when installed) with HTTP/1.1 keep-alive and no framework, because it shares a core with the load
generator: every microsecond it spends is a microsecond taken from the client, so it must cost far less per
request than any gateway under test.

``--stream-gap-ms`` delays everything after the first content chunk, so that a gateway which buffers a stream
instead of forwarding it shows up as added time to first token rather than hiding inside the total.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any, cast

COMPLETION_ID = "chatcmpl-bench0001"
FIRST_TOKEN = "Hello"
REST_TOKENS = (", world", "!")
USAGE = {"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25}
MAX_HEAD_BYTES = 65536


def _completion_body(model: str) -> bytes:
    body = {
        "id": COMPLETION_ID,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": FIRST_TOKEN + "".join(REST_TOKENS)},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _chunk(model: str, delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def _sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    payload = f"data: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _stream_parts(model: str, include_usage: bool) -> tuple[bytes, bytes]:
    """The stream as two writes: the first content chunk, then everything after it (chunked-encoded)."""
    first = _sse(_chunk(model, {"role": "assistant", "content": FIRST_TOKEN}))
    rest = [_sse(_chunk(model, {"content": token})) for token in REST_TOKENS]
    rest.append(_sse(_chunk(model, {}, finish="stop")))
    if include_usage:
        usage_chunk = _chunk(model, {}, usage=USAGE)
        usage_chunk["choices"] = []
        rest.append(_sse(usage_chunk))
    rest.append(_sse("[DONE]"))
    rest.append(b"0\r\n\r\n")
    return first, b"".join(rest)


def _head(status: str, content_type: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{framing}\r\n"
        "Connection: keep-alive\r\nx-request-id: bench\r\n\r\n"
    ).encode()


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, path, headers


def _dechunk(data: bytes) -> tuple[bytes, int] | None:
    """Decode a chunked request body; returns (body, bytes consumed) or None when incomplete."""
    body, pos = bytearray(), 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(data[pos:eol].split(b";")[0], 16)
        if size == 0:
            end = data.find(b"\r\n\r\n", eol)
            return (bytes(body), end + 4) if end >= 0 else None
        if len(data) < eol + 2 + size + 2:
            return None
        body += data[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


class FakeUpstream(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests are answered in order."""

    def __init__(self, stream_gap_s: float) -> None:
        self.stream_gap_s = stream_gap_s
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and self._handle_one():
            pass

    def _handle_one(self) -> bool:
        """Answer one complete request from the buffer; False when more bytes are needed."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._close()
            return False
        method, path, headers = _parse_head(self.buffer[:end])
        rest = self.buffer[end + 4 :]
        if "chunked" in headers.get("transfer-encoding", ""):
            decoded = _dechunk(rest)
            if decoded is None:
                return False
            body, used = decoded
        else:
            used = int(headers.get("content-length", "0"))
            if len(rest) < used:
                return False
            body = rest[:used]
        self.buffer = rest[used:]
        self._respond(method, path, body)
        if headers.get("connection", "").lower() == "close":
            self._close()
        return True

    def _respond(self, method: str, path: str, body: bytes) -> None:
        assert self.transport is not None
        if method == "GET" and path in ("/healthz", "/health"):
            self.transport.write(_head("200 OK", "application/json", 2) + b"{}")
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            msg = b'{"error":{"message":"not found","type":"invalid_request_error"}}'
            self.transport.write(_head("404 Not Found", "application/json", len(msg)) + msg)
            return
        request = json.loads(body or b"{}")
        model = str(request.get("model", "gpt-4o-mini"))
        if not request.get("stream"):
            answer = _completion_body(model)
            self.transport.write(_head("200 OK", "application/json", len(answer)) + answer)
            return
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        first, rest = _stream_parts(model, include_usage)
        self.transport.write(_head("200 OK", "text/event-stream", None) + first)
        if self.stream_gap_s > 0:
            asyncio.get_running_loop().call_later(self.stream_gap_s, self._write, rest)
        else:
            self.transport.write(rest)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int, stream_gap_s: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeUpstream(stream_gap_s), host, port, backlog=1024)
    print(f"fake upstream listening on http://{host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18900)
    parser.add_argument("--stream-gap-ms", type=float, default=0.0)
    args = parser.parse_args()
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.host, args.port, args.stream_gap_ms / 1000))


if __name__ == "__main__":
    main()
