"""The exact cache through the running gateway and the official openai SDK, on memory, SQLite and Redis."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from fakes.upstream import FakeUpstream, FakeUsage, Fault
from gateway_harness import config_text, ledger_rows
from thrifty.caches.entries import CacheEntry, MemoryStore, PurgeScope
from thrifty.caches.shared_stores import REDIS_LRU, REDIS_PREFIX, RedisStore, SqliteStore
from thrifty.keys import create_key
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings
from thrifty.types import ChatRequest, ChatResponse, Principal, Target, Usage

HI = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200)) as upstream:
        yield upstream


def gateway(tmp_path: Path, up: FakeUpstream, cache: str) -> ServerThread:
    (tmp_path / "thrifty.toml").write_text(config_text(up, extra=cache))
    return ServerThread(load_settings(tmp_path / "thrifty.toml"))


def client(server: ServerThread, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)


MEMORY = "\n[cache]\nexact = true\n"


def test_repeat_is_served_from_cache_at_zero_cost_with_its_baseline(tmp_path: Path, up: FakeUpstream) -> None:
    with gateway(tmp_path, up, MEMORY) as gw, client(gw) as c:
        first = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
        second = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
        rows = ledger_rows(gw)
    assert first.headers["x-thrifty-cache"] == "miss" and second.headers["x-thrifty-cache"] == "exact"
    assert second.headers["x-thrifty-cost-usd"] == "0"
    assert second.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert second.parse().id != first.parse().id
    assert len(up.requests) == 1
    assert [(r["cache"], r["cost_nusd"], r["baseline_cost_nusd"]) for r in rows] == [
        ("", 270_000, 270_000),
        ("exact", 0, 270_000),
    ]
    with gw.runtime.ledger.engine.connect() as conn:
        from sqlalchemy import select

        from thrifty.ledger import tables

        savings = conn.execute(select(tables.savings)).all()
    assert [(s.lever, s.savings_nusd) for s in savings] == [("cache", 270_000)]


def test_bypass_header_skips_lookup_and_store(tmp_path: Path, up: FakeUpstream) -> None:
    with gateway(tmp_path, up, MEMORY) as gw, client(gw) as c:
        bypass = {"x-thrifty-cache": "bypass"}
        c.chat.completions.create(model="fast", messages=HI, temperature=0, extra_headers=bypass)
        raw = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
        assert raw.headers["x-thrifty-cache"] == "miss"
        raw = c.chat.completions.with_raw_response.create(
            model="fast", messages=HI, temperature=0, extra_headers=bypass
        )
        assert raw.headers["x-thrifty-cache"] == "miss"
    assert len(up.requests) == 3


def test_other_tenants_other_system_prompts_and_other_parameters_miss(tmp_path: Path, up: FakeUpstream) -> None:
    with gateway(tmp_path, up, MEMORY) as gw:
        engine = gw.runtime.ledger.engine
        acme, globex = create_key(engine, "acme")[1], create_key(engine, "globex")[1]
        gw.runtime.keys.refresh()
        with client(gw, acme) as a, client(gw, globex) as g:
            a.chat.completions.create(model="fast", messages=HI, temperature=0)
            assert (
                g.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0).headers[
                    "x-thrifty-cache"
                ]
                == "miss"
            )
            other_system = [{"role": "system", "content": "You are verbose."}, HI[1]]
            a.chat.completions.create(model="fast", messages=other_system, temperature=0)
            a.chat.completions.create(model="fast", messages=HI, temperature=0, max_tokens=5)
            a.chat.completions.create(model="resilient", messages=HI, temperature=0)
            hit = a.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
            assert hit.headers["x-thrifty-cache"] == "exact"
    assert len(up.requests) == 5 + 0  # 'resilient' answered by its second target after a refused connection


def test_streaming_request_is_served_from_cache_as_sse(tmp_path: Path, up: FakeUpstream) -> None:
    with gateway(tmp_path, up, MEMORY) as gw, client(gw) as c:
        fresh = "".join(
            ch.choices[0].delta.content or ""
            for ch in c.chat.completions.create(model="fast", messages=HI, temperature=0, stream=True)
            if ch.choices
        )
        raw = c.chat.completions.with_raw_response.create(
            model="fast", messages=HI, temperature=0, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(raw.parse())
        rows = ledger_rows(gw)
    assert raw.headers["x-thrifty-cache"] == "exact"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == fresh
    assert [ch.usage.completion_tokens for ch in chunks if ch.usage] == [200]
    assert len(up.requests) == 1
    assert [(r["streamed"], r["cache"], r["cost_nusd"]) for r in rows] == [(True, "", 270_000), (True, "exact", 0)]


def test_hot_requests_tool_calls_and_errors_are_never_cached(tmp_path: Path, up: FakeUpstream) -> None:
    cache = "\n[cache]\nexact = true\nmax_temperature = 0.5\n"
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    with gateway(tmp_path, up, cache) as gw, client(gw) as c:
        for _ in range(2):
            c.chat.completions.create(model="fast", messages=HI, temperature=0.9)
            c.chat.completions.create(model="fast", messages=HI)  # unset temperature is OpenAI's 1.0
            c.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "call tool"}], tools=tools, temperature=0
            )  # type: ignore[arg-type]
        up.fail_next(Fault.status(400))
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model="fast", messages=HI, temperature=0)
        raw = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
        assert raw.headers["x-thrifty-cache"] == "miss"
    assert len(up.requests) == 8


def test_per_feature_rules_refine_the_default(tmp_path: Path, up: FakeUpstream) -> None:
    cache = "\n[cache]\nexact = true\n[cache.features.live-scores]\nexact = false\n"
    with gateway(tmp_path, up, cache) as gw, client(gw) as c:
        for _ in range(2):
            c.chat.completions.create(
                model="fast", messages=HI, temperature=0, extra_headers={"x-thrifty-feature": "live-scores"}
            )
    assert len(up.requests) == 2


def test_changing_an_alias_targets_invalidates_its_entries(tmp_path: Path, up: FakeUpstream) -> None:
    cache = "\n[cache]\nstore = 'sqlite'\nexact = true\n"
    with gateway(tmp_path, up, cache) as gw, client(gw) as c:
        c.chat.completions.create(model="fast", messages=HI, temperature=0)
    text = (
        (tmp_path / "thrifty.toml").read_text().replace('targets = ["up::gpt-4o-mini"]', 'targets = ["up::gpt-4o"]', 1)
    )
    (tmp_path / "thrifty.toml").write_text(text)
    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw, client(gw) as c:
        raw = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
        assert raw.headers["x-thrifty-cache"] == "miss" and raw.headers["x-thrifty-model"] == "gpt-4o"
        raw = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
        assert raw.headers["x-thrifty-cache"] == "exact"


def rules_alias(default: str, feature: str, use: str) -> str:
    """A rules alias over gpt-4o-mini and gpt-4o: ``feature`` goes to ``use``, the rest to ``default``."""
    return (
        '[models.auto]\ntargets = ["up::gpt-4o-mini", "up::gpt-4o"]\nrouter = "rules"\n'
        f'default = "up::{default}"\n[[models.auto.rules]]\nfeature = "{feature}"\nuse = "up::{use}"\n'
    )


def test_changing_which_target_a_router_chooses_invalidates_its_entries(tmp_path: Path, up: FakeUpstream) -> None:
    """The key held only the alias's targets: moving a rule off gpt-4o-mini kept serving gpt-4o-mini's answers
    until their TTL ran out."""
    rules = "\n[cache]\nstore = 'sqlite'\nexact = true\n" + rules_alias("gpt-4o-mini", "support", "gpt-4o-mini")

    def ask() -> tuple[str, str]:
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw, client(gw) as c:
            raw = c.chat.completions.with_raw_response.create(
                model="auto", messages=HI, temperature=0, extra_headers={"x-thrifty-feature": "support"}
            )
            return raw.headers["x-thrifty-cache"], raw.headers["x-thrifty-model"]

    (tmp_path / "thrifty.toml").write_text(config_text(up, extra=rules))
    assert ask() == ("miss", "gpt-4o-mini")
    assert ask() == ("exact", "gpt-4o-mini")
    moved = rules.replace(
        rules_alias("gpt-4o-mini", "support", "gpt-4o-mini"), rules_alias("gpt-4o-mini", "support", "gpt-4o")
    )
    (tmp_path / "thrifty.toml").write_text(config_text(up, extra=moved))
    assert ask() == ("miss", "gpt-4o")
    assert ask() == ("exact", "gpt-4o")


def burst(gw: ServerThread, count: int, **kwargs: object) -> list[str]:
    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as ac:

            async def one() -> str:
                try:
                    reply = await ac.chat.completions.create(model="fast", messages=HI, temperature=0, **kwargs)  # type: ignore[call-overload]
                except openai.APIStatusError as exc:
                    return f"error {exc.status_code}"
                return reply.choices[0].message.content or ""

            return list(await asyncio.gather(*(one() for _ in range(count))))

    return asyncio.run(run())


def test_concurrent_identical_requests_are_coalesced_into_one_call(tmp_path: Path, up: FakeUpstream) -> None:
    """Twenty identical requests at once while the model takes 0.3 s: one call, nineteen exact hits at cost 0."""
    up.mode = Fault.delay(0.3)
    with gateway(tmp_path, up, MEMORY) as gw:
        answers = burst(gw, 20)
        rows = ledger_rows(gw)
        coalesced = gw.runtime.gateway.cache.coalesced  # type: ignore[attr-defined]
    assert answers == ["echo: What is the capital of France?"] * 20
    assert len(up.requests) == 1 and coalesced >= 1
    assert len(rows) == 20 and sum(1 for r in rows if r["cache"] == "exact") == 19
    assert all(r["cost_nusd"] == 0 and r["baseline_cost_nusd"] > 0 for r in rows if r["cache"])


def test_when_the_call_everyone_waits_for_fails_each_asks_for_itself(tmp_path: Path, up: FakeUpstream) -> None:
    up.mode = Fault.delay(0.2)
    with gateway(tmp_path, up, MEMORY) as gw:
        up.script([Fault.status(400)])  # the first call fails; the others are answered after 0.2 s
        answers = burst(gw, 5)
    assert answers.count("error 400") == 1
    assert answers.count("echo: What is the capital of France?") == 4
    assert 2 <= len(up.requests) <= 5  # the failed call, then one or more of the waiters (one leads again)


def entry(tenant: str, feature: str, alias: str, age_s: float = 0, ttl_s: float = 60) -> CacheEntry:
    now = time.time()
    return CacheEntry({"choices": []}, Target("up", "m"), Usage(1, 1), tenant, feature, alias, now - age_s, now + ttl_s)


async def check_store(store: MemoryStore | SqliteStore | RedisStore, prefix: str) -> None:
    await store.put(prefix + "a", entry("acme", "search", "fast"))
    await store.put(prefix + "b", entry("acme", "chat", "fast", age_s=7200))
    await store.put(prefix + "c", entry("globex", "search", "smart"))
    await store.put(prefix + "expired", entry("acme", "search", "fast", ttl_s=-1))
    assert await store.get(prefix + "expired") is None
    got = await store.get(prefix + "a")
    assert got is not None and got.tenant == "acme" and got.usage == Usage(1, 1)
    assert await store.purge(PurgeScope(older_than_s=3600)) == 1
    assert await store.purge(PurgeScope(tenant="acme", feature="search")) == 1
    assert await store.get(prefix + "c") is not None
    assert await store.purge(PurgeScope(alias="smart")) == 1
    assert await store.get(prefix + "c") is None


async def test_memory_store_purges_and_evicts() -> None:
    store = MemoryStore(max_entries=2)
    await check_store(MemoryStore(), "")
    for name in "xyz":
        await store.put(name, entry("t", "f", "a"))
    assert len(store) == 2 and await store.get("x") is None


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_at_the_size_limit_expired_entries_go_before_live_ones(backend: str) -> None:
    """One live day-long entry and three that expired: storing one more evicted the live one (the least recently
    used) while the dead ones kept their slots, on the memory and Redis stores (SQLite dropped expired first)."""
    if backend == "memory":
        store: MemoryStore | RedisStore = MemoryStore(max_entries=4)
    else:
        store = RedisStore(os.environ.get("THRIFTY_TEST_REDIS", "redis://127.0.0.1:6379/15"), max_entries=4)
        await reachable(store)
        await store._redis.flushdb()
    await store.put("live", entry("t", "f", "fast", ttl_s=86_400))
    for name in ("d1", "d2", "d3"):
        await store.put(name, entry("t", "f", "fast", ttl_s=0.2))
    await asyncio.sleep(0.4)
    await store.put("new", entry("t", "f", "fast", ttl_s=86_400))
    assert await store.get("live") is not None and await store.get("new") is not None
    if isinstance(store, RedisStore):
        assert await store._redis.zcard(REDIS_LRU) == 2
        await store.aclose()
    else:
        assert len(store) == 2


async def test_sqlite_store_purges(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cache.sqlite")
    await check_store(store, "")
    await store.aclose()


async def reachable(*stores: RedisStore) -> None:
    """Skip (or, where CI requires every backend, fail) when the test Redis is not running."""
    try:
        await stores[0]._redis.ping()
    except Exception as exc:
        for store in stores:
            await store.aclose()
        if os.environ.get("THRIFTY_REQUIRE_SERVICES") == "1":
            raise
        pytest.skip(f"Redis not reachable: {exc}")


async def test_redis_store_is_shared_and_purges() -> None:
    url = os.environ.get("THRIFTY_TEST_REDIS", "redis://127.0.0.1:6379/15")
    one, two = RedisStore(url), RedisStore(url)
    await reachable(one, two)
    prefix = "test-" + secrets.token_hex(4) + "-"
    await one._redis.flushdb()
    await one.put(prefix + "shared", entry("acme", "f", "fast"))
    assert await two.get(prefix + "shared") is not None  # another replica sees it
    await check_store(two, prefix)
    assert await two._redis.zcard(REDIS_LRU) == 1  # purged keys left the LRU order too
    await one.aclose()
    await two.aclose()


async def test_redis_store_keeps_max_entries_across_replicas_least_recently_used_first() -> None:
    url = os.environ.get("THRIFTY_TEST_REDIS", "redis://127.0.0.1:6379/15")
    one, two = RedisStore(url, max_entries=3), RedisStore(url, max_entries=3)
    await reachable(one, two)
    await one._redis.flushdb()
    for name in "abc":
        await one.put(name, entry("t", "f", "fast"))
    assert await two.get("a") is not None  # read on another replica: a is now the most recently used
    await two.put("d", entry("t", "f", "fast"))
    assert [await one.get(name) is not None for name in "abcd"] == [True, False, True, True]
    assert await one._redis.zcard(REDIS_LRU) == 3
    for i in range(20):
        await (one if i % 2 else two).put(f"n{i}", entry("t", "f", "fast"))
    keys = [k async for k in one._redis.scan_iter(match=REDIS_PREFIX + "*")]
    assert len(keys) == 3 and await one._redis.zcard(REDIS_LRU) == 3
    # A key Redis expired leaves the order when it is next read (and is not served).
    await one.put("short", entry("t", "f", "fast", ttl_s=0.15))
    assert await one._redis.zscore(REDIS_LRU, REDIS_PREFIX + "short") is not None
    await asyncio.sleep(0.3)
    assert await two.get("short") is None
    assert await one._redis.zscore(REDIS_LRU, REDIS_PREFIX + "short") is None
    await one.aclose()
    await two.aclose()


async def test_an_unreachable_redis_cache_is_a_miss_not_an_error() -> None:
    from redis.exceptions import RedisError

    from fakes.tcp_proxy import TcpProxy

    proxy = TcpProxy("127.0.0.1", 6379)
    store = RedisStore(f"redis://127.0.0.1:{proxy.port}/15")
    try:
        await reachable(store)
        await store.put("there", entry("t", "f", "fast"))
        assert await store.get("there") is not None
        proxy.cut()
        assert await store.get("there") is None  # the gateway answers without its cache
        with pytest.raises(RedisError):
            await store.put("there", entry("t", "f", "fast"))  # the cache stage logs this and goes on
    finally:
        await store.aclose()
        proxy.close()


def test_redis_cache_through_two_gateways(tmp_path: Path, up: FakeUpstream) -> None:
    url = os.environ.get("THRIFTY_TEST_REDIS", "redis://127.0.0.1:6379/14")
    cache = f"\n[cache]\nexact = true\nstore = 'redis'\nurl = '{url}'\n"
    import redis

    with redis.Redis.from_url(url) as sync_redis:
        sync_redis.flushdb()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with gateway(tmp_path / "a", up, cache) as a, gateway(tmp_path / "b", up, cache) as b:
        with client(a) as ca, client(b) as cb:
            question = [{"role": "user", "content": "unique " + secrets.token_hex(4)}]
            ca.chat.completions.create(model="fast", messages=question, temperature=0)
            raw = cb.chat.completions.with_raw_response.create(model="fast", messages=question, temperature=0)
    assert raw.headers["x-thrifty-cache"] == "exact"
    assert len(up.requests) == 1
    assert Decimal(raw.headers["x-thrifty-cost-usd"]) == 0


def test_purge_by_admin_endpoint_and_cli(tmp_path: Path, up: FakeUpstream) -> None:
    import subprocess
    import sys

    import httpx

    with gateway(tmp_path, up, MEMORY) as gw:
        with client(gw) as c:
            for feature in ("a", "b"):
                question = [{"role": "user", "content": f"question for {feature}"}]
                c.chat.completions.create(
                    model="fast", messages=question, temperature=0, extra_headers={"x-thrifty-feature": feature}
                )
        purge = gw.base_url + "/admin/cache/purge"
        assert httpx.post(purge, json={"feature": "a"}).json() == {"purged": 1}
        assert httpx.post(purge, json={"older_than_s": "soon"}).status_code == 400
        # A misspelt bound (the CLI's --older-than, "alias" for "model") was ignored: the purge took everything.
        for misspelt in ({"older_than": "7d"}, {"alias": "fast"}, {"feature": ["b"]}, {"older_than_s": True}):
            refused = httpx.post(purge, json=misspelt)
            assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "thrifty.cli",
                "cache",
                "purge",
                "--config",
                str(tmp_path / "thrifty.toml"),
                "--gateway",
                gw.base_url,
                "--tenant",
                "default",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "purged 1 entries in" in done.stdout
        _, secret = create_key(gw.runtime.ledger.engine, "acme")
        admin = create_key(gw.runtime.ledger.engine, "ops", admin=True)[1]
        gw.runtime.keys.refresh()
        denied = httpx.post(purge, json={}, headers={"authorization": f"Bearer {secret}"})
        assert denied.status_code == 403 and denied.json()["error"]["type"] == "permission_error"
        assert httpx.post(purge, json={}, headers={"authorization": f"Bearer {admin}"}).json() == {"purged": 0}


def test_cli_purges_a_sqlite_store(tmp_path: Path, up: FakeUpstream) -> None:
    import subprocess
    import sys

    with gateway(tmp_path, up, "\n[cache]\nexact = true\nstore = 'sqlite'\n") as gw, client(gw) as c:
        c.chat.completions.create(model="fast", messages=HI, temperature=0)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "thrifty.cli",
            "cache",
            "purge",
            "--config",
            str(tmp_path / "thrifty.toml"),
            "--older-than",
            "0s",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "purged 1 entries from the sqlite store" in done.stdout


def test_a_feature_ttl_bounds_the_age_of_what_it_is_served(tmp_path: Path, up: FakeUpstream) -> None:
    """The exact key is the same for every feature; an entry stored under the default day-long TTL is still too old
    for a feature whose TTL is 0.3 s."""
    cache = MEMORY + "[cache.features.news]\nttl_s = 0.3\n"
    news = {"x-thrifty-feature": "news"}

    def kind(headers: dict[str, str]) -> str:
        raw = c.chat.completions.with_raw_response.create(
            model="fast", messages=HI, temperature=0, extra_headers=headers
        )
        return raw.headers["x-thrifty-cache"]

    with gateway(tmp_path, up, cache) as gw, client(gw) as c:
        assert kind({}) == "miss"
        assert kind(news) == "exact"  # fresh enough for news too
        time.sleep(0.5)
        assert kind({}) == "exact"
        assert kind(news) == "miss"  # 0.5 s old: older than news allows
        assert kind(news) == "exact"
    assert len(up.requests) == 2


async def test_sqlite_store_evicts_the_least_recently_used(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cache.sqlite", max_entries=200)
    for i in range(255):
        await store.put(f"k{i}", entry("t", "f", "a"))
    assert await store.get("k0") is not None  # the oldest write, read just now
    await store.put("k255", entry("t", "f", "a"))  # the 256th write: eviction runs, 56 entries over the limit
    assert await store.get("k0") is not None and await store.get("k255") is not None
    assert await store.get("k1") is None and await store.get("k100") is not None
    assert await store.purge(PurgeScope()) == 200
    await store.aclose()


def layered(store: object) -> tuple[object, ChatRequest, Principal]:
    from thrifty.caches.layered import CachePolicy, LayeredCache
    from thrifty.settings import CacheSettings

    cache = LayeredCache(CachePolicy(CacheSettings(exact=True)), store, {"fast": (Target("up", "m"),)})  # type: ignore[arg-type]
    body = {"model": "fast", "messages": HI, "temperature": 0}
    return cache, ChatRequest(body, "req_1"), Principal("acme")


async def test_a_leader_that_never_releases_stalls_its_waiters_once_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from thrifty.caches import layered as layered_module

    monkeypatch.setattr(layered_module, "COALESCE_WAIT_S", 0.05)
    cache, request, principal = layered(MemoryStore())
    assert await cache.lookup(request, principal) is None  # type: ignore[attr-defined]  # leads, never releases
    started = time.monotonic()
    assert await cache.lookup(replace(request, request_id="req_2"), principal) is None  # type: ignore[attr-defined]
    assert time.monotonic() - started >= 0.05  # waited, then gave up on it
    started = time.monotonic()
    assert await cache.lookup(replace(request, request_id="req_3"), principal) is None  # type: ignore[attr-defined]
    assert time.monotonic() - started < 0.05  # the stale slot is gone: this one leads at once


async def test_a_store_that_fails_neither_raises_nor_strands_waiters() -> None:
    class Broken(MemoryStore):
        async def put(self, key: str, entry: CacheEntry) -> None:
            raise ConnectionError("redis went away")

    cache, request, principal = layered(Broken())
    assert await cache.lookup(request, principal) is None  # type: ignore[attr-defined]
    waiter = asyncio.ensure_future(cache.lookup(replace(request, request_id="req_2"), principal))  # type: ignore[attr-defined]
    await asyncio.sleep(0.01)
    answer = {"choices": [{"message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}]}
    await cache.store(request, principal, ChatResponse(answer, Usage(10, 2), Target("up", "m"), 5.0))  # type: ignore[attr-defined]
    served = await asyncio.wait_for(waiter, 1)
    assert served is not None and served.cache == "exact" and served.body["choices"][0]["message"]["content"] == "Paris"


def test_an_answer_cut_at_its_cap_is_never_cached(tmp_path: Path, up: FakeUpstream) -> None:
    """A cut answer is incomplete, and the cap that cut it may be the gateway's own (a hard budget's, a feature's
    default), which the key does not hold: served again it would pass a fragment off as the answer."""
    up.cut_short = True
    with gateway(tmp_path, up, MEMORY) as gw, client(gw) as c:
        for _ in range(2):
            raw = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
            assert raw.headers["x-thrifty-cache"] == "miss"
            assert raw.parse().choices[0].finish_reason == "length"
        for _ in range(2):
            stream = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0, stream=True)
            assert stream.headers["x-thrifty-cache"] == "miss"
            assert [ch.choices[0].finish_reason for ch in stream.parse() if ch.choices][-1] == "length"
    assert len(up.requests) == 4


def test_every_field_but_a_known_few_is_part_of_the_key(tmp_path: Path, up: FakeUpstream) -> None:
    """Fields the gateway does not know (``verbosity``, a server's ``guided_json``) reach the provider as sent and
    may change the answer; ``user`` and ``metadata`` cannot."""
    with gateway(tmp_path, up, MEMORY) as gw, client(gw) as c:

        def cache(**extra: object) -> str:
            raw = c.chat.completions.with_raw_response.create(
                model="fast", messages=HI, temperature=0, extra_body=extra
            )
            return raw.headers["x-thrifty-cache"]

        assert cache(verbosity="low") == "miss"
        assert cache(verbosity="high") == "miss"
        assert cache(verbosity="low") == "exact"
        assert cache(guided_json={"type": "object"}) == "miss"
        assert cache(guided_json={"type": "array"}) == "miss"
        assert cache(verbosity="high", user="someone-else", metadata={"run": "2"}) == "exact"
    assert len(up.requests) == 4


def test_the_bypass_header_is_read_whatever_its_case(tmp_path: Path, up: FakeUpstream) -> None:
    with gateway(tmp_path, up, MEMORY) as gw, client(gw) as c:
        c.chat.completions.create(model="fast", messages=HI, temperature=0, extra_headers={"x-thrifty-cache": "Bypass"})
        raw = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
    assert raw.headers["x-thrifty-cache"] == "miss"
    assert len(up.requests) == 2


def test_a_feature_whose_plan_shapes_answers_gets_its_own_entries(tmp_path: Path, up: FakeUpstream) -> None:
    """A feature's optimizer plan (here: a stop sequence) changes what the model answers; another feature asking
    the same must not be served that answer, and vice versa."""
    config = MEMORY + '\n[optimize.features.short.caps]\nstop = ["\\n\\n"]\n'
    with gateway(tmp_path, up, config) as gw, client(gw) as c:

        def cache(feature: str) -> str:
            raw = c.chat.completions.with_raw_response.create(
                model="fast", messages=HI, temperature=0, extra_headers={"x-thrifty-feature": feature}
            )
            return raw.headers["x-thrifty-cache"]

        assert [cache("short"), cache("long"), cache("short"), cache("long"), cache("other")] == [
            "miss",
            "miss",
            "exact",
            "exact",
            "exact",  # features without a plan of their own share entries, as before
        ]
    assert up.requests[0].json["stop"] == ["\n\n"] and "stop" not in up.requests[1].json
    assert len(up.requests) == 2


def test_hits_call_no_model_so_they_count_no_tokens_against_rate_limits(tmp_path: Path, up: FakeUpstream) -> None:
    """The miss counts its 1,200 tokens against a 1,500-a-minute limit; hits must not add theirs, else a tenant
    served from its cache is refused on tokens no provider ever saw."""
    config = MEMORY + '\n[[rate_limits]]\nscope = "tenant"\ntpm = 1500\n'
    with gateway(tmp_path, up, config) as gw, client(gw) as c:
        seen = [
            c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0).headers[
                "x-thrifty-cache"
            ]
            for _ in range(4)
        ]
        seen.append(
            c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0, stream=True).headers[
                "x-thrifty-cache"
            ]
        )
    assert seen == ["miss", "exact", "exact", "exact", "exact"]
    assert len(up.requests) == 1


def test_the_report_counts_a_hit_as_a_request_but_not_its_tokens_again(tmp_path: Path, up: FakeUpstream) -> None:
    from thrifty.ledger.queries import report

    with gateway(tmp_path, up, MEMORY) as gw, client(gw) as c:
        for _ in range(3):
            c.chat.completions.create(model="fast", messages=HI, temperature=0)
        ledger_rows(gw)  # flushed
        [row] = report(gw.runtime.ledger.engine, "tenant")
    assert (row.requests, row.input_tokens, row.output_tokens) == (3, 1000, 200)
    assert row.cost_usd == Decimal("0.00027") and row.baseline_cost_usd == Decimal("0.00081")


def test_an_answer_asked_for_before_a_purge_is_not_stored_after_it(tmp_path: Path, up: FakeUpstream) -> None:
    """A purge (the knowledge behind a feature changed) must not be undone by an answer that was in flight."""
    import threading

    import httpx

    up.script([Fault.delay(1.0)])
    with gateway(tmp_path, up, MEMORY) as gw, client(gw) as c:
        slow = threading.Thread(target=lambda: c.chat.completions.create(model="fast", messages=HI, temperature=0))
        slow.start()
        deadline = time.time() + 5
        while not up.requests and time.time() < deadline:  # the slow answer is being asked for
            time.sleep(0.01)
        assert httpx.post(gw.base_url + "/admin/cache/purge", json={"tenant": "default"}).json() == {"purged": 0}
        slow.join(10)
        again = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
        last = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
    assert again.headers["x-thrifty-cache"] == "miss" and last.headers["x-thrifty-cache"] == "exact"
    assert len(up.requests) == 2


def test_an_answer_cached_from_a_stream_is_served_whole_with_its_usage(tmp_path: Path, up: FakeUpstream) -> None:
    with gateway(tmp_path, up, MEMORY) as gw, client(gw) as c:
        list(c.chat.completions.create(model="fast", messages=HI, temperature=0, stream=True))
        hit = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
    assert hit.headers["x-thrifty-cache"] == "exact"
    usage = hit.parse().usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (1000, 200)


def test_feature_names_from_clients_do_not_grow_the_rule_table() -> None:
    from thrifty.caches.layered import CachePolicy
    from thrifty.settings import CacheRule, CacheSettings

    policy = CachePolicy(CacheSettings(exact=True, features={"faq": CacheRule(ttl_s=60)}))
    for i in range(1000):  # x-thrifty-feature is the client's to set
        assert policy.rule("fast", f"feature-{i}").ttl_s == 86_400
    assert policy.rule("fast", "faq").ttl_s == 60
    assert len(policy._resolved) == 2


async def test_a_sqlite_store_keeps_its_size_limit_across_short_lived_processes(tmp_path: Path) -> None:
    for _process in range(3):  # each process stores fewer than the 256 puts between sweeps
        store = SqliteStore(tmp_path / "c.sqlite", max_entries=10)
        for _ in range(100):
            await store.put(secrets.token_hex(8), entry("t", "f", "fast"))
        await store.aclose()
    store = SqliteStore(tmp_path / "c.sqlite", max_entries=10)
    (count,) = store._db.execute("SELECT count(*) FROM cache_entries").fetchone()
    await store.aclose()
    assert count == 10


def test_answers_from_a_provider_that_reports_no_usage_are_cached_with_counted_usage(
    tmp_path: Path, up: FakeUpstream
) -> None:
    """Local and self-hosted servers often send no usage: nothing of theirs was ever cached, and nothing said so."""
    up.chat_usage = False
    up.usage = None
    with gateway(tmp_path, up, MEMORY) as gw, client(gw) as c:
        first = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
        hit = c.chat.completions.with_raw_response.create(model="fast", messages=HI, temperature=0)
        other = [{"role": "user", "content": "And the capital of Spain?"}]
        list(c.chat.completions.create(model="fast", messages=other, temperature=0, stream=True))
        streamed_hit = c.chat.completions.with_raw_response.create(model="fast", messages=other, temperature=0)
        rows = ledger_rows(gw)
    assert [first.headers["x-thrifty-cache"], hit.headers["x-thrifty-cache"]] == ["miss", "exact"]
    assert streamed_hit.headers["x-thrifty-cache"] == "exact"
    assert len(up.requests) == 2
    assert hit.parse().usage is not None and hit.parse().usage.completion_tokens > 0  # type: ignore[union-attr]
    hits = [r for r in rows if r["cache"] == "exact"]
    assert [(r["cost_nusd"], r["baseline_cost_nusd"] > 0) for r in hits] == [(0, True), (0, True)]


def test_features_a_rule_routes_to_different_models_do_not_share_answers(tmp_path: Path, up: FakeUpstream) -> None:
    """Features share entries, but not where a rule sends one feature to another model: "premium" was served the
    answer gpt-4o-mini gave "free"."""
    cache = '\n[cache]\nexact = true\nsemantic = true\nembedder = "hashing"\nsemantic_threshold = 0.3\n'
    rules = cache + rules_alias("gpt-4o", "free", "gpt-4o-mini")
    with gateway(tmp_path, up, rules) as gw, client(gw) as c:

        def ask(feature: str, text: str = "explain quicksort") -> tuple[str, str]:
            raw = c.chat.completions.with_raw_response.create(
                model="auto",
                messages=[{"role": "user", "content": text}],
                temperature=0,
                extra_headers={"x-thrifty-feature": feature},
            )
            return raw.headers["x-thrifty-cache"], raw.headers["x-thrifty-model"]

        assert ask("free") == ("miss", "gpt-4o-mini")
        assert ask("premium") == ("miss", "gpt-4o")
        assert ask("premium", "explain quicksort please") == ("semantic", "gpt-4o")
        assert ask("free") == ("exact", "gpt-4o-mini")


def test_a_recalibrated_learned_router_keys_new_entries_and_a_static_alias_keeps_its_keys(
    tmp_path: Path, up: FakeUpstream
) -> None:
    from thrifty.cache_assembly import cache_identities

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "router.json").write_text('{"point": 1}')
    learned = '\n[models.auto]\ntargets = ["up::gpt-4o-mini", "up::gpt-4o"]\nrouter = "learned"\nrouter_dir = "r"\n'
    (tmp_path / "thrifty.toml").write_text(config_text(up, extra=learned))
    settings = load_settings(tmp_path / "thrifty.toml")
    aliases = {alias: settings.alias_targets(alias) for alias in settings.models}
    before = cache_identities(settings, aliases)
    (tmp_path / "r" / "router.json").write_text('{"point": 2}')  # `thrifty router calibrate` saved another point
    after = cache_identities(settings, aliases)
    assert before["auto"] != after["auto"] and before["auto"][:2] == aliases["auto"]
    assert before["fast"] == after["fast"] == aliases["fast"]  # a static list: its targets say it all


async def test_an_entry_stored_twice_alike_expires_once() -> None:
    store = MemoryStore(max_entries=1)
    same = entry("t", "f", "fast", ttl_s=0.1)
    await store.put("k", same)
    await store.put("k", same)  # the same expiry pushed twice
    await asyncio.sleep(0.2)
    await store.put("other", entry("t", "f", "fast"))  # over the limit: "k" expired, dropped once
    assert len(store) == 1 and await store.get("other") is not None


@pytest.mark.parametrize(
    ("choice", "cacheable"),
    [
        ({"finish_reason": "stop", "message": {"role": "assistant", "content": "Paris."}}, True),
        # OpenRouter: a failure mid-answer is an HTTP 200 whose choice finished "error" (was cached and replayed).
        ({"finish_reason": "error", "error": {"code": 502}, "message": {"content": "partial ans"}}, False),
        ({"finish_reason": None, "message": {"content": "unfinished"}}, False),
        ({"finish_reason": "length", "message": {"content": "cut"}}, False),
        ({"finish_reason": "content_filter", "message": {"content": ""}}, False),
        # A refusal, perhaps a false one, replayed free for the TTL (Anthropic's already were not cached).
        ({"finish_reason": "stop", "message": {"content": None, "refusal": "I can't help with that."}}, False),
    ],
)
def test_only_whole_answers_are_cacheable(choice: dict[str, object], cacheable: bool) -> None:
    from thrifty.caches.keys import cacheable_response

    assert cacheable_response({"choices": [{"index": 0, **choice}]}, cache_tool_calls=False) is cacheable


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ({}, {"temperature": 1}),
        ({"temperature": 0}, {"temperature": 0.0}),  # as the JS and Python SDKs send it
        ({"seed": None}, {}),
        ({"n": 1}, {}),
        ({"tools": []}, {}),
        ({"max_tokens": 50}, {"max_completion_tokens": 50}),
    ],
)
def test_requests_that_mean_the_same_share_a_key(one: dict[str, object], other: dict[str, object]) -> None:
    from thrifty.caches.keys import exact_key, semantic_query

    def request(extra: dict[str, object]) -> ChatRequest:
        return ChatRequest({"model": "fast", "messages": [{"role": "user", "content": "hi"}], **extra}, "r")

    targets, asker = (Target("up", "gpt-4o-mini"),), Principal("t")
    assert exact_key(request(one), asker, targets) == exact_key(request(other), asker, targets)
    assert semantic_query(request(one), asker, targets) == semantic_query(request(other), asker, targets)
    assert exact_key(request({"temperature": 0}), asker, targets) != exact_key(request({}), asker, targets)
