"""Outbound translation (gateway -> Anthropic upstream), checked against the installed SDKs' own types."""

from __future__ import annotations

import functools
import itertools
import json
from typing import Any

import pydantic
import pytest
from anthropic import types as at
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from thrifty.errors import (
    BadRequest,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from thrifty.providers.anthropic_format import (
    DEFAULT_MAX_TOKENS,
    AnthropicStreamTranslator,
    anthropic_error,
    from_anthropic,
    to_anthropic,
)
from thrifty.types import JsonObject, Usage

MODEL = "claude-haiku-4-5"
PNG = "iVBORw0KGgo="

_BLOCK_TYPES: dict[str, Any] = {
    "text": at.TextBlockParam,
    "image": at.ImageBlockParam,
    "document": at.DocumentBlockParam,
    "tool_use": at.ToolUseBlockParam,
    "tool_result": at.ToolResultBlockParam,
}
_TOOL_CHOICES: dict[str, Any] = {
    "auto": at.ToolChoiceAutoParam,
    "any": at.ToolChoiceAnyParam,
    "tool": at.ToolChoiceToolParam,
    "none": at.ToolChoiceNoneParam,
}


@functools.cache
def adapter(typed_dict: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(typed_dict)


def conforms(value: JsonObject, typed_dict: Any) -> None:
    """The SDK's TypedDicts ignore unknown keys when validating; the Messages API refuses them."""
    adapter(typed_dict).validate_python(value)
    unknown = set(value) - (typed_dict.__required_keys__ | typed_dict.__optional_keys__)
    assert not unknown, f"{typed_dict.__name__} has no {unknown}"


def valid_anthropic_request(request: JsonObject) -> JsonObject:
    conforms(request, MessageCreateParamsStreaming if request.get("stream") else MessageCreateParamsNonStreaming)
    if isinstance(request.get("system"), list):
        for block in request["system"]:
            conforms(block, at.TextBlockParam)
    roles = [message["role"] for message in request["messages"]]
    assert all(a != b for a, b in itertools.pairwise(roles)), f"roles must alternate: {roles}"
    for message in request["messages"]:
        conforms(message, at.UserMessageParam if message["role"] == "user" else at.AssistantMessageParam)
        assert message["content"], "Anthropic refuses empty messages"
        for block in message["content"]:
            conforms(block, _BLOCK_TYPES[block["type"]])
            assert block["type"] != "text" or block["text"], "Anthropic refuses empty text blocks"
            for inner in block.get("content") if isinstance(block.get("content"), list) else []:
                conforms(inner, at.TextBlockParam)
        kinds = [block["type"] for block in message["content"]]
        assert kinds == sorted(kinds, key=lambda kind: kind != "tool_result"), "tool results come first"
    for tool in request.get("tools", []):
        conforms(tool, at.ToolParam)
    if "tool_choice" in request:
        conforms(request["tool_choice"], _TOOL_CHOICES[request["tool_choice"]["type"]])
    return request


def chat(*messages: JsonObject, **fields: Any) -> JsonObject:
    return {"model": "gpt-4o-mini", "messages": list(messages), **fields}


def user(content: Any) -> JsonObject:
    return {"role": "user", "content": content}


def call(call_id: str, name: str, arguments: str) -> JsonObject:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


# to_anthropic ---------------------------------------------------------------------------------------------


def test_minimal_request_gets_the_target_model_and_a_default_max_tokens() -> None:
    request = valid_anthropic_request(to_anthropic(chat(user("Hi")), MODEL))
    assert request == {
        "model": MODEL,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }


def test_system_and_developer_messages_are_lifted_in_order() -> None:
    body = chat(
        {"role": "system", "content": "Be brief."},
        user("Hi"),
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
    )
    request = valid_anthropic_request(to_anthropic(body, MODEL))
    assert request["system"] == "Be brief.\n\nAnswer in French."
    assert [message["role"] for message in request["messages"]] == ["user"]


def test_cache_control_on_system_parts_keeps_system_as_blocks() -> None:
    marker = {"type": "ephemeral"}
    parts = [
        {"type": "text", "text": "Long manual", "cache_control": marker},
        {"type": "text", "text": "Tail"},
    ]
    request = valid_anthropic_request(to_anthropic(chat({"role": "system", "content": parts}, user("Hi")), MODEL))
    assert request["system"] == [
        {"type": "text", "text": "Long manual", "cache_control": marker},
        {"type": "text", "text": "Tail"},
    ]


def test_user_parts_become_text_image_and_document_blocks() -> None:
    parts = [
        {"type": "text", "text": "Compare these", "cache_control": {"type": "ephemeral"}},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}},
        {"type": "text", "text": ""},
    ]
    request = valid_anthropic_request(to_anthropic(chat(user(parts)), MODEL))
    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "Compare these", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
        },
    ]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "ftp://example.com/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}},
        {"type": "file", "file": {"file_id": "file-123"}},
        {"type": "file", "file": {"file_data": "data:text/csv;base64,YSxi"}},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ],
)
def test_parts_anthropic_cannot_take_are_refused(part: JsonObject) -> None:
    with pytest.raises(BadRequest) as caught:
        to_anthropic(chat(user([part])), MODEL)
    assert caught.value.param == "messages"


def test_assistant_tool_calls_and_tool_results_form_alternating_turns() -> None:
    body = chat(
        user("Weather in Paris and Rome?"),
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                call("c1", "weather", '{"city": "Paris"}'),
                call("c2", "weather", '{"city":"Rome"}'),
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "24C"}]},
        user("And tomorrow?"),
        tools=[WEATHER_TOOL],
    )
    messages = valid_anthropic_request(to_anthropic(body, MODEL))["messages"]
    assert [message["role"] for message in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "c1", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "c2", "name": "weather", "input": {"city": "Rome"}},
    ]
    assert messages[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "18C"},
        {"type": "tool_result", "tool_use_id": "c2", "content": [{"type": "text", "text": "24C"}]},
        {"type": "text", "text": "And tomorrow?"},
    ]


def test_tool_results_move_ahead_of_text_in_a_merged_user_turn() -> None:
    body = chat(
        user("Go"),
        {"role": "assistant", "content": None, "tool_calls": [call("c1", "weather", "")]},
        user("(still waiting)"),
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        tools=[WEATHER_TOOL],
    )
    messages = valid_anthropic_request(to_anthropic(body, MODEL))["messages"]
    assert messages[1]["content"] == [{"type": "tool_use", "id": "c1", "name": "weather", "input": {}}]
    assert [block["type"] for block in messages[2]["content"]] == ["tool_result", "text"]


def test_consecutive_same_role_messages_are_merged_and_empty_ones_dropped() -> None:
    body = chat(user("one"), user("two"), {"role": "assistant", "content": ""}, user([{"type": "text", "text": "3"}]))
    messages = valid_anthropic_request(to_anthropic(body, MODEL))["messages"]
    assert messages == [{"role": "user", "content": [{"type": "text", "text": t} for t in ("one", "two", "3")]}]


@pytest.mark.parametrize("arguments", ['{"city": ', '["Paris"]', "null"])
def test_tool_call_arguments_that_are_not_a_json_object_are_refused(arguments: str) -> None:
    body = chat(user("x"), {"role": "assistant", "tool_calls": [call("c1", "weather", arguments)]})
    with pytest.raises(BadRequest, match="weather"):
        to_anthropic(body, MODEL)


def test_tool_message_without_its_call_id_is_refused() -> None:
    with pytest.raises(BadRequest, match="tool_call_id"):
        to_anthropic(chat(user("x"), {"role": "tool", "content": "18C"}), MODEL)


def test_unknown_role_is_refused() -> None:
    with pytest.raises(BadRequest, match="function"):
        to_anthropic(chat(user("x"), {"role": "function", "name": "f", "content": "1"}), MODEL)


def test_tools_become_input_schemas() -> None:
    bare = {"type": "function", "function": {"name": "ping"}, "cache_control": {"type": "ephemeral"}}
    request = valid_anthropic_request(to_anthropic(chat(user("x"), tools=[WEATHER_TOOL, bare]), MODEL))
    assert request["tools"] == [
        {
            "name": "weather",
            "description": "Current weather",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
        },
        {
            "name": "ping",
            "input_schema": {"type": "object", "properties": {}},
            "cache_control": {"type": "ephemeral"},
        },
    ]
    assert "tool_choice" not in request


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, None),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", None, {"type": "any"}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ({"type": "function", "function": {"name": "weather"}}, None, {"type": "tool", "name": "weather"}),
    ],
)
def test_tool_choice(tool_choice: Any, parallel: bool | None, expected: JsonObject | None) -> None:
    body = chat(user("x"), tools=[WEATHER_TOOL], tool_choice=tool_choice, parallel_tool_calls=parallel)
    request = valid_anthropic_request(to_anthropic(body, MODEL))
    assert request.get("tool_choice") == expected
    assert len(request["tools"]) == 1, "tools stay even with tool_choice none: the history may use them"


def test_tool_choice_without_tools_is_left_out() -> None:
    request = valid_anthropic_request(to_anthropic(chat(user("x"), tool_choice="none"), MODEL))
    assert "tool_choice" not in request
    assert "tools" not in request


@pytest.mark.parametrize(
    ("tools", "tool_choice"),
    [
        ([{"type": "custom", "custom": {"name": "grammar"}}], None),
        ([WEATHER_TOOL], {"type": "allowed_tools"}),
    ],
)
def test_tools_anthropic_cannot_take_are_refused(tools: list[JsonObject], tool_choice: Any) -> None:
    with pytest.raises(BadRequest):
        to_anthropic(chat(user("x"), tools=tools, tool_choice=tool_choice), MODEL)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 200}, 200),
        ({"max_completion_tokens": 200, "max_tokens": 100}, 200),
        ({"max_completion_tokens": None, "max_tokens": 100}, 100),
    ],
)
def test_max_tokens(fields: JsonObject, expected: int) -> None:
    assert valid_anthropic_request(to_anthropic(chat(user("x"), **fields), MODEL))["max_tokens"] == expected


@pytest.mark.parametrize("value", [0, -1, "100", True, 1.5])
def test_invalid_max_tokens_is_refused(value: Any) -> None:
    with pytest.raises(BadRequest) as caught:
        to_anthropic(chat(user("x"), max_tokens=value), MODEL)
    assert caught.value.param == "max_tokens"


def test_stop_user_and_stream() -> None:
    body = chat(user("x"), stop=["END", "\n", "  "], user="alice", stream=True)
    request = valid_anthropic_request(to_anthropic(body, MODEL))
    assert request["stop_sequences"] == ["END"]
    assert request["metadata"] == {"user_id": "alice"}
    assert request["stream"] is True
    assert valid_anthropic_request(to_anthropic(chat(user("x"), stop="###"), MODEL))["stop_sequences"] == ["###"]


def test_sampling_parameters_are_dropped_by_default() -> None:
    request = valid_anthropic_request(to_anthropic(chat(user("x"), temperature=0.2, top_p=0.5), MODEL))
    assert "temperature" not in request
    assert "top_p" not in request


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"temperature": 0.7}, {"temperature": 0.7}),
        ({"temperature": 1.6}, {"temperature": 1.0}),
        ({"temperature": 0}, {"temperature": 0.0}),
        ({"temperature": 0.3, "top_p": 0.9}, {"temperature": 0.3}),
        ({"top_p": 0.9}, {"top_p": 0.9}),
        ({"temperature": None, "top_p": 0.9}, {"top_p": 0.9}),
        ({}, {}),
    ],
)
def test_sampling_parameters_on_request(fields: JsonObject, expected: JsonObject) -> None:
    request = to_anthropic(chat(user("x"), **fields), MODEL, sampling=True)
    assert {key: request[key] for key in ("temperature", "top_p") if key in request} == expected


def test_non_numeric_temperature_is_refused() -> None:
    with pytest.raises(BadRequest) as caught:
        to_anthropic(chat(user("x"), temperature="hot"), MODEL, sampling=True)
    assert caught.value.param == "temperature"


def test_openai_only_knobs_are_dropped() -> None:
    knobs = {
        "seed": 7,
        "logit_bias": {"50256": -100},
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
        "logprobs": True,
        "top_logprobs": 2,
        "service_tier": "flex",
        "store": True,
        "stream_options": {"include_usage": True},
        "stream": False,
        "n": 1,
        "temperature": 0.5,
        "top_p": 0.5,
    }
    request = valid_anthropic_request(to_anthropic(chat(user("x"), **knobs), MODEL))
    assert set(request) == {"model", "max_tokens", "messages"}


@pytest.mark.parametrize("n", [2, 5])
def test_several_choices_are_refused(n: int) -> None:
    with pytest.raises(BadRequest) as caught:
        to_anthropic(chat(user("x"), n=n), MODEL)
    assert caught.value.param == "n"


def test_json_schema_response_format_becomes_a_system_instruction() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "result", "schema": schema, "strict": True},
    }
    body = chat({"role": "system", "content": "You add numbers."}, user("2+2"), response_format=response_format)
    request = valid_anthropic_request(to_anthropic(body, MODEL))
    first, instruction = request["system"].split("\n\n", 1)
    assert first == "You add numbers."
    assert "JSON" in instruction
    assert json.loads(instruction[instruction.index("{") :]) == schema
    assert "response_format" not in request


@pytest.mark.parametrize("spec", ["result", ["x"], {"name": "r", "schema": "object"}])
def test_malformed_json_schema_is_a_bad_request(spec: object) -> None:
    with pytest.raises(BadRequest) as caught:
        to_anthropic(chat(user("x"), response_format={"type": "json_schema", "json_schema": spec}), MODEL)
    assert caught.value.param == "response_format"


def test_json_object_response_format_without_system_prompt() -> None:
    request = valid_anthropic_request(to_anthropic(chat(user("x"), response_format={"type": "json_object"}), MODEL))
    assert "JSON object" in request["system"]


def test_text_response_format_adds_nothing() -> None:
    request = valid_anthropic_request(to_anthropic(chat(user("x"), response_format={"type": "text"}), MODEL))
    assert "system" not in request


def test_schema_instruction_follows_cached_system_blocks() -> None:
    system = {
        "role": "system",
        "content": [{"type": "text", "text": "Manual", "cache_control": {"type": "ephemeral"}}],
    }
    request = to_anthropic(chat(system, user("x"), response_format={"type": "json_object"}), MODEL)
    assert request["system"][0] == {"type": "text", "text": "Manual", "cache_control": {"type": "ephemeral"}}
    assert "JSON" in request["system"][1]["text"]


@pytest.mark.parametrize("messages", [None, "hi", [["user", "hi"]]])
def test_malformed_messages_are_refused(messages: Any) -> None:
    with pytest.raises(BadRequest) as caught:
        to_anthropic({"model": "m", "messages": messages}, MODEL)
    assert caught.value.param == "messages"


# from_anthropic -------------------------------------------------------------------------------------------


def anthropic_message(content: list[JsonObject], stop_reason: str = "end_turn", **usage: Any) -> JsonObject:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 7, **usage},
    }


def test_text_message_becomes_a_chat_completion() -> None:
    message = anthropic_message([{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}])
    at.Message.model_validate(message)
    body, usage = from_anthropic(message, created=1700000000)
    completion = ChatCompletion.model_validate(body)
    assert completion.id == "msg_01"
    assert completion.created == 1700000000
    assert completion.model == MODEL
    assert completion.choices[0].message.content == "Hello there"
    assert completion.choices[0].message.tool_calls is None
    assert completion.choices[0].finish_reason == "stop"
    assert usage == Usage(input_tokens=12, output_tokens=7)
    assert body["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 7,
        "total_tokens": 19,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_cache_tokens_are_inside_prompt_tokens_and_counted_once() -> None:
    message = anthropic_message([], cache_read_input_tokens=1000, cache_creation_input_tokens=50)
    body, usage = from_anthropic(message)
    assert usage == Usage(input_tokens=1062, output_tokens=7, cache_read_tokens=1000, cache_write_tokens=50)
    completion = ChatCompletion.model_validate(body)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 1062
    assert completion.usage.total_tokens == 1069
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 1000
    assert body["usage"]["cache_creation_input_tokens"] == 50


def test_tool_use_message_becomes_tool_calls() -> None:
    message = anthropic_message(
        [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "ping", "input": {}},
        ],
        stop_reason="tool_use",
    )
    at.Message.model_validate(message)
    body, _ = from_anthropic(message)
    choice = ChatCompletion.model_validate(body).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("toolu_1", "weather", {"city": "Paris"}),
        ("toolu_2", "ping", {}),
    ]


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
    ],
)
def test_stop_reasons(stop_reason: str, finish_reason: str) -> None:
    body, _ = from_anthropic(anthropic_message([{"type": "text", "text": "x"}], stop_reason))
    assert ChatCompletion.model_validate(body).choices[0].finish_reason == finish_reason


@pytest.mark.parametrize("resp", [{}, {"type": "error", "error": {}}, {"type": "message", "content": "x"}])
def test_a_body_that_is_not_a_message_is_an_upstream_error(resp: JsonObject) -> None:
    with pytest.raises(UpstreamError):
        from_anthropic(resp)


# AnthropicStreamTranslator --------------------------------------------------------------------------------


def anthropic_events(usage_start: JsonObject | None = None) -> list[tuple[str, JsonObject]]:
    """A stream as Anthropic sends it: text, then a tool call whose input arrives in fragments."""
    start = anthropic_message([], **(usage_start or {}))
    start["stop_reason"] = None
    tool = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}
    events: list[JsonObject] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": tool},
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"ci'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": 'ty": "P"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 30},
        },
        {"type": "message_stop"},
    ]
    for event in events:
        if event["type"] != "ping":
            adapter(at.RawMessageStreamEvent).validate_python(event)
    return [(event["type"], event) for event in events]


def translate(events: list[tuple[str, JsonObject]]) -> tuple[list[JsonObject], AnthropicStreamTranslator]:
    translator = AnthropicStreamTranslator(created=1700000000)
    chunks = [chunk for name, data in events for chunk in translator.feed(name, data)]
    return chunks, translator


def test_stream_chunks_are_valid_and_in_openai_order() -> None:
    chunks, _ = translate(anthropic_events())
    parsed = [ChatCompletionChunk.model_validate(chunk) for chunk in chunks]
    assert all(chunk.id == "msg_01" and chunk.model == MODEL and chunk.created == 1700000000 for chunk in parsed)
    deltas = [chunk.choices[0].delta for chunk in parsed]
    assert deltas[0].role == "assistant"
    assert [delta.content for delta in deltas if delta.content] == ["Let me ", "check."]
    calls = [call for delta in deltas for call in delta.tool_calls or []]
    assert calls[0].index == 0
    assert calls[0].id == "toolu_1"
    assert calls[0].function is not None
    assert (calls[0].function.name, calls[0].function.arguments) == ("weather", "")
    assert [c.function.arguments for c in calls[1:] if c.function] == ['{"ci', 'ty": "P"}']
    assert [chunk.choices[0].finish_reason for chunk in parsed] == [None] * (len(parsed) - 1) + ["tool_calls"]


def test_openai_sdk_reassembles_the_translated_stream() -> None:
    chunks, translator = translate(anthropic_events())
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for chunk in [*chunks, translator.usage_chunk()]:
        list(state.handle_chunk(ChatCompletionChunk.model_validate(chunk)))
    final = state.get_final_completion()
    choice = final.choices[0]
    assert choice.message.content == "Let me check."
    assert choice.finish_reason == "tool_calls"
    tool_call = (choice.message.tool_calls or [])[0]
    assert (tool_call.id, tool_call.function.name) == ("toolu_1", "weather")
    assert json.loads(tool_call.function.arguments) == {"city": "P"}
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (12, 30)


def test_parallel_tool_calls_are_numbered_among_tool_calls_only() -> None:
    translator = AnthropicStreamTranslator()
    translator.feed("message_start", {"type": "message_start", "message": anthropic_message([])})
    translator.feed("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    indexes = []
    for block_index, call_id in ((1, "toolu_a"), (2, "toolu_b")):
        block = {"type": "tool_use", "id": call_id, "name": "ping", "input": {}}
        (chunk,) = translator.feed("content_block_start", {"index": block_index, "content_block": block})
        (fragment,) = translator.feed(
            "content_block_delta",
            {"index": block_index, "delta": {"type": "input_json_delta", "partial_json": "{}"}},
        )
        indexes.append(
            (
                chunk["choices"][0]["delta"]["tool_calls"][0]["index"],
                fragment["choices"][0]["delta"]["tool_calls"][0]["index"],
            )
        )
    assert indexes == [(0, 0), (1, 1)]


def test_stream_usage_counts_cache_tokens_inside_input() -> None:
    _, translator = translate(anthropic_events({"cache_read_input_tokens": 100, "cache_creation_input_tokens": 8}))
    assert translator.usage == Usage(input_tokens=120, output_tokens=30, cache_read_tokens=100, cache_write_tokens=8)
    chunk = ChatCompletionChunk.model_validate(translator.usage_chunk())
    assert chunk.choices == []
    assert chunk.usage is not None
    assert (chunk.usage.prompt_tokens, chunk.usage.completion_tokens, chunk.usage.total_tokens) == (
        120,
        30,
        150,
    )
    assert chunk.usage.prompt_tokens_details is not None
    assert chunk.usage.prompt_tokens_details.cached_tokens == 100


def test_cumulative_counts_in_message_delta_replace_those_of_message_start() -> None:
    translator = AnthropicStreamTranslator()
    assert translator.usage is None
    translator.feed("message_start", {"type": "message_start", "message": anthropic_message([])})
    assert translator.usage == Usage(input_tokens=12, output_tokens=7)
    delta = {
        "delta": {"stop_reason": "end_turn"},
        "usage": {"output_tokens": 40, "input_tokens": 15, "cache_read_input_tokens": None},
    }
    (chunk,) = translator.feed("message_delta", delta)
    assert chunk["choices"][0]["finish_reason"] == "stop"
    assert translator.usage == Usage(input_tokens=15, output_tokens=40)


def test_usage_chunk_before_any_event_reports_zero() -> None:
    chunk = ChatCompletionChunk.model_validate(AnthropicStreamTranslator().usage_chunk())
    assert chunk.usage is not None
    assert chunk.usage.total_tokens == 0


@pytest.mark.parametrize(
    "event",
    [
        ("ping", {"type": "ping"}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_stop", {"type": "message_stop"}),
        ("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        ("content_block_delta", {"index": 9, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        ("some_future_event", {"type": "some_future_event"}),
    ],
)
def test_events_without_openai_meaning_yield_nothing(event: tuple[str, JsonObject]) -> None:
    assert AnthropicStreamTranslator().feed(*event) == []


def test_event_name_falls_back_to_the_data_type() -> None:
    (chunk,) = AnthropicStreamTranslator().feed("", {"type": "message_start", "message": anthropic_message([])})
    assert chunk["choices"][0]["delta"]["role"] == "assistant"


@pytest.mark.parametrize(
    ("error_type", "expected", "status"),
    [
        ("overloaded_error", UpstreamUnavailable, 503),
        ("api_error", UpstreamUnavailable, 503),
        ("rate_limit_error", UpstreamRateLimited, 429),
        ("invalid_request_error", UpstreamRejected, 400),
        ("mystery_error", UpstreamUnavailable, 503),
    ],
)
def test_stream_error_event_raises_from_the_error_tree(
    error_type: str, expected: type[UpstreamError], status: int
) -> None:
    data = {"type": "error", "error": {"type": error_type, "message": "Overloaded"}}
    if error_type != "mystery_error":
        at.ErrorResponse.model_validate(data)
    with pytest.raises(expected) as caught:
        AnthropicStreamTranslator().feed("error", data)
    assert type(caught.value) is expected
    assert caught.value.message == "Overloaded"
    if expected is UpstreamRejected:
        assert caught.value.code == error_type
    assert caught.value.http_status == status


# anthropic_error ------------------------------------------------------------------------------------------


def error_body(error_type: str, message: str) -> bytes:
    return json.dumps({"type": "error", "error": {"type": error_type, "message": message}}).encode()


def test_rejected_request_keeps_anthropic_message_and_type() -> None:
    error = anthropic_error(400, error_body("invalid_request_error", "max_tokens: too large"))
    assert isinstance(error, UpstreamRejected)
    assert not error.retryable
    assert (error.http_status, error.message, error.code) == (
        400,
        "max_tokens: too large",
        "invalid_request_error",
    )


@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [
        (529, "overloaded_error", UpstreamUnavailable),
        (500, "api_error", UpstreamUnavailable),
        (429, "rate_limit_error", UpstreamRateLimited),
        (400, "invalid_request_error", UpstreamRejected),
        (401, "authentication_error", UpstreamAuthFailed),
        (402, "billing_error", UpstreamAuthFailed),  # the gateway's account, so another target is tried
    ],
)
def test_status_decides_the_error_class(status: int, error_type: str, expected: type[UpstreamError]) -> None:
    error = anthropic_error(status, error_body(error_type, "nope"))
    assert type(error) is expected
    assert error.message.endswith("nope")  # a refused key says it is the gateway's, not the client's


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"", "Anthropic returned HTTP 502"),
        (b"[1, 2]", "[1, 2]"),
        (b'{"error": "flat"}', '{"error": "flat"}'),
        (b"\xff\xfe", "\ufffd\ufffd"),
        (b'{"type": "error", "error": {}}', "Anthropic returned HTTP 502"),
    ],
)
def test_garbage_error_bodies_are_tolerated(body: bytes, message: str) -> None:
    error = anthropic_error(502, body)
    assert isinstance(error, UpstreamUnavailable)
    assert error.message == message


def test_cache_writes_kept_for_an_hour_are_told_apart_and_passed_on() -> None:
    message = anthropic_message(
        [],
        cache_creation_input_tokens=50,
        cache_creation={"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 30},
    )
    body, usage = from_anthropic(message)
    assert usage == Usage(input_tokens=62, output_tokens=7, cache_write_tokens=50, cache_write_1h_tokens=30)
    assert body["usage"]["cache_creation"] == {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 30}
    from thrifty.providers.openai import usage_from_openai

    assert usage_from_openai(body["usage"]) == usage
