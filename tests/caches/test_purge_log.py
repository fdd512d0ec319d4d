"""Purges hold everywhere: across replicas, from the CLI, against answers in flight, and for the feature purged."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from fakes.upstream import FakeUpstream, FakeUsage, Fault
from gateway_harness import config_text
from thrifty.caches.entries import CacheEntry, PurgeScope
from thrifty.caches.purge_log import MemoryPurgeLog, PostgresPurgeLog, PurgeRecords, RecentPurges
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings
from thrifty.types import Target, Usage

HI = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=100, output_tokens=20)) as upstream:
        yield upstream


def redis_cache() -> str:
    import redis

    url = os.environ.get("THRIFTY_TEST_REDIS", "redis://127.0.0.1:6379/12")
    try:
        with redis.Redis.from_url(url) as sync_redis:
            sync_redis.flushdb()
    except redis.RedisError as exc:
        if os.environ.get("THRIFTY_REQUIRE_SERVICES") == "1":
            raise
        pytest.skip(f"Redis not reachable: {exc}")
    return f"\n[cache]\nexact = true\nstore = 'redis'\nurl = '{url}'\n"


def gateway(folder: Path, up: FakeUpstream, cache: str) -> ServerThread:
    folder.mkdir(exist_ok=True)
    (folder / "thrifty.toml").write_text(config_text(up, extra=cache))
    return ServerThread(load_settings(folder / "thrifty.toml"))


def ask(gw: ServerThread, feature: str = "") -> Any:
    headers = {"x-thrifty-feature": feature} if feature else {}
    with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0) as c:
        return c.chat.completions.with_raw_response.create(
            model="fast", messages=HI, temperature=0, extra_headers=headers
        ).headers["x-thrifty-cache"]


def in_flight(gw: ServerThread, up: FakeUpstream) -> threading.Thread:
    """A request whose answer takes a second, started and being asked for when this returns."""
    up.script([Fault.delay(1.0)])
    slow = threading.Thread(target=lambda: ask(gw))
    slow.start()
    deadline = time.time() + 5
    while not up.requests and time.time() < deadline:
        time.sleep(0.01)
    return slow


def test_a_purge_on_one_replica_holds_against_an_answer_in_flight_on_another(tmp_path: Path, up: FakeUpstream) -> None:
    cache = redis_cache()
    with gateway(tmp_path / "a", up, cache) as a, gateway(tmp_path / "b", up, cache) as b:
        slow = in_flight(b, up)
        assert httpx.post(a.base_url + "/admin/cache/purge", json={"tenant": "default"}).json() == {"purged": 0}
        slow.join(10)
        # B read the purge (within a second) before storing what it was asked before it; had the answer reached
        # Redis, no replica would serve it: it predates the purge.
        assert ask(b) == "miss"  # before: an exact hit on the answer the purge was meant to remove
    assert len(up.requests) == 2


def test_a_cli_purge_holds_against_an_answer_in_flight(tmp_path: Path, up: FakeUpstream) -> None:
    with gateway(tmp_path, up, "\n[cache]\nexact = true\nstore = 'sqlite'\n") as gw:
        slow = in_flight(gw, up)
        done = subprocess.run(
            [sys.executable, "-m", "thrifty.cli", "cache", "purge", "--config", str(tmp_path / "thrifty.toml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        slow.join(10)
        assert ask(gw) == "miss"  # before, the CLI's purge never reached the gateway: this was an exact hit
        assert ask(gw) == "exact"


def test_purging_a_feature_stops_it_being_served_what_another_feature_stored(tmp_path: Path, up: FakeUpstream) -> None:
    with gateway(tmp_path, up, "\n[cache]\nexact = true\n") as gw:
        assert [ask(gw, "a"), ask(gw, "b")] == ["miss", "exact"]  # features share answers
        assert httpx.post(gw.base_url + "/admin/cache/purge", json={"feature": "b"}).json() == {"purged": 0}
        assert ask(gw, "a") == "exact"  # a's entry stays a's
        assert ask(gw, "b") == "miss"  # but no longer answers b
        assert ask(gw, "b") == "exact"  # b's own answer, asked after the purge


def entry(feature: str, created_at: float) -> CacheEntry:
    return CacheEntry({"choices": []}, Target("up", "m"), Usage(1, 1), "acme", feature, "fast", created_at, 1e12)


def test_records_cover_what_was_asked_before_them_only() -> None:
    records = PurgeRecords(((100.0, PurgeScope(tenant="acme", feature="b")),))
    assert records.covers(entry("b", 99.0))
    assert not records.covers(entry("b", 101.0))  # asked after the purge
    assert not records.covers(entry("a", 99.0))  # another feature's entry ...
    assert records.covers(entry("a", 99.0), asker_feature="b")  # ... unless b asks for it
    assert not PurgeRecords(((100.0, PurgeScope(tenant="globex")),)).covers(entry("b", 99.0), "b")
    assert PurgeRecords(((100.0, PurgeScope()),), skew_s=1.0).covers(entry("b", 100.5))


async def test_a_replica_reads_the_log_again_at_most_every_second() -> None:
    log = MemoryPurgeLog()
    reads = 0
    original = log.read

    async def counted(since: float) -> list[Any]:
        nonlocal reads
        reads += 1
        return await original(since)

    log.read = counted  # type: ignore[method-assign]
    view = RecentPurges(log)
    for _ in range(100):
        await view.current()
    assert reads == 1
    await view.record(PurgeScope(tenant="acme"))  # its own purge: read again at once
    assert len((await view.current()).records) == 1 and reads == 2


async def test_postgres_log_round_trips_and_forgets_old_records(pg_url: str) -> None:
    log = PostgresPurgeLog(pg_url)
    try:
        before = time.time() - 5
        await log.record(PurgeScope(tenant="acme", feature="faq"))
        (at, scope), *_ = await log.read(before)
        assert scope == PurgeScope(tenant="acme", feature="faq") and abs(at - time.time()) < 5
        assert await log.read(time.time() + 60) == []
    finally:
        await log.aclose()


def test_a_feature_purged_gets_its_own_semantic_entry_in_place_of_the_one_it_may_no_longer_use(
    tmp_path: Path, up: FakeUpstream
) -> None:
    """The semantic store kept one entry per question text: the old one, hidden from B by the purge, made B's
    fresh answer look like a duplicate, so B paid on every request until the old entry's TTL ran out."""
    with gateway(tmp_path, up, "\n[cache]\nsemantic = true\nembedder = 'hashing'\n") as gw:
        assert [ask(gw, "a"), ask(gw, "b")] == ["miss", "semantic"]
        assert httpx.post(gw.base_url + "/admin/cache/purge", json={"feature": "b"}).json() == {"purged": 0}
        assert ask(gw, "b") == "miss"
        assert ask(gw, "b") == "semantic"
    assert len(up.requests) == 2


async def test_a_replica_honours_its_own_purge_while_the_log_cannot_be_read() -> None:
    class Unreadable(MemoryPurgeLog):
        async def read(self, since: float) -> list[Any]:
            raise ConnectionError("redis went away")

    view = RecentPurges(Unreadable())
    await view.record(PurgeScope(tenant="acme"))
    assert (await view.current()).covers(entry("b", time.time() - 1))


async def test_a_waiter_gets_the_leaders_entry_only_within_its_own_ttl() -> None:
    """Identical requests share one store read; the entry it finds must still suit each asker (feature b keeps
    answers a minute, feature a a day)."""
    import asyncio

    from thrifty.caches.entries import MemoryStore
    from thrifty.caches.keys import exact_key
    from thrifty.caches.layered import CachePolicy, LayeredCache
    from thrifty.settings import CacheRule, CacheSettings
    from thrifty.types import ChatRequest, Principal

    class Slow(MemoryStore):
        async def get(self, key: str) -> CacheEntry | None:
            await asyncio.sleep(0.05)
            return await super().get(key)

    store = Slow()
    settings = CacheSettings(exact=True, features={"b": CacheRule(ttl_s=60)})
    cache = LayeredCache(CachePolicy(settings), store, {"fast": (Target("up", "m"),)})
    body = {"model": "fast", "messages": HI, "temperature": 0}
    a, b = Principal("acme", feature="a"), Principal("acme", feature="b")
    old = CacheEntry({"choices": []}, Target("up", "m"), Usage(1, 1), "acme", "a", "fast", time.time() - 120, 1e12)
    await store.put(exact_key(ChatRequest(body, "r0"), a, (Target("up", "m"),)), old)
    leader, waiter = await asyncio.gather(
        cache.lookup(ChatRequest(body, "r1"), a), cache.lookup(ChatRequest(body, "r2"), b)
    )
    assert leader is not None and waiter is None


async def test_replicas_starting_together_share_one_postgres_log(pg_url: str) -> None:
    import asyncio

    logs = [PostgresPurgeLog(pg_url) for _ in range(4)]
    try:
        await asyncio.gather(*(log.record(PurgeScope(tenant=f"t{i}")) for i, log in enumerate(logs)))
        assert sorted(scope.tenant or "" for _, scope in await logs[0].read(0.0)) == ["t0", "t1", "t2", "t3"]
    finally:
        for log in logs:
            await log.aclose()
