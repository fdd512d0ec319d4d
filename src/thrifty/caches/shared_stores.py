"""Exact-cache stores outside the process: a SQLite file (one host) and Redis (shared by replicas).

SQLite is used through the standard library directly: a primary-key lookup is tens of microseconds, cheaper
than a hop to a thread, so it runs on the event loop. Redis keeps one string per entry with its TTL, and a
sorted set of the keys by last use: past ``max_entries`` the least recently used are dropped (shared by every
replica, so the limit is the cache's, not one process's). Redis' own ``maxmemory`` still bounds its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from thrifty.caches.entries import CacheEntry, PurgeScope

log = logging.getLogger("thrifty.cache")

REDIS_PREFIX = "thrifty:cache:"
REDIS_LRU = "thrifty:cache-lru"
"""The sorted set of entry keys by last use (outside ``REDIS_PREFIX``: a purge scans entries only)."""
REDIS_EXPIRY = "thrifty:cache-expiry"
"""The same keys by expiry time: at the size limit, expired keys leave the count before live ones are evicted."""


BUSY_WAIT_S = 0.05
"""How long a SQLite call waits for another process's write lock: it runs on the event loop, so briefly (a
lookup that cannot wait is a miss); a purge waits up to ``PURGE_BUSY_WAIT_S``."""
PURGE_BUSY_WAIT_S = 30.0


class SqliteStore:
    remote = True

    def __init__(self, path: Path, max_entries: int = 100_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        # Set up waiting as long as a purge would (another process may hold the lock), then briefly.
        self._db = sqlite3.connect(str(path), timeout=PURGE_BUSY_WAIT_S, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS cache_entries (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
            "tenant TEXT NOT NULL, feature TEXT NOT NULL, alias TEXT NOT NULL, created_at REAL NOT NULL, "
            "expires_at REAL NOT NULL, used_at REAL NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS ix_cache_used ON cache_entries (used_at)")
        self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_WAIT_S * 1000)}")
        self._max = max_entries
        self._puts = 0
        # Also at each start: a process that restarts often may never reach its 256th store.
        with contextlib.suppress(sqlite3.OperationalError):  # another process holds the lock: the next sweep
            self._evict()

    async def get(self, key: str) -> CacheEntry | None:
        now = time.time()
        row = self._db.execute("SELECT value, expires_at FROM cache_entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        if row[1] <= now:
            self._db.execute("DELETE FROM cache_entries WHERE key = ?", (key,))
            return None
        try:
            entry = CacheEntry.from_bytes(row[0])
        except ValueError as exc:
            log.warning("exact cache: dropped an unreadable entry (%s)", exc)
            self._db.execute("DELETE FROM cache_entries WHERE key = ?", (key,))
            return None
        # Another process holding the write lock: the recency update can wait, the hit not.
        with contextlib.suppress(sqlite3.OperationalError):
            self._db.execute("UPDATE cache_entries SET used_at = ? WHERE key = ?", (now, key))
        return entry

    async def put(self, key: str, entry: CacheEntry) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO cache_entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                entry.to_bytes(),
                entry.tenant,
                entry.feature,
                entry.alias,
                entry.created_at,
                entry.expires_at,
                time.time(),
            ),
        )
        self._puts += 1
        if self._puts % 256 == 0:
            self._evict()

    def _evict(self) -> None:
        """Expired entries first, then the least recently used beyond the size limit."""
        self._db.execute("DELETE FROM cache_entries WHERE expires_at <= ?", (time.time(),))
        (count,) = self._db.execute("SELECT count(*) FROM cache_entries").fetchone()
        if count > self._max:
            self._db.execute(
                "DELETE FROM cache_entries WHERE key IN (SELECT key FROM cache_entries ORDER BY used_at LIMIT ?)",
                (count - self._max,),
            )

    async def purge(self, scope: PurgeScope) -> int:
        """On a connection of its own in a worker thread: a large purge may wait for, and hold, the write lock
        for seconds, which the event loop (serving lookups on the store's connection) must not."""
        where, params = _where(scope)
        return await asyncio.to_thread(_delete_where, self._path, "DELETE FROM cache_entries" + where, params)

    async def aclose(self) -> None:
        self._db.close()


def _delete_where(path: Path, statement: str, params: list[Any]) -> int:
    db = sqlite3.connect(str(path), timeout=PURGE_BUSY_WAIT_S, isolation_level=None)
    try:
        return db.execute(statement, params).rowcount
    finally:
        db.close()


def _where(scope: PurgeScope) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("tenant", scope.tenant), ("feature", scope.feature), ("alias", scope.alias)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if scope.older_than_s is not None:
        clauses.append("created_at <= ?")
        params.append(time.time() - scope.older_than_s)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


_GET = """
local value = redis.call('GET', KEYS[1])
if value then
    local now = redis.call('TIME')
    redis.call('ZADD', KEYS[2], 'XX', now[1] + now[2] / 1e6, KEYS[1])
else
    redis.call('ZREM', KEYS[2], KEYS[1])
    redis.call('ZREM', KEYS[3], KEYS[1])
end
return value
"""
"""Read an entry and move it to the recent end of the order, or drop a vanished key from it: atomic, so a
replica storing the same key in between is never undone, and timed by the server's clock, not each replica's."""

_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local now = redis.call('TIME')
local t = now[1] + now[2] / 1e6
redis.call('ZADD', KEYS[2], t, KEYS[1])
redis.call('ZADD', KEYS[3], t + ARGV[2] / 1000, KEYS[1])
local count = redis.call('ZCARD', KEYS[2])
if count > tonumber(ARGV[3]) then
    local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', t, 'LIMIT', 0, 1000)
    if #gone > 0 then
        redis.call('ZREM', KEYS[2], unpack(gone))
        redis.call('ZREM', KEYS[3], unpack(gone))
        count = redis.call('ZCARD', KEYS[2])
    end
end
return count
"""
"""Store an entry, and at the size limit first forget keys that expired (Redis dropped their values already): they
kept their places in the count until they were the least recently used, and live entries were evicted for them."""

_DROP = """
local dropped = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('ZREM', KEYS[3], KEYS[1])
return dropped
"""


class RedisStore:
    remote = True

    def __init__(self, url: str, max_entries: int = 100_000) -> None:
        try:
            import redis.asyncio as redis_asyncio
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError("the Redis cache needs the 'redis' extra: pip install 'thrifty[redis]'") from exc
        self._redis = redis_asyncio.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self._max = max_entries
        self._get, self._put = self._redis.register_script(_GET), self._redis.register_script(_PUT)
        self._drop = self._redis.register_script(_DROP)

    async def get(self, key: str) -> CacheEntry | None:
        """A miss when Redis cannot be reached: the cache must never take the gateway down with it."""
        from redis.exceptions import RedisError

        try:
            raw = await self._get(keys=[REDIS_PREFIX + key, REDIS_LRU, REDIS_EXPIRY])
        except RedisError as exc:
            log.warning("the Redis cache is unreachable (%s): answering without it", exc.__class__.__name__)
            return None
        if raw is None:
            return None
        try:
            entry = CacheEntry.from_bytes(_as_bytes(raw))
        except ValueError as exc:
            log.warning("exact cache: dropped an unreadable entry (%s)", exc)
            await self._drop(keys=[REDIS_PREFIX + key, REDIS_LRU, REDIS_EXPIRY])
            return None
        return entry if entry.expires_at > time.time() else None

    async def put(self, key: str, entry: CacheEntry) -> None:
        ttl_ms = int((entry.expires_at - time.time()) * 1000)
        if ttl_ms <= 0:
            return
        keys = [REDIS_PREFIX + key, REDIS_LRU, REDIS_EXPIRY]
        count = await self._put(keys=keys, args=[entry.to_bytes(), ttl_ms, self._max])
        if int(count) > self._max:
            await self._evict(int(count) - self._max)

    async def _evict(self, over: int) -> None:
        """Drop the ``over`` least recently used keys. ZPOPMIN is atomic, so replicas evicting at once never pop
        the same key (expired keys left the count first, in ``_PUT``)."""
        popped = await self._redis.zpopmin(REDIS_LRU, over)  # [(member, score), ...]
        names = [_as_bytes(m[0]) for m in popped if isinstance(m[0], bytes | str)]
        if names:
            await self._redis.delete(*names)
            await self._redis.zrem(REDIS_EXPIRY, *names)

    async def purge(self, scope: PurgeScope) -> int:
        now, purged = time.time(), 0
        async for name in self._redis.scan_iter(match=REDIS_PREFIX + "*", count=1000):
            raw = await self._redis.get(name)
            if raw is None:
                continue
            try:
                matches = scope.matches(CacheEntry.from_bytes(_as_bytes(raw)), now)
            except ValueError:  # unreadable, so never served: whatever the scope, it goes
                await self._drop(keys=[name, REDIS_LRU, REDIS_EXPIRY])
                continue
            if matches:
                purged += int(await self._drop(keys=[name, REDIS_LRU, REDIS_EXPIRY]))
        return purged

    async def aclose(self) -> None:
        await self._redis.aclose()


def _as_bytes(raw: bytes | str) -> bytes:
    return raw.encode() if isinstance(raw, str) else raw
