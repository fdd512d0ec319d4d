"""The HTTP gateway: a plain ASGI application, thin over ``Gateway``.

No web framework: a dict of routes, a body reader with a size limit, and one error renderer. The server's share
of each request's time is part of what the gateway adds, so it is kept to parsing, one call and serializing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson

from thrifty.errors import BadRequest, MethodNotAllowed, NotFound, PermissionDenied, ThriftyError
from thrifty.guards.budgets import Budget
from thrifty.guards.estimate import CostEstimator
from thrifty.pipeline import Gateway
from thrifty.server import anthropic_routes, dashboard, openapi
from thrifty.server.http import Request, Send, json_response, send_error
from thrifty.server.sse import relay_openai_stream
from thrifty.server.wire import check_chat, check_embeddings, parse_body
from thrifty.types import ChatRequest, EmbeddingRequest

log = logging.getLogger("thrifty.server")

Handler = Callable[["ThriftyApp", Request, Send], Awaitable[None]]
Lifecycle = Callable[[], Awaitable[None]]


class ThriftyApp:
    def __init__(
        self,
        gateway: Gateway,
        *,
        max_body_bytes: int,
        ready: Callable[[], bool],
        estimator: CostEstimator,
        budgets: Callable[[], Sequence[Budget]] | None = None,
        on_startup: Lifecycle | None = None,
        on_shutdown: Lifecycle | None = None,
        public_metrics: bool = False,
    ) -> None:
        self.gateway = gateway
        self.public_metrics = public_metrics
        self.max_body_bytes = max_body_bytes
        self.ready = ready
        self.estimator = estimator
        self.budgets = budgets
        self._on_startup, self._on_shutdown = on_startup, on_shutdown

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(Request(scope, receive, self.max_body_bytes), send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, request: Request, send: Send) -> None:
        handler = ROUTES.get((request.method, request.path))
        anthropic = request.path == "/v1/messages"
        started = False

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            if handler is None:
                if any(path == request.path for _, path in ROUTES):
                    raise MethodNotAllowed(f"method {request.method} is not allowed on {request.path}")
                raise NotFound(f"no route {request.method} {request.path}")
            await handler(self, request, tracked)
        except Exception as exc:
            if not isinstance(exc, ThriftyError):
                log.exception("unexpected error serving %s %s", request.method, request.path)
                exc = ThriftyError("internal error in the gateway")
            if started:  # a status line is out (a stream): end the body, the only thing left to say
                with contextlib.suppress(Exception):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send_error(send, exc, anthropic=anthropic, request_id=request.request_id)

    async def _lifespan(self, receive: Any, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._on_startup:
                    await self._on_startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._on_shutdown:
                    await self._on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def chat_completions(app: ThriftyApp, request: Request, send: Send) -> None:
    body = check_chat(parse_body(await request.body()))
    chat = ChatRequest(body, request.request_id, request.header(b"x-thrifty-cache"))
    caller = request.caller(body.get("user"))
    if chat.stream:
        stream = await app.gateway.open_stream(chat, caller)
        await relay_openai_stream(stream, request, send)
        return
    response, cost = await app.gateway.handle(chat, caller)
    raw = response.raw if response.raw is not None else orjson.dumps(response.body)
    await json_response(
        send,
        200,
        raw,
        request_id=request.request_id,
        cost=cost,
        model=response.target.model,
        cache=response.cache,
        route=response.route,
    )


async def embeddings(app: ThriftyApp, request: Request, send: Send) -> None:
    body = check_embeddings(parse_body(await request.body()))
    caller = request.caller(body.get("user"))
    response, cost = await app.gateway.embed(EmbeddingRequest(body, request.request_id), caller)
    await json_response(
        send,
        200,
        orjson.dumps(response.body),
        request_id=request.request_id,
        cost=cost,
        model=response.target.model,
    )


async def models(app: ThriftyApp, request: Request, send: Send) -> None:
    data = [{"id": alias, "object": "model", "created": 0, "owned_by": "thrifty"} for alias in app.gateway.aliases]
    await json_response(send, 200, orjson.dumps({"object": "list", "data": data}), request_id=request.request_id)


async def healthz(app: ThriftyApp, request: Request, send: Send) -> None:
    await json_response(send, 200, b'{"status":"ok"}', request_id=request.request_id)


async def readyz(app: ThriftyApp, request: Request, send: Send) -> None:
    if await asyncio.to_thread(app.ready):
        await json_response(send, 200, b'{"status":"ready"}', request_id=request.request_id)
        return
    reason = "the ledger database or the guards' Redis store is not reachable"
    body = orjson.dumps({"status": "unavailable", "reason": reason})
    await json_response(send, 503, body, request_id=request.request_id)


async def metrics(app: ThriftyApp, request: Request, send: Send) -> None:
    if not app.public_metrics:  # spend per tenant and feature is for the gateway's operators
        principal = app.gateway.authenticator.authenticate(request.caller())
        if not principal.admin:
            raise PermissionDenied("the metrics need an admin key (or [server] public_metrics = true)")
    await json_response(
        send,
        200,
        app.gateway.metrics.render(),
        request_id=request.request_id,
        content_type=b"text/plain; version=0.0.4; charset=utf-8",
    )


async def cost_quote(app: ThriftyApp, request: Request, send: Send) -> None:
    from thrifty.quotes import quote_body

    body = check_chat(parse_body(await request.body()))
    app.gateway.authenticator.authenticate(request.caller(body.get("user")))
    app.gateway.check_model(body["model"])
    quoted = quote_body(app.estimator, ChatRequest(body, request.request_id))
    await json_response(send, 200, orjson.dumps(quoted), request_id=request.request_id)


PURGE_FIELDS = frozenset({"tenant", "feature", "model", "older_than_s"})


async def purge_cache(app: ThriftyApp, request: Request, send: Send) -> None:
    from thrifty.caches.entries import PurgeScope

    principal = app.gateway.authenticator.authenticate(request.caller())
    if not principal.admin:
        raise PermissionDenied("purging the cache needs an admin key (thrifty keys create --admin)")
    body = parse_body(await request.body())
    unknown = sorted(set(body) - PURGE_FIELDS)
    if unknown:  # a misspelt bound must not widen the purge to everything
        raise BadRequest(
            f"unknown field {unknown[0]!r}: a purge takes {', '.join(sorted(PURGE_FIELDS))}", param=unknown[0]
        )
    for field in ("tenant", "feature", "model"):
        if body.get(field) is not None and not isinstance(body[field], str):
            raise BadRequest(f"'{field}' must be a string", param=field)
    age = body.get("older_than_s")
    if age is not None and (isinstance(age, bool) or not isinstance(age, int | float)):  # true was 1 second
        raise BadRequest("'older_than_s' must be a number of seconds", param="older_than_s")
    try:
        scope = PurgeScope(
            tenant=body.get("tenant"),
            feature=body.get("feature"),
            alias=body.get("model"),
            older_than_s=None if body.get("older_than_s") is None else float(body["older_than_s"]),
        )
    except (TypeError, ValueError) as exc:
        raise BadRequest("'older_than_s' must be a number of seconds", param="older_than_s") from exc
    purge = getattr(app.gateway.cache, "purge", None)
    purged = 0 if purge is None else await purge(scope)
    await json_response(send, 200, orjson.dumps({"purged": purged}), request_id=request.request_id)


async def openapi_document(app: ThriftyApp, request: Request, send: Send) -> None:
    await json_response(send, 200, orjson.dumps(openapi.document()), request_id=request.request_id)


ROUTES: dict[tuple[str, str], Handler] = {
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/messages"): anthropic_routes.messages,
    ("POST", "/v1/embeddings"): embeddings,
    ("GET", "/v1/models"): models,
    ("GET", "/healthz"): healthz,
    ("GET", "/readyz"): readyz,
    ("GET", "/metrics"): metrics,
    ("GET", "/openapi.json"): openapi_document,
    ("POST", "/admin/cache/purge"): purge_cache,
    ("POST", "/v1/cost/quote"): cost_quote,
    ("GET", "/dashboard"): dashboard.dashboard_page,
    ("POST", "/dashboard"): dashboard.dashboard_login,
    ("GET", "/dashboard/data.json"): dashboard.dashboard_data,
}
