"""Validation of request bodies at the HTTP edge.

Hand-written rather than pydantic models: the body must reach the provider exactly as sent (unknown fields
included), and these checks run on every request, where a few microseconds matter. Each check names the field
it refuses, as OpenAI's ``param``.
"""

from __future__ import annotations

from typing import Any

import orjson

from thrifty.errors import BadRequest
from thrifty.types import JsonObject

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def parse_body(raw: bytes) -> JsonObject:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


MAX_TOKENS = 2**31 - 1
"""No provider takes more (their counters are 32-bit); larger values would also overflow budget arithmetic."""
MAX_CHOICES = 128
"""OpenAI's limit on ``n``."""


def check_chat(body: JsonObject) -> JsonObject:
    _require_str(body, "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", param="messages")
    for index, message in enumerate(messages):
        _check_message(message, index)
    _optional(body, "stream", bool)
    _optional(body, "stream_options", dict)
    for name, most in (("max_tokens", MAX_TOKENS), ("max_completion_tokens", MAX_TOKENS), ("n", MAX_CHOICES)):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most):
            raise BadRequest(f"'{name}' must be an integer from 1 to {most}", param=name)
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise BadRequest(f"'{name}' must be a number", param=name)
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise BadRequest("'stop' must be a string or an array of strings", param="stop")
    _optional(body, "tools", list)
    for index, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("function", {}), dict):
            raise BadRequest(f"'tools[{index}]' must be an object (its 'function' too)", param=f"tools[{index}]")
    _optional(body, "response_format", dict)
    response_format = body.get("response_format") or {}
    if not isinstance(response_format.get("type", ""), str):
        raise BadRequest("'response_format.type' must be a string", param="response_format.type")
    _optional(body, "user", str)
    _optional(body, "metadata", dict)
    _optional(body, "seed", int)
    return body


def check_embeddings(body: JsonObject) -> JsonObject:
    _require_str(body, "model")
    value = body.get("input")
    ok = isinstance(value, str) or (isinstance(value, list) and value and all(_is_input(v) for v in value))
    if not ok:
        raise BadRequest("'input' must be a string or a non-empty array of strings or tokens", param="input")
    return body


def _is_input(value: Any) -> bool:
    return isinstance(value, str | int) or (isinstance(value, list) and all(isinstance(v, int) for v in value))


def _check_message(message: Any, index: int) -> None:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise BadRequest(f"'{where}' must be an object", param=where)
    role = message.get("role")
    if role not in ROLES:
        raise BadRequest(f"'{where}.role' must be one of {sorted(ROLES)}, not {role!r}", param=f"{where}.role")
    calls = message.get("tool_calls")
    if calls is not None and not (
        isinstance(calls, list)
        and all(isinstance(call, dict) and isinstance(call.get("function", {}), dict) for call in calls)
    ):
        raise BadRequest(f"'{where}.tool_calls' must be an array of objects", param=f"{where}.tool_calls")
    content = message.get("content")
    if content is None:
        if role == "assistant" and (message.get("tool_calls") or message.get("function_call")):
            return
        raise BadRequest(f"'{where}.content' is required", param=f"{where}.content")
    if not isinstance(content, str | list):
        raise BadRequest(f"'{where}.content' must be a string or an array of parts", param=f"{where}.content")


def _require_str(body: JsonObject, name: str) -> None:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"'{name}' is required and must be a non-empty string", param=name)


def _optional(body: JsonObject, name: str, kind: type) -> None:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise BadRequest(f"'{name}' must be of type {_TYPE_NAMES.get(kind, kind.__name__)}", param=name)


_TYPE_NAMES = {bool: "boolean", dict: "object", list: "array", str: "string", int: "integer"}
