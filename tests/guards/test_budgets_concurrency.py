"""Budgets under concurrency: 200 requests at once against a budget worth about 20, on one process and on two
replicas sharing Redis and PostgreSQL; with a third of the upstream calls failing, no reservation leaks."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from fakes.upstream import FakeUpstream, Fault
from gateway_harness import config_text, ledger_rows
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings

REDIS_URL = os.environ.get("THRIFTY_TEST_REDIS_GUARDS", "redis://127.0.0.1:6379/13")
# The fake counts words: "echo: " plus the question's 6 words is 7 output tokens, and the input is its words.
# With max_tokens = 8 the reservation (counted input + 8 output tokens) is close to the real cost, so a burst
# admits about as many requests as the budget can pay for: about 20.
QUESTION = "please answer question number {n} now"
LIMIT_USD = Decimal("0.0001")


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


def budget_config(up: FakeUpstream, ledger_url: str, store: str) -> str:
    guards = f'\n[guards]\nstore = "{store}"\nurl = "{REDIS_URL}"\n' if store == "redis" else ""
    return config_text(up, ledger_url=ledger_url, extra=guards) + (
        f'\n[[budgets]]\nscope = "tenant"\nid = "default"\nusd = {LIMIT_USD}\nperiod = "day"\nhard = true\n'
    )


async def fire(base_urls: list[str], count: int) -> list[object]:
    clients = [openai.AsyncOpenAI(base_url=u + "/v1", api_key="x", max_retries=0) for u in base_urls]

    async def one(n: int) -> object:
        try:
            return await clients[n % len(clients)].chat.completions.create(
                model="fast", messages=[{"role": "user", "content": QUESTION.format(n=n)}], max_tokens=8
            )
        except openai.APIStatusError as exc:
            return exc

    try:
        return list(await asyncio.gather(*(one(n) for n in range(count))))
    finally:
        for client in clients:
            await client.close()


def check(results: list[object], rows: list[dict[str, object]], failing: bool) -> None:
    refused = [r for r in results if isinstance(r, openai.APIStatusError) and r.status_code == 429]
    answered = [r for r in results if not isinstance(r, openai.APIStatusError)]
    assert refused, "the budget never refused anything"
    for error in refused:
        assert isinstance(error, openai.APIStatusError)
        assert error.body["code"] == "budget_exceeded" and error.body["type"] == "insufficient_quota"  # type: ignore[index]
        assert "limit $0.0001 per day" in error.message
    spent = sum(Decimal(int(r["cost_nusd"] or 0)) / Decimal(10**9) for r in rows)
    largest = max(Decimal(int(r["cost_nusd"] or 0)) / Decimal(10**9) for r in rows)
    assert spent <= LIMIT_USD + largest, f"spent {spent} on a budget of {LIMIT_USD}"
    if not failing:  # failed calls free their reservations after the burst's refusals were already given
        assert spent >= LIMIT_USD / 2, f"only {spent} spent: the budget refused far too early"
    assert len([r for r in rows if r["status"] == "ok"]) == len(answered)
    if failing:
        assert any(isinstance(r, openai.APIStatusError) and r.status_code == 503 for r in results)


def test_one_process_never_overshoots(tmp_path: Path, up: FakeUpstream) -> None:
    (tmp_path / "thrifty.toml").write_text(budget_config(up, "sqlite:///ledger.sqlite", "memory"))
    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
        results = asyncio.run(fire([gw.base_url], 200))
        rows = ledger_rows(gw)
        assert gw.runtime.guard_store is not None
        assert asyncio.run(gw.runtime.guard_store.reserved_total()) == 0
    check(results, rows, failing=False)


def test_one_process_with_failing_upstream_leaks_no_reservation(tmp_path: Path, up: FakeUpstream) -> None:
    up.script([Fault.status(500) if n % 3 == 0 else Fault.ok() for n in range(200)])
    (tmp_path / "thrifty.toml").write_text(budget_config(up, "sqlite:///ledger.sqlite", "memory"))
    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
        results = asyncio.run(fire([gw.base_url], 200))
        rows = ledger_rows(gw)
        assert gw.runtime.guard_store is not None
        assert asyncio.run(gw.runtime.guard_store.reserved_total()) == 0
    check(results, rows, failing=True)


@pytest.mark.postgres
@pytest.mark.parametrize("failing", [False, True])
def test_two_replicas_share_the_budget(tmp_path: Path, up: FakeUpstream, pg_url: str, failing: bool) -> None:
    import redis

    with redis.Redis.from_url(REDIS_URL) as r:
        r.flushdb()
    if failing:
        up.script([Fault.status(500) if n % 3 == 0 else Fault.ok() for n in range(200)])
    replicas = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "thrifty.toml").write_text(budget_config(up, pg_url, "redis"))
        replicas.append(ServerThread(load_settings(tmp_path / name / "thrifty.toml")))
    with replicas[0] as a, replicas[1] as b:
        results = asyncio.run(fire([a.base_url, b.base_url], 200))
        ledger_rows(a)
        rows = ledger_rows(b)  # one PostgreSQL ledger: both replicas' rows
        assert a.runtime.guard_store is not None
        deadline = time.monotonic() + 5
        while asyncio.run(_reserved(REDIS_URL)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert asyncio.run(_reserved(REDIS_URL)) == 0
    assert len(rows) == 200
    check(results, rows, failing=failing)


async def _reserved(url: str) -> int:
    from thrifty.guards.stores import RedisGuardStore

    store = RedisGuardStore(url)
    try:
        return await store.reserved_total()
    finally:
        await store.aclose()
