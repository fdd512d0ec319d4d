"""The HTTP part every remote provider shares: one pooled aiohttp session, timeouts, SSE lines, error mapping.

aiohttp rather than httpx because the upstream call sits on the hot path: its client costs a fraction of the
CPU per request, which is most of what a gateway adds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson
from aiohttp.http_exceptions import HttpProcessingError

from thrifty.errors import (
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_error_for_status,
)

T = TypeVar("T")
READ_BUFFER = 2**20
"""Bytes of a response read ahead; an SSE line may be up to about twice this (a base64 image in one delta)."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    total_s: float = 600.0
    connect_s: float = 10.0
    first_byte_s: float = 120.0
    """Also the longest silence allowed between two chunks of a stream."""


class HttpClient:
    """A lazily created session, so providers can be built outside an event loop."""

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        translate_error: Callable[[int, bytes], UpstreamError] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._error = translate_error or error_from_body
        self._headers = {"content-type": "application/json", **headers}
        self._timeouts = timeouts
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(
                total=self._timeouts.total_s,
                sock_connect=self._timeouts.connect_s,
                sock_read=self._timeouts.first_byte_s,
            )
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=timeout,
                connector=connector,
                json_serialize=_dumps_str,
                read_bufsize=READ_BUFFER,
            )
        return self._session

    async def post_json(self, path: str, body: Mapping[str, Any]) -> tuple[bytes, float]:
        """POST and return the raw 200 body and the upstream time in ms; any failure is an UpstreamError."""
        started = time.perf_counter()
        try:
            async with self._get_session().post(self.base_url + path, data=orjson.dumps(body)) as response:
                raw = await response.read()
                if response.status != 200:
                    raise self._error(response.status, raw)
        except aiohttp.ClientError as exc:
            raise translate_client_error(exc) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{self.base_url}{path} did not answer in time") from exc
        return raw, (time.perf_counter() - started) * 1000

    async def post_stream(self, path: str, body: Mapping[str, Any]) -> AsyncIterator[bytes]:
        """POST and yield the SSE lines of a 200 answer (without line endings)."""
        try:
            async with self._get_session().post(self.base_url + path, data=orjson.dumps(body)) as response:
                if response.status != 200:
                    raise self._error(response.status, await response.read())
                async for line in response.content:
                    yield line.rstrip(b"\r\n")
        except aiohttp.ClientError as exc:
            raise translate_client_error(exc) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{self.base_url}{path} went silent mid-answer") from exc
        except (HttpProcessingError, ValueError) as exc:  # a line over the read buffer, a malformed chunk
            raise UpstreamError(f"upstream sent a stream the gateway cannot read: {exc}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _dumps_str(value: Any) -> str:
    return orjson.dumps(value).decode()


def error_from_body(status: int, raw: bytes) -> UpstreamError:
    """The provider's own message where its error body has one (OpenAI and Anthropic shapes alike)."""
    message, code = f"upstream answered HTTP {status}", None
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error = parsed["error"]
        message = f"upstream answered HTTP {status}: {error.get('message') or error.get('type') or ''}".rstrip()
        code = error.get("code") or error.get("type")
    return upstream_error_for_status(status, message, code=str(code) if code else None)


def translate_client_error(exc: aiohttp.ClientError) -> UpstreamError:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailable(f"cannot connect to upstream: {exc}")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return UpstreamTimeout(f"upstream timed out: {exc}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return UpstreamError(f"upstream dropped the connection: {exc}")
    return UpstreamError(f"upstream request failed: {exc}")


def parse_json(raw: bytes, what: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"upstream sent {what} that is not JSON: {raw[:80]!r}") from exc


async def first_item(iterator: AsyncIterator[T]) -> T:
    """Await the first item, so errors before the first token can still fall back to another target."""
    try:
        return await anext(iterator)
    except StopAsyncIteration as exc:
        raise UpstreamError("upstream ended the stream before sending anything") from exc
    except asyncio.CancelledError:
        raise
