"""``LayeredCache``: the cache stage. Exact first, then semantic, each switched per alias and per feature.

A hit is an answer someone already paid for: the ledger records it at cost 0 beside its baseline (what the
requested model would have charged for the same tokens), so the cache's savings are sums of rows.

Identical requests that arrive together are coalesced (in each process): the first to miss the exact cache asks
the model, the others wait for its answer and are served it as exact hits. If that answer cannot be cached, or
the call fails, each waiter asks for itself. A streamed request never leads (its answer is stored only at the end
of the stream), but may wait for one that does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from thrifty.caches.entries import CacheEntry, EntryStore, PurgeScope
from thrifty.caches.keys import cacheable_request, cacheable_response, exact_key
from thrifty.caches.purge_log import MemoryPurgeLog, PurgeLog, PurgeRecords, RecentPurges
from thrifty.caches.resilient import LOOKUP_TIMEOUT_S, STORE_TIMEOUT_S, Breaker
from thrifty.completions import usage_body
from thrifty.settings import CacheSettings
from thrifty.types import ChatRequest, ChatResponse, Principal, Target

log = logging.getLogger("thrifty.cache")
BYPASS = "bypass"
COALESCE_WAIT_S = 60.0
"""How long a request waits for an identical one already asking the model before asking for itself."""


@dataclass(frozen=True, slots=True)
class Rule:
    exact: bool
    semantic: bool
    semantic_threshold: float
    ttl_s: float


class CachePolicy:
    """Settings resolved for an (alias, feature) pair: defaults, then the alias's rule, then the feature's."""

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings
        self._resolved: dict[tuple[str, str], Rule] = {}

    def rule(self, alias: str, feature: str) -> Rule:
        if feature not in self.settings.features:  # the feature is the client's header: bounded by the config's
            feature = ""
        found = self._resolved.get((alias, feature))
        if found is None:
            s = self.settings
            rule = Rule(s.exact, s.semantic, s.semantic_threshold, s.ttl_s)
            for override in (s.models.get(alias), s.features.get(feature)):
                if override is not None:
                    rule = Rule(
                        rule.exact if override.exact is None else override.exact,
                        rule.semantic if override.semantic is None else override.semantic,
                        rule.semantic_threshold if override.semantic_threshold is None else override.semantic_threshold,
                        rule.ttl_s if override.ttl_s is None else override.ttl_s,
                    )
            found = self._resolved[(alias, feature)] = rule
        return found


class SemanticLayer(Protocol):
    """Near-duplicate questions in the same context (``caches.semantic``)."""

    async def lookup(
        self,
        request: ChatRequest,
        principal: Principal,
        threshold: float,
        max_age_s: float,
        purges: PurgeRecords,
        spend: bool = True,
    ) -> ChatResponse | None: ...
    async def store(
        self,
        request: ChatRequest,
        principal: Principal,
        response: ChatResponse,
        ttl_s: float,
        asked_at: float,
        purges: PurgeRecords,
    ) -> None: ...
    async def purge(self, scope: PurgeScope) -> int: ...


class LayeredCache:
    def __init__(
        self,
        policy: CachePolicy,
        store: EntryStore,
        aliases: Mapping[str, tuple[Target, ...]],
        semantic: SemanticLayer | None = None,
        purges: PurgeLog | None = None,
    ) -> None:
        self.policy, self.entries, self.semantic = policy, store, semantic
        self.breaker = Breaker("the exact cache's store")
        self._timeouts = (LOOKUP_TIMEOUT_S, STORE_TIMEOUT_S) if store.remote else (None, None)
        self._aliases = aliases
        self._inflight: dict[str, tuple[str, asyncio.Future[CacheEntry | None]]] = {}
        """Exact key -> (the request id asking the model for it, its answer to come)."""
        self._leading: dict[str, str] = {}
        """Request id -> the exact key it leads for."""
        self.purges = RecentPurges(purges or MemoryPurgeLog())
        """Purges every replica honours (``caches.purge_log``)."""
        self.coalesced = 0

    def _applies(self, request: ChatRequest) -> bool:
        settings = self.policy.settings
        return request.cache_mode.strip().lower() != BYPASS and cacheable_request(
            request.body, settings.max_temperature
        )

    async def lookup(self, request: ChatRequest, principal: Principal, spend: bool = True) -> ChatResponse | None:
        rule = self.policy.rule(request.model, principal.feature)
        if not (rule.exact or rule.semantic) or not self._applies(request):
            return None
        if rule.exact:
            key = exact_key(request, principal, self._aliases[request.model])
            waiting = self._inflight.get(key)
            if waiting is not None:  # an identical request is asking the model: its answer, unless it fails
                entry = await self._wait(key, waiting)
                # The leader may have found an entry in the store: this asker's own TTL and purges apply to it.
                if entry is not None and await self._usable(entry, principal, rule):
                    self.coalesced += 1
                    return hit(entry, request, "exact")
            else:
                if not request.body.get("stream"):  # lead before reading: no identical request misses in between
                    self._inflight[key] = (request.request_id, asyncio.get_running_loop().create_future())
                    self._leading[request.request_id] = key
                entry = await self.breaker.call(lambda: self.entries.get(key), self._timeouts[0], None, "a miss")
                if entry is not None and await self._usable(entry, principal, rule):
                    self._resolve(request, entry)
                    return hit(entry, request, "exact")
        if rule.semantic and self.semantic is not None:
            purges = await self.purges.current()
            return await self.semantic.lookup(request, principal, rule.semantic_threshold, rule.ttl_s, purges, spend)
        return None

    async def _usable(self, entry: CacheEntry, principal: Principal, rule: Rule) -> bool:
        """The asker's tenant's (in the key too; checked again, as every replica writes a shared store), young
        enough for the asker's TTL (an entry stored under another feature's longer TTL is too old for this one),
        and not covered by a purge (of its attribution or of the asker's feature)."""
        if entry.tenant != principal.tenant or time.time() - entry.created_at > rule.ttl_s:
            return False
        return not (await self.purges.current()).covers(entry, principal.feature)

    async def _wait(self, key: str, waiting: tuple[str, asyncio.Future[CacheEntry | None]]) -> CacheEntry | None:
        try:
            return await asyncio.wait_for(asyncio.shield(waiting[1]), COALESCE_WAIT_S)
        except TimeoutError:
            if self._inflight.get(key) is waiting:  # a leader that never released: nobody waits on it again
                del self._inflight[key]
                self._leading.pop(waiting[0], None)
                waiting[1].set_result(None)
            return None

    def release(self, request: ChatRequest, principal: Principal) -> None:
        """After a request that led ended, its answer stored or not: whoever still waits on it asks for itself."""
        self._resolve(request, None)

    def _resolve(self, request: ChatRequest, entry: CacheEntry | None) -> None:
        key = self._leading.pop(request.request_id, None)
        if key is None:
            return
        found = self._inflight.pop(key, None)
        if found is not None and not found[1].done():
            found[1].set_result(entry)

    async def store(
        self, request: ChatRequest, principal: Principal, response: ChatResponse, asked_at: float = 0.0
    ) -> None:
        """Never raises: the answer was paid for, and a cache that cannot keep it must not lose its cost."""
        rule = self.policy.rule(request.model, principal.feature)
        if response.cache or not (rule.exact or rule.semantic) or not self._applies(request):
            return
        if response.usage is None or not cacheable_response(response.body, self.policy.settings.cache_tool_calls):
            return
        entry = CacheEntry.of(request, principal, response, rule.ttl_s, asked_at)
        purges = await self.purges.current()
        if purges.covers(entry):
            return  # asked for before a purge that covers it: what the purge meant to remove must not come back
        try:
            if rule.exact:
                key = exact_key(request, principal, self._aliases[request.model])
                try:
                    await self.breaker.call(lambda: self.entries.put(key, entry), self._timeouts[1], None, "not stored")
                finally:  # after the write, so that no identical request can miss between the two
                    self._resolve(request, entry)
            if rule.semantic and self.semantic is not None:
                await self.semantic.store(request, principal, response, rule.ttl_s, entry.created_at, purges)
        except Exception as exc:  # a store's own errors (Redis, SQLite, pgvector) and anything else
            log.warning("cache: answer not stored (%s: %s)", exc.__class__.__name__, exc)

    async def purge(self, scope: PurgeScope) -> int:
        if scope.older_than_s is None:  # an age-bounded purge never covers an answer still being asked for
            await self.purges.record(scope)  # first: an answer stored while the entries go is then refused
        purged = await self.entries.purge(scope)
        if self.semantic is not None:
            purged += await self.semantic.purge(scope)
        return purged

    async def aclose(self) -> None:
        await self.entries.aclose()
        await self.purges.aclose()


def hit(entry: CacheEntry, request: ChatRequest, kind: str) -> ChatResponse:
    """The stored answer under this request's id, marked as served from the cache."""
    body = dict(entry.body, id="chatcmpl-" + request.request_id.removeprefix("req_"))
    if not body.get("usage"):  # an answer stored from a stream was assembled without one
        body["usage"] = usage_body(entry.usage)
    return ChatResponse(body, entry.usage, entry.target, 0.0, cache=kind)
