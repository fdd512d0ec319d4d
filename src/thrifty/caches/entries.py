"""What a cache keeps per answer, what a purge selects, and the in-process store.

An entry keeps the answer exactly as the provider gave it (OpenAI shape), who answered, the tokens it cost, and
the attribution a purge selects on (tenant, feature, alias, age).
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import orjson

from thrifty.types import ChatRequest, ChatResponse, JsonObject, Principal, Target, Usage


@dataclass(frozen=True, slots=True)
class CacheEntry:
    body: JsonObject
    target: Target
    usage: Usage
    tenant: str
    feature: str
    alias: str
    created_at: float
    expires_at: float

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "body": self.body,
                "provider": self.target.provider,
                "model": self.target.model,
                "usage": [
                    self.usage.input_tokens,
                    self.usage.output_tokens,
                    self.usage.cache_read_tokens,
                    self.usage.cache_write_tokens,
                    self.usage.estimated,
                    self.usage.cache_write_1h_tokens,
                    self.usage.input_audio_tokens,
                    self.usage.output_audio_tokens,
                ],
                "tenant": self.tenant,
                "feature": self.feature,
                "alias": self.alias,
                "created_at": self.created_at,
                "expires_at": self.expires_at,
            }
        )

    @classmethod
    def of(
        cls, request: ChatRequest, principal: Principal, response: ChatResponse, ttl_s: float, asked_at: float = 0.0
    ) -> CacheEntry:
        """The entry for an answer just paid for (its usage must be known), dated by when it was asked for
        (``asked_at``; default now): what a purge made after the question covers (``caches.purge_log``)."""
        assert response.usage is not None
        now = asked_at or time.time()
        return cls(
            response.body,
            response.target,
            response.usage,
            principal.tenant,
            principal.feature,
            request.model,
            now,
            now + ttl_s,
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> CacheEntry:
        """The entry ``to_bytes`` wrote; ``ValueError`` for anything else (a shared store may hold a value another
        program, or a corrupted write, left under a cache key)."""
        try:
            data = orjson.loads(raw)
            i, o, r, w, estimated, *more = data["usage"]  # older entries have 5 or 6 (before 1-hour writes, audio)
            entry = cls(
                body=data["body"],
                target=Target(str(data["provider"]), str(data["model"])),
                usage=Usage(int(i), int(o), int(r), int(w), bool(estimated), *(int(n) for n in more[:3])),
                tenant=str(data["tenant"]),
                feature=str(data["feature"]),
                alias=str(data["alias"]),
                created_at=float(data["created_at"]),
                expires_at=float(data["expires_at"]),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"not a cache entry ({exc.__class__.__name__}: {exc})") from exc
        if not isinstance(entry.body, dict) or not isinstance(entry.body.get("choices"), list):
            raise ValueError("not a cache entry (no chat completion in it)")
        return entry


@dataclass(frozen=True, slots=True)
class PurgeScope:
    """Entries matching every given field are purged; an empty scope purges everything."""

    tenant: str | None = None
    feature: str | None = None
    alias: str | None = None
    older_than_s: float | None = None

    def matches(self, entry: CacheEntry, now: float) -> bool:
        return (
            (self.tenant is None or entry.tenant == self.tenant)
            and (self.feature is None or entry.feature == self.feature)
            and (self.alias is None or entry.alias == self.alias)
            and (self.older_than_s is None or now - entry.created_at >= self.older_than_s)
        )


class EntryStore(Protocol):
    """Where exact-cache entries live: this process, a SQLite file, or Redis shared by replicas."""

    remote: bool
    """Its calls leave this process (a file another process may lock, a server): each is given a timeout."""

    async def get(self, key: str) -> CacheEntry | None: ...
    async def put(self, key: str, entry: CacheEntry) -> None: ...
    async def purge(self, scope: PurgeScope) -> int: ...
    async def aclose(self) -> None: ...


class Expiries:
    """Keys by expiry time (a heap), so that a store at its size limit finds its expired entries without a scan.
    Pairs go stale when a key is stored again or dropped: ``expired`` checks each against the store."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []

    def add(self, key: str, expires_at: float) -> None:
        heapq.heappush(self._heap, (expires_at, key))

    def expired(self, now: float, expires_at: Callable[[str], float | None]) -> list[str]:
        """The stored keys that expired by ``now`` (``expires_at``: a key's stored expiry, None if gone)."""
        found: dict[str, None] = {}  # a key stored twice with the same expiry is pushed twice: listed once
        while self._heap and self._heap[0][0] <= now:
            at, key = heapq.heappop(self._heap)
            if expires_at(key) == at:
                found[key] = None
        return list(found)

    def compact(self, stored: int, live: Callable[[], Iterable[tuple[str, float]]]) -> None:
        """Rebuilt from what is stored once stale pairs outnumber it."""
        if len(self._heap) > 2 * stored + 64:
            self._heap = [(at, key) for key, at in live()]
            heapq.heapify(self._heap)


class MemoryStore:
    """An LRU dict, bounded by entry count; expired entries are dropped when met, and at the size limit before any
    live one is evicted (a short-TTL feature's dead entries took the slots of a long-TTL feature's live ones)."""

    remote = False

    def __init__(self, max_entries: int = 100_000) -> None:
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._max = max_entries
        self._expiries = Expiries()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= time.time():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    async def put(self, key: str, entry: CacheEntry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        self._expiries.add(key, entry.expires_at)
        if len(self._entries) > self._max:
            for gone in self._expiries.expired(time.time(), self._expires_at):
                del self._entries[gone]
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        self._expiries.compact(len(self._entries), lambda: ((k, e.expires_at) for k, e in self._entries.items()))

    def _expires_at(self, key: str) -> float | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.expires_at

    async def purge(self, scope: PurgeScope) -> int:
        now = time.time()
        doomed = [key for key, entry in self._entries.items() if scope.matches(entry, now)]
        for key in doomed:
            del self._entries[key]
        return len(doomed)

    async def aclose(self) -> None:
        return None
