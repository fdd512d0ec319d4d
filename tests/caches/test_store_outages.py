"""A shared cache store that is slow, locked, down or holds garbage costs a miss, never an error or a long wait."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from fakes.upstream import FakeUpstream, FakeUsage
from gateway_harness import config_text
from thrifty.caches import resilient
from thrifty.caches.entries import CacheEntry, MemoryStore, PurgeScope
from thrifty.caches.layered import CachePolicy, LayeredCache
from thrifty.caches.resilient import Breaker
from thrifty.caches.shared_stores import REDIS_PREFIX, RedisStore, SqliteStore
from thrifty.server.run import ServerThread
from thrifty.settings import CacheSettings, load_settings
from thrifty.types import ChatRequest, ChatResponse, Principal, Target, Usage

HI = [{"role": "user", "content": "What is the capital of France?"}]
ANSWER = {"choices": [{"message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}]}


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=100, output_tokens=20)) as upstream:
        yield upstream


def entry(ttl_s: float = 60) -> CacheEntry:
    now = time.time()
    return CacheEntry(ANSWER, Target("up", "m"), Usage(1, 1), "acme", "f", "fast", now, now + ttl_s)


def layered(store: object) -> tuple[LayeredCache, ChatRequest, Principal]:
    cache = LayeredCache(CachePolicy(CacheSettings(exact=True)), store, {"fast": (Target("up", "m"),)})  # type: ignore[arg-type]
    return cache, ChatRequest({"model": "fast", "messages": HI, "temperature": 0}, "req_1"), Principal("acme")


def redis_url() -> str:
    return os.environ.get("THRIFTY_TEST_REDIS", "redis://127.0.0.1:6379/13")


async def open_redis() -> RedisStore:
    store = RedisStore(redis_url())
    try:
        await store._redis.ping()
    except Exception as exc:
        await store.aclose()
        if os.environ.get("THRIFTY_REQUIRE_SERVICES") == "1":
            raise
        pytest.skip(f"Redis not reachable: {exc}")
    await store._redis.flushdb()
    return store


@pytest.mark.parametrize("garbage", [b"not json", b'{"body": {}}', b'{"body": {"choices": []}, "usage": 3}'])
def test_a_corrupt_redis_value_is_a_miss_and_is_replaced(tmp_path: Path, up: FakeUpstream, garbage: bytes) -> None:
    import redis

    url = redis_url()
    with redis.Redis.from_url(url) as sync_redis:
        sync_redis.flushdb()
        (tmp_path / "thrifty.toml").write_text(
            config_text(up, extra=f"\n[cache]\nexact = true\nstore = 'redis'\nurl = '{url}'\n")
        )
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0) as c:
                c.chat.completions.create(model="fast", messages=HI, temperature=0)
                (key,) = sync_redis.keys(REDIS_PREFIX + "*")
                sync_redis.set(key, garbage)  # another program, or a broken write, left this under the key
                raw = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
                again = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
        stored = sync_redis.get(key)
    assert raw.headers["x-thrifty-cache"] == "miss" and raw.parse().choices[0].message.content
    assert again.headers["x-thrifty-cache"] == "exact"  # the answer paid for again took the garbage's place
    assert len(up.requests) == 2
    assert stored is not None and CacheEntry.from_bytes(stored).tenant == "default"


async def test_a_purge_passes_over_unreadable_values() -> None:
    store = await open_redis()
    try:
        for name in "abc":
            await store.put(name, entry())
        await store._redis.set(REDIS_PREFIX + "foreign", b"not json")
        assert await store.purge(PurgeScope(tenant="acme")) == 3
        assert await store._redis.keys(REDIS_PREFIX + "*") == []
    finally:
        await store.aclose()


async def test_a_sqlite_store_another_process_locks_costs_no_wait(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    store = SqliteStore(path)
    cache, request, principal = layered(store)
    await store.put("kept", entry())
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. `thrifty cache purge` deleting a large cache
    try:
        started = time.monotonic()
        assert await store.get("kept") is not None  # WAL: readers go on; the recency update is skipped
        assert await cache.lookup(request, principal) is None
        await cache.store(request, principal, ChatResponse(ANSWER, Usage(10, 2), Target("up", "m"), 5.0))
        assert time.monotonic() - started < 1.0  # sqlite3's default was 5 s blocking the event loop per call
    finally:
        other.execute("ROLLBACK")
        other.close()
        await store.aclose()


class Stalled(MemoryStore):
    """A store whose server accepted the connection and never answers."""

    remote = True

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def get(self, key: str) -> CacheEntry | None:
        self.calls += 1
        await asyncio.sleep(3600)
        return None


async def test_a_stalled_store_costs_one_timeout_then_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    from thrifty.caches import layered as layered_module

    monkeypatch.setattr(layered_module, "LOOKUP_TIMEOUT_S", 0.05)
    store = Stalled()
    cache, request, principal = layered(store)
    started = time.monotonic()
    assert await cache.lookup(request, principal) is None
    cache.release(request, principal)
    assert time.monotonic() - started < 1.0
    assert await cache.lookup(request, principal) is None
    assert store.calls == 1 and cache.breaker.skipped == 1  # cooling down: not asked again


async def test_the_breaker_probes_again_after_a_cooldown_that_doubles() -> None:
    now = [0.0]
    breaker = Breaker("test store", clock=lambda: now[0])
    calls: list[int] = []

    async def failing() -> int:
        calls.append(1)
        raise ConnectionError("down")

    async def working() -> int:
        return 7

    assert await breaker.call(failing, 1.0, -1, "x") == -1
    assert await breaker.call(working, 1.0, -1, "x") == -1 and breaker.open  # skipped: cooling down
    now[0] += resilient.FIRST_COOLDOWN_S
    assert await breaker.call(failing, 1.0, -1, "x") == -1 and len(calls) == 2
    now[0] += resilient.FIRST_COOLDOWN_S
    assert breaker.open  # the second failure in a row doubled the wait
    now[0] += resilient.FIRST_COOLDOWN_S
    assert await breaker.call(working, 1.0, -1, "x") == 7
    assert await breaker.call(failing, 1.0, -1, "x") == -1
    now[0] += resilient.FIRST_COOLDOWN_S  # a success reset it: the next wait is the first again
    assert not breaker.open


async def test_an_entry_of_another_tenant_under_the_key_is_never_served() -> None:
    """The tenant is part of the key; a shared store written by every replica (or by anything else) is still
    not trusted to hold only the asker's entries."""
    from thrifty.caches.keys import exact_key

    store = MemoryStore()
    cache, request, principal = layered(store)
    key = exact_key(request, principal, (Target("up", "m"),))
    await store.put(key, entry())  # tenant "acme": the asker's, so a hit
    assert await cache.lookup(request, principal) is not None
    now = time.time()
    foreign = CacheEntry(ANSWER, Target("up", "m"), Usage(1, 1), "globex", "f", "fast", now, now + 60)
    await store.put(key, foreign)
    assert await cache.lookup(request, principal) is None


def test_stores_set_up_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    """Creating the tables waits for the lock as a purge would: 50 ms (the request path's wait) failed start-up."""
    from thrifty.caches.purge_log import SqlitePurgeLog

    path = tmp_path / "cache.sqlite"
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA journal_mode=WAL")  # as any earlier version left it
    db.close()
    other = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    import threading

    threading.Timer(0.3, lambda: (other.execute("ROLLBACK"), other.close())).start()
    SqliteStore(path)
    SqlitePurgeLog(path)


async def test_after_a_cooldown_one_call_probes_while_the_others_skip() -> None:
    now = [0.0]
    breaker = Breaker("test store", clock=lambda: now[0])
    release = asyncio.Event()
    calls: list[str] = []

    async def failing() -> int:
        raise ConnectionError("down")

    async def slow() -> int:
        calls.append("probe")
        await release.wait()
        return 7

    async def quick() -> int:
        calls.append("quick")
        return 8

    assert await breaker.call(failing, 1.0, -1, "x") == -1
    now[0] += resilient.FIRST_COOLDOWN_S
    probe = asyncio.ensure_future(breaker.call(slow, 1.0, -1, "x"))
    await asyncio.sleep(0)
    assert await breaker.call(quick, 1.0, -1, "x") == -1  # the probe is out: this one does not pile on
    release.set()
    assert await probe == 7
    assert await breaker.call(quick, 1.0, -1, "x") == 8
    assert calls == ["probe", "quick"]


async def test_a_purge_waiting_for_the_lock_leaves_the_event_loop_serving(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite"
    store = SqliteStore(path)
    await store.put("kept", entry())
    other = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process writing
    try:
        purge = asyncio.ensure_future(store.purge(PurgeScope()))
        await asyncio.sleep(0.1)
        assert not purge.done()  # waiting in its own thread: run on the loop, this sleep would have waited for it
        assert await store.get("kept") is not None  # and lookups go on meanwhile
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert await purge == 1
    await store.aclose()


async def test_a_burst_of_timeouts_is_one_outage_and_a_late_success_does_not_close_the_breaker() -> None:
    """Forty lookups waiting on a stalled store all time out: the cool-down must not double forty times (to a
    minute of no cache under exactly the load where it saves most); a call from before the outage that succeeds
    late is no sign the store is back."""
    now = [0.0]
    breaker = Breaker("test store", clock=lambda: now[0])
    release = asyncio.Event()

    async def stalled() -> int:
        await release.wait()
        raise TimeoutError

    async def late() -> int:
        await release.wait()
        return 1

    calls = [asyncio.ensure_future(breaker.call(stalled, None, -1, "x")) for _ in range(40)]
    slow_success = asyncio.ensure_future(breaker.call(late, None, -1, "x"))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*calls, slow_success)
    assert breaker.open
    now[0] += resilient.FIRST_COOLDOWN_S  # one cool-down, not 2 ** 40 of them
    assert not breaker.open


async def test_a_refused_input_is_that_calls_miss_only() -> None:
    breaker = Breaker("test embedder", trips=lambda exc: not isinstance(exc, ValueError))

    async def refused() -> int:
        raise ValueError("input too long")

    assert await breaker.call(refused, 1.0, -1, "x") == -1
    assert not breaker.open
