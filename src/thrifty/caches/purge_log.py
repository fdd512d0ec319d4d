"""The purges every replica must honour: what was purged, and when, kept where the cache's shared state lives.

Deleting entries is not enough for a purge to hold. An answer asked for before the purge and stored after it
(a slow call, a long stream, on this replica or another) would bring back what the purge meant to remove; and an
entry stored by feature A still answers feature B after ``purge --feature B``, since features share entries.
So each purge is also recorded (``PurgeLog.record``), and the cache consults the records twice: a store is
skipped when a purge after the question covers the answer, and a lookup passes over an entry created before a
purge that covers it or the asker (``PurgeRecords.covers``). Entries are dated by when their question was asked.

Records live beside the cache's shared state (Redis, the SQLite cache file, or PostgreSQL next to the pgvector
store; in this process otherwise) for as long as an entry could (the longest TTL, at least six hours). A replica
reads them again at most once a second, so another replica's purge holds here within a second; its own at once.
A purge bounded by age (``older_than``) removes old entries only and is not recorded: it never covers an answer
still being asked for.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import orjson

from thrifty.caches.entries import CacheEntry, PurgeScope
from thrifty.caches.resilient import LOOKUP_TIMEOUT_S, Breaker

log = logging.getLogger("thrifty.cache")

REFRESH_S = 1.0
MIN_KEPT_S = 6 * 3600.0
SKEW_S = 1.0
"""Redis and PostgreSQL date records by their own clock, replicas their entries by theirs: a purge there also
covers what was asked up to this long after it (a few answers asked right after a purge are asked again)."""
REDIS_KEY = "thrifty:cache-purges"
CREATE_PG_TABLE = "CREATE TABLE IF NOT EXISTS thrifty_cache_purges (at double precision NOT NULL, scope bytea)"
SCHEMA_LOCK = 0x7468726966747950  # "thriftyP": the purge log's table is created once when replicas start together

Record = tuple[float, PurgeScope]


@dataclass(frozen=True, slots=True)
class PurgeRecords:
    records: tuple[Record, ...] = ()
    skew_s: float = 0.0

    def covers(self, entry: CacheEntry, asker_feature: str | None = None, since: float | None = None) -> bool:
        """Whether a purge made after ``since`` (default: the entry's creation) covers the entry, or would have
        covered it had the asker's feature stored it."""
        after = entry.created_at if since is None else since
        for at, scope in self.records:
            if at + self.skew_s < after:
                continue
            if scope.matches(entry, at) or (
                asker_feature is not None
                and scope.feature == asker_feature
                and scope.matches(replace(entry, feature=asker_feature), at)
            ):
                return True
        return False


class PurgeLog(Protocol):
    kept_s: float
    skew_s: float
    """How far the log's clock may be from this process's."""

    async def record(self, scope: PurgeScope) -> None: ...
    async def read(self, since: float) -> list[Record]: ...
    async def aclose(self) -> None: ...


class RecentPurges:
    """A replica's view of the log: read again at most every ``REFRESH_S``, never waited on for longer than a
    lookup may take (a log that cannot be read keeps the last view; the breaker spares it meanwhile)."""

    def __init__(self, log_: PurgeLog) -> None:
        self.log = log_
        self._view = PurgeRecords()
        self._read_at = -float("inf")
        self._breaker = Breaker("the cache's purge log")

    async def current(self) -> PurgeRecords:
        now = time.monotonic()
        if now - self._read_at >= REFRESH_S:
            self._read_at = now
            since = time.time() - self.log.kept_s
            records = await self._breaker.call(lambda: self.log.read(since), LOOKUP_TIMEOUT_S, None, "not read")
            if records is not None:
                self._view = PurgeRecords(tuple(records), self.log.skew_s)
        return self._view

    async def record(self, scope: PurgeScope) -> None:
        """Raises when the log cannot be written: the purge must not report success without holding."""
        await self.log.record(scope)
        # This replica honours its own purge at once, even while the log cannot be read back.
        self._view = PurgeRecords((*self._view.records, (time.time(), scope)), self._view.skew_s)
        self._read_at = -float("inf")

    async def aclose(self) -> None:
        await self.log.aclose()


def _encode(scope: PurgeScope) -> bytes:
    return orjson.dumps({"t": scope.tenant, "f": scope.feature, "a": scope.alias, "n": secrets.token_hex(4)})


def _decode(raw: bytes | str) -> PurgeScope | None:
    try:
        data = orjson.loads(raw)
        return PurgeScope(data["t"], data["f"], data["a"])
    except (ValueError, KeyError, TypeError):
        return None


class MemoryPurgeLog:
    skew_s = 0.0

    def __init__(self, kept_s: float = MIN_KEPT_S) -> None:
        self.kept_s = max(kept_s, MIN_KEPT_S)
        self._records: list[Record] = []

    async def record(self, scope: PurgeScope) -> None:
        self._records.append((time.time(), scope))

    async def read(self, since: float) -> list[Record]:
        self._records = [r for r in self._records if r[0] >= since]
        return list(self._records)

    async def aclose(self) -> None:
        return None


class RedisPurgeLog:
    """A sorted set scored by Redis' own clock (replicas' clocks may differ; the server's orders the purges)."""

    skew_s = SKEW_S

    def __init__(self, url: str, kept_s: float = MIN_KEPT_S) -> None:
        import redis.asyncio as redis_asyncio

        self.kept_s = max(kept_s, MIN_KEPT_S)
        self._redis = redis_asyncio.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self._add = self._redis.register_script(
            "local now = redis.call('TIME') "
            "local at = now[1] + now[2] / 1e6 "
            "redis.call('ZADD', KEYS[1], at, ARGV[1]) "
            "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', at - tonumber(ARGV[2])) "
            "return tostring(at)"
        )

    async def record(self, scope: PurgeScope) -> None:
        await self._add(keys=[REDIS_KEY], args=[_encode(scope), int(self.kept_s)])

    async def read(self, since: float) -> list[Record]:
        found: Sequence[Any] = await self._redis.zrangebyscore(REDIS_KEY, since, "+inf", withscores=True)
        return [(float(at), scope) for raw, at in found if (scope := _decode(raw)) is not None]

    async def aclose(self) -> None:
        await self._redis.aclose()


class SqlitePurgeLog:
    """A table in the SQLite cache file (one host, one clock). Reads run on the event loop (a WAL read never
    waits); a record is written on a connection of its own in a worker thread, as it may wait for the lock."""

    skew_s = 0.0

    def __init__(self, path: Path, kept_s: float = MIN_KEPT_S) -> None:
        self.kept_s = max(kept_s, MIN_KEPT_S)
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Set up waiting as long as a purge would (another process may hold the lock), then briefly.
        self._db = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS cache_purges (at REAL NOT NULL, scope BLOB NOT NULL)")
        self._db.execute("PRAGMA busy_timeout = 50")

    async def record(self, scope: PurgeScope) -> None:
        await asyncio.to_thread(self._write, time.time(), _encode(scope))

    def _write(self, now: float, scope: bytes) -> None:
        db = sqlite3.connect(str(self._path), timeout=30.0, isolation_level=None)
        try:
            db.execute("INSERT INTO cache_purges VALUES (?, ?)", (now, scope))
            db.execute("DELETE FROM cache_purges WHERE at < ?", (now - self.kept_s,))
        finally:
            db.close()

    async def read(self, since: float) -> list[Record]:
        rows = self._db.execute("SELECT at, scope FROM cache_purges WHERE at >= ?", (since,)).fetchall()
        return [(float(at), scope) for at, raw in rows if (scope := _decode(raw)) is not None]

    async def aclose(self) -> None:
        self._db.close()


class PostgresPurgeLog:
    """A table beside the pgvector store, dated by the database's clock."""

    skew_s = SKEW_S

    def __init__(self, url: str, kept_s: float = MIN_KEPT_S) -> None:
        from sqlalchemy import create_engine

        self.kept_s = max(kept_s, MIN_KEPT_S)
        if url.startswith(("postgresql://", "postgres://")):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        self._engine = create_engine(
            url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}, pool_timeout=2
        )
        self._ready = False

    def _run(self, statement: str, params: dict[str, Any]) -> list[Any]:
        from sqlalchemy import text

        with self._engine.connect() as conn:
            if not self._ready:
                # Replicas starting together: CREATE ... IF NOT EXISTS alone can still collide in the catalogue.
                conn.execute(text("SELECT pg_advisory_lock(:lock)"), {"lock": SCHEMA_LOCK})
                try:
                    conn.execute(text(CREATE_PG_TABLE))
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:lock)"), {"lock": SCHEMA_LOCK})
                self._ready = True
            result = conn.execute(text(statement), params)
            return list(result) if result.returns_rows else []

    async def record(self, scope: PurgeScope) -> None:
        await asyncio.to_thread(
            self._run,
            "WITH added AS (INSERT INTO thrifty_cache_purges VALUES (extract(epoch from clock_timestamp()), :scope)) "
            "DELETE FROM thrifty_cache_purges WHERE at < extract(epoch from clock_timestamp()) - :kept",
            {"scope": _encode(scope), "kept": self.kept_s},
        )

    async def read(self, since: float) -> list[Record]:
        rows = await asyncio.to_thread(
            self._run, "SELECT at, scope FROM thrifty_cache_purges WHERE at >= :since", {"since": since}
        )
        return [(float(at), scope) for at, raw in rows if (scope := _decode(bytes(raw))) is not None]

    async def aclose(self) -> None:
        await asyncio.to_thread(self._engine.dispose)
