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
    """Shared stores directly (the exact cache's SQLite or Redis, the semantic cache's pgvector: no model is
    loaded), a running gateway's in-process caches through ``gateway_url``."""
    older = args.get("older_than")
    scope = PurgeScope(args.get("tenant"), args.get("feature"), args.get("model"), parse_age(older) if older else None)
    config = settings.cache
    rules = [*config.models.values(), *config.features.values()]
    lines, in_process = [], []
    if scope.older_than_s is None and (config.store != "memory" or config.semantic_store == "pgvector"):
        # Recorded first, where every gateway reads it: an answer in flight anywhere is then not stored after
        # this purge, and a feature purged is not served what another feature stored before it.
        asyncio.run(_record(settings, scope))
    if config.store in ("sqlite", "redis"):
        lines.append(f"purged {asyncio.run(_purge_entries(settings, scope))} entries from the {config.store} store")
    else:
        in_process.append("exact")
    if config.semantic or any(r.semantic for r in rules):
        if config.semantic_store == "pgvector":
            from thrifty.caches.pgvector_store import purge_every_table

            purged = purge_every_table(config.semantic_url or settings.ledger_url(), scope)
            lines.append(f"purged {purged} entries from the pgvector semantic store")
        else:
            in_process.append("semantic")
    if gateway_url is not None:
        lines.append(f"purged {_purge_remote(gateway_url, scope, admin_key)} entries in {gateway_url}")
    elif in_process and config.store == "memory":
        lines.append(f"the {' and '.join(in_process)} cache lives in the gateway process: pass --gateway URL")
    elif "semantic" in in_process:
        lines.append("the semantic cache lives in the gateway process (semantic_store = 'memory'): pass --gateway URL")
    return "\n".join(lines)


async def _record(settings: Settings, scope: PurgeScope) -> None:
    from thrifty.cache_assembly import build_purge_log

    log = build_purge_log(settings)
    try:
        await log.record(scope)
    finally:
        await log.aclose()


async def _purge_entries(settings: Settings, scope: PurgeScope) -> int:
    from thrifty.cache_assembly import build_entry_store

    store = build_entry_store(settings)
    try:
        return await store.purge(scope)
    finally:
        await store.aclose()


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
