"""OpenAI Chat Completions to Anthropic Messages and back, for calls to an Anthropic upstream.

The gateway speaks OpenAI's shape inside; these pure functions carry a request out to Anthropic and its
answer, whole or streamed, back in (``anthropic_inbound`` makes the opposite trip for Anthropic SDK clients).

- The Messages API refuses unknown fields, so only fields with an Anthropic meaning are carried over.
  OpenAI-only knobs (``seed``, ``logit_bias``, ``presence_penalty``, ``logprobs``, ``service_tier`` ...) are
  dropped, not refused: a router chose this target to save money, and failing a valid request over a knob
  Claude lacks would turn a saving into an outage.
- ``temperature`` and ``top_p`` are dropped too unless ``sampling=True``. API version 2026-10-21 (the one the
  current SDK pins, which no longer has these fields) answers 400 to any sampling parameter, and the newest
  models do so under older versions as well. With ``sampling=True``, for older models on an older version,
  ``temperature`` is clamped to Anthropic's 0..1 and ``top_p`` goes only without it, since several models
  refuse the two together.
- ``n`` > 1 is refused: Claude gives one answer per call, and fewer choices than asked for breaks clients.
- ``response_format`` becomes an instruction at the end of the system prompt. Native structured output
  (``output_config.format``) exists only on recent models, and a forced tool call would make the answer's
  translation depend on the request; the instruction works everywhere and keeps ``from_anthropic`` stateless.
  The schema is asked for, not guaranteed.
- ``cache_control`` on parts and tools (Anthropic's field, which OpenAI-shaped clients may send) is kept:
  provider-side prompt caching is one of the gateway's levers.
"""

from __future__ import annotations

import json
import time
from typing import Any

from thrifty.errors import BadRequest, Untranslatable, UpstreamError, upstream_error_for_status
from thrifty.types import JsonObject, Usage

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires ``max_tokens`` and OpenAI does not; every current Claude model can produce this many."""

_SYSTEM_ROLES = frozenset({"system", "developer"})

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# An error inside a stream has no HTTP status; these are the ones Anthropic documents for each type.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}

_JSON_ONLY = "Respond with a single JSON value and nothing else: no prose, no Markdown code fences."


def to_anthropic(body: JsonObject, model: str, *, sampling: bool = False) -> JsonObject:
    """The Messages API request for an OpenAI chat body, for ``model`` (``sampling``: see the module doc)."""
    if (body.get("n") or 1) != 1:
        raise Untranslatable("Anthropic models return one choice per request; 'n' must be 1", param="n")
    messages = body.get("messages")
    if not isinstance(messages, list) or not all(isinstance(message, dict) for message in messages):
        raise BadRequest("'messages' must be a list of objects", param="messages")
    # Anthropic has no system role inside the conversation: every system message moves to the top, in order.
    system = [block for m in messages if m.get("role") in _SYSTEM_ROLES for block in _text_blocks(m.get("content"))]
    system += _format_instruction(body.get("response_format"))
    request: JsonObject = {
        "model": model,
        "max_tokens": _max_tokens(body),
        "messages": _conversation(messages),
    }
    if system:
        cached = any("cache_control" in block for block in system)
        request["system"] = system if cached else "\n\n".join(block["text"] for block in system)
    request.update(_sampling(body) if sampling else {})
    request.update(_stop_and_user(body))
    request.update(_tool_fields(body))
    if body.get("stream"):
        request["stream"] = True
    return request


def _max_tokens(body: JsonObject) -> int:
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    if value is None:
        return DEFAULT_MAX_TOKENS
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest("'max_tokens' must be a positive integer", param="max_tokens")
    return value


def _sampling(body: JsonObject) -> JsonObject:
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise BadRequest(f"'{name}' must be a number", param=name)
        return {name: min(max(float(value), 0.0), 1.0)}
    return {}


def _stop_and_user(body: JsonObject) -> JsonObject:
    fields: JsonObject = {}
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    # Anthropic answers 400 to a whitespace-only stop sequence; OpenAI clients commonly send "\n".
    stops = [sequence for sequence in stops if isinstance(sequence, str) and sequence.strip()]
    if stops:
        fields["stop_sequences"] = stops
    if body.get("user"):
        fields["metadata"] = {"user_id": str(body["user"])}
    return fields


def _format_instruction(response_format: Any) -> list[JsonObject]:
    if not isinstance(response_format, dict):
        return []
    kind = response_format.get("type")
    if kind == "json_object":
        return [{"type": "text", "text": _JSON_ONLY + " The value must be a JSON object."}]
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        if not isinstance(spec, dict) or not isinstance(spec.get("schema") or {}, dict):
            raise BadRequest(
                "'response_format.json_schema' must be an object with a 'schema' object", param="response_format"
            )
        schema = spec.get("schema") or {}
        schema_text = json.dumps(schema, sort_keys=True)
        return [{"type": "text", "text": f"{_JSON_ONLY} It must conform to this JSON Schema:\n{schema_text}"}]
    return []


def _conversation(messages: list[JsonObject]) -> list[JsonObject]:
    turns: list[JsonObject] = []
    for message in messages:
        role, blocks = _turn(message)
        if not blocks:
            continue
        # Anthropic requires user and assistant turns to alternate; OpenAI allows runs of one role.
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        # Tool results must open their user turn; a stable sort keeps both groups in their order.
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return turns


def _turn(message: JsonObject) -> tuple[str, list[JsonObject]]:
    role = message.get("role")
    content = message.get("content")
    if role in _SYSTEM_ROLES:
        return "system", []
    if role == "user":
        if isinstance(content, list):
            return "user", [block for part in content for block in _user_block(part)]
        return "user", _text_blocks(content)
    if role == "assistant":
        calls = message.get("tool_calls") or []
        return "assistant", _text_blocks(content) + [_tool_use(call) for call in calls]
    if role == "tool":
        return "user", [_tool_result(message)]
    raise Untranslatable(f"message role {role!r} cannot be sent to an Anthropic model", param="messages")


def _text_blocks(content: Any) -> list[JsonObject]:
    """Text-only content (system, assistant, tool): a string or a list of text parts."""
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise BadRequest("message content must be a string or a list of parts", param="messages")
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("text", "refusal"):
            raise BadRequest(f"a content part of type {kind!r} belongs in a user message", param="messages")
        text = part.get(kind)
        # Anthropic refuses empty text blocks, which OpenAI clients send freely.
        if text:
            blocks.append(_with_cache_control({"type": "text", "text": text}, part))
    return blocks


def _user_block(part: Any) -> list[JsonObject]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text":
        text = part.get("text")
        return [_with_cache_control({"type": "text", "text": text}, part)] if text else []
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return [_with_cache_control({"type": "image", "source": _image_source(url)}, part)]
    if kind == "file":
        file = part.get("file") or {}
        if not isinstance(file, dict):
            raise BadRequest("a file part's 'file' must be an object with 'file_data'", param="messages")
        media_type, data = _data_url(file.get("file_data"))
        if media_type != "application/pdf":
            raise Untranslatable("Anthropic models accept files only as base64 PDF data", param="messages")
        source = {"type": "base64", "media_type": media_type, "data": data}
        return [_with_cache_control({"type": "document", "source": source}, part)]
    raise Untranslatable(f"content part of type {kind!r} cannot be sent to an Anthropic model", param="messages")


def _image_source(url: Any) -> JsonObject:
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    media_type, data = _data_url(url)
    return {"type": "base64", "media_type": media_type, "data": data}


def _data_url(url: Any) -> tuple[str, str]:
    header, comma, data = url.partition(",") if isinstance(url, str) else ("", "", "")
    if not (header.startswith("data:") and header.endswith(";base64") and comma and data):
        raise BadRequest("images and files must be http(s) URLs or base64 data: URLs", param="messages")
    return header[len("data:") :].split(";")[0], data


def _with_cache_control(block: JsonObject, part: JsonObject) -> JsonObject:
    if part.get("cache_control"):
        block["cache_control"] = part["cache_control"]
    return block


def _tool_use(call: JsonObject) -> JsonObject:
    function = call.get("function") or {}
    name = function.get("name")
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"arguments of tool call {name!r} are not valid JSON", param="messages") from exc
    if not isinstance(arguments, dict):
        raise BadRequest(f"arguments of tool call {name!r} must be a JSON object", param="messages")
    return {"type": "tool_use", "id": call.get("id"), "name": name, "input": arguments}


def _tool_result(message: JsonObject) -> JsonObject:
    if not message.get("tool_call_id"):
        raise BadRequest("a tool message needs its 'tool_call_id'", param="messages")
    content = message.get("content")
    return {
        "type": "tool_result",
        "tool_use_id": message["tool_call_id"],
        "content": content if isinstance(content, str) else _text_blocks(content),
    }


def _tool_fields(body: JsonObject) -> JsonObject:
    tools = body.get("tools")
    if not tools:
        # Anthropic refuses a tool_choice without tools; OpenAI clients send one anyway.
        return {}
    fields: JsonObject = {"tools": [_tool(tool) for tool in tools]}
    choice = _tool_choice(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True
    if choice != {"type": "auto"}:
        fields["tool_choice"] = choice
    return fields


def _tool(tool: Any) -> JsonObject:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict) or not function.get("name"):
        raise Untranslatable("Anthropic models accept only tools of type 'function' with a name", param="tools")
    parameters = function.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"tool {function['name']!r}: 'parameters' must be a JSON schema object", param="tools")
    schema = {"type": "object", "properties": {}, **parameters}
    translated: JsonObject = {"name": function["name"], "input_schema": schema}
    if function.get("description"):
        translated["description"] = function["description"]
    return _with_cache_control(translated, tool)


def _tool_choice(choice: Any) -> JsonObject:
    if choice is None or choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        # Tools stay in the request: Anthropic refuses tool_use blocks in the history without definitions.
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not name:
        raise BadRequest(f"unsupported tool_choice {choice!r}", param="tool_choice")
    return {"type": "tool", "name": name}


def usage_from_anthropic(usage: JsonObject) -> Usage:
    """Anthropic counts cache reads and writes beside ``input_tokens``; ``Usage`` counts them inside.

    ``cache_creation`` splits the writes by how long they are kept; those kept for an hour bill at a higher rate."""
    read = usage.get("cache_read_input_tokens") or 0
    five_minutes, hour = cache_write_split(usage)
    written = max(usage.get("cache_creation_input_tokens") or 0, five_minutes + hour)
    return Usage(
        input_tokens=(usage.get("input_tokens") or 0) + read + written,
        output_tokens=usage.get("output_tokens") or 0,
        cache_read_tokens=read,
        cache_write_tokens=written,
        cache_write_1h_tokens=hour,
    )


def cache_write_split(usage: JsonObject) -> tuple[int, int]:
    """The cache writes kept for 5 minutes and for an hour, from a usage object's ``cache_creation``."""
    creation = usage.get("cache_creation")
    if not isinstance(creation, dict):
        return 0, 0
    counts = [creation.get(key) for key in ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")]
    five_minutes, hour = (max(int(n), 0) if isinstance(n, int) and not isinstance(n, bool) else 0 for n in counts)
    return five_minutes, hour


def cache_creation(usage: Usage) -> JsonObject:
    """Anthropic's ``cache_creation`` object for ``usage``'s writes."""
    hour = min(usage.cache_write_1h_tokens, usage.cache_write_tokens)
    return {"ephemeral_5m_input_tokens": usage.cache_write_tokens - hour, "ephemeral_1h_input_tokens": hour}


def openai_usage(usage: Usage) -> JsonObject:
    """OpenAI's usage object, plus ``cache_creation_input_tokens`` when a cache was written.

    OpenAI has no field for cache writes; the extra key (named as LiteLLM names it) lets an Anthropic client
    of the gateway get its cache-write count back instead of seeing those tokens as uncached input, and
    Anthropic's ``cache_creation`` is added when some writes were kept for an hour.
    """
    shaped: JsonObject = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
    }
    if usage.cache_write_tokens:
        shaped["cache_creation_input_tokens"] = usage.cache_write_tokens
    if usage.cache_write_1h_tokens:
        shaped["cache_creation"] = cache_creation(usage)
    return shaped


def from_anthropic(resp: JsonObject, *, created: int | None = None) -> tuple[JsonObject, Usage]:
    """The ``chat.completion`` for an Anthropic message, and its usage."""
    if resp.get("type") != "message" or not isinstance(resp.get("content"), list):
        raise UpstreamError("Anthropic returned a body that is not a message")
    blocks = resp["content"]
    text = "".join(block.get("text", "") for block in blocks if block.get("type") == "text")
    calls = [_tool_call(block) for block in blocks if block.get("type") == "tool_use"]
    message: JsonObject = {
        "role": "assistant",
        "content": text if text or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    usage = usage_from_anthropic(resp.get("usage") or {})
    finish_reason = _finish_reason(resp.get("stop_reason"))
    choice = {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
    _note_stop_sequence(choice, resp.get("stop_reason"), resp.get("stop_sequence"))
    body = {
        "id": resp.get("id", ""),
        "object": "chat.completion",
        "created": int(time.time()) if created is None else created,
        "model": resp.get("model", ""),
        "choices": [choice],
        "usage": openai_usage(usage),
    }
    return body, usage


def _tool_call(block: JsonObject) -> JsonObject:
    function = {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}
    return {"id": block.get("id"), "type": "function", "function": function}


STOP_SEQUENCE = "stop_sequence"
"""Beside ``finish_reason: "stop"``, the stop sequence Claude stopped at (OpenAI has no field for it): carried
through the gateway's OpenAI-shaped answer so an Anthropic client of ``/v1/messages`` gets it back."""


def _note_stop_sequence(choice: JsonObject, stop_reason: Any, sequence: Any) -> None:
    if stop_reason == "stop_sequence" and isinstance(sequence, str):
        choice[STOP_SEQUENCE] = sequence


def _finish_reason(stop_reason: Any) -> str:
    return _FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


class AnthropicStreamTranslator:
    """Anthropic's stream events, one at a time, as OpenAI ``chat.completion.chunk`` dicts."""

    def __init__(self, *, created: int | None = None) -> None:
        self._created = int(time.time()) if created is None else created
        self._id = ""
        self._model = ""
        self._usage: JsonObject | None = None
        # Anthropic numbers all content blocks; OpenAI numbers tool calls only.
        self._tool_index: dict[int, int] = {}

    @property
    def usage(self) -> Usage | None:
        return None if self._usage is None else usage_from_anthropic(self._usage)

    def usage_chunk(self) -> JsonObject:
        """The last chunk of an OpenAI stream with ``include_usage``: no choices, only usage."""
        return {**self._envelope(), "choices": [], "usage": openai_usage(self.usage or Usage())}

    def feed(self, event: str, data: JsonObject) -> list[JsonObject]:
        kind = event or data.get("type")
        if kind == "message_start":
            message = data.get("message") or {}
            self._id, self._model = message.get("id", ""), message.get("model", "")
            self._usage = dict(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(data.get("index", 0), data.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(data.get("index", 0), data.get("delta") or {})
        if kind == "message_delta":
            # Counts in message_delta are cumulative, so they replace those of message_start.
            counts = {key: value for key, value in (data.get("usage") or {}).items() if value is not None}
            self._usage = {**(self._usage or {}), **counts}
            delta = data.get("delta") or {}
            stop_reason = delta.get("stop_reason")
            if not stop_reason:
                return []
            chunk = self._chunk({}, _finish_reason(stop_reason))
            _note_stop_sequence(chunk["choices"][0], stop_reason, delta.get("stop_sequence"))
            return [chunk]
        if kind == "error":
            error = data.get("error") or {}
            error_type = str(error.get("type") or "api_error")
            message = str(error.get("message") or "Anthropic stream failed")
            raise upstream_error_for_status(_ERROR_STATUS.get(error_type, 500), message, code=error_type)
        # ping, content_block_stop, message_stop and event types added later carry nothing OpenAI can show.
        return []

    def _block_start(self, index: int, block: JsonObject) -> list[JsonObject]:
        if block.get("type") == "text" and block.get("text"):
            return [self._chunk({"content": block["text"]})]
        if block.get("type") != "tool_use":
            return []
        position = self._tool_index.setdefault(index, len(self._tool_index))
        function = {"name": block.get("name"), "arguments": ""}
        call = {"index": position, "id": block.get("id"), "type": "function", "function": function}
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, index: int, delta: JsonObject) -> list[JsonObject]:
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [self._chunk({"content": delta["text"]})]
        if delta.get("type") == "input_json_delta" and delta.get("partial_json") and index in self._tool_index:
            call = {"index": self._tool_index[index], "function": {"arguments": delta["partial_json"]}}
            return [self._chunk({"tool_calls": [call]})]
        return []

    def _envelope(self) -> JsonObject:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }

    def _chunk(self, delta: JsonObject, finish_reason: str | None = None) -> JsonObject:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**self._envelope(), "choices": [choice]}


def anthropic_error(status: int, body: bytes) -> UpstreamError:
    """The gateway error for an Anthropic error response, whatever its body holds."""
    error_type: str | None = None
    message = ""
    try:
        error = json.loads(body).get("error")
        error_type, message = str(error.get("type") or "") or None, str(error.get("message") or "")
    except (ValueError, AttributeError):
        message = body.decode("utf-8", errors="replace").strip()[:500]
    return upstream_error_for_status(status, message or f"Anthropic returned HTTP {status}", code=error_type)
