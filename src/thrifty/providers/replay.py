"""A provider that answers from a recorded workload instead of calling a paid model.

Each request is matched to its record (``workload.ReplayIndex``) and answered with the text that model gave when
it was recorded. Input tokens are counted from the request actually received (tool definitions and schema
included), so an optimizer that shortens the prompt shows up in the cost; output tokens are the recorded ones,
cut at the request's ``max_tokens`` (``finish_reason: "length"``) when the policy under test caps them. Where a
record has no answer text for the model, the reply says so and its tokens are counted from that reply: cost is
never invented (the simulation reports how many such stand-ins it served).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from pathlib import Path

import orjson

from thrifty.accounting import max_output_tokens_of, new_request_id
from thrifty.completions import usage_body
from thrifty.errors import UpstreamRejected
from thrifty.guards.estimate import text_tokens
from thrifty.providers.openai import reject_embeddings
from thrifty.tokens import TiktokenCounter
from thrifty.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    JsonObject,
    StreamChunk,
    Target,
    Usage,
)
from thrifty.workload import ReplayIndex, read_workload


def no_answer(group: str) -> str:
    """The stand-in reply: it names the question, so an answer reused for another question can be told apart."""
    return f"(no answer was recorded for this prompt and model; question {group})"


WORDS_PER_CHUNK = 4


class ReplayProvider:
    samples = False  # one recorded answer per request

    def __init__(self, name: str, workload: Path, counter: TiktokenCounter) -> None:
        self.name = name
        self._index = ReplayIndex(read_workload(workload))
        self._counter = counter

    def _answer(self, request: ChatRequest, model: str) -> tuple[str, Usage, str]:
        record = self._index.lookup(request.messages)
        if record is None:
            raise UpstreamRejected("the replay provider has no recorded answer for this prompt", upstream_status=404)
        answer = record.answers.get(model)
        text = answer.text if answer is not None and answer.text is not None else no_answer(record.group)
        output_tokens = (
            answer.output_tokens
            if answer is not None and answer.text is not None and answer.output_tokens is not None
            else self._counter.count_text(model, text)
        )
        cap = max_output_tokens_of(request.body)
        recorded = answer is not None and answer.text is not None  # a stand-in is no answer to cut
        cut = recorded and cap is not None and output_tokens > cap
        if cut:  # the policy under test caps the answer: it ends where the model would have been stopped
            assert cap is not None
            words = text.split(" ")
            text = " ".join(words[: max(1, len(words) * cap // output_tokens)])
            output_tokens = cap
        usage = Usage(
            # The prompt as the provider would bill it: messages, tool definitions and response schema.
            input_tokens=text_tokens(self._counter, request, model),
            output_tokens=output_tokens,
            estimated=not self._counter.is_exact(model),
        )
        return text, usage, "length" if cut else "stop"

    async def chat(self, request: ChatRequest, model: str) -> ChatResponse:
        started = time.perf_counter()
        text, usage, finish = self._answer(request, model)
        body: JsonObject = {
            "id": "chatcmpl-" + new_request_id()[4:],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": usage_body(usage),
        }
        return ChatResponse(body, usage, Target(self.name, model), (time.perf_counter() - started) * 1000)

    async def stream(self, request: ChatRequest, model: str) -> AsyncGenerator[StreamChunk, None]:
        text, usage, finish = self._answer(request, model)
        base = {"id": "chatcmpl-" + new_request_id()[4:], "object": "chat.completion.chunk", "created": 0}
        base["model"] = model
        words = text.split(" ")
        for start in range(0, len(words), WORDS_PER_CHUNK):
            piece = " ".join(words[start : start + WORDS_PER_CHUNK])
            delta: JsonObject = {"content": piece if start == 0 else " " + piece}
            if start == 0:
                delta["role"] = "assistant"
            yield StreamChunk(orjson.dumps({**base, "choices": [{"index": 0, "delta": delta}]}))
        yield StreamChunk(orjson.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
        yield StreamChunk(orjson.dumps({**base, "choices": [], "usage": usage_body(usage)}), usage, usage_only=True)

    async def embed(self, request: EmbeddingRequest, model: str) -> EmbeddingResponse:
        raise reject_embeddings(self.name)

    async def aclose(self) -> None:
        return None
