"""The ASGI plumbing the routes share: reading a bounded body, headers, and writing responses and errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from thrifty.accounting import new_request_id
from thrifty.errors import BadRequest, PayloadTooLarge, ThriftyError
from thrifty.types import Caller, Cost

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

LOOPBACK = ("127.", "::1", "::ffff:127.")


class Request:
    __slots__ = ("_limit", "headers", "method", "path", "receive", "request_id", "scope")

    def __init__(self, scope: dict[str, Any], receive: Receive, limit: int) -> None:
        self.scope = scope
        self.receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.request_id = new_request_id()
        self._limit = limit

    def header(self, name: bytes) -> str:
        value = self.headers.get(name)
        return value.decode("latin-1") if value else ""

    async def body(self) -> bytes:
        declared = self.headers.get(b"content-length")
        if declared and declared.isdigit() and int(declared) > self._limit:
            raise PayloadTooLarge(f"request body of {int(declared)} bytes is over the limit of {self._limit}")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ThriftyError("client disconnected while sending the request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._limit:
                raise PayloadTooLarge(f"request body is over the limit of {self._limit} bytes")
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def caller(self, body_user: object = None) -> Caller:
        authorization = self.header(b"authorization")
        api_key = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        client = self.scope.get("client")
        host = client[0] if client else ""
        return Caller(
            api_key=api_key or self.header(b"x-api-key") or None,
            loopback=host.startswith(LOOPBACK) or host == "localhost",
            user=_bounded("x-thrifty-user", self.header(b"x-thrifty-user") or _text(body_user), 256),
            feature=_bounded("x-thrifty-feature", self.header(b"x-thrifty-feature"), 128),
            session=_bounded("x-thrifty-session", self.header(b"x-thrifty-session"), 256),
        )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _bounded(name: str, value: str, limit: int) -> str:
    """The ledger keeps who asked in columns of this length: a longer value is refused, not cut (a cut one could
    merge two users' spend)."""
    if len(value) > limit:
        raise BadRequest(f"'{name}' (or the body's 'user') must be at most {limit} characters", param=name)
    return value


def thrifty_headers(
    request_id: str, cost: Cost | None, model: str | None, cache: str | None = None, route: str = ""
) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-thrifty-request-id", request_id.encode())]
    if cost is not None:
        headers.append((b"x-thrifty-cost-usd", cost.header().encode()))
    if model is not None:
        headers.append((b"x-thrifty-model", model.encode()))
    if cache is not None:
        headers.append((b"x-thrifty-cache", (cache or "miss").encode()))
    if route:
        headers.append((b"x-thrifty-route", route.encode("latin-1", "replace")))
    return headers


async def json_response(
    send: Send,
    status: int,
    body: bytes,
    *,
    request_id: str,
    cost: Cost | None = None,
    model: str | None = None,
    cache: str | None = None,
    content_type: bytes = b"application/json",
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    route: str = "",
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *thrifty_headers(request_id, cost, model, cache, route),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, exc: ThriftyError, *, anthropic: bool, request_id: str) -> None:
    if anthropic:
        from thrifty.providers.anthropic_inbound import anthropic_error_body

        body = anthropic_error_body(exc.error_type, exc.message)
    else:
        body = exc.to_openai()
    await json_response(send, exc.http_status, orjson.dumps(body), request_id=request_id, extra_headers=exc.headers())
