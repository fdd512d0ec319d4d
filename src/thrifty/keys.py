"""Virtual API keys and stage 1 of the request path: who is calling.

Keys are random 256-bit secrets shown once at creation; the database keeps only their SHA-256 (a slow password
hash buys nothing for secrets this long). The gateway keeps the key table in memory and refreshes it from the
database in a background thread, so authentication costs a dict lookup, a revoked key stops working within
``refresh_s`` seconds, and the gateway keeps serving known keys while the database is down.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import SQLAlchemyError

from thrifty.errors import AuthenticationFailed, NotFound, PermissionDenied, UpstreamUnavailable
from thrifty.ledger import tables
from thrifty.types import Caller, Principal

log = logging.getLogger("thrifty.keys")

KEY_PREFIX = "sk-thr-"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    tenant: str
    name: str
    created_at: float
    revoked_at: float | None
    admin: bool = False


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(engine: Engine, tenant: str, name: str = "", *, admin: bool = False) -> tuple[KeyRecord, str]:
    """Issue a key; the secret is returned once and never stored."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    record = KeyRecord("key_" + secrets.token_hex(8), tenant, name, time.time(), None, admin)
    with engine.begin() as conn:
        conn.execute(
            tables.keys.insert().values(
                key_id=record.key_id,
                tenant=tenant,
                name=name,
                key_hash=hash_key(secret),
                created_at=record.created_at,
                admin=admin,
            )
        )
    return record, secret


def revoke_key(engine: Engine, key_id: str) -> None:
    with engine.begin() as conn:
        result = conn.execute(
            update(tables.keys)
            .where(tables.keys.c.key_id == key_id, tables.keys.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
    if result.rowcount == 0:
        raise NotFound(f"no active key {key_id!r}")


def list_keys(engine: Engine) -> list[KeyRecord]:
    k = tables.keys.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(k.key_id, k.tenant, k.name, k.created_at, k.revoked_at, k.admin).order_by(k.created_at)
        )
        return [KeyRecord(*row) for row in rows]


class KeyAuthenticator:
    def __init__(self, engine: Engine, refresh_s: float = 5.0) -> None:
        self._engine = engine
        self._refresh_s = refresh_s
        self._by_hash: dict[str, tuple[str, str, bool, bool]] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, name="thrifty-keys", daemon=True)

    def start(self) -> None:
        self.refresh()
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def refresh(self) -> None:
        k = tables.keys.c
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(select(k.key_hash, k.key_id, k.tenant, k.revoked_at, k.admin)).all()
        except SQLAlchemyError as exc:
            log.warning("cannot refresh API keys (%s); using the last known set", exc.__class__.__name__)
            return
        self._by_hash = {row[0]: (row[1], row[2], row[3] is not None, bool(row[4])) for row in rows}

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self.refresh()

    def authenticate(self, caller: Caller) -> Principal:
        known = self._by_hash
        if known is None:
            raise UpstreamUnavailable("the key store has not been reachable yet; try again shortly")
        if not known:
            if not caller.loopback:
                raise PermissionDenied(
                    "no API keys are issued, so only loopback clients are served; "
                    "create one with `thrifty keys create --tenant T`"
                )
            return Principal("default", "", caller.user, caller.feature, caller.session, admin=True)
        if not caller.api_key:
            raise AuthenticationFailed("an API key is required: send 'Authorization: Bearer <key>'")
        found = known.get(hash_key(caller.api_key))
        if found is None:
            raise AuthenticationFailed("invalid API key")
        key_id, tenant, revoked, admin = found
        if revoked:
            raise AuthenticationFailed(f"API key {key_id} has been revoked", code="revoked_api_key")
        return Principal(tenant, key_id, caller.user, caller.feature, caller.session, admin)
