"""``PgVectorStore`` on a real PostgreSQL 18 with pgvector (the embedded server of ``fakes.embedded_pg``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
from numpy.typing import NDArray
from sqlalchemy import text

from thrifty.caches.entries import CacheEntry, PurgeScope
from thrifty.caches.pgvector_store import SWEEP_EVERY_ADDS, PgVectorStore
from thrifty.errors import ConfigError
from thrifty.types import Target, Usage

DIMENSIONS = 4
Stores = Callable[[], PgVectorStore]


@pytest.fixture
async def stores(pgvector_url: str) -> AsyncIterator[Stores]:
    """Opens stores ("replicas") on one fresh database; closes them after the test."""
    opened: list[PgVectorStore] = []

    def open_store() -> PgVectorStore:
        opened.append(PgVectorStore(pgvector_url, DIMENSIONS))
        return opened[-1]

    yield open_store
    for store in opened:
        await store.aclose()


def unit(*values: float) -> NDArray[np.float32]:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def entry(
    tenant: str = "acme", feature: str = "chat", alias: str = "fast", age_s: float = 0.0, ttl_s: float = 60.0
) -> CacheEntry:
    created = time.time() - age_s
    body = {"id": "chatcmpl-1", "choices": [{"message": {"role": "assistant", "content": "Paris"}}]}
    return CacheEntry(
        body, Target("openai", "gpt-4o-mini"), Usage(12, 3), tenant, feature, alias, created, created + ttl_s
    )


async def test_replicas_see_each_others_entries(stores: Stores) -> None:
    one, two = stores(), stores()
    await one.add("p", "from-one", unit(1, 0, 0, 0), "capital of France?", entry())
    await two.add("p", "from-two", unit(0, 1, 0, 0), "capital of Spain?", entry())
    assert [key for key, *_ in await two.search("p", unit(1, 0.1, 0, 0), 5)] == ["from-one", "from-two"]
    assert [key for key, *_ in await one.search("p", unit(0.1, 1, 0, 0), 5)] == ["from-two", "from-one"]
    assert await two.purge(PurgeScope()) == 2
    assert await one.search("p", unit(1, 0, 0, 0), 5) == []


async def test_partitions_never_leak(stores: Stores) -> None:
    store = stores()
    same = unit(1, 2, 3, 4)
    await store.add("tenant-a", "a", same, "q", entry(tenant="a"))
    await store.add("tenant-b", "b", same, "q", entry(tenant="b"))
    assert [key for key, *_ in await store.search("tenant-a", same, 10)] == ["a"]
    assert [key for key, *_ in await store.search("tenant-b", same, 10)] == ["b"]
    assert await store.search("tenant-c", same, 10) == []


async def test_expired_entries_are_never_returned_and_are_swept(stores: Stores) -> None:
    store = stores()
    await store.add("p", "stale", unit(1, 0, 0, 0), "q", entry(age_s=120, ttl_s=60))
    await store.add("p", "fresh", unit(0, 1, 0, 0), "q", entry())
    assert [key for key, *_ in await store.search("p", unit(1, 0, 0, 0), 10)] == ["fresh"]
    for i in range(SWEEP_EVERY_ADDS - 2):
        await store.add("other", f"k{i}", unit(1, 1, i, 1), "q", entry())
    # The sweep ran on the last add: only the unexpired rows are left to purge.
    assert await store.purge(PurgeScope()) == SWEEP_EVERY_ADDS - 1


async def test_cosine_ranking_on_hand_made_vectors(stores: Stores) -> None:
    store = stores()
    for key, vector in {
        "same": unit(1, 0, 0, 0),
        "close": unit(0.8, 0.6, 0, 0),
        "orthogonal": unit(0, 0, 1, 0),
        "opposite": unit(-1, 0, 0, 0),
    }.items():
        await store.add("p", key, vector, f"text of {key}", entry())
    found = await store.search("p", unit(1, 0, 0, 0), 3)
    assert [(key, text) for key, _, text, _ in found] == [
        ("same", "text of same"),
        ("close", "text of close"),
        ("orthogonal", "text of orthogonal"),
    ]
    assert [cosine for _, cosine, _, _ in found] == pytest.approx([1.0, 0.8, 0.0], abs=1e-6)
    everything = await store.search("p", unit(1, 0, 0, 0), 10)
    assert everything[-1][0] == "opposite" and everything[-1][1] == pytest.approx(-1.0, abs=1e-6)


async def test_purge_by_tenant_feature_alias_and_age(stores: Stores) -> None:
    store = stores()
    rows = {
        "acme-chat-fast": entry("acme", "chat", "fast"),
        "acme-chat-smart": entry("acme", "chat", "smart"),
        "acme-search-fast": entry("acme", "search", "fast"),
        "globex-chat-fast": entry("globex", "chat", "fast"),
        "globex-old": entry("globex", "chat", "fast", age_s=7200, ttl_s=86400),
    }
    for i, (key, cached) in enumerate(rows.items()):
        await store.add("p", key, unit(1, i, 0, 1), key, cached)

    assert await store.purge(PurgeScope(older_than_s=3600)) == 1
    assert await store.purge(PurgeScope(tenant="acme", alias="smart")) == 1
    assert await store.purge(PurgeScope(feature="search")) == 1
    assert await store.purge(PurgeScope(tenant="nobody")) == 0
    assert await store.purge(PurgeScope(tenant="globex")) == 1
    assert [key for key, *_ in await store.search("p", unit(1, 0, 0, 1), 10)] == ["acme-chat-fast"]


async def test_entries_survive_a_new_store_object(pgvector_url: str) -> None:
    cached = entry()
    first = PgVectorStore(pgvector_url, DIMENSIONS)
    await first.add("p", "k", unit(1, 0, 0, 0), "capital of France?", cached)
    await first.aclose()
    second = PgVectorStore(pgvector_url, DIMENSIONS)
    try:
        [(key, cosine, text, found)] = await second.search("p", unit(1, 0, 0, 0), 4)
    finally:
        await second.aclose()
    assert (key, text, found) == ("k", "capital of France?", cached)
    assert cosine == pytest.approx(1.0)


async def test_same_key_replaces_the_row(stores: Stores) -> None:
    store = stores()
    await store.add("p", "k", unit(1, 0, 0, 0), "old", entry())
    await store.add("p", "k", unit(0, 1, 0, 0), "new", entry())
    assert [(key, text) for key, _, text, _ in await store.search("p", unit(0, 1, 0, 0), 10)] == [("k", "new")]


async def test_replicas_starting_together_create_the_schema_once(pgvector_url: str) -> None:
    opened = await asyncio.gather(*(asyncio.to_thread(PgVectorStore, pgvector_url, DIMENSIONS) for _ in range(4)))
    await opened[0].add("p", "k", unit(1, 0, 0, 0), "q", entry())
    assert len(await opened[3].search("p", unit(1, 0, 0, 0), 1)) == 1
    for store in opened:
        await store.aclose()


async def test_a_vector_of_the_wrong_size_is_refused(stores: Stores) -> None:
    store = stores()
    with pytest.raises(ValueError, match="4 dimensions"):
        await store.add("p", "k", unit(1, 0, 0), "q", entry())
    with pytest.raises(ValueError, match="4 dimensions"):
        await store.search("p", unit(1, 0, 0, 0, 0), 1)


def test_a_server_without_pgvector_is_a_config_error(pg_url: str) -> None:
    """The local PostgreSQL (``pg_url``, from conftest) has no pgvector; the error must say what is wrong."""
    import psycopg

    with psycopg.connect(pg_url) as conn:
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone():
            pytest.skip("this PostgreSQL has pgvector")
    with pytest.raises(ConfigError, match="vector"):
        PgVectorStore(pg_url, DIMENSIONS)


async def test_a_size_bound_keeps_the_newest_rows_at_each_sweep(pgvector_url: str) -> None:
    store = PgVectorStore(pgvector_url, DIMENSIONS, max_entries=100)
    try:
        for i in range(SWEEP_EVERY_ADDS):
            await store.add("p", f"k{i:04d}", unit(1, 1, i, 1), "q", entry(age_s=SWEEP_EVERY_ADDS - i, ttl_s=3600))
        # The sweep ran on the last add: the 100 newest rows are left.
        assert await store.purge(PurgeScope(older_than_s=101)) == 0  # the older ones went at the sweep
        assert await store.purge(PurgeScope()) == 100
    finally:
        await store.aclose()


async def test_one_replica_removes_an_entry_for_all(stores: Stores) -> None:
    one, two = stores(), stores()
    await one.add("p", "stale", unit(1, 0, 0, 0), "capital of France?", entry(age_s=30))
    await one.add("p", "other", unit(0, 1, 0, 0), "capital of Spain?", entry())
    await two.remove("stale")
    assert [key for key, *_ in await one.search("p", unit(1, 0, 0, 0), 5)] == ["other"]


async def test_a_store_made_while_postgres_is_down_prepares_itself_once_it_is_back(pgvector_url: str) -> None:
    """A replica restarting during a database outage must come up (the cache misses), not crash-loop."""
    from sqlalchemy.exc import OperationalError

    from fakes.tcp_proxy import TcpProxy

    host_port = pgvector_url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    proxy.cut()
    url = pgvector_url.replace(host_port, f"127.0.0.1:{proxy.port}")
    store = PgVectorStore(url, DIMENSIONS)  # no error: down is an outage, not a configuration error
    try:
        with pytest.raises(OperationalError):
            await store.search("p", unit(1, 0, 0, 0), 1)  # the cache stage's breaker makes this a miss
        proxy.restore()
        await store.add("p", "k", unit(1, 0, 0, 0), "capital of France?", entry())
        assert [key for key, *_ in await store.search("p", unit(1, 0, 0, 0), 1)] == ["k"]
    finally:
        await store.aclose()
        proxy.close()


async def test_an_unreadable_row_is_passed_over_and_dropped(stores: Stores) -> None:
    store = stores()
    await store.add("p", "good", unit(1, 0, 0, 0), "capital of France?", entry())
    await store.add("p", "bad", unit(1, 0.01, 0, 0), "capital of Spain?", entry())
    await asyncio.to_thread(store._delete, text("UPDATE thrifty_semantic_d4 SET entry = 'junk' WHERE key = 'bad'"), {})
    assert [key for key, *_ in await store.search("p", unit(1, 0, 0, 0), 5)] == ["good"]
    assert await asyncio.to_thread(store._fetch, text("SELECT key FROM thrifty_semantic_d4"), {}) == [("good",)]
