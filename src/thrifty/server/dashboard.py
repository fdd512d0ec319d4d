"""The cost dashboard: ``GET /dashboard`` serves one static page that draws ``GET /dashboard/data.json``.

Access follows the admin endpoints. While no API key is issued, loopback callers are admins; once keys exist,
the data needs an admin key. Scripts send it as ``Authorization: Bearer``. A browser cannot set that header on
a page load, and a key in the URL would land in logs and browser history, so the page asks for the key and
POSTs it to ``/dashboard``, which answers with an HttpOnly, SameSite=Strict cookie scoped to ``/dashboard``.
The cookie holds the key itself rather than a session id: any replica can check it without shared session
state, and revoking the key signs the browser out. Posting ``{"sign_out": true}`` clears it.

The page is the same file for everyone and carries no data, so it is served without a key; its
Content-Security-Policy allows only its own inline script and style and requests to this origin.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import re
import time
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import orjson
from sqlalchemy import Engine

from thrifty.errors import BadRequest, NotFound, PermissionDenied
from thrifty.ledger import dashboard_queries
from thrifty.server.http import Request, Send, json_response
from thrifty.server.wire import parse_body
from thrifty.types import Principal

if TYPE_CHECKING:
    from thrifty.server.app import ThriftyApp

COOKIE = "thrifty_dashboard"
COOKIE_MAX_AGE_S = 12 * 3600
_KEY_CHARS = re.compile(r"[A-Za-z0-9._~-]{1,256}")
"""Characters a cookie value may carry unquoted; every key Thrifty issues fits (``sk-thr-`` + URL-safe base64)."""
_NO_STORE = [(b"cache-control", b"no-store")]


async def dashboard_page(app: ThriftyApp, request: Request, send: Send) -> None:
    body, policy = _page()
    headers = [
        *_NO_STORE,
        (b"content-security-policy", policy),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]
    await json_response(
        send,
        200,
        body,
        request_id=request.request_id,
        content_type=b"text/html; charset=utf-8",
        extra_headers=headers,
    )


async def dashboard_data(app: ThriftyApp, request: Request, send: Send) -> None:
    principal = _admin(app, request)
    now = time.time()
    since = parse_qs(request.scope.get("query_string", b"").decode("latin-1")).get("since", [None])[-1]
    try:
        window = dashboard_queries.parse_window(since, now)
    except ValueError as exc:
        raise BadRequest(str(exc), param="since") from exc
    budgets = app.budgets() if app.budgets is not None else None
    data = await asyncio.to_thread(dashboard_queries.snapshot, _engine(app), window, now, budgets)
    data["viewer"] = {"tenant": principal.tenant, "key_id": principal.key_id}
    await json_response(send, 200, orjson.dumps(data), request_id=request.request_id, extra_headers=_NO_STORE)


async def dashboard_login(app: ThriftyApp, request: Request, send: Send) -> None:
    """``POST /dashboard`` with ``{"key": "sk-thr-..."}`` signs a browser in; ``{"sign_out": true}`` out."""
    _refuse_cross_site(request)
    body = parse_body(await request.body())
    if body.get("sign_out") is True:
        await _set_cookie(send, request, "", max_age_s=0, answer={"signed_in": False})
        return
    key = body.get("key")
    if not isinstance(key, str) or not _KEY_CHARS.fullmatch(key):
        raise BadRequest("'key' must be a Thrifty API key", param="key")
    principal = _require_admin(
        app.gateway.authenticator.authenticate(dataclasses.replace(request.caller(), api_key=key))
    )
    answer = {"signed_in": True, "tenant": principal.tenant, "key_id": principal.key_id}
    await _set_cookie(send, request, key, max_age_s=COOKIE_MAX_AGE_S, answer=answer)


def _admin(app: ThriftyApp, request: Request) -> Principal:
    caller = request.caller()
    if caller.api_key is None:
        caller = dataclasses.replace(caller, api_key=_cookie(request, COOKIE))
    return _require_admin(app.gateway.authenticator.authenticate(caller))


def _require_admin(principal: Principal) -> Principal:
    if not principal.admin:
        raise PermissionDenied("the dashboard needs an admin key (thrifty keys create --admin)")
    return principal


def _cookie(request: Request, name: str) -> str | None:
    for part in request.header(b"cookie").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


def _refuse_cross_site(request: Request) -> None:
    """Another site could otherwise sign a browser in with the other site's key (login CSRF).

    Browsers send ``Origin`` on every cross-origin POST; a missing one is a script or an old browser, which the
    key itself already authenticates.
    """
    origin = request.header(b"origin")
    if origin and urlsplit(origin).netloc != request.header(b"host"):
        raise PermissionDenied("sign-in to the dashboard from another site is refused")


async def _set_cookie(send: Send, request: Request, value: str, *, max_age_s: int, answer: dict[str, object]) -> None:
    attributes = f"{COOKIE}={value}; Max-Age={max_age_s}; Path=/dashboard; HttpOnly; SameSite=Strict"
    if _https(request):
        attributes += "; Secure"
    await json_response(
        send,
        200,
        orjson.dumps(answer),
        request_id=request.request_id,
        extra_headers=[*_NO_STORE, (b"set-cookie", attributes.encode())],
    )


def _https(request: Request) -> bool:
    """TLS ends at a proxy in front of the gateway more often than at the gateway itself."""
    return request.scope.get("scheme") == "https" or request.header(b"x-forwarded-proto") == "https"


def _engine(app: ThriftyApp) -> Engine:
    engine = getattr(app.gateway.ledger, "engine", None)
    if not isinstance(engine, Engine):
        raise NotFound("the dashboard reads a SQL ledger, and this gateway records to none")
    return engine


@functools.cache
def _page() -> tuple[bytes, bytes]:
    """The page and its Content-Security-Policy, which names the page's inline script and style by hash."""
    html = (resources.files("thrifty.server") / "dashboard.html").read_text("utf-8")
    hashes = {
        tag: " ".join(f"'sha256-{_sha256(block)}'" for block in re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S))
        for tag in ("script", "style")
    }
    policy = (
        f"default-src 'none'; script-src {hashes['script']}; style-src {hashes['style']}; "
        "connect-src 'self'; img-src data:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    )
    return html.encode(), policy.encode()


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
