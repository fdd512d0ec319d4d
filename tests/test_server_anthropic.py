"""Anthropic both ways: the anthropic SDK as a client of the gateway, and an Anthropic upstream behind it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from fakes.upstream import FakeUpstream, FakeUsage, Fault
from gateway_harness import ledger_rows, running_gateway
from thrifty.server.run import ServerThread

HI = [{"role": "user", "content": "hello there"}]
# claude-3-5-haiku: 600 uncached x $0.80 + 400 cache reads x $0.08 + 200 out x $4.00, per million tokens.
HAIKU_COST = Decimal("0.001312")


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200, cache_read_tokens=400)) as upstream:
        yield upstream


@pytest.fixture
def gw(tmp_path: Path, up: FakeUpstream) -> Iterator[ServerThread]:
    with running_gateway(tmp_path, up) as server:
        yield server


@pytest.fixture
def claude_client(gw: ServerThread) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gw.base_url, api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture
def openai_client(gw: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_openai_client_to_anthropic_upstream_prices_cache_tokens_once(
    openai_client: openai.OpenAI, gw: ServerThread, up: FakeUpstream
) -> None:
    raw = openai_client.chat.completions.with_raw_response.create(
        model="claude", messages=[{"role": "system", "content": "be brief"}, *HI], max_tokens=64
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.usage is not None and completion.usage.prompt_tokens == 1000
    sent = up.requests[-1]
    assert sent.path == "/v1/messages" and sent.json["system"] in ("be brief", [{"type": "text", "text": "be brief"}])
    assert sent.json["max_tokens"] == 64 and sent.headers["anthropic-version"]
    assert Decimal(raw.headers["x-thrifty-cost-usd"]) == HAIKU_COST
    (row,) = ledger_rows(gw)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (1000, 400, 200)


def test_openai_client_streams_from_anthropic_upstream(openai_client: openai.OpenAI, gw: ServerThread) -> None:
    chunks = list(
        openai_client.chat.completions.create(
            model="claude", messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello there"
    assert [c.usage.prompt_tokens for c in chunks if c.usage] == [1000]
    (row,) = ledger_rows(gw)
    assert row["streamed"] and row["cost_nusd"] == 1_312_000


def test_a_broken_anthropic_stream_keeps_its_prompt_tokens_exact(
    openai_client: openai.OpenAI, gw: ServerThread, up: FakeUpstream
) -> None:
    """Anthropic tells the prompt's tokens (cache reads included) in message_start: a stream that breaks off
    before its end keeps them, and only its output is counted offline. Pricing 1,000 prompt tokens of which 400
    were cache reads as 1,000 full-price tokens (or tiktoken's count of the prompt) would make up a cost."""
    up.mode = Fault.drop_mid_stream(after_chunks=4)
    stream = openai_client.chat.completions.create(model="claude", messages=HI, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    (row,) = ledger_rows(gw)
    assert row["status"] == "error" and row["tokens_estimated"]
    assert (row["input_tokens"], row["cache_read_tokens"]) == (1000, 400)
    assert 0 < row["output_tokens"] < 200


def test_anthropic_upstream_tool_calls_translate(openai_client: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    completion = openai_client.chat.completions.create(
        model="claude",
        messages=[{"role": "user", "content": "please call tool"}],
        tools=[tool],  # type: ignore[list-item]
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls and choice.message.tool_calls[0].function.name == "weather"  # type: ignore[union-attr]


def test_anthropic_sdk_client_through_the_gateway(
    claude_client: anthropic.Anthropic, gw: ServerThread, up: FakeUpstream
) -> None:
    raw = claude_client.messages.with_raw_response.create(
        model="fast",
        max_tokens=100,
        system="be brief",
        messages=[{"role": "user", "content": "hello there"}],
        extra_headers={"x-thrifty-feature": "support"},
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == "echo: hello there"
    assert message.usage.input_tokens == 600 and message.usage.cache_read_input_tokens == 400
    assert raw.headers["x-thrifty-model"] == "gpt-4o-mini"
    sent = up.requests[-1].json
    assert sent["messages"][0] == {"role": "system", "content": "be brief"} and sent["max_tokens"] == 100
    assert ledger_rows(gw)[0]["feature"] == "support"


def test_anthropic_sdk_client_streams_through_the_gateway(claude_client: anthropic.Anthropic, gw: ServerThread) -> None:
    with claude_client.messages.stream(
        model="claude", max_tokens=100, messages=[{"role": "user", "content": "hello there"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: hello there"
    assert final.usage.output_tokens == 200
    (row,) = ledger_rows(gw)
    assert row["streamed"] and row["status"] == "ok" and row["cost_nusd"] == 1_312_000


def test_anthropic_sdk_client_gets_the_route_and_stream_errors_in_anthropic_types(
    claude_client: anthropic.Anthropic, up: FakeUpstream
) -> None:
    raw = claude_client.messages.with_raw_response.create(
        model="claude", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    )
    assert raw.headers["x-thrifty-route"] == "static; configured order"
    up.mode = Fault.drop_mid_stream(after_chunks=4)

    def read_stream() -> None:
        messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "x y z"}]
        with claude_client.messages.stream(model="claude", max_tokens=10, messages=messages) as stream:
            for _ in stream:
                pass

    with pytest.raises(anthropic.APIStatusError) as info:
        read_stream()
    assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert set(info.value.body["error"]) == {"type", "message"}  # type: ignore[index]


def test_anthropic_sdk_client_gets_errors_in_anthropic_shape(
    claude_client: anthropic.Anthropic, up: FakeUpstream
) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        claude_client.messages.create(model="ghost", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["type"] == "error"  # type: ignore[index]
    up.mode = Fault.status(429)
    with pytest.raises(anthropic.RateLimitError):
        claude_client.messages.create(model="claude", max_tokens=10, messages=[{"role": "user", "content": "x"}])


def test_an_anthropic_client_reaches_an_openai_reasoning_model(tmp_path: Path, up: FakeUpstream) -> None:
    """Anthropic clients must send max_tokens; OpenAI's reasoning models refuse that field for
    max_completion_tokens: the cap is sent the way they take it."""
    with running_gateway(tmp_path, up, extra='\n[models.thinker]\ntargets = ["up::o4-mini"]\n') as gw:
        with anthropic.Anthropic(base_url=gw.base_url, api_key="unused", max_retries=0) as client:
            message = client.messages.create(model="thinker", max_tokens=300, messages=HI)  # type: ignore[arg-type]
    assert message.content[0].type == "text"
    sent = up.requests[-1].json
    assert sent["max_completion_tokens"] == 300 and "max_tokens" not in sent


def test_a_messages_stream_without_upstream_usage_reports_the_counted_usage_and_its_cost(tmp_path: Path) -> None:
    import httpx

    with FakeUpstream(usage=None) as up:
        up.chat_usage = False
        with running_gateway(tmp_path, up) as gw:
            body = {"model": "fast", "max_tokens": 50, "stream": True, "messages": HI}
            text = httpx.post(gw.base_url + "/v1/messages", json=body, timeout=10).text
    deltas = [line for line in text.splitlines() if line.startswith("data:") and '"message_delta"' in line]
    usage = json.loads(deltas[-1][5:])["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0  # counted offline: the upstream said nothing
    assert ": x-thrifty-cost-usd 0." in text


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": "not a schema"}}]},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": ["a", "list"]}}]},
        {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": "f"},
        },
        {"messages": [{"role": "user", "content": [{"type": "file", "file": "x"}]}]},
    ],
)
def test_malformed_requests_for_an_anthropic_model_are_400s(
    openai_client: openai.OpenAI, extra: dict[str, Any]
) -> None:
    body: dict[str, Any] = {"messages": HI, **extra}
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(model="claude", **body)
    assert refused.value.status_code == 400


def test_a_whole_message_without_upstream_usage_reports_the_counted_usage(tmp_path: Path) -> None:
    with FakeUpstream(usage=None) as up:
        up.chat_usage = False
        with running_gateway(tmp_path, up) as gw:
            with anthropic.Anthropic(base_url=gw.base_url, api_key="unused", max_retries=0) as client:
                message = client.messages.create(model="fast", max_tokens=50, messages=HI)  # type: ignore[arg-type]
            (row,) = ledger_rows(gw)
    assert row["tokens_estimated"]
    assert (message.usage.input_tokens, message.usage.output_tokens) == (row["input_tokens"], row["output_tokens"])
    assert message.usage.output_tokens > 0
