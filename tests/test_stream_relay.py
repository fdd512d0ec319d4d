"""A stream the gateway opened but could not start sending: the client was gone before the status line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fakes.upstream import FakeUpstream, FakeUsage
from gateway_harness import settings_for
from thrifty.accounting import Trace
from thrifty.assembly import build_runtime
from thrifty.ledger import tables
from thrifty.server.http import Request
from thrifty.server.sse import relay_openai_stream
from thrifty.streaming import ChatStream, replay
from thrifty.types import Caller, ChatRequest, ChatResponse, Cost, Target, Usage


async def test_a_stream_whose_status_line_cannot_be_sent_still_records_its_row(tmp_path: Path) -> None:
    """The provider was already asked (and its first tokens may be billed): the row is written all the same."""
    with FakeUpstream(usage=FakeUsage(input_tokens=10, output_tokens=5)) as up:
        runtime = build_runtime(settings_for(tmp_path, up))
        runtime.start()
        try:
            body = {"model": "fast", "messages": [{"role": "user", "content": "a b c"}], "stream": True}
            stream = await runtime.gateway.open_stream(ChatRequest(body, "req_gone"), Caller(loopback=True))

            async def receive() -> dict[str, Any]:
                await asyncio.sleep(60)
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                raise OSError("the client is gone")

            request = Request({"method": "POST", "path": "/v1/chat/completions", "headers": []}, receive, 10_000)
            with pytest.raises(OSError, match="the client is gone"):
                await relay_openai_stream(stream, request, send)
            assert runtime.ledger.flush(10)
            with runtime.ledger.engine.connect() as conn:
                rows = conn.execute(select(tables.requests)).mappings().all()
        finally:
            await runtime.aclose()
    (row,) = rows
    assert row["request_id"] == "req_gone" and row["status"] == "cancelled" and row["streamed"]
    assert row["input_tokens"] > 0 and row["cost_nusd"] > 0


class CountingAdmission:
    """An Admission that holds nothing and counts how often the stream asks it to keep its holds."""

    def __init__(self, request: ChatRequest) -> None:
        self.request = request
        self.extended = 0

    def bounded(self, request: ChatRequest) -> ChatRequest:
        return request

    async def extend(self) -> None:
        self.extended += 1

    async def settle(self, cost: Cost, usage: Usage | None = None, model: str = "") -> None:
        return None


async def test_a_long_stream_renews_its_budget_holds(tmp_path: Path) -> None:
    """Reservations expire after 15 minutes so that none leak; a stream still running keeps renewing its own
    (every 5 minutes; here at every chunk)."""
    with FakeUpstream(usage=FakeUsage(input_tokens=10, output_tokens=5)) as up:
        runtime = build_runtime(settings_for(tmp_path, up))
        runtime.start()
        try:
            request = ChatRequest({"model": "fast", "messages": [{"role": "user", "content": "x"}]}, "req_long")
            answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "y" * 400}}]}
            opened = await replay(ChatResponse(answer, Usage(10, 5), Target("up", "gpt-4o-mini"), 1.0))
            admission = CountingAdmission(request)
            trace = Trace("req_long", "chat", "fast", streamed=True)
            stream = ChatStream(runtime.gateway, request, request, trace, opened, admission)
            stream.renew_every_s = 0.0
            payloads = [payload async for payload in stream.chunks()]
        finally:
            await runtime.aclose()
    assert len(payloads) > 3 and admission.extended >= len(payloads) - 1
