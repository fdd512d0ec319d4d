"""Inbound translation (Anthropic SDK client -> gateway), checked against the installed SDKs' own types."""

from __future__ import annotations

import functools
import json
from typing import Any

import pydantic
import pytest
from anthropic import types as at
from anthropic.lib.streaming._messages import accumulate_event
from openai import types as ot
from openai.types import chat as oc
from openai.types.chat.chat_completion_content_part_param import File
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)

from thrifty.errors import BadRequest, UpstreamError
from thrifty.providers.anthropic_format import AnthropicStreamTranslator, from_anthropic, to_anthropic
from thrifty.providers.anthropic_inbound import (
    OpenAIToAnthropicStream,
    anthropic_error_body,
    anthropic_request_to_openai,
    openai_response_to_anthropic,
)
from thrifty.types import JsonObject, Usage

MODEL = "claude-haiku-4-5"
GATEWAY_EXTENSIONS = {"cache_control"}
"""Anthropic's field, carried on OpenAI-shaped parts and tools so that an Anthropic upstream still caches."""

_MESSAGE_TYPES: dict[str, Any] = {
    "system": oc.ChatCompletionSystemMessageParam,
    "user": oc.ChatCompletionUserMessageParam,
    "assistant": oc.ChatCompletionAssistantMessageParam,
    "tool": oc.ChatCompletionToolMessageParam,
}
_PART_TYPES: dict[str, Any] = {
    "text": oc.ChatCompletionContentPartTextParam,
    "image_url": oc.ChatCompletionContentPartImageParam,
    "file": File,
}


@functools.cache
def adapter(typed: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(typed)


def conforms(value: JsonObject, typed_dict: Any) -> None:
    """The SDK's TypedDicts ignore unknown keys when validating; OpenAI refuses them."""
    adapter(typed_dict).validate_python(value)
    unknown = set(value) - (typed_dict.__required_keys__ | typed_dict.__optional_keys__) - GATEWAY_EXTENSIONS
    assert not unknown, f"{typed_dict.__name__} has no {unknown}"


def valid_openai_request(request: JsonObject) -> JsonObject:
    conforms(request, CompletionCreateParamsStreaming if request.get("stream") else CompletionCreateParamsNonStreaming)
    pending_calls: set[str] = set()
    for message in request["messages"]:
        conforms(message, _MESSAGE_TYPES[message["role"]])
        for part in message["content"] if isinstance(message.get("content"), list) else []:
            conforms(part, _PART_TYPES[part["type"]])
        for call in message.get("tool_calls", []):
            conforms(call, oc.ChatCompletionMessageFunctionToolCallParam)
            json.loads(call["function"]["arguments"])
        if message["role"] == "tool":
            assert message["tool_call_id"] in pending_calls, "a tool message must answer the call just before it"
            pending_calls.discard(message["tool_call_id"])
        else:
            assert not pending_calls, f"calls {pending_calls} not answered right after the assistant message"
            pending_calls = {call["id"] for call in message.get("tool_calls", [])}
    for tool in request.get("tools", []):
        conforms(tool, oc.ChatCompletionFunctionToolParam)
        conforms(tool["function"], ot.shared_params.FunctionDefinition)
    if isinstance(request.get("tool_choice"), dict):
        conforms(request["tool_choice"], oc.ChatCompletionNamedToolChoiceParam)
    return request


def messages_request(*messages: JsonObject, **fields: Any) -> JsonObject:
    """A Messages API request as the Anthropic SDK sends it."""
    return {"model": MODEL, "max_tokens": 256, "messages": list(messages), **fields}


def text(value: str, **extra: Any) -> JsonObject:
    return {"type": "text", "text": value, **extra}


def tool_use(call_id: str, name: str, arguments: JsonObject) -> JsonObject:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


WEATHER_TOOL = {
    "name": "weather",
    "description": "Current weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


# anthropic_request_to_openai ------------------------------------------------------------------------------


def test_minimal_request() -> None:
    request = valid_openai_request(anthropic_request_to_openai(messages_request({"role": "user", "content": "Hi"})))
    assert request == {"model": MODEL, "max_tokens": 256, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": None}, "model"),
        ({"model": ""}, "model"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "256"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"messages": None}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "Hi"}, "messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages"),
        ({"system": 5}, "system"),
        ({"system": [{"type": "image"}]}, "system"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"tools": [WEATHER_TOOL], "tool_choice": "auto"}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "tool"}}, "tool_choice"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "sometimes"}}, "tool_choice"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": ["x"]}]}]}, "messages"),
    ],
)
def test_invalid_requests_name_the_field(change: JsonObject, param: str) -> None:
    body = {**messages_request({"role": "user", "content": "Hi"}), **change}
    body = {key: value for key, value in body.items() if value is not None}
    with pytest.raises(BadRequest) as caught:
        anthropic_request_to_openai(body)
    assert caught.value.param == param
    assert param in caught.value.message or param == "messages"


def test_system_string_and_cached_system_blocks() -> None:
    plain = anthropic_request_to_openai(messages_request({"role": "user", "content": "x"}, system="Be brief."))
    assert valid_openai_request(plain)["messages"][0] == {"role": "system", "content": "Be brief."}
    blocks = [text("Manual", cache_control={"type": "ephemeral"}), text("Tail")]
    cached = anthropic_request_to_openai(messages_request({"role": "user", "content": "x"}, system=blocks))
    assert valid_openai_request(cached)["messages"][0] == {"role": "system", "content": blocks}


def test_user_blocks_become_content_parts() -> None:
    content = [
        text("Compare"),
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
    ]
    request = valid_openai_request(anthropic_request_to_openai(messages_request({"role": "user", "content": content})))
    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "document.pdf"}},
        {"type": "text", "text": "notes"},
    ]


@pytest.mark.parametrize(
    "block",
    [
        {"type": "search_result", "source": "https://x", "title": "t", "content": []},
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}},
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
        {"type": "tool_use", "id": "t", "name": "n", "input": {}},
    ],
)
def test_user_blocks_without_an_openai_form_are_refused(block: JsonObject) -> None:
    with pytest.raises(BadRequest) as caught:
        anthropic_request_to_openai(messages_request({"role": "user", "content": [block]}))
    assert caught.value.param == "messages"


def conversation_with_tools() -> JsonObject:
    return messages_request(
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "two calls", "signature": "sig"},
                text("Checking."),
                tool_use("toolu_1", "weather", {"city": "Paris"}),
                tool_use("toolu_2", "weather", {"city": "Rome"}),
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": [text("24C")], "is_error": False},
                text("And tomorrow?"),
            ],
        },
        tools=[WEATHER_TOOL],
    )


def test_tool_use_and_results_become_tool_calls_and_tool_messages() -> None:
    request = valid_openai_request(anthropic_request_to_openai(conversation_with_tools()))
    assert request["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "toolu_2", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "24C"},
        {"role": "user", "content": "And tomorrow?"},
    ]


def test_failed_tool_result_images_and_cache_marker() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [text("timeout"), image],
        "is_error": True,
        "cache_control": {"type": "ephemeral"},
    }
    body = messages_request(
        {"role": "user", "content": "Screenshot"},
        {"role": "assistant", "content": [tool_use("toolu_1", "shot", {})]},
        {"role": "user", "content": [result, {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True}]},
    )
    body["messages"][1]["content"].append(tool_use("toolu_2", "shot", {}))
    messages = valid_openai_request(anthropic_request_to_openai(body))["messages"]
    assert messages[2:] == [
        {
            "role": "tool",
            "tool_call_id": "toolu_1",
            "content": [{"type": "text", "text": "Error: timeout", "cache_control": {"type": "ephemeral"}}],
        },
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error:"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]},
    ]


def test_assistant_blocks_without_an_openai_form_are_refused() -> None:
    block = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    with pytest.raises(BadRequest, match="server_tool_use"):
        anthropic_request_to_openai(messages_request({"role": "assistant", "content": [block]}))


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        (None, {}),
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        ({"type": "tool", "name": "weather"}, {"tool_choice": {"type": "function", "function": {"name": "weather"}}}),
        ({"type": "any", "disable_parallel_tool_use": True}, {"tool_choice": "required", "parallel_tool_calls": False}),
    ],
)
def test_tools_and_tool_choice(tool_choice: JsonObject | None, expected: JsonObject) -> None:
    cached = {"name": "ping", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}
    fields = {"tools": [WEATHER_TOOL, cached], **({"tool_choice": tool_choice} if tool_choice else {})}
    request = valid_openai_request(
        anthropic_request_to_openai(messages_request({"role": "user", "content": "x"}, **fields))
    )
    assert request["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        },
        {
            "type": "function",
            "function": {"name": "ping", "parameters": {"type": "object"}},
            "cache_control": {"type": "ephemeral"},
        },
    ]
    assert {key: request[key] for key in ("tool_choice", "parallel_tool_calls") if key in request} == expected


def test_tool_choice_without_tools_is_left_out() -> None:
    request = anthropic_request_to_openai(
        messages_request({"role": "user", "content": "x"}, tool_choice={"type": "any"})
    )
    assert "tool_choice" not in valid_openai_request(request)


@pytest.mark.parametrize(
    "tool",
    [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
        {"type": "bash_20250124", "name": "bash"},
        {"input_schema": {"type": "object"}},
    ],
)
def test_server_tools_are_refused(tool: JsonObject) -> None:
    with pytest.raises(BadRequest) as caught:
        anthropic_request_to_openai(messages_request({"role": "user", "content": "x"}, tools=[tool]))
    assert caught.value.param == "tools"


def test_options_map_and_anthropic_only_fields_are_dropped() -> None:
    body = messages_request(
        {"role": "user", "content": "x"},
        stop_sequences=["END", "###"],
        metadata={"user_id": "alice"},
        temperature=0.3,
        top_p=0.9,
        top_k=40,
        thinking={"type": "enabled", "budget_tokens": 1024},
        service_tier="auto",
        stream=True,
    )
    request = valid_openai_request(anthropic_request_to_openai(body))
    assert request["stop"] == ["END", "###"]
    assert request["user"] == "alice"
    assert (request["temperature"], request["top_p"]) == (0.3, 0.9)
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert not {"top_k", "thinking", "service_tier", "metadata", "stop_sequences"} & set(request)


# Round trips through the gateway's OpenAI shape -----------------------------------------------------------


def test_anthropic_request_survives_the_round_trip() -> None:
    original = conversation_with_tools()
    original["messages"][1]["content"].pop(0)  # thinking blocks cannot cross the OpenAI shape
    original["messages"][0]["content"] = [text("Weather in Paris and Rome?", cache_control={"type": "ephemeral"})]
    original["messages"][2]["content"][1] = {"type": "tool_result", "tool_use_id": "toolu_2", "content": "24C"}
    original.update(
        system=[text("Be brief", cache_control={"type": "ephemeral"})],
        stop_sequences=["END"],
        metadata={"user_id": "alice"},
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stream=True,
    )
    assert to_anthropic(anthropic_request_to_openai(original), MODEL) == original


def test_openai_request_survives_the_round_trip() -> None:
    original = {
        "model": "gpt-4o-mini",
        "max_tokens": 100,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}
        ],
        "tool_choice": "required",
        "stop": ["END"],
        "user": "alice",
    }
    back = anthropic_request_to_openai(to_anthropic(original, MODEL))
    assert back == {**original, "model": MODEL}


# openai_response_to_anthropic -----------------------------------------------------------------------------


def completion(message: JsonObject, finish_reason: str = "stop", **usage: Any) -> JsonObject:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason, "logprobs": None}
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25, **usage},
    }
    oc.ChatCompletion.model_validate(body)
    return body


def test_text_completion_becomes_a_message() -> None:
    message = at.Message.model_validate(openai_response_to_anthropic(completion({"content": "Hello"})))
    assert message.id == "chatcmpl-1"
    assert message.model == "gpt-4o-mini"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (20, 5)
    assert (message.usage.cache_read_input_tokens, message.usage.cache_creation_input_tokens) == (0, 0)


def test_cached_tokens_leave_input_tokens() -> None:
    body = completion(
        {"content": "x"},
        prompt_tokens=1150,
        prompt_tokens_details={"cached_tokens": 1000},
        cache_creation_input_tokens=50,
    )
    usage = at.Message.model_validate(openai_response_to_anthropic(body)).usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (100, 1000, 50)


def test_tool_calls_become_tool_use_blocks() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "ping", "arguments": ""}},
    ]
    body = completion({"content": None, "tool_calls": calls}, "tool_calls")
    message = at.Message.model_validate(openai_response_to_anthropic(body))
    assert message.stop_reason == "tool_use"
    assert [(b.id, b.name, b.input) for b in message.content] == [  # type: ignore[union-attr]
        ("call_1", "weather", {"city": "Paris"}),
        ("call_2", "ping", {}),
    ]


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("content_filter", "refusal")],
)
def test_finish_reasons(finish_reason: str, stop_reason: str) -> None:
    message = at.Message.model_validate(openai_response_to_anthropic(completion({"content": "x"}, finish_reason)))
    assert message.stop_reason == stop_reason


def test_refusal_becomes_text_with_a_refusal_stop() -> None:
    body = completion({"content": None, "refusal": "I can't help with that."})
    message = at.Message.model_validate(openai_response_to_anthropic(body))
    assert message.stop_reason == "refusal"
    assert message.content[0].text == "I can't help with that."  # type: ignore[union-attr]


@pytest.mark.parametrize("body", [{"choices": []}, {}])
def test_unusable_upstream_answers_are_upstream_errors(body: JsonObject) -> None:
    with pytest.raises(UpstreamError):
        openai_response_to_anthropic(body)


@pytest.mark.parametrize("arguments", ['{"city": "Par', "[1]", "null"])
def test_a_paid_tool_call_with_broken_arguments_still_reaches_the_client(arguments: str) -> None:
    """Cut off at the token limit mid-call, or a model's slip: the answer was paid for, and an error would make
    the Anthropic SDK retry (and pay) for the same cut again."""
    call = {"id": "c", "type": "function", "function": {"name": "weather", "arguments": arguments}}
    for finish in ("length", "tool_calls"):  # a slip with finish tool_calls too: no call to run without arguments
        body = completion({"content": None, "tool_calls": [call]}, finish)
        assert openai_response_to_anthropic(body)["stop_reason"] == "max_tokens"
    message = at.Message.model_validate(openai_response_to_anthropic(body))
    assert message.stop_reason == "max_tokens"
    assert [(b.type, b.name, b.input) for b in message.content] == [("tool_use", "weather", {})]  # type: ignore[union-attr]


def test_anthropic_response_survives_the_round_trip() -> None:
    original = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [text("Checking."), tool_use("toolu_1", "weather", {"city": "Paris"})],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 30,
            "output_tokens": 12,
            "cache_read_input_tokens": 1000,
            "cache_creation_input_tokens": 200,
        },
    }
    body, usage = from_anthropic(original)
    assert usage == Usage(input_tokens=1230, output_tokens=12, cache_read_tokens=1000, cache_write_tokens=200)
    assert openai_response_to_anthropic(body) == original


# OpenAIToAnthropicStream ----------------------------------------------------------------------------------


def chunk(delta: JsonObject | None = None, finish_reason: str | None = None, **extra: Any) -> JsonObject:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": choices,
        **extra,
    }
    oc.ChatCompletionChunk.model_validate(body)
    return body


def openai_chunks() -> list[JsonObject]:
    """A stream as OpenAI sends it: role, text, two tool calls in fragments, finish, then usage."""

    def call(index: int, **fields: Any) -> JsonObject:
        return {"tool_calls": [{"index": index, **fields}]}

    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me "}),
        chunk({"content": "check."}),
        chunk(call(0, id="call_1", type="function", function={"name": "weather", "arguments": ""})),
        chunk(call(0, function={"arguments": '{"city":'})),
        chunk(call(0, function={"arguments": ' "Paris"}'})),
        chunk(call(1, id="call_2", type="function", function={"name": "ping", "arguments": "{}"})),
        chunk({}, "tool_calls"),
        chunk(
            usage={
                "prompt_tokens": 40,
                "completion_tokens": 9,
                "total_tokens": 49,
                "prompt_tokens_details": {"cached_tokens": 30},
            }
        ),
    ]


def assert_anthropic_grammar(events: list[tuple[str, JsonObject]]) -> at.Message:
    """Event names match their data, the order is the one the SDK relies on, and the SDK assembles a message."""
    for name, data in events:
        assert name == data["type"]
        adapter(at.RawMessageStreamEvent).validate_python(data)
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    open_index: int | None = None
    next_index = 0
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None
            assert data["index"] == next_index
            open_index, next_index = data["index"], next_index + 1
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        else:
            assert name == "content_block_delta"
            assert data["index"] < next_index
    assert open_index is None
    snapshot = None
    json_buffers: dict[int, bytes] = {}
    for _, data in events:
        snapshot = accumulate_event(
            event=adapter(at.RawMessageStreamEvent).validate_python(data),
            current_snapshot=snapshot,
            json_bufs=json_buffers,
        )
    assert snapshot is not None
    return at.Message.model_validate(snapshot.to_dict())


def test_stream_events_are_valid_ordered_and_assemble_into_the_message() -> None:
    stream = OpenAIToAnthropicStream(input_tokens=38)
    events = [event for item in openai_chunks() for event in stream.feed(item)] + stream.finish()
    assert events[0][1]["message"]["usage"] == {"input_tokens": 38, "output_tokens": 0}
    message = assert_anthropic_grammar(events)
    assert message.id == "chatcmpl-1"
    assert message.stop_reason == "tool_use"
    assert message.content[0].text == "Let me check."  # type: ignore[union-attr]
    assert [(b.id, b.name, b.input) for b in message.content[1:]] == [  # type: ignore[union-attr]
        ("call_1", "weather", {"city": "Paris"}),
        ("call_2", "ping", {}),
    ]
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        10,
        30,
        9,
    )


def test_usage_given_to_finish_wins() -> None:
    stream = OpenAIToAnthropicStream()
    events = [event for item in openai_chunks() for event in stream.feed(item)]
    events += stream.finish(Usage(input_tokens=100, output_tokens=7, cache_read_tokens=60, cache_write_tokens=10))
    assert events[-2][1]["usage"] == {
        "input_tokens": 30,
        "output_tokens": 7,
        "cache_read_input_tokens": 60,
        "cache_creation_input_tokens": 10,
    }
    assert_anthropic_grammar(events)


def test_without_any_usage_the_estimate_is_reported() -> None:
    stream = OpenAIToAnthropicStream(input_tokens=12)
    events = stream.feed(chunk({"role": "assistant", "content": "Hi"}, "stop")) + stream.finish()
    assert events[-2][1]["usage"]["input_tokens"] == 12
    message = assert_anthropic_grammar(events)
    assert message.stop_reason == "end_turn"
    assert message.content[0].text == "Hi"  # type: ignore[union-attr]


def test_empty_stream_still_makes_a_complete_message() -> None:
    events = OpenAIToAnthropicStream().finish()
    assert [name for name, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert assert_anthropic_grammar(events).content == []


def test_streamed_refusal_ends_with_a_refusal_stop() -> None:
    stream = OpenAIToAnthropicStream()
    events = stream.feed(chunk({"role": "assistant", "refusal": "I can't."})) + stream.feed(chunk({}, "stop"))
    message = assert_anthropic_grammar(events + stream.finish())
    assert message.stop_reason == "refusal"
    assert message.content[0].text == "I can't."  # type: ignore[union-attr]


def test_text_after_a_tool_call_opens_a_new_block() -> None:
    stream = OpenAIToAnthropicStream()
    items = [
        chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}),
        chunk({"content": "done"}),
        chunk({"content": "!"}, "length"),
    ]
    events = [event for item in items for event in stream.feed(item)] + stream.finish()
    message = assert_anthropic_grammar(events)
    assert [block.type for block in message.content] == ["tool_use", "text"]
    assert message.content[1].text == "done!"  # type: ignore[union-attr]
    assert message.stop_reason == "max_tokens"


def test_other_choices_are_ignored() -> None:
    stream = OpenAIToAnthropicStream()
    other = chunk({"content": "ignored"})
    other["choices"][0]["index"] = 1
    events = stream.feed(chunk({"content": "kept"})) + stream.feed(other) + stream.finish()
    assert assert_anthropic_grammar(events).content[0].text == "kept"  # type: ignore[union-attr]


def test_anthropic_stream_survives_the_round_trip_through_openai_chunks() -> None:
    tool = tool_use("toolu_1", "weather", {})
    start: JsonObject = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 5,
            "output_tokens": 1,
            "cache_read_input_tokens": 90,
            "cache_creation_input_tokens": 3,
        },
    }
    upstream: list[JsonObject] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": text("")},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "On it."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": tool},
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": "Oslo"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 21},
        },
        {"type": "message_stop"},
    ]
    translator = AnthropicStreamTranslator()
    openai_stream = [item for event in upstream for item in translator.feed(event["type"], event)]
    downstream = OpenAIToAnthropicStream()
    events = [event for item in [*openai_stream, translator.usage_chunk()] for event in downstream.feed(item)]
    message = assert_anthropic_grammar(events + downstream.finish())
    expected = {
        **start,
        "content": [text("On it."), tool_use("toolu_1", "weather", {"city": "Oslo"})],
        "stop_reason": "tool_use",
        "usage": {**start["usage"], "output_tokens": 21},
    }
    assert message == at.Message.model_validate(expected)


# anthropic_error_body -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("openai_type", "anthropic_type"),
    [
        ("invalid_request_error", "invalid_request_error"),
        ("authentication_error", "authentication_error"),
        ("permission_error", "permission_error"),
        ("not_found_error", "not_found_error"),
        ("rate_limit_error", "rate_limit_error"),
        ("insufficient_quota", "rate_limit_error"),
        ("timeout", "timeout_error"),
        ("api_error", "api_error"),
        ("config_error", "api_error"),
    ],
)
def test_error_bodies_use_anthropic_types(openai_type: str, anthropic_type: str) -> None:
    body = anthropic_error_body(openai_type, "Budget exhausted")
    error = at.ErrorResponse.model_validate(body)
    assert (error.error.type, error.error.message) == (anthropic_type, "Budget exhausted")
    assert set(body) == {"type", "error"}


def test_hour_long_cache_writes_survive_the_round_trip() -> None:
    original = {
        "id": "msg_02",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [text("Done.")],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 30,
            "output_tokens": 12,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 500,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 400},
        },
    }
    body, usage = from_anthropic(original)
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (500, 400)
    assert openai_response_to_anthropic(body) == original
    assert at.Message.model_validate(original).usage.cache_creation is not None


async def test_a_replayed_answer_keeps_its_cache_writes_for_an_anthropic_client() -> None:
    """A cache hit or a cascade's chosen answer is streamed from its ``Usage``: the cache writes (and those kept
    for an hour) must reach an Anthropic client's usage, not turn into uncached input."""
    import orjson

    from thrifty.completions import chunks_of
    from thrifty.providers.anthropic_inbound import _usage_from_openai
    from thrifty.types import ChatResponse, Target

    usage = Usage(input_tokens=1000, output_tokens=5, cache_write_tokens=600, cache_write_1h_tokens=400)
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
    chunks = [chunk async for chunk in chunks_of(ChatResponse(answer, usage, Target("a", "claude"), 0.0))]
    last = orjson.loads(chunks[-1].payload)["usage"]
    assert _usage_from_openai(last) == usage


def test_the_stop_sequence_claude_stopped_at_reaches_an_anthropic_client() -> None:
    """Agent loops read stop_reason 'stop_sequence' and which one: OpenAI's shape has no field for it, so the
    gateway carries it beside finish_reason, both whole and streamed."""
    original = {
        "id": "msg_03",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [text("Step one done.")],
        "stop_reason": "stop_sequence",
        "stop_sequence": "END",
        "usage": {
            "input_tokens": 10,
            "output_tokens": 4,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    }
    body, _ = from_anthropic(original)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert openai_response_to_anthropic(body) == original

    upstream = AnthropicStreamTranslator(created=1)
    inbound = OpenAIToAnthropicStream()
    start = {"type": "message_start", "message": {"id": "msg_03", "model": MODEL, "usage": {"input_tokens": 10}}}
    events = [
        ("message_start", start),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        ),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
                "usage": {"output_tokens": 2},
            },
        ),
    ]
    for name, data in events:
        for chunk in upstream.feed(name, data):
            inbound.feed(chunk)
    delta = next(data["delta"] for name, data in inbound.finish(None) if name == "message_delta")
    assert delta == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
