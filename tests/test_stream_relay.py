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
from thrifty.streaming import ChatStream, OpenedStream, replay
from thrifty.types import Caller, ChatRequest, ChatResponse, Cost, StreamChunk, Target, Usage


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

    async def settle(
        self, cost: Cost, usage: Usage | None = None, model: str = "", model_output: int | None = None
    ) -> None:
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


FALLBACK = """
[models.pair]
targets = ["anth::claude-3-5-haiku-latest", "up::gpt-4o"]

[models.twins]
targets = ["up::gpt-4o-mini", "up::gpt-4o"]
"""


@pytest.mark.parametrize("alias", ["pair", "twins"])
def test_a_stream_that_fails_after_its_opening_chunk_falls_back(tmp_path: Path, alias: str) -> None:
    """Anthropic's ``message_start`` and OpenAI's role-only first chunk come before any answer: a stream that
    breaks after them has told the client nothing yet, so the next target answers it, and the failing one
    counts toward its cooldown."""
    import openai

    from fakes.upstream import Fault
    from gateway_harness import config_text, ledger_rows
    from thrifty.server.run import ServerThread
    from thrifty.settings import load_settings

    with FakeUpstream(usage=FakeUsage(input_tokens=10, output_tokens=5)) as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=FALLBACK))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            up.script([Fault.drop_mid_stream(after_chunks=1)])
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                chunks = list(
                    client.chat.completions.create(
                        model=alias, messages=[{"role": "user", "content": "a b c"}], stream=True
                    )
                )
            (row,) = ledger_rows(gw)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: a b c"
    assert [r.json["model"] for r in up.requests][-1] == "gpt-4o"
    assert (row["model"], row["status"]) == ("gpt-4o", "ok")


def test_a_provider_that_keeps_failing_mid_stream_is_cooled_down(tmp_path: Path) -> None:
    import openai

    from fakes.upstream import Fault
    from gateway_harness import config_text
    from thrifty.server.run import ServerThread
    from thrifty.settings import load_settings

    with FakeUpstream(usage=FakeUsage(input_tokens=10, output_tokens=5)) as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=FALLBACK))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            up.script([Fault.drop_mid_stream(after_chunks=3)] * 3)
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                ask = {"model": "twins", "messages": [{"role": "user", "content": "a b c d e f"}], "stream": True}
                for _ in range(3):
                    with pytest.raises(openai.APIError):
                        list(client.chat.completions.create(**ask))  # type: ignore[call-overload]
                list(client.chat.completions.create(**ask))  # type: ignore[call-overload]
    assert [r.json["model"] for r in up.requests] == ["gpt-4o-mini"] * 3 + ["gpt-4o"]


async def test_an_abandoned_stream_closes_the_provider_stream_behind_its_lead(tmp_path: Path) -> None:
    """The chunks read ahead (while waiting for one with the answer) must not hide the provider's stream from
    the close: left open, the provider would go on generating, and billing, for nobody."""
    from thrifty.calling import leading_chunks
    from thrifty.types import StreamChunk

    closed: list[bool] = []

    async def provider() -> Any:
        try:
            yield StreamChunk(b'{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}')
            yield StreamChunk(b'{"choices": [{"index": 0, "delta": {"content": "Hel"}}]}')
            yield StreamChunk(b'{"choices": [{"index": 0, "delta": {"content": "lo"}}]}')
        finally:
            closed.append(True)

    async def abandon(stream: ChatStream) -> None:
        await stream.abandon()

    chunks = provider()
    lead = await leading_chunks(chunks)
    assert len(lead) == 2  # the role-only chunk, then the first with text
    await run_stream(
        tmp_path, OpenedStream(Target("up", "gpt-4o-mini"), lead[0], chunks, lead=tuple(lead[1:])), abandon
    )
    assert closed == [True]


async def test_a_stream_its_client_left_does_not_end_the_providers_cooldown(tmp_path: Path) -> None:
    """A client leaving a stream (perhaps stalled) says nothing of the provider: counted as its success, it ended
    the cooldown that three failures of other requests had just started."""
    target = Target("up", "gpt-4o-mini")
    cooling: list[list[Target]] = []

    async def chunks() -> Any:
        yield StreamChunk(b'{"choices": [{"index": 0, "delta": {"content": "lo"}}]}')

    async def fail_then_abandon(stream: ChatStream) -> None:
        for _ in range(3):
            stream._gateway.caller.cooldowns.failed(target)
        await stream.abandon()
        cooling.append(stream._gateway.caller.cooldowns.cooling())

    first = StreamChunk(b'{"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]}')
    rows = await run_stream(tmp_path, OpenedStream(target, first, chunks()), fail_then_abandon)
    assert cooling == [[target]]
    assert [r["status"] for r in rows] == ["cancelled"]


async def run_stream(tmp_path: Path, opened: OpenedStream, use: Any) -> list[Any]:
    """A ChatStream over ``opened`` in a running gateway, handed to ``use``; returns the ledger rows after."""
    with FakeUpstream(usage=FakeUsage(input_tokens=10, output_tokens=5)) as up:
        runtime = build_runtime(settings_for(tmp_path, up))
        runtime.start()
        try:
            request = ChatRequest({"model": "fast", "messages": [{"role": "user", "content": "x"}]}, "req_stream")
            trace = Trace("req_stream", "chat", "fast", streamed=True)
            await use(ChatStream(runtime.gateway, request, request, trace, opened, CountingAdmission(request)))
            assert runtime.ledger.flush(10)
            with runtime.ledger.engine.connect() as conn:
                return list(conn.execute(select(tables.requests)).mappings().all())
        finally:
            await runtime.aclose()


def test_reasoning_text_is_counted_when_the_provider_reports_no_usage() -> None:
    """DeepSeek's reasoner and vLLM stream their reasoning as reasoning_content: billed output, which a stream
    without usage must count, and a budget cut must see."""
    from thrifty.streaming import streamed_text

    payloads = [
        b'{"choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "First, 2 + 2 is 4."}}]}',
        b'{"choices": [{"index": 0, "delta": {"content": "4"}}]}',
    ]
    assert streamed_text(payloads) == "4"  # the answer, as the ledger keeps it
    assert streamed_text(payloads, billed=True) == "First, 2 + 2 is 4.4"
    both = [b'{"choices": [{"index": 0, "delta": {"reasoning_content": "Think.", "reasoning": "Think."}}]}']
    assert streamed_text(both, billed=True) == "Think."  # one text in two fields is billed once


async def test_a_stream_broken_by_anything_else_is_an_error_row_and_an_error_event(tmp_path: Path) -> None:
    """Not every failure is the gateway's own error type (a library's exception mid-stream): it must not be
    recorded as the client leaving, nor end the stream silently as if the answer were whole."""
    from thrifty.types import StreamChunk

    async def provider() -> Any:
        yield StreamChunk(b'{"choices": [{"index": 0, "delta": {"content": "Hel"}}]}')
        raise RuntimeError("a line too long for the parser")

    payloads: list[bytes] = []

    async def read(stream: ChatStream) -> None:
        payloads.extend([payload async for payload in stream.chunks()])

    chunks = provider()
    (row,) = await run_stream(tmp_path, OpenedStream(Target("up", "gpt-4o-mini"), await anext(chunks), chunks), read)
    assert b'"error"' in payloads[-1]
    assert (row["status"], row["error_type"]) == ("error", "internal_error")
    assert row["output_tokens"] > 0 and row["cost_nusd"] > 0  # what was streamed is still paid for
