"""The gateway through the official openai SDK, against a fake OpenAI upstream over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from sqlalchemy import select

from fakes.upstream import FakeUpstream, FakeUsage, Fault
from gateway_harness import ledger_rows, running_gateway
from thrifty.ledger import tables
from thrifty.server.run import ServerThread

HI = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200, cache_read_tokens=400)) as upstream:
        yield upstream


@pytest.fixture
def gw(tmp_path: Path, up: FakeUpstream) -> Iterator[ServerThread]:
    with running_gateway(tmp_path, up) as server:
        yield server


@pytest.fixture
def client(gw: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


# gpt-4o-mini: 600 uncached x $0.15 + 400 cached x $0.075 + 200 out x $0.60, per million tokens.
EXPECTED_COST = Decimal("0.00024")


def test_non_streaming_answer_headers_and_ledger_row(client: openai.OpenAI, gw: ServerThread) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="fast",
        messages=HI,
        extra_headers={"x-thrifty-user": "u1", "x-thrifty-feature": "search", "x-thrifty-session": "s9"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello there"
    assert raw.headers["x-thrifty-model"] == "gpt-4o-mini"
    assert Decimal(raw.headers["x-thrifty-cost-usd"]) == EXPECTED_COST
    (row,) = ledger_rows(gw)
    assert row["request_id"] == raw.headers["x-thrifty-request-id"]
    assert (row["tenant"], row["user_id"], row["feature"], row["session_id"]) == ("default", "u1", "search", "s9")
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (1000, 200, 400)
    # The baseline has no cache of any kind: 1000 x $0.15 + 200 x $0.60 per million.
    assert row["cost_nusd"] == 240_000 and row["baseline_cost_nusd"] == 270_000
    assert row["status"] == "ok" and not row["tokens_estimated"] and not row["unpriced"]
    with gw.runtime.ledger.engine.connect() as conn:
        savings = conn.execute(select(tables.savings)).all()
    assert [(s.lever, s.savings_nusd) for s in savings] == [("prompt_cache", 30_000)]
    assert row["provider"] == "up" and row["requested_model"] == "fast"


def test_parameters_pass_through_faithfully(client: openai.OpenAI, up: FakeUpstream) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
            },
        }
    ]
    completion = client.chat.completions.create(
        model="fast",
        messages=[{"role": "user", "content": "please call tool"}],
        tools=tools,  # type: ignore[arg-type]
        tool_choice="auto",
        response_format={"type": "json_object"},
        n=1,
        stop=["END"],
        max_completion_tokens=55,
        user="end-user-7",
        metadata={"k": "v"},
        temperature=0.2,
        seed=42,
        extra_body={"logit_bias": {"50256": -100}},
    )
    assert completion.choices[0].message.tool_calls is not None
    assert completion.choices[0].message.tool_calls[0].function.name == "lookup"  # type: ignore[union-attr]
    sent = up.requests[-1].json
    assert sent["model"] == "gpt-4o-mini"
    for key, value in {
        "tools": tools,
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "n": 1,
        "stop": ["END"],
        "max_completion_tokens": 55,
        "user": "end-user-7",
        "metadata": {"k": "v"},
        "temperature": 0.2,
        "seed": 42,
        "logit_bias": {"50256": -100},
    }.items():
        assert sent[key] == value, key
    assert "Authorization" not in sent


def test_openai_user_field_attributes_the_request(client: openai.OpenAI, gw: ServerThread) -> None:
    client.chat.completions.create(model="fast", messages=HI, user="alice")
    assert ledger_rows(gw)[0]["user_id"] == "alice"


def test_stream_without_usage_requested_still_records_usage(
    client: openai.OpenAI, gw: ServerThread, up: FakeUpstream
) -> None:
    chunks = list(client.chat.completions.create(model="fast", messages=HI, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello there"
    assert all(c.usage is None for c in chunks), "the client did not ask for the usage chunk"
    assert up.requests[-1].json["stream_options"] == {"include_usage": True}
    (row,) = ledger_rows(gw)
    assert row["streamed"] and row["status"] == "ok"
    assert (row["input_tokens"], row["output_tokens"]) == (1000, 200)
    assert row["cost_nusd"] == 240_000 and row["ttft_ms"] is not None


def test_stream_with_usage_requested_gets_the_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="fast", messages=HI, stream=True, stream_options={"include_usage": True})
    )
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].prompt_tokens == 1000 and usage[0].completion_tokens == 200


def test_fallback_on_refused_connection_and_429(client: openai.OpenAI, gw: ServerThread, up: FakeUpstream) -> None:
    up.script([Fault.status(429)])
    raw = client.chat.completions.with_raw_response.create(model="resilient", messages=HI)
    # down:: refuses, up::gpt-4o-mini answers 429, up::gpt-4o answers.
    assert raw.headers["x-thrifty-model"] == "gpt-4o"
    (row,) = ledger_rows(gw)
    assert row["model"] == "gpt-4o" and row["status"] == "ok"
    # The baseline is the alias's first choice (gpt-4o-mini) for the same tokens, uncached.
    assert row["baseline_cost_nusd"] == 270_000 and row["cost_nusd"] > row["baseline_cost_nusd"]


def test_upstream_400_is_not_retried_and_is_recorded(client: openai.OpenAI, gw: ServerThread, up: FakeUpstream) -> None:
    up.script([Fault.status(400)])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="resilient", messages=HI)
    assert [r.json["model"] for r in up.requests] == ["gpt-4o-mini"]
    (row,) = ledger_rows(gw)
    assert row["status"] == "error" and row["cost_nusd"] == 0


def test_all_targets_failing_gives_an_openai_error(client: openai.OpenAI, up: FakeUpstream) -> None:
    up.mode = Fault.status(503)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="resilient", messages=HI)
    assert info.value.status_code == 503
    assert info.value.body["code"] == "upstream_unavailable"  # type: ignore[index]


def test_stream_falls_back_before_the_first_token(client: openai.OpenAI, up: FakeUpstream) -> None:
    up.script([Fault.status(500)])
    raw = client.chat.completions.with_raw_response.create(model="resilient", messages=HI, stream=True)
    assert raw.headers["x-thrifty-model"] == "gpt-4o"
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == "echo: hello there"


def test_unknown_model_is_404_in_openai_shape(client: openai.OpenAI, gw: ServerThread) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=HI)
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert "fast" in info.value.message
    assert ledger_rows(gw)[0]["error_type"] == "invalid_request_error"


def test_unpriced_model_is_recorded_as_unpriced_not_zero(client: openai.OpenAI, gw: ServerThread) -> None:
    raw = client.chat.completions.with_raw_response.create(model="mystery", messages=HI)
    assert raw.headers["x-thrifty-cost-usd"] == "unpriced"
    (row,) = ledger_rows(gw)
    assert row["unpriced"] and row["cost_nusd"] is None and row["input_tokens"] == 1000
    metrics = gw.runtime.gateway.metrics.render().decode()
    assert (
        'thrifty_unpriced_requests_total{feature="",model="my-private-finetune",provider="up",tenant="default"} 1.0'
        in metrics
    )


def test_embeddings_models_and_health(client: openai.OpenAI, gw: ServerThread) -> None:
    result = client.embeddings.create(model="embed", input=["one", "two"])
    assert len(result.data) == 2
    assert [m.id for m in client.models.list()] == ["fast", "resilient", "claude", "embed", "mystery"]
    import urllib.request

    for path in ("/healthz", "/readyz", "/openapi.json"):
        with urllib.request.urlopen(gw.base_url + path) as response:
            assert response.status == 200
    with urllib.request.urlopen(gw.base_url + "/metrics") as response:
        text = response.read().decode()
    assert (
        'thrifty_requests_total{alias="embed",endpoint="embeddings",feature="",model="text-embedding-3-small",'
        'provider="up",status="ok",tenant="default"} 1.0' in text
    )
    assert "thrifty_overhead_seconds_bucket" in text and "thrifty_upstream_latency_seconds_bucket" in text
    row = ledger_rows(gw)[0]
    assert row["endpoint"] == "embeddings" and row["cost_nusd"] is not None


def test_embeddings_without_usage_are_counted_offline_not_free(
    client: openai.OpenAI, gw: ServerThread, up: FakeUpstream
) -> None:
    up.embedding_usage = False  # as some OpenAI-compatible servers answer
    client.embeddings.create(model="embed", input=["the first text to embed", "a second one"])
    (row,) = ledger_rows(gw)
    assert row["tokens_estimated"] and row["input_tokens"] == 8  # tiktoken: 5 + 3
    assert row["cost_nusd"] == 160  # 8 tokens at $0.02 per million


@pytest.mark.postgres
def test_the_gateway_on_a_postgresql_ledger(tmp_path: Path, up: FakeUpstream, pg_url: str) -> None:
    with running_gateway(tmp_path, up, ledger_url=pg_url) as server:
        with openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0) as client:
            client.chat.completions.create(model="fast", messages=HI)
            list(client.chat.completions.create(model="fast", messages=HI, stream=True))
        rows = ledger_rows(server)
    assert server.runtime.ledger.engine.dialect.name == "postgresql"
    assert [(r["streamed"], r["cost_nusd"]) for r in rows] == [(False, 240_000), (True, 240_000)]
