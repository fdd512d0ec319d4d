"""Rate limits across two replicas sharing Redis, agent caps, clamping, and cost quotes."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from fakes.upstream import FakeUpstream
from gateway_harness import config_text, ledger_rows
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings

REDIS_URL = os.environ.get("THRIFTY_TEST_REDIS_LIMITS", "redis://127.0.0.1:6379/12")
HI = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


def start(tmp_path: Path, name: str, text: str) -> ServerThread:
    (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / name / "thrifty.toml").write_text(text)
    return ServerThread(load_settings(tmp_path / name / "thrifty.toml"))


def wait_for_a_fresh_minute() -> None:
    """Fixed windows are calendar minutes; start well inside one so the test sees a single window."""
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)


def test_requests_per_minute_hold_across_two_replicas(tmp_path: Path, up: FakeUpstream) -> None:
    import redis

    with redis.Redis.from_url(REDIS_URL) as r:
        r.flushdb()
    limits = f'\n[guards]\nstore = "redis"\nurl = "{REDIS_URL}"\n[[rate_limits]]\nscope = "tenant"\nrpm = 30\n'
    wait_for_a_fresh_minute()
    with (
        start(tmp_path, "a", config_text(up, extra=limits)) as a,
        start(tmp_path, "b", config_text(up, extra=limits)) as b,
    ):

        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=10) as client:
                replies = await asyncio.gather(
                    *(
                        client.post(
                            f"{(a, b)[n % 2].base_url}/v1/chat/completions", json={"model": "fast", "messages": HI}
                        )
                        for n in range(100)
                    )
                )
            refused = [r for r in replies if r.status_code == 429]
            assert all(
                r.json()["error"]["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1 for r in refused
            )
            return [r.status_code for r in replies]

        statuses = asyncio.run(burst())
    assert statuses.count(200) == 30
    assert statuses.count(429) == 70


def test_agent_caps_stop_loops_and_runaway_sessions(tmp_path: Path, up: FakeUpstream) -> None:
    caps = "\n[agent_caps]\nmax_calls = 3\nloop_repeats = 3\nmax_tool_calls = 10\n"
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}
    looping = [{"role": "user", "content": "go"}]
    for n in range(3):
        looping += [
            {"role": "assistant", "content": None, "tool_calls": [{**call, "id": f"c{n}"}]},
            {"role": "tool", "tool_call_id": f"c{n}", "content": "nothing"},
        ]
    with start(tmp_path, "a", config_text(up, extra=caps)) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            session = {"x-thrifty-session": "agent-1"}
            with pytest.raises(openai.RateLimitError) as loop:
                client.chat.completions.create(model="fast", messages=looping, extra_headers=session)  # type: ignore[arg-type]
            assert loop.value.body["code"] == "agent_loop_detected"  # type: ignore[index]
            for _ in range(3):
                client.chat.completions.create(model="fast", messages=HI, extra_headers=session)
            with pytest.raises(openai.RateLimitError) as cap:
                client.chat.completions.create(model="fast", messages=HI, extra_headers=session)
            assert cap.value.body["code"] == "agent_cap_reached"  # type: ignore[index]
            client.chat.completions.create(model="fast", messages=HI, extra_headers={"x-thrifty-session": "other"})
        rows = ledger_rows(gw)
    assert [r["error_type"] for r in rows if r["status"] == "error"] == ["rate_limit_error", "rate_limit_error"]


def test_clamping_lowers_max_tokens_instead_of_refusing(tmp_path: Path, up: FakeUpstream) -> None:
    budget = '\n[[budgets]]\nscope = "tenant"\nid = "default"\nusd = 0.0001\nperiod = "day"\nclamp = true\n'
    with start(tmp_path, "a", config_text(up, extra=budget)) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            client.chat.completions.create(model="fast", messages=HI, max_tokens=100_000)
    assert 16 <= up.requests[-1].json["max_tokens"] < 200


def test_cost_quote_endpoint(tmp_path: Path, up: FakeUpstream) -> None:
    with start(tmp_path, "a", config_text(up)) as gw:
        body = {"model": "resilient", "messages": HI, "max_tokens": 1000}
        quoted = httpx.post(gw.base_url + "/v1/cost/quote", json=body).json()
    assert [q["target"] for q in quoted["quotes"]] == ["down::gpt-4o-mini", "up::gpt-4o-mini", "up::gpt-4o"]
    mini = quoted["quotes"][0]
    assert mini["max_output_tokens"] == 1000 and mini["input_tokens"] > 0
    # gpt-4o-mini: input x $0.15 + 1,000 output x $0.60 per million.
    expected = (mini["input_tokens"] * 0.15 + 1000 * 0.6) / 1e6
    assert abs(float(mini["worst_case_usd"]) - expected) < 1e-12
    assert float(mini["expected_usd"]) < float(mini["worst_case_usd"])
    # The alias's worst case is what a budget holds: the dearest target a fallback may land on.
    assert quoted["worst_case_usd"] == quoted["quotes"][2]["worst_case_usd"]
    assert quoted["output_capped"]  # the request set max_tokens: the worst case is a bound
    assert up.requests == []


def test_a_stream_stops_cleanly_where_its_budget_reservation_ends(tmp_path: Path) -> None:
    budget = (
        "\n[guards]\ndefault_max_output_tokens = 20\n"
        '[[budgets]]\nscope = "tenant"\nid = "default"\nusd = 10\nperiod = "day"\n'
    )
    long_answer = " ".join(f"word{n}" for n in range(400))
    with FakeUpstream(reply=lambda body: long_answer) as up, start(tmp_path, "a", config_text(up, extra=budget)) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            chunks = list(client.chat.completions.create(model="fast", messages=HI, stream=True))
        rows = ledger_rows(gw)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert 0 < len(text) < len(long_answer) / 2
    assert chunks[-1].choices[0].finish_reason == "length"
    (row,) = rows
    assert row["status"] == "ok" and row["tokens_estimated"] and row["output_tokens"] < 200
