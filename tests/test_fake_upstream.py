"""The fake upstreams speak the real wire formats: the official SDKs parse them, faults look real."""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from fakes import FakeUpstream, FakeUsage, Fault

WEATHER_OPENAI: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
WEATHER_ANTHROPIC: Any = {"name": "get_weather", "input_schema": WEATHER_OPENAI["function"]["parameters"]}


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
def oai(up: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=up.base_url + "/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(up: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=up.base_url, api_key="x", max_retries=0) as client:
        yield client


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def drain(items: Iterable[Any], into: list[Any]) -> None:
    """Keep what arrived before the failure, which a list comprehension would lose."""
    for item in items:
        into.append(item)


def post(url: str, body: Any, timeout_s: float = 5) -> bytes:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return response.read()


def post_catching(url: str, body: Any, outcome: list[BaseException]) -> None:
    try:
        post(url, body)
    except Exception as exc:
        outcome.append(exc)


async def drain_lines(response: aiohttp.ClientResponse, into: list[bytes]) -> None:
    async for line in response.content:
        into.append(line)


# -- OpenAI ------------------------------------------------------------------------------------------------


def test_openai_chat_echoes_and_reports_the_configured_usage(up: FakeUpstream, oai: openai.OpenAI) -> None:
    up.usage = FakeUsage(input_tokens=120, output_tokens=7, cache_read_tokens=100)

    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=user("hello there"))

    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (120, 7)
    assert completion.usage.total_tokens == 127
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 100
    [seen] = up.requests
    assert (seen.method, seen.path, seen.json["model"]) == ("POST", "/v1/chat/completions", "gpt-4o-mini")
    assert seen.headers["authorization"] == "Bearer x"
    assert up.answered == 1


def test_openai_usage_defaults_to_word_counts(oai: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, *user("hello there friend")]

    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 4)


def test_reply_replaces_the_echo(up: FakeUpstream, oai: openai.OpenAI) -> None:
    up.reply = lambda body: f"{len(body['messages'])} messages seen"

    completion = oai.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))

    assert completion.choices[0].message.content == "1 messages seen"


def test_openai_stream_with_usage_ends_with_a_usage_only_chunk(up: FakeUpstream, oai: openai.OpenAI) -> None:
    up.usage = FakeUsage(input_tokens=50, output_tokens=3, cache_read_tokens=20)

    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=user("hi you"), stream=True, stream_options={"include_usage": True}
        )
    )

    *content, last = chunks
    assert "".join(c.choices[0].delta.content or "" for c in content) == "echo: hi you"
    assert content[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None and "usage" in c.model_fields_set for c in content)
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (50, 3)
    assert last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == 20
    assert up.answered == 1


def test_openai_stream_without_usage_has_no_usage_field(oai: openai.OpenAI) -> None:
    chunks = list(oai.chat.completions.create(model="gpt-4o-mini", messages=user("hi"), stream=True))

    assert chunks[-1].choices[0].finish_reason == "stop"
    assert not any("usage" in c.model_fields_set for c in chunks)


def test_openai_tool_call_when_asked_then_text_after_the_tool_result(oai: openai.OpenAI) -> None:
    first = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=user("please call tool"),
        tools=[WEATHER_OPENAI],
    )

    assert first.choices[0].finish_reason == "tool_calls"
    [call] = first.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "test", "days": 1}
    follow_up = [
        *user("please call tool"),
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = oai.chat.completions.create(
        model="gpt-4o-mini",
        messages=follow_up,
        tools=[WEATHER_OPENAI],
    )
    assert second.choices[0].message.content == "echo: sunny"


def test_openai_streamed_tool_call_assembles_its_arguments(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=user("call tool now"),
            tools=[WEATHER_OPENAI],
            stream=True,
        )
    )

    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert calls[0].id is not None
    assert calls[0].function is not None
    assert calls[0].function.name == "get_weather"
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert json.loads(arguments) == {"city": "test", "days": 1}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_openai_embeddings_in_both_encodings(up: FakeUpstream, oai: openai.OpenAI) -> None:
    texts = ["the cat sat", "the cat sat down", "quarterly revenue grew"]

    as_base64 = oai.embeddings.create(model="text-embedding-3-small", input=texts)
    as_floats = oai.embeddings.create(model="text-embedding-3-small", input=texts, encoding_format="float")
    short = oai.embeddings.create(model="text-embedding-3-small", input="the cat", dimensions=8)

    assert [r.json["encoding_format"] for r in up.requests] == ["base64", "float", "base64"]
    vectors = [d.embedding for d in as_floats.data]
    for decoded, exact in zip((d.embedding for d in as_base64.data), vectors, strict=True):
        assert decoded == pytest.approx(exact, abs=1e-6)
    assert [len(v) for v in vectors] == [32, 32, 32]
    assert len(short.data[0].embedding) == 8
    assert math.fsum(x * x for x in vectors[0]) == pytest.approx(1.0)
    cosine = [math.fsum(a * b for a, b in zip(vectors[0], v, strict=True)) for v in vectors[1:]]
    assert cosine[0] > cosine[1]
    assert (as_floats.usage.prompt_tokens, as_floats.usage.total_tokens) == (10, 10)


def test_openai_models_list(up: FakeUpstream, oai: openai.OpenAI) -> None:
    up.models = ["gpt-4o-mini", "gpt-4o"]

    assert [m.id for m in oai.models.list()] == ["gpt-4o-mini", "gpt-4o"]


def test_openai_429_is_a_rate_limit_error_then_the_script_moves_on(up: FakeUpstream, oai: openai.OpenAI) -> None:
    up.script([Fault.status(429, retry_after_s=2), Fault.status(500), Fault.ok()])

    with pytest.raises(openai.RateLimitError) as rate_limited:
        oai.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
    with pytest.raises(openai.InternalServerError) as broken:
        oai.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))
    answer = oai.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))

    assert rate_limited.value.response.headers["retry-after"] == "2"
    assert rate_limited.value.body == {
        "message": "fake upstream error 429",
        "type": "requests",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert broken.value.status_code == 500
    assert answer.choices[0].message.content == "echo: hi"
    assert [r.fault.kind for r in up.requests] == ["status", "status", "ok"]
    assert up.answered == 3


def test_mode_applies_once_the_script_is_spent(up: FakeUpstream, oai: openai.OpenAI) -> None:
    up.mode = Fault.status(503)
    up.fail_next(Fault.ok())

    assert oai.models.list().data
    with pytest.raises(openai.InternalServerError):
        oai.models.list()
    with pytest.raises(openai.InternalServerError):
        oai.models.list()


def test_openai_sdk_sees_a_dropped_stream_as_a_connection_error(up: FakeUpstream, oai: openai.OpenAI) -> None:
    up.script([Fault.drop_mid_stream(after_chunks=2), Fault.drop_mid_stream()])

    stream = oai.chat.completions.create(model="gpt-4o-mini", messages=user("one two three"), stream=True)
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        drain((chunk.choices[0].delta.content for chunk in stream), into=received)
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="gpt-4o-mini", messages=user("hi"))

    assert received == ["", "echo:"]
    assert up.answered == 0


# -- Anthropic ---------------------------------------------------------------------------------------------


def test_anthropic_message_reports_cache_usage(up: FakeUpstream, claude: anthropic.Anthropic) -> None:
    up.usage = FakeUsage(input_tokens=100, output_tokens=7, cache_read_tokens=60, cache_write_tokens=10)

    message = claude.messages.create(model="claude-test", max_tokens=64, messages=user("hello there"))

    assert message.type == "message"
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: hello there"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 30
    assert message.usage.cache_read_input_tokens == 60
    assert message.usage.cache_creation_input_tokens == 10
    assert message.usage.output_tokens == 7
    [seen] = up.requests
    assert seen.path == "/v1/messages"
    assert seen.headers["authorization"] == "Bearer x"
    assert "anthropic-version" in seen.headers


def test_anthropic_stream_builds_the_final_message(up: FakeUpstream, claude: anthropic.Anthropic) -> None:
    up.usage = FakeUsage(input_tokens=40, output_tokens=3, cache_read_tokens=30)
    system: Any = [{"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}]

    with claude.messages.stream(model="claude-test", max_tokens=64, system=system, messages=user("hi you")) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()

    assert pieces == ["echo:", " hi", " you"]
    assert final.content[0].type == "text"
    assert final.content[0].text == "echo: hi you"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens) == (10, 30)
    assert final.usage.output_tokens == 3
    assert up.answered == 1


def test_anthropic_tool_use_plain_and_streamed(claude: anthropic.Anthropic) -> None:
    tools: Any = [WEATHER_ANTHROPIC]
    message = claude.messages.create(model="claude", max_tokens=64, tools=tools, messages=user("call tool"))
    with claude.messages.stream(model="claude", max_tokens=64, tools=tools, messages=user("call tool")) as s:
        streamed = s.get_final_message()

    for answer in (message, streamed):
        assert answer.stop_reason == "tool_use"
        [block] = answer.content
        assert block.type == "tool_use"
        assert (block.name, block.input) == ("get_weather", {"city": "test", "days": 1})


def test_anthropic_errors_have_anthropics_shape(up: FakeUpstream, claude: anthropic.Anthropic) -> None:
    up.script([Fault.status(429), Fault.status(529)])

    with pytest.raises(anthropic.RateLimitError) as rate_limited:
        claude.messages.create(model="claude", max_tokens=64, messages=user("hi"))
    with pytest.raises(anthropic.OverloadedError):
        claude.messages.create(model="claude", max_tokens=64, messages=user("hi"))

    body: Any = rate_limited.value.body
    assert body["type"] == "error"
    assert body["error"] == {"type": "rate_limit_error", "message": "fake upstream error 429"}


# -- faults seen by a plain client -------------------------------------------------------------------------


async def test_anthropic_stream_events_in_wire_order(up: FakeUpstream) -> None:
    body = {"model": "claude", "max_tokens": 64, "stream": True, "messages": user("a b")}

    async with aiohttp.ClientSession() as session, session.post(up.base_url + "/v1/messages", json=body) as r:
        text = await r.text()

    assert r.headers["content-type"].startswith("text/event-stream")
    frames = [frame.split("\n") for frame in text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in frames]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(
        json.loads(lines[1].removeprefix("data: "))["type"] == name for name, lines in zip(names, frames, strict=True)
    )


async def test_garbage_is_a_200_that_is_not_json(up: FakeUpstream) -> None:
    up.script([Fault.garbage(), Fault.garbage()])
    chat = up.base_url + "/v1/chat/completions"

    async with aiohttp.ClientSession() as session:
        async with session.post(chat, json={"model": "m", "messages": user("hi")}) as plain:
            plain_text = await plain.text()
        async with session.post(chat, json={"model": "m", "messages": user("hi"), "stream": True}) as stream:
            stream_text = await stream.text()

    assert plain.status == stream.status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain_text)
    assert stream_text.startswith("data: <html>")
    assert "[DONE]" not in stream_text


async def test_drop_mid_stream_cuts_the_connection_before_done(up: FakeUpstream) -> None:
    up.fail_next(Fault.drop_mid_stream(after_chunks=3))
    body = {"model": "m", "messages": user("one two three four"), "stream": True}
    lines: list[bytes] = []

    async with (
        aiohttp.ClientSession() as session,
        session.post(up.base_url + "/v1/chat/completions", json=body) as r,
    ):
        with pytest.raises(aiohttp.ClientPayloadError):
            await drain_lines(r, into=lines)

    assert len([line for line in lines if line.startswith(b"data: {")]) == 3
    assert b"[DONE]" not in b"".join(lines)
    assert up.answered == 0


def test_hang_never_answers_and_close_drops_the_pending_request() -> None:
    chat = {"model": "m", "messages": user("hi")}
    with FakeUpstream() as up:
        up.script([Fault.hang(), Fault.hang()])
        with pytest.raises(TimeoutError):
            post(up.base_url + "/v1/chat/completions", chat, timeout_s=0.3)
        outcome: list[BaseException] = []
        pending = threading.Thread(target=post_catching, args=(up.base_url + "/v1/chat/completions", chat, outcome))
        pending.start()
        deadline = time.perf_counter() + 5
        while len(up.requests) < 2 and time.perf_counter() < deadline:
            time.sleep(0.01)
        started = time.perf_counter()
    closed_in_s = time.perf_counter() - started
    pending.join()

    assert closed_in_s < 2
    assert [type(exc) for exc in outcome] == [http.client.RemoteDisconnected]
    assert up.answered == 0


async def test_slow_first_token_sends_headers_at_once(up: FakeUpstream) -> None:
    up.fail_next(Fault.slow_first_token(0.4))
    body = {"model": "m", "messages": user("hi"), "stream": True}

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.post(up.base_url + "/v1/chat/completions", json=body) as r:
            headers_s = time.perf_counter() - started
            await r.content.readline()
            first_s = time.perf_counter() - started

    assert headers_s < 0.3
    assert first_s >= 0.39  # the server's clock may round its timer a hair early


async def test_delay_then_the_normal_answer(up: FakeUpstream) -> None:
    up.fail_next(Fault.delay(0.3))

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        async with session.get(up.base_url + "/v1/models") as r:
            data = await r.json()
        elapsed_s = time.perf_counter() - started

    assert elapsed_s >= 0.29
    assert data["object"] == "list"


async def test_unknown_path_is_a_recorded_404_that_leaves_the_script_alone(up: FakeUpstream) -> None:
    up.fail_next(Fault.status(500))

    async with aiohttp.ClientSession() as session:
        async with session.post(up.base_url + "/v1/responses", json={}) as missing:
            error = await missing.json()
        async with session.get(up.base_url + "/v1/models") as scripted:
            pass

    assert (missing.status, scripted.status) == (404, 500)
    assert error["error"]["type"] == "invalid_request_error"
    assert [r.path for r in up.requests] == ["/v1/responses", "/v1/models"]


def test_usage_cannot_cache_more_than_the_prompt() -> None:
    with pytest.raises(ValueError, match="cached part"):
        FakeUsage(input_tokens=10, output_tokens=1, cache_read_tokens=8, cache_write_tokens=4)
