"""OpenTelemetry spans per request, GenAI semantic conventions, through a real gateway."""

from __future__ import annotations

import contextlib
from pathlib import Path

import openai
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fakes.upstream import FakeUpstream, FakeUsage
from gateway_harness import config_text
from thrifty.observe.otel import SpanObserver
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings


def test_each_request_becomes_a_genai_span(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200)) as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            gw.runtime.gateway.observers.append(SpanObserver(provider))
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
                with contextlib.suppress(openai.NotFoundError):
                    client.chat.completions.create(model="ghost", messages=[{"role": "user", "content": "hi"}])
    ok, failed = exporter.get_finished_spans()
    assert ok.name == "chat fast"
    assert ok.attributes is not None and failed.attributes is not None
    assert ok.attributes["gen_ai.operation.name"] == "chat"
    assert ok.attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert ok.attributes["gen_ai.usage.input_tokens"] == 1000
    assert ok.attributes["thrifty.cost_usd"] == "0.00027"
    assert ok.end_time is not None and ok.start_time is not None and ok.end_time > ok.start_time
    assert failed.attributes["error.type"] == "invalid_request_error"
    assert not failed.status.is_ok
