"""A complete answer and its stream, each made from the other.

A cached answer to a streaming request is replayed as ``chat.completion.chunk`` events; a streamed answer is
assembled into one ``chat.completion`` so the cache can keep it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from thrifty.providers.anthropic_format import openai_usage
from thrifty.types import ChatResponse, JsonObject, StreamChunk, Usage

CHARS_PER_CHUNK = 48


def usage_body(usage: Usage) -> JsonObject:
    """OpenAI's usage object for an answer the gateway builds (a replay, a cache hit): ``openai_usage``'s, with
    ``prompt_tokens_details`` only when cached tokens were read."""
    body = openai_usage(usage)
    if not usage.cache_read_tokens:
        del body["prompt_tokens_details"]
    return body


async def chunks_of(response: ChatResponse) -> AsyncGenerator[StreamChunk, None]:
    """The answer as a stream: a role chunk, its text in pieces, tool calls whole, the finish, the usage."""
    body = response.body
    base = {"id": body.get("id", ""), "object": "chat.completion.chunk", "created": body.get("created", 0)}
    base["model"] = body.get("model", response.target.model)
    for choice in body.get("choices") or []:
        index, message = choice.get("index", 0), choice.get("message") or {}
        # Whatever else the message carries (a refusal, audio, reasoning text) whole, with the log-probabilities.
        other = {k: v for k, v in message.items() if k not in _STREAMED_APART and v is not None}
        logprobs = choice.get("logprobs")
        yield _chunk(base, index, {"role": "assistant", "content": "", **other}, logprobs=logprobs)
        content = message.get("content") or ""
        for start in range(0, len(content), CHARS_PER_CHUNK):
            yield _chunk(base, index, {"content": content[start : start + CHARS_PER_CHUNK]})
        calls = message.get("tool_calls") or []
        if calls:
            yield _chunk(base, index, {"tool_calls": [{"index": i, **call} for i, call in enumerate(calls)]})
        # The choice's own fields with the finish (``stop_sequence``: which one fired, for /v1/messages).
        extra = {k: v for k, v in choice.items() if k not in _CHOICE_FIELDS and v is not None}
        yield _chunk(base, index, {}, choice.get("finish_reason") or "stop", extra=extra)
    if response.usage is not None:
        payload = orjson.dumps({**base, "choices": [], "usage": usage_body(response.usage)})
        yield StreamChunk(payload, response.usage, usage_only=True)


_STREAMED_APART = frozenset({"role", "content", "tool_calls"})
_CHOICE_FIELDS = frozenset({"index", "message", "delta", "finish_reason", "logprobs"})


def _chunk(
    base: JsonObject,
    index: int,
    delta: JsonObject,
    finish: str | None = None,
    logprobs: Any = None,
    extra: JsonObject | None = None,
) -> StreamChunk:
    choice = {"index": index, "delta": delta, "finish_reason": finish, **(extra or {})}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return StreamChunk(orjson.dumps({**base, "choices": [choice]}))


def assemble(payloads: list[bytes], model: str) -> JsonObject:
    """The ``chat.completion`` a stream amounted to, per choice: content, tool calls, finish reason, and every
    other field of the deltas (a refusal, audio and its transcript, reasoning text: strings joined, objects
    merged) and the log-probabilities. The cache stores this: an answer missing its refusal or its audio would be
    served as an empty message."""
    choices: dict[int, dict[str, Any]] = {}
    first: JsonObject = {}
    for payload in payloads:
        chunk = orjson.loads(payload)
        first = first or chunk
        for choice in chunk.get("choices") or []:
            state = choices.setdefault(
                choice.get("index", 0),
                {"content": [], "calls": {}, "finish": None, "other": {}, "logprobs": {}, "extra": {}},
            )
            delta = choice.get("delta") or {}
            if delta.get("content"):
                state["content"].append(delta["content"])
            for call in delta.get("tool_calls") or []:
                _merge_call(state["calls"], call)
            for key, value in delta.items():
                if key not in _STREAMED_APART:
                    _merge_field(state["other"], key, value)
            for key, value in (choice.get("logprobs") or {}).items():
                if isinstance(value, list):
                    state["logprobs"].setdefault(key, []).extend(value)
            state["finish"] = choice.get("finish_reason") or state["finish"]
            state["extra"].update((k, v) for k, v in choice.items() if k not in _CHOICE_FIELDS and v is not None)
    return {
        "id": first.get("id", ""),
        "object": "chat.completion",
        "created": first.get("created", int(time.time())),
        "model": first.get("model", model),
        "choices": [_choice(index, state) for index, state in sorted(choices.items())],
    }


def _merge_call(calls: dict[int, JsonObject], fragment: JsonObject) -> None:
    call = calls.setdefault(
        fragment.get("index", 0), {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    )
    call["id"] = fragment.get("id") or call["id"]
    function = fragment.get("function") or {}
    call["function"]["name"] += function.get("name") or ""
    call["function"]["arguments"] += function.get("arguments") or ""


def _merge_field(into: dict[str, Any], key: str, value: Any) -> None:
    """A delta's field into what came before it: text joined, lists extended, objects merged field by field, the
    rest replaced."""
    if value is None:
        return
    before = into.get(key)
    if isinstance(value, str) and isinstance(before, str):
        into[key] = before + value
    elif isinstance(value, list) and isinstance(before, list):
        into[key] = [*before, *value]
    elif isinstance(value, dict):
        merged = into[key] = before if isinstance(before, dict) else {}
        for sub, part in value.items():
            _merge_field(merged, sub, part)
    else:
        into[key] = value


def _choice(index: int, state: dict[str, Any]) -> JsonObject:
    message: JsonObject = {"role": "assistant", "content": "".join(state["content"]) or None, **state["other"]}
    if state["calls"]:
        message["tool_calls"] = [state["calls"][i] for i in sorted(state["calls"])]
    choice: JsonObject = {
        "index": index,
        "message": message,
        "finish_reason": state["finish"] or "stop",
        **state["extra"],
    }
    if state["logprobs"]:
        choice["logprobs"] = state["logprobs"]
    return choice
