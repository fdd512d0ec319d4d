"""A streamed answer assembled whole (what the cache keeps) and a whole answer replayed as a stream (a hit)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from thrifty.completions import assemble, chunks_of
from thrifty.types import ChatResponse, Target, Usage


def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
    return orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "choices": [choice]})


def test_a_streamed_refusal_is_kept() -> None:
    """OpenAI streams a refusal in ``delta.refusal`` with no content: assembled as an empty message, the cache
    served later clients nothing at all."""
    payloads = [
        chunk({"role": "assistant", "content": None, "refusal": None}),
        chunk({"refusal": "I can't help "}),
        chunk({"refusal": "with that."}),
        chunk({}, "stop"),
    ]
    (choice,) = assemble(payloads, "gpt-4o")["choices"]
    assert choice["message"] == {"role": "assistant", "content": None, "refusal": "I can't help with that."}


def test_streamed_audio_reasoning_and_logprobs_are_kept() -> None:
    tokens = [{"token": "Hi", "logprob": -0.1, "bytes": None, "top_logprobs": []}]
    payloads = [
        chunk({"role": "assistant", "reasoning_content": "The user "}),
        chunk({"reasoning_content": "greets me."}),
        chunk({"audio": {"id": "audio_1", "transcript": "Hi", "data": "AAAA"}}, logprobs={"content": tokens}),
        chunk({"audio": {"transcript": " there", "data": "BBBB", "expires_at": 9}}, logprobs={"content": tokens}),
        chunk({}, "stop"),
    ]
    (choice,) = assemble(payloads, "gpt-4o-audio")["choices"]
    assert choice["message"]["reasoning_content"] == "The user greets me."
    assert choice["message"]["audio"] == {
        "id": "audio_1",
        "transcript": "Hi there",
        "data": "AAAABBBB",
        "expires_at": 9,
    }
    assert choice["logprobs"] == {"content": tokens * 2}


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": "Paris is the capital of France, on the Seine." * 3},
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "assistant", "content": None, "audio": {"id": "a1", "transcript": "Hello", "data": "AAAA"}},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}],
        },
    ],
)
def test_replaying_a_whole_answer_as_a_stream_and_assembling_it_gives_it_back(message: dict[str, Any]) -> None:
    body = {
        "id": "chatcmpl-1",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }

    async def replayed() -> list[bytes]:
        return [
            c.payload
            async for c in chunks_of(ChatResponse(body, Usage(10, 5), Target("up", "m"), 1.0))
            if not c.usage_only
        ]

    (choice,) = assemble(asyncio.run(replayed()), "m")["choices"]
    assert choice["message"] == message


def test_which_stop_sequence_fired_survives_a_replay_and_an_assembly() -> None:
    """/v1/messages reports ``stop_sequence``; a cache hit (replayed, or stored from a stream) said ``end_turn``."""
    body = {
        "id": "chatcmpl-1",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "one"},
                "finish_reason": "stop",
                "stop_sequence": "END",
            }
        ],
    }

    async def replayed() -> list[bytes]:
        return [c.payload async for c in chunks_of(ChatResponse(body, None, Target("up", "m"), 1.0))]

    payloads = asyncio.run(replayed())
    assert orjson.loads(payloads[-1])["choices"][0]["stop_sequence"] == "END"
    (choice,) = assemble(payloads, "m")["choices"]
    assert choice["stop_sequence"] == "END" and choice["message"]["content"] == "one"
