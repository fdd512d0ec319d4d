"""The guards' Redis going away: paid answers keep their rows, new requests get a clear 503, lost counts come back.

Redis is real, behind a TCP forwarder that can be cut (``TcpProxy``); the ledger is a real SQLite file.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from fakes.tcp_proxy import TcpProxy
from fakes.upstream import FakeUpstream, FakeUsage
from gateway_harness import config_text, ledger_rows
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings

REDIS_URL = os.environ.get("THRIFTY_TEST_REDIS_OUTAGE", "redis://127.0.0.1:6379/11")
MESSAGES = [{"role": "user", "content": "how much is it"}]


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200)) as upstream:
        yield upstream


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    import redis

    with redis.Redis.from_url(REDIS_URL) as r:
        r.flushdb()
    forwarder = TcpProxy("127.0.0.1", 6379)
    yield forwarder
    forwarder.close()


def gateway(tmp_path: Path, up: FakeUpstream, proxy: TcpProxy, usd: str = "1") -> ServerThread:
    url = REDIS_URL.replace(":6379/", f":{proxy.port}/")
    guards = f'\n[guards]\nstore = "redis"\nurl = "{url}"\n'
    budget = f'\n[[budgets]]\nscope = "tenant"\nid = "default"\nusd = {usd}\nperiod = "day"\nhard = true\n'
    (tmp_path / "thrifty.toml").write_text(config_text(up, extra=guards) + budget)
    return ServerThread(load_settings(tmp_path / "thrifty.toml"))


@pytest.mark.parametrize("stream", [False, True])
def test_redis_lost_while_the_model_answers_keeps_the_answer_and_its_row(
    tmp_path: Path, proxy: TcpProxy, stream: bool
) -> None:
    """The budget was reserved, then Redis went away while the model answered (the fake cuts it as it replies):
    the client still gets the answer it paid for, and the ledger still has its cost."""

    def reply(body: dict[str, Any]) -> str:
        proxy.cut()
        return "an answer"

    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200), reply=reply) as up:
        with gateway(tmp_path, up, proxy) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                if stream:
                    chunks = list(client.chat.completions.create(model="fast", messages=MESSAGES, stream=True))  # type: ignore[arg-type]
                    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                else:
                    answer = client.chat.completions.create(model="fast", messages=MESSAGES)  # type: ignore[arg-type]
                    text = answer.choices[0].message.content or ""
            (row,) = ledger_rows(gw)
    assert text == "an answer"
    assert row["status"] == "ok" and row["cost_nusd"] == 270_000  # 1000 in, 200 out on gpt-4o-mini


def test_redis_down_refuses_with_a_clear_503_and_readyz_says_so(
    tmp_path: Path, up: FakeUpstream, proxy: TcpProxy
) -> None:
    with gateway(tmp_path, up, proxy) as gw:
        assert httpx.get(gw.base_url + "/readyz").status_code == 200
        proxy.cut()
        response = httpx.post(gw.base_url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES})
        ready = httpx.get(gw.base_url + "/readyz", timeout=10)
        proxy.restore()
        after = httpx.post(gw.base_url + "/v1/chat/completions", json={"model": "fast", "messages": MESSAGES})
        rows = ledger_rows(gw)
    error = response.json()["error"]
    assert response.status_code == 503 and error["code"] == "guards_unavailable"
    assert set(error) == {"message", "type", "param", "code"} and "Redis" in error["message"]
    assert ready.status_code == 503
    assert after.status_code == 200
    assert len(up.requests) == 1  # nothing went upstream unchecked
    assert sorted(r["status"] for r in rows) == ["error", "ok"]


def test_a_budget_count_redis_lost_is_taken_again_from_the_ledger(tmp_path: Path, proxy: TcpProxy) -> None:
    """Redis restarted without persistence (or evicted the key) while a request was in flight: that request's
    settle must not recreate the count from its own cost alone, and the budget's spend is not reset."""
    import redis

    def reply(body: dict[str, Any]) -> str:
        with redis.Redis.from_url(REDIS_URL) as r:
            r.flushdb()  # what a restart without persistence leaves, mid-call
        return "an answer"

    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200), reply=reply) as up:
        with gateway(tmp_path, up, proxy, usd="0.0005") as gw:  # $0.00027 a call: a second one does not fit
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                client.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
                client.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
                gw.runtime.ledger.flush()  # the ledger is behind by its flush interval (tens of ms) at most
                with pytest.raises(openai.RateLimitError):
                    client.chat.completions.create(model="fast", messages=MESSAGES, max_tokens=5)  # type: ignore[arg-type]
            rows = ledger_rows(gw)
    spent = sum(Decimal(int(r["cost_nusd"] or 0)) for r in rows) / Decimal(10**9)
    assert spent == Decimal("0.00054")  # two calls: the second was admitted on $0.00027 of room, the third not


async def test_redis_renews_a_hold_and_never_revives_a_gone_one() -> None:
    import redis

    from thrifty.guards.stores import RedisGuardStore

    with redis.Redis.from_url(REDIS_URL) as r:
        r.flushdb()
    store = RedisGuardStore(REDIS_URL)
    try:
        assert (await store.reserve("k", "long", 300, 1000, 0.2, 0)).ok
        assert await store.extend("k", "long", 60)
        await asyncio.sleep(0.3)
        assert await store.reserved_total() == 300
        assert not (await store.reserve("k", "other", 701, 1000, 60, 0)).ok
        await store.settle("k", "long", 250)
        assert not await store.extend("k", "long", 60)
        assert (await store.reserve("k", "short", 100, 1000, 0.05, 0)).ok
        await asyncio.sleep(0.1)
        assert not await store.extend("k", "short", 60)
    finally:
        await store.aclose()
