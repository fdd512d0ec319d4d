"""A request under a hard budget asks the provider for no more output than the budget reserved for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from fakes.upstream import FakeUpstream, FakeUsage
from gateway_harness import config_text
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings

MESSAGES = [{"role": "user", "content": "write a long essay"}]


def gateway(tmp_path: Path, up: FakeUpstream, extra: str, usd: str = "1", clamp: bool = False) -> ServerThread:
    budget = (
        f'\n[[budgets]]\nscope = "tenant"\nid = "default"\nusd = {usd}\nperiod = "day"\nhard = true\n'
        f"clamp = {str(clamp).lower()}\n"
    )
    (tmp_path / "thrifty.toml").write_text(config_text(up, extra=extra) + budget)
    return ServerThread(load_settings(tmp_path / "thrifty.toml"))


def sent_caps(up: FakeUpstream) -> list[tuple[Any, Any]]:
    return [(r.json.get("max_tokens"), r.json.get("max_completion_tokens")) for r in up.requests if r.json]


def cache_kind(client: openai.OpenAI, text: str, stream: bool = False) -> str:
    """The ``x-thrifty-cache`` header of a one-question request."""
    messages = [{"role": "user", "content": text}]
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model="fast",
            messages=messages,  # type: ignore[arg-type]
            temperature=0,
            stream=True,
        ) as streamed:
            streamed.read()
            return streamed.headers["x-thrifty-cache"]
    raw = client.chat.completions.with_raw_response.create(
        model="fast",
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
    )
    return raw.headers["x-thrifty-cache"]


def test_no_max_tokens_is_sent_with_the_reserved_cap(tmp_path: Path) -> None:
    extra = "\n[guards]\ndefault_max_output_tokens = 50\n"
    with FakeUpstream(usage=FakeUsage(input_tokens=10, output_tokens=5)) as up:
        with gateway(tmp_path, up, extra) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                client.chat.completions.create(model="fast", messages=MESSAGES)  # type: ignore[arg-type]
                client.chat.completions.create(model="fast", messages=MESSAGES, max_completion_tokens=20)  # type: ignore[arg-type]
                client.chat.completions.create(model="fast", messages=MESSAGES, stream=True).close()  # type: ignore[arg-type]
    # Reserved for 50 (the default): without the cap the provider would write as much as it liked.
    assert sent_caps(up) == [(50, None), (None, 20), (50, None)]


def test_without_a_hard_budget_nothing_is_capped(tmp_path: Path) -> None:
    with FakeUpstream(usage=FakeUsage(input_tokens=10, output_tokens=5)) as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                client.chat.completions.create(model="fast", messages=MESSAGES)  # type: ignore[arg-type]
    assert sent_caps(up) == [(None, None)]


def test_a_clamp_keeps_the_clients_field_and_caps_each_choice(tmp_path: Path) -> None:
    """gpt-4o-mini: $0.60 per million output tokens. $0.0006 pays for about 1,000 output tokens in all; with
    two choices asking 5,000 each, each is clamped to about 500, in the field the client used (reasoning models
    refuse max_tokens)."""
    with FakeUpstream(usage=FakeUsage(input_tokens=10, output_tokens=5)) as up:
        with gateway(tmp_path, up, "", usd="0.0006", clamp=True) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                client.chat.completions.create(model="fast", messages=MESSAGES, max_completion_tokens=5000, n=2)  # type: ignore[arg-type]
    ((max_tokens, per_choice),) = sent_caps(up)
    assert max_tokens is None and 400 <= per_choice <= 500


def test_a_clamped_request_is_cached_under_what_the_client_asked(tmp_path: Path) -> None:
    """The clamp rewrites max_tokens to what is left, which shrinks with each call: keyed on the clamped request,
    every repeat near the end of a budget was a miss, paying again for an answer already in the cache."""
    with FakeUpstream(usage=FakeUsage(input_tokens=10, output_tokens=5)) as up:
        with gateway(tmp_path, up, "\n[cache]\nexact = true\n", usd="0.0006", clamp=True) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                kinds = [
                    client.chat.completions.with_raw_response.create(
                        model="fast",
                        messages=MESSAGES,  # type: ignore[arg-type]
                        max_completion_tokens=5000,
                        temperature=0,
                    ).headers["x-thrifty-cache"]
                    for _ in range(3)
                ]
    ((max_tokens, clamped),) = sent_caps(up)
    assert kinds == ["miss", "exact", "exact"]
    assert max_tokens is None and clamped < 5000  # the call itself was clamped


def test_a_spent_budget_is_still_served_what_the_cache_holds(tmp_path: Path) -> None:
    """A hit costs nothing: refusing it (the budget had no room for a fresh call's worst case) left the tenant
    without answers it had already paid for. Rate limits, which count requests, still refuse."""
    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200)) as up:
        # gpt-4o-mini: a call costs $0.00027; its worst case (4,096 tokens out) $0.0026 fits the budget once.
        with gateway(tmp_path, up, "\n[cache]\nexact = true\n", usd="0.0027") as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                assert cache_kind(client, "write a haiku") == "miss"
                assert cache_kind(client, "write a haiku") == "exact"
                assert cache_kind(client, "write a haiku", stream=True) == "exact"
                with pytest.raises(openai.RateLimitError) as refused:
                    cache_kind(client, "write a sonnet")
    assert refused.value.code == "budget_exceeded"
    assert len(up.requests) == 1


def test_a_spent_budget_pays_for_no_remote_embedding(tmp_path: Path) -> None:
    """With a remote embedder, the semantic lookup of a request its budget refused would be a paid call charged to
    the gateway (tenant ``thrifty``), which a client retrying a refused request could run up without end: such a
    request is looked up only as far as that costs nothing (the exact cache, texts the embedder already holds)."""
    remote = (
        '\n[cache]\nexact = true\nsemantic = true\nembedder = "remote"\nembedding_model = "embed"\n'
        "embedding_dimensions = 32\nsemantic_threshold = 0.5\n"
    )
    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200)) as up:
        with gateway(tmp_path, up, remote, usd="0.0027") as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                assert cache_kind(client, "where can I download my invoices") == "miss"
                embedded = [r.path for r in up.requests].count("/v1/embeddings")
                assert cache_kind(client, "where can I download my invoices") == "exact"
                with pytest.raises(openai.RateLimitError) as refused:
                    cache_kind(client, "where can I download my invoices please")
    assert refused.value.code == "budget_exceeded"
    assert embedded >= 1 and [r.path for r in up.requests].count("/v1/embeddings") == embedded
