"""A stream the gateway opened but could not start sending: the client was gone before the status line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fakes.upstream import FakeUpstream, FakeUsage
from gateway_harness import settings_for
from thrifty.assembly import build_runtime
from thrifty.ledger import tables
from thrifty.server.http import Request
from thrifty.server.sse import relay_openai_stream
from thrifty.types import Caller, ChatRequest


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
