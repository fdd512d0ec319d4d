"""Anthropic Messages to OpenAI Chat Completions and back, for Anthropic SDK clients of the gateway.

An unmodified Anthropic client posts to ``/v1/messages``. Its request is translated into the gateway's OpenAI
shape once, runs through the ordinary pipeline (so any target may answer, Claude or not), and the answer is
translated back. ``anthropic_format`` makes the opposite trip, to Anthropic upstreams.

- Fields with no OpenAI meaning are dropped (``top_k``, ``thinking``, ``service_tier``, ``container`` ...),
  and so are thinking blocks in the history: the OpenAI shape cannot carry them.
- Anthropic server tools (web search, code execution ...) are refused: only Anthropic runs them, and the
  gateway may route the request elsewhere.
- OpenAI tool messages hold text only, so a tool result's ``is_error`` becomes an "Error: " prefix and its
  images move to a user message right after the tool messages.
- ``cache_control`` stays on text parts and tools, so that an Anthropic upstream still caches the prompt.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from thrifty.errors import BadRequest, UpstreamError
from thrifty.providers.anthropic_format import STOP_SEQUENCE, cache_creation
from thrifty.providers.openai import usage_from_openai
from thrifty.types import JsonObject, Usage

log = logging.getLogger("thrifty")

Event = tuple[str, JsonObject]
"""One server-sent event: its name and its data."""

_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "insufficient_quota": "rate_limit_error",
    "timeout": "timeout_error",
}


def anthropic_request_to_openai(body: JsonObject) -> JsonObject:
    """The OpenAI chat body for a Messages API request; refuses what the Messages API itself would refuse."""
    model, max_tokens, messages = body.get("model"), body.get("max_tokens"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a non-empty string", param="model")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("'max_tokens' is required and must be a positive integer", param="max_tokens")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("'messages' is required and must be a non-empty list of objects", param="messages")
    converted = _system(body.get("system")) + [out for message in messages for out in _messages(message)]
    request: JsonObject = {"model": model, "messages": converted, "max_tokens": max_tokens}
    request.update(_options(body))
    request.update(_tool_fields(body))
    return request


def _options(body: JsonObject) -> JsonObject:
    options = {name: body[name] for name in ("temperature", "top_p") if body.get(name) is not None}
    stop = body.get("stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(item, str) for item in stop)):
        raise BadRequest("'stop_sequences' must be a list of strings", param="stop_sequences")
    if stop:
        options["stop"] = stop
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        options["user"] = str(metadata["user_id"])
    if body.get("stream"):
        # The closing message_delta must report usage, so the usage chunk is always asked for.
        options["stream"] = True
        options["stream_options"] = {"include_usage": True}
    return options


def _system(system: Any) -> list[JsonObject]:
    if not system:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise BadRequest("'system' must be a string or a list of text blocks", param="system")
    return [{"role": "system", "content": _content([_text_part(block, "system") for block in system])}]


def _messages(message: JsonObject) -> list[JsonObject]:
    role, content = message.get("role"), message.get("content")
    if role not in ("user", "assistant"):
        raise BadRequest(f"message role {role!r} must be 'user' or 'assistant'", param="messages")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
        raise BadRequest("message content must be a string or a list of blocks", param="messages")
    return _user_messages(content) if role == "user" else [_assistant_message(content)]


def _user_messages(blocks: list[JsonObject]) -> list[JsonObject]:
    """Tool results become tool messages, which OpenAI wants right after the assistant's tool calls."""
    converted: list[JsonObject] = []
    parts: list[JsonObject] = []
    for block in blocks:
        if block.get("type") == "tool_result":
            tool_message, images = _tool_message(block)
            converted.append(tool_message)
            parts.extend(images)
        else:
            parts.append(_user_part(block))
    if parts:
        converted.append({"role": "user", "content": _content(parts)})
    return converted


def _tool_message(block: JsonObject) -> tuple[JsonObject, list[JsonObject]]:
    content = block.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    if not isinstance(blocks, list) or not all(isinstance(inner, dict) for inner in blocks):
        raise BadRequest("tool_result content must be a string or a list of blocks", param="messages")
    texts = [_text_part(inner) for inner in blocks if inner.get("type") == "text" and inner.get("text")]
    others = [_user_part(inner) for inner in blocks if inner.get("type") != "text"]
    if block.get("is_error"):
        texts = texts or [{"type": "text", "text": ""}]
        texts[0] = {**texts[0], "text": ("Error: " + texts[0]["text"]).strip()}
    if block.get("cache_control") and texts:
        texts[-1] = {**texts[-1], "cache_control": block["cache_control"]}
    message = {
        "role": "tool",
        "tool_call_id": block.get("tool_use_id"),
        "content": _content(texts) if texts else "",
    }
    return message, others


def _user_part(block: JsonObject) -> JsonObject:
    kind = block.get("type")
    if kind == "text":
        return _text_part(block)
    source = block["source"] if isinstance(block.get("source"), dict) else {}
    if kind == "image" and source.get("type") == "url":
        part: JsonObject = {"type": "image_url", "image_url": {"url": source.get("url")}}
    elif kind == "image" and source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
        part = {"type": "image_url", "image_url": {"url": url}}
    elif kind == "document" and source.get("type") == "base64":
        file_data = f"data:{source.get('media_type')};base64,{source.get('data')}"
        part = {
            "type": "file",
            "file": {"file_data": file_data, "filename": block.get("title") or "document.pdf"},
        }
    elif kind == "document" and source.get("type") == "text":
        part = {"type": "text", "text": source.get("data") or ""}
    else:
        what = f"{kind} block" + (f" with a {source.get('type')} source" if source else "")
        raise BadRequest(f"the gateway cannot translate a {what}", param="messages")
    if block.get("cache_control"):
        part["cache_control"] = block["cache_control"]
    return part


def _text_part(block: Any, param: str = "messages") -> JsonObject:
    if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise BadRequest(f"'{param}' holds a block that is not text with a 'text' string", param=param)
    part: JsonObject = {"type": "text", "text": block["text"]}
    if block.get("cache_control"):
        part["cache_control"] = block["cache_control"]
    return part


def _content(parts: list[JsonObject]) -> str | list[JsonObject]:
    """A lone uncached text part goes as a plain string, the form every OpenAI-compatible server accepts."""
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        text: str = parts[0]["text"]
        return text
    return parts


def _assistant_message(blocks: list[JsonObject]) -> JsonObject:
    parts: list[JsonObject] = []
    calls: list[JsonObject] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            parts.append(_text_part(block))
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {})
            function = {"name": block.get("name"), "arguments": arguments}
            calls.append({"id": block.get("id"), "type": "function", "function": function})
        elif kind not in ("thinking", "redacted_thinking"):
            raise BadRequest(f"the gateway cannot translate an assistant {kind} block", param="messages")
    message: JsonObject = {"role": "assistant", "content": _content(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_fields(body: JsonObject) -> JsonObject:
    tools = body.get("tools")
    if not tools:
        # OpenAI refuses tool_choice and parallel_tool_calls without tools.
        return {}
    fields: JsonObject = {"tools": [_tool(tool) for tool in tools]}
    choice = body.get("tool_choice")
    if choice is None:
        return fields
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("auto", "none"):
        fields["tool_choice"] = kind
    elif kind == "any":
        fields["tool_choice"] = "required"
    elif kind == "tool" and choice.get("name"):
        fields["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise BadRequest(f"unsupported tool_choice {choice!r}", param="tool_choice")
    if choice.get("disable_parallel_tool_use"):
        fields["parallel_tool_calls"] = False
    return fields


def _tool(tool: Any) -> JsonObject:
    if not isinstance(tool, dict) or tool.get("type") not in (None, "custom") or not tool.get("name"):
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise BadRequest(f"only client tools with a name can pass the gateway, not {kind!r}", param="tools")
    function: JsonObject = {
        "name": tool["name"],
        "parameters": tool.get("input_schema") or {"type": "object"},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    translated: JsonObject = {"type": "function", "function": function}
    if tool.get("cache_control"):
        translated["cache_control"] = tool["cache_control"]
    return translated


def _usage_from_openai(usage: JsonObject) -> Usage:
    """The gateway's OpenAI-shaped usage, read as every upstream's is (cache reads the DeepSeek way, cache
    writes and the 1-hour part included)."""
    return usage_from_openai(usage) or Usage()


def _anthropic_usage(usage: Usage) -> JsonObject:
    """Anthropic counts cache reads and writes beside ``input_tokens``, where ``Usage`` counts them inside."""
    uncached = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
    shaped: JsonObject = {
        "input_tokens": max(uncached, 0),
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }
    if usage.cache_write_1h_tokens:
        shaped["cache_creation"] = cache_creation(usage)
    return shaped


def openai_response_to_anthropic(body: JsonObject, usage: Usage | None = None) -> JsonObject:
    """The Messages API response for a ``chat.completion``; ``usage`` stands in where the body has none (the
    count the gateway made when the upstream reported nothing)."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError("the upstream answer has no choices")
    message = choices[0].get("message") or {}
    content: list[JsonObject] = []
    for text in (message.get("content"), message.get("refusal")):
        if isinstance(text, str) and text:
            content.append({"type": "text", "text": text})
    blocks = [_tool_use(call) for call in message.get("tool_calls") or []]
    content += [block for block, _ in blocks]
    stop_reason = _STOP_REASONS.get(str(choices[0].get("finish_reason")), "end_turn")
    if not all(readable for _, readable in blocks):
        # A call whose arguments could not be read is no call to run (an agent would run it with none): the
        # answer is reported as cut short, which is what it is.
        stop_reason = "max_tokens"
    sequence = choices[0].get(STOP_SEQUENCE)
    if isinstance(sequence, str):
        stop_reason = "stop_sequence"
    return {
        "id": body.get("id") or "",
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or "",
        "content": content,
        "stop_reason": "refusal" if message.get("refusal") else stop_reason,
        "stop_sequence": sequence if isinstance(sequence, str) else None,
        "usage": _anthropic_usage(_usage_from_openai(body["usage"]) if body.get("usage") else usage or Usage()),
    }


def _arguments_of(call: JsonObject) -> tuple[JsonObject, bool]:
    """A tool call's arguments as an object, and whether they could be read as one."""
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError):
        return {}, False
    return (arguments, True) if isinstance(arguments, dict) else ({}, False)


def _tool_use(call: JsonObject) -> tuple[JsonObject, bool]:
    """A tool call as a ``tool_use`` block, and whether its arguments could be read. Arguments that are not a
    JSON object (a call cut off at the token limit, a model's slip) become ``{}``, logged: the answer was paid
    for, and an error here would make the client retry and pay again for the same cut."""
    function = call.get("function") or {}
    arguments, readable = _arguments_of(call)
    if not readable:
        log.warning("the model's arguments for tool %r are not a JSON object; sent as {}", function.get("name"))
    block = {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments}
    return block, readable


class OpenAIToAnthropicStream:
    """OpenAI ``chat.completion.chunk`` dicts as the event sequence the Anthropic SDK expects.

    ``message_start`` comes first, then each content block as start, deltas, stop, then ``message_delta``
    and ``message_stop`` from ``finish``. OpenAI reports input tokens only at the end, so ``message_start``
    carries ``input_tokens`` as given (an estimate, or 0) and the closing ``message_delta`` the real counts,
    which the Anthropic SDK takes over.
    """

    def __init__(self, *, input_tokens: int = 0) -> None:
        self._input_tokens = input_tokens
        self._started = False
        self._open: int | None = None
        self._open_kind = ""
        self._blocks = 0
        # OpenAI numbers tool calls only; Anthropic numbers all content blocks.
        self._tool_blocks: dict[int, int] = {}
        self._stop_reason = "end_turn"
        self._stop_sequence: str | None = None
        self._refused = False
        self._usage: Usage | None = None

    def feed(self, chunk: JsonObject) -> list[Event]:
        events = self._start(chunk)
        if chunk.get("usage"):
            self._usage = _usage_from_openai(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            self._refused = self._refused or bool(delta.get("refusal"))
            for text in (delta.get("content"), delta.get("refusal")):
                if text:
                    events += self._text(text)
            for call in delta.get("tool_calls") or []:
                events += self._tool_call(call)
            if choice.get("finish_reason"):
                self._stop_reason = _STOP_REASONS.get(choice["finish_reason"], "end_turn")
                sequence = choice.get(STOP_SEQUENCE)
                if isinstance(sequence, str):
                    self._stop_reason, self._stop_sequence = "stop_sequence", sequence
        return events

    def finish(self, usage: Usage | None = None) -> list[Event]:
        """Closes the message; ``usage`` wins over what the chunks reported."""
        usage = usage or self._usage or Usage(input_tokens=self._input_tokens, estimated=True)
        delta = {"stop_reason": "refusal" if self._refused else self._stop_reason, "stop_sequence": self._stop_sequence}
        return [
            *self._start({}),
            *self._close(),
            ("message_delta", {"type": "message_delta", "delta": delta, "usage": _anthropic_usage(usage)}),
            ("message_stop", {"type": "message_stop"}),
        ]

    def _start(self, chunk: JsonObject) -> list[Event]:
        if self._started:
            return []
        self._started = True
        message: JsonObject = {
            "id": chunk.get("id") or "",
            "type": "message",
            "role": "assistant",
            "model": chunk.get("model") or "",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _text(self, text: str) -> list[Event]:
        events = [] if self._open_kind == "text" else self._begin({"type": "text", "text": ""}, "text")
        delta = {"type": "text_delta", "text": text}
        return [
            *events,
            ("content_block_delta", {"type": "content_block_delta", "index": self._open, "delta": delta}),
        ]

    def _tool_call(self, call: JsonObject) -> list[Event]:
        position = call.get("index", 0)
        function = call.get("function") or {}
        events: list[Event] = []
        if position not in self._tool_blocks:
            block: JsonObject = {"type": "tool_use", "id": call.get("id") or "", "input": {}}
            block["name"] = function.get("name") or ""
            events = self._begin(block, "tool_use")
            self._tool_blocks[position] = self._blocks - 1
        if function.get("arguments"):
            # Sent to the call's own block, open or not: a server interleaving parallel calls loses nothing.
            delta = {"type": "input_json_delta", "partial_json": function["arguments"]}
            data = {"type": "content_block_delta", "index": self._tool_blocks[position], "delta": delta}
            events.append(("content_block_delta", data))
        return events

    def _begin(self, block: JsonObject, kind: str) -> list[Event]:
        events = self._close()
        self._open, self._open_kind = self._blocks, kind
        self._blocks += 1
        start = {"type": "content_block_start", "index": self._open, "content_block": block}
        return [*events, ("content_block_start", start)]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        events: list[Event] = [("content_block_stop", {"type": "content_block_stop", "index": self._open})]
        self._open, self._open_kind = None, ""
        return events


def anthropic_error_body(error_type: str, message: str) -> JsonObject:
    """The gateway's OpenAI-style error, in the shape Anthropic SDK clients parse."""
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(error_type, "api_error"), "message": message}}
