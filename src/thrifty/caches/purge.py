"""``thrifty cache purge``: shared stores are purged directly; a running gateway's in-process caches through its
admin endpoint."""

from __future__ import annotations

import asyncio
import os
import re

from thrifty.caches.entries import PurgeScope
from thrifty.errors import BadRequest
from thrifty.settings import Settings

_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if not match:
        raise BadRequest(f"age {text!r} is not like 30m, 12h or 7d")
    return float(match.group(1)) * _UNITS_S[match.group(2)]


def purge_from_cli(
    settings: Settings, args: dict[str, str | None], *, gateway_url: str | None, admin_key: str | None
) -> str:
    older = args.get("older_than")
    scope = PurgeScope(args.get("tenant"), args.get("feature"), args.get("model"), parse_age(older) if older else None)
    lines = []
    if settings.cache.store in ("sqlite", "redis"):
        from thrifty.assembly import build_cache

        cache = build_cache(
            settings.model_copy(update={"cache": settings.cache.model_copy(update={"exact": True})}), {}
        )

        async def run() -> int:
            purged: int = await cache.purge(scope)  # type: ignore[attr-defined]
            await cache.aclose()  # type: ignore[attr-defined]
            return purged

        lines.append(f"purged {asyncio.run(run())} entries from the {settings.cache.store} store")
    elif gateway_url is None:
        lines.append("the cache lives in the gateway process ([cache] store = 'memory'): pass --gateway URL")
    if gateway_url is not None:
        lines.append(f"purged {_purge_remote(gateway_url, scope, admin_key)} entries in {gateway_url}")
    return "\n".join(lines)


def _purge_remote(url: str, scope: PurgeScope, admin_key: str | None) -> int:
    import json
    import urllib.request

    body = {"tenant": scope.tenant, "feature": scope.feature, "model": scope.alias, "older_than_s": scope.older_than_s}
    key = admin_key or os.environ.get("THRIFTY_ADMIN_KEY", "")
    request = urllib.request.Request(
        url.rstrip("/") + "/admin/cache/purge",
        data=json.dumps({k: v for k, v in body.items() if v is not None}).encode(),
        headers={"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        purged: int = json.loads(response.read())["purged"]
        return purged
