"""``SemanticCache``: a paraphrase of a question already answered, in the same context, gets that answer.

Partitioned by default (``keys.semantic_query``): a hit can only come from the same tenant, alias and targets,
system prompt, tools, ``response_format``, temperature bucket and conversation before the last user turn. Within
a partition the nearest stored questions are judged by ``similarity`` (cosine plus guards against the known
false-hit patterns: other numbers, dates, names, negation, documents to act on), or, when ``[cache] pair_model``
names one, by a pair model trained on the user's own labelled pairs behind the same guards (``pair_model``).

Vectors live in this process (``MemoryVectors``) or in PostgreSQL with pgvector, shared by replicas.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from thrifty.caches.entries import CacheEntry, Expiries, PurgeScope
from thrifty.caches.keys import SemanticQuery, semantic_query
from thrifty.caches.layered import hit
from thrifty.caches.purge_log import PurgeRecords
from thrifty.caches.resilient import LOOKUP_TIMEOUT_S, STORE_TIMEOUT_S, Breaker
from thrifty.errors import UpstreamRejected
from thrifty.types import ChatRequest, ChatResponse, Principal, Target

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from thrifty.caches.embedders import Embedder
    from thrifty.caches.similarity import SimilarityJudge

    Vector = NDArray[np.float32]

log = logging.getLogger("thrifty.cache")
NO_PURGES = PurgeRecords()

NEIGHBOURS = 1
"""Only the nearest stored question is judged: falling through to the next ones adds more false hits than
correct ones (GPTCache's data: 606/31 against 604/23 at the default threshold)."""
EMBED_TIMEOUT_S = 5.0
"""An embedding slower than this is a miss (or an answer not stored), and the embedder is skipped for a
cool-down (``caches.resilient``): a remote embeddings model that hangs must not hold every request. A provider
refusing one text (too long, say) is that request's miss only."""


@dataclass(frozen=True, slots=True)
class Candidate:
    key: str
    cosine: float
    text: str
    entry: CacheEntry


class VectorStore(Protocol):
    async def add(self, partition: str, key: str, vector: Vector, text: str, entry: CacheEntry) -> None: ...
    async def search(self, partition: str, vector: Vector, k: int) -> list[tuple[str, float, str, CacheEntry]]: ...
    async def remove(self, key: str) -> None: ...
    async def purge(self, scope: PurgeScope) -> int: ...


class MemoryVectors:
    """Vectors and entries in this process, bounded by entry count (expired first out, then the oldest)."""

    def __init__(self, dimensions: int, max_entries: int = 100_000) -> None:
        from thrifty.caches.vector_index import NumpyVectorIndex

        self._index = NumpyVectorIndex(dimensions)
        self._items: dict[str, tuple[str, CacheEntry]] = {}
        self._max = max_entries
        self._expiries = Expiries()

    async def add(self, partition: str, key: str, vector: Vector, text: str, entry: CacheEntry) -> None:
        self._index.add(partition, key, vector)
        self._items[key] = (text, entry)
        self._expiries.add(key, entry.expires_at)
        if len(self._items) > self._max:
            for gone in self._expiries.expired(time.time(), self._expires_at):
                self._drop(gone)
        while len(self._items) > self._max:
            self._drop(next(iter(self._items)))
        self._expiries.compact(len(self._items), lambda: ((k, e.expires_at) for k, (_, e) in self._items.items()))

    def _expires_at(self, key: str) -> float | None:
        item = self._items.get(key)
        return None if item is None else item[1].expires_at

    async def search(self, partition: str, vector: Vector, k: int) -> list[tuple[str, float, str, CacheEntry]]:
        now, found = time.time(), []
        for key, cosine in self._index.search(partition, vector, k):
            text, entry = self._items[key]
            if entry.expires_at <= now:
                self._drop(key)
                continue
            found.append((key, cosine, text, entry))
        return found

    async def remove(self, key: str) -> None:
        self._drop(key)

    async def purge(self, scope: PurgeScope) -> int:
        now = time.time()
        doomed = [key for key, (_, entry) in self._items.items() if scope.matches(entry, now)]
        for key in doomed:
            self._drop(key)
        return len(doomed)

    def _drop(self, key: str) -> None:
        self._items.pop(key, None)
        self._index.remove(key)


class SemanticCache:
    def __init__(
        self,
        embedder: Embedder,
        judges: Mapping[float, SimilarityJudge] | None,
        vectors: VectorStore,
        aliases: Mapping[str, tuple[Target, ...]],
        make_judge: Callable[[float], SimilarityJudge] | None = None,
    ) -> None:
        self._embedder, self._vectors, self._aliases = embedder, vectors, aliases
        self.breaker = Breaker("the semantic cache's vector store")
        self._judges: dict[float, SimilarityJudge] = dict(judges or {})
        self._make_judge = make_judge
        self._embed_breaker = Breaker(
            "the semantic cache's embedder", trips=lambda exc: not isinstance(exc, UpstreamRejected)
        )

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    def judge(self, threshold: float) -> SimilarityJudge:
        judge = self._judges.get(threshold)
        if judge is None:
            from thrifty.caches.similarity import GuardedJudge

            judge = self._judges[threshold] = (self._make_judge or GuardedJudge)(threshold)
        return judge

    async def _embed(self, text: str, doing: str) -> Vector | None:
        """The query's vector, or None when the embedder fails: a cache that cannot embed is a miss (or does not
        store), never a failed request, and never a paid answer lost after the provider call."""
        # Embedding is CPU work of several milliseconds (the model releases the GIL, the event loop goes on), or a
        # remote call; its errors and timeouts are a miss, and a failing embedder is spared for a while.
        vectors = await self._embed_breaker.call(
            lambda: asyncio.to_thread(self._embedder.embed, [text]), EMBED_TIMEOUT_S, None, doing
        )
        if vectors is None:
            return None
        vector: Vector = vectors[0]
        return vector

    def _query(self, request: ChatRequest, principal: Principal) -> SemanticQuery | None:
        query = semantic_query(request, principal, self._aliases[request.model])
        if query is None or not query.text.strip():
            return None
        # Vectors of different embedders are not comparable, even with the same number of dimensions.
        return SemanticQuery(f"{self._embedder.name}:{query.partition}", query.text)

    async def lookup(
        self,
        request: ChatRequest,
        principal: Principal,
        threshold: float,
        max_age_s: float = math.inf,
        purges: PurgeRecords = NO_PURGES,
        spend: bool = True,
    ) -> ChatResponse | None:
        """The first candidate the judge accepts among those younger than ``max_age_s`` (the asking feature's
        TTL: another feature's entries may live longer). ``spend=False``: a miss rather than a paid embedding."""
        query = self._query(request, principal)
        if query is None:
            return None
        if not spend:
            from thrifty.caches.embedders import would_pay  # numpy: only once a semantic cache exists

            if would_pay(self._embedder, query.text):
                return None
        vector = await self._embed(query.text, "treated as a miss")
        if vector is None:
            return None
        judge = self.judge(threshold)
        nothing: list[tuple[str, float, str, CacheEntry]] = []
        candidates = await self.breaker.call(
            lambda: self._vectors.search(query.partition, vector, NEIGHBOURS), LOOKUP_TIMEOUT_S, nothing, "a miss"
        )
        oldest = time.time() - max_age_s
        for _key, cosine, text, entry in candidates:
            if entry.created_at < oldest or entry.tenant != principal.tenant or purges.covers(entry, principal.feature):
                continue
            if self._make_judge is None:  # the bundled scorer: microseconds, on the loop
                decision = judge.decide(query.text, text, cosine)
            else:  # a pair model reads both embeddings and may have to embed the candidate again: off the loop
                decision = await asyncio.to_thread(judge.decide, query.text, text, cosine)
            if decision.hit:
                return replace(hit(entry, request, "semantic"), matched=(text, decision.score))
        return None

    async def store(
        self,
        request: ChatRequest,
        principal: Principal,
        response: ChatResponse,
        ttl_s: float,
        asked_at: float = 0.0,
        purges: PurgeRecords = NO_PURGES,
    ) -> None:
        query = self._query(request, principal)
        if query is None or response.usage is None:
            return
        entry = CacheEntry.of(request, principal, response, ttl_s, asked_at)
        vector = await self._embed(query.text, "answer not stored")
        if vector is None:
            return
        await self.breaker.call(
            lambda: self._keep(query, vector, entry, ttl_s, purges), STORE_TIMEOUT_S, None, "not stored"
        )

    async def _keep(
        self, query: SemanticQuery, vector: Vector, entry: CacheEntry, ttl_s: float, purges: PurgeRecords
    ) -> None:
        nearest = await self._vectors.search(query.partition, vector, 1)
        if nearest and nearest[0][2] == query.text:  # the same question is already answered here ...
            key, _, _, stored = nearest[0]
            if stored.created_at >= entry.created_at - ttl_s and not purges.covers(stored, entry.feature):
                return  # ... recently enough for this rule, and not purged for this asker
            # ... but too long ago for this rule (another feature's TTL is longer), or purged for it: the fresh
            # answer takes its place, kept as long as the old one would have been.
            await self._vectors.remove(key)
            entry = replace(entry, expires_at=max(entry.expires_at, stored.expires_at))
        await self._vectors.add(query.partition, "s_" + secrets.token_hex(12), vector, query.text, entry)

    async def purge(self, scope: PurgeScope) -> int:
        return await self._vectors.purge(scope)
