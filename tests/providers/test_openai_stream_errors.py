"""Error events in an OpenAI-compatible stream: never an answer, and retryable exactly as their status would be."""

from __future__ import annotations

import orjson
import pytest

from thrifty.errors import UpstreamError, UpstreamRateLimited, UpstreamRejected, UpstreamUnavailable
from thrifty.providers.openai import chunk_from_sse


def event(obj: object) -> bytes:
    return orjson.dumps(obj)


def test_an_error_event_carrying_a_choice_is_an_error_not_an_empty_answer() -> None:
    """OpenRouter's shape: the error beside a choice finished "error". Read as a chunk, it ended the stream as a
    success, with an empty answer that was then cached and served."""
    openrouter = {
        "error": {"code": 502, "message": "provider down"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    with pytest.raises(UpstreamUnavailable) as failed:
        chunk_from_sse(event(openrouter))
    assert failed.value.retryable and "provider down" in failed.value.message
    bare = {"choices": [{"index": 0, "delta": {}, "finish_reason": "error"}]}
    with pytest.raises(UpstreamError):
        chunk_from_sse(event(bare))


@pytest.mark.parametrize(
    ("error", "kind", "retryable"),
    [
        (
            {"type": "invalid_request_error", "code": "context_length_exceeded", "message": "too long"},
            UpstreamRejected,
            False,
        ),
        ({"type": "rate_limit_error", "message": "slow down"}, UpstreamRateLimited, True),
        ({"type": "server_error", "message": "oops"}, UpstreamUnavailable, True),
        ({"message": "something"}, UpstreamUnavailable, True),
        ("a plain string", UpstreamUnavailable, True),
    ],
)
def test_an_error_event_is_retryable_as_its_status_would_be(
    error: object, kind: type[UpstreamError], retryable: bool
) -> None:
    with pytest.raises(kind) as failed:
        chunk_from_sse(event({"error": error}))
    assert failed.value.retryable is retryable


def test_ordinary_chunks_pass() -> None:
    chunk = chunk_from_sse(event({"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}))
    assert chunk.usage is None and not chunk.usage_only
    assert not chunk_from_sse(event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})).usage_only
