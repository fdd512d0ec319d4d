"""The ASGI plumbing the routes share: reading a bounded body, headers, and writing responses and errors."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from thrifty.accounting import new_request_id
from thrifty.errors import BadRequest, PayloadTooLarge, ThriftyError
from thrifty.types import Caller, Cost

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

LOOPBACK = ("127.", "::1", "::ffff:127.")
_PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip", b"via")
_LOCAL_NAMES = frozenset({"localhost", socket.gethostname().lower()})


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

    def from_this_machine(self) -> bool:
        """Whether the request comes from a program on this machine, which keyless mode serves as an admin.

        The TCP peer must be loopback, and nothing may say it speaks for someone else: a reverse proxy on this
        host (any ``Forwarded``, ``X-Forwarded-For``, ``X-Real-IP`` or ``Via`` header), a web page in a browser
        here (an ``Origin`` that is not this machine: a page must not drive the gateway), or a DNS name rebound
        to 127.0.0.1 (a ``Host`` that is not a loopback name)."""
        client = self.scope.get("client")
        peer = client[0] if client else ""
        if not (peer.startswith(LOOPBACK) or peer == "localhost"):
            return False
        if any(self.header(name) for name in _PROXY_HEADERS):
            return False
        origin = self.header(b"origin")
        if origin and not _loopback_host(origin.split("://", 1)[-1]):
            return False
        host = self.header(b"host")
        return not host or _loopback_host(host)

    def caller(self, body_user: object = None) -> Caller:
        authorization = self.header(b"authorization")
        api_key = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        return Caller(
            api_key=api_key or self.header(b"x-api-key") or None,
            loopback=self.from_this_machine(),
            user=_bounded("x-thrifty-user", self.header(b"x-thrifty-user") or _text(body_user), 256),
            feature=_bounded("x-thrifty-feature", self.header(b"x-thrifty-feature"), 128),
            session=_bounded("x-thrifty-session", self.header(b"x-thrifty-session"), 256),
        )


def _loopback_host(host: str) -> bool:
    """A loopback address (``127.0.0.1``, ``[::1]``), ``0.0.0.0``, ``localhost`` or this machine's own name,
    with or without a port. An address, not a prefix: ``127.0.0.1.attacker.example`` is a name like any other."""
    host = host.strip().lower()
    if host.startswith("["):  # [v6] or [v6]:port
        name = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:  # name:port or v4:port
        name = host.rsplit(":", 1)[0]
    else:  # a name, a v4 address or a bare v6 address
        name = host
    name = name.rstrip(".")
    if name in _LOCAL_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        if name and all(c.isdigit() or c == "." for c in name):  # shorthand IPv4 (127.1), as curl sends it
            try:
                return socket.inet_aton(name)[0] == 127
            except OSError:
                return False
        return False
    return (
        address.is_loopback
        or address.is_unspecified
        or (
            isinstance(address, ipaddress.IPv6Address)
            and address.ipv4_mapped is not None
            and address.ipv4_mapped.is_loopback
        )
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
