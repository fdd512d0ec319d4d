"""Provider prompt caching: breakpoints for Anthropic, prompt_cache_key for OpenAI, savings, and the prefix lint."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from sqlalchemy import select

from fakes.upstream import FakeUpstream, FakeUsage
from gateway_harness import config_text, ledger_rows
from thrifty.caches.prompt_cache import (
    PrefixWatch,
    add_cache_breakpoints,
    lint_prefix,
    prompt_cache_key,
    tool_order_changes,
)
from thrifty.ledger import tables
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings
from thrifty.tokens import TiktokenCounter, text_of

LONG_SYSTEM = "You are a meticulous support agent for the Acme cloud platform. " * 200  # about 2,600 tokens
COUNTER = TiktokenCounter()
HISTORY = [
    {"role": "user", "content": "Here is the contract: " + "clause " * 1500},
    {"role": "assistant", "content": "Read it."},
    {"role": "user", "content": "What is clause 3?"},
]


def test_breakpoints_mark_long_prefixes_only() -> None:
    body = {"system": LONG_SYSTEM, "messages": [{"role": "user", "content": "hi"}]}
    marked = add_cache_breakpoints(body, "claude-sonnet-4-5", COUNTER)
    assert marked["system"] == [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    short = {"system": "Be brief.", "messages": [{"role": "user", "content": "hi"}]}
    assert add_cache_breakpoints(short, "claude-sonnet-4-5", COUNTER) == short
    # Haiku needs a 2,048-token prefix; the system prompt alone is long enough here too.
    assert "cache_control" in str(add_cache_breakpoints(body, "claude-3-5-haiku-latest", COUNTER))
    # Opus 4.5 and 4.6 and Haiku 4.5 need 4,096: about 2,600 tokens are not cached there.
    for newer in ("claude-opus-4-5-20251101", "claude-opus-4-6", "claude-haiku-4-5"):
        assert add_cache_breakpoints(body, newer, COUNTER) == body


def test_history_before_the_last_turn_is_marked_and_client_marks_are_respected() -> None:
    messages = [
        {"role": "user", "content": "Here is the contract: " + "clause " * 1500},
        {"role": "assistant", "content": "Read it."},
        {"role": "user", "content": "What is clause 3?"},
    ]
    marked = add_cache_breakpoints({"messages": messages}, "claude-sonnet-4-5", COUNTER)
    assert marked["messages"][1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert marked["messages"][2] == messages[2]
    mine = {"system": [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}
    assert add_cache_breakpoints({**mine, "messages": messages}, "claude-sonnet-4-5", COUNTER)["messages"] == messages


def test_an_agents_tool_results_and_calls_count_toward_the_prefix() -> None:
    """An agent's history is mostly tool results: counted as nothing, its long prefix was never marked."""
    log_lines = "\n".join(f"2024-05-01 12:00:{i % 60:02d} INFO worker {i} finished job {i * 7}" for i in range(400))
    messages = [
        {"role": "user", "content": "Why did the nightly build fail?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "read_logs", "input": {"job": "nightly"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": log_lines}]},
        {"role": "assistant", "content": "The logs show no failure; checking the tests next."},
        {"role": "user", "content": "Go on."},
    ]
    marked = add_cache_breakpoints({"messages": messages}, "claude-sonnet-4-5", COUNTER)
    assert marked["messages"][3]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    blocks = [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "42 rows"}]}]
    assert text_of(blocks) == "42 rows"
    assert (
        text_of([{"type": "tool_use", "id": "t1", "name": "sql", "input": {"q": "select 1"}}]) == 'sql{"q": "select 1"}'
    )


def test_prompt_cache_key_follows_the_prefix() -> None:
    a = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "one"}]}
    b = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "two"}]}
    c = {"messages": [{"role": "system", "content": "T"}, {"role": "user", "content": "one"}]}
    assert prompt_cache_key(a) == prompt_cache_key(b) != prompt_cache_key(c)


def test_prompt_cache_key_is_the_shared_head_not_each_requests_tail() -> None:
    """OpenAI's advice puts what changes at the end. A key over every system message in full gave each request
    its own key (a time at the end, a late system message of retrieved context) and scattered the traffic."""

    def body(*system: str) -> dict[str, object]:
        return {"messages": [*({"role": "system", "content": s} for s in system), {"role": "user", "content": "hi"}]}

    shared = prompt_cache_key(body(LONG_SYSTEM))
    assert prompt_cache_key(body(LONG_SYSTEM + "Current time: 2026-11-26T10:15:22Z")) == shared
    assert prompt_cache_key(body(LONG_SYSTEM + "Current time: 2026-11-26T10:15:23Z")) == shared
    assert prompt_cache_key(body(LONG_SYSTEM, "Context: doc 1")) == prompt_cache_key(body(LONG_SYSTEM, "Context: 2"))
    assert prompt_cache_key(body("Be brief. session_id: 7f3c9a")) == prompt_cache_key(body("Be brief. session_id: 9"))
    assert prompt_cache_key(body("Be brief.")) != prompt_cache_key(body("Be long."))


def test_a_system_prompt_that_changes_every_request_is_not_marked() -> None:
    """Marked, it was written to the cache at 1.25x the input price on every call and never read back."""
    tools = [{"name": f"tool_{i}", "description": "x " * 200, "input_schema": {"type": "object"}} for i in range(6)]
    volatile = {"tools": tools, "system": LONG_SYSTEM + " Request time 2026-11-26 15:04:05.", "messages": HISTORY}
    marked = add_cache_breakpoints(volatile, "claude-sonnet-4-5", COUNTER)
    assert marked["tools"][-1]["cache_control"] == {"type": "ephemeral"}  # the tools before it still are
    assert "cache_control" not in str(marked["system"]) and marked["messages"] == HISTORY
    daily = {**volatile, "system": LONG_SYSTEM + " Today is 2026-11-26."}  # the same all day: worth caching
    assert add_cache_breakpoints(daily, "claude-sonnet-4-5", COUNTER)["system"][-1]["cache_control"]


@pytest.mark.parametrize(
    "stable",
    [
        "Customer ID: 48213.",  # the same all conversation
        "session_id: s-9f31.",
        "If asked for the current time, call the clock tool.",
        "Support line: call 1800555012.",
        "Today is 2026-11-26.",
    ],
)
def test_text_that_holds_for_a_conversation_or_a_day_keeps_its_breakpoints(stable: str) -> None:
    """Only a clock reading or a request id changes every request; an agent's session id or customer id holds
    for the whole conversation, whose history caching then pays a tenth of the input price on every turn."""
    body = {"system": LONG_SYSTEM + " " + stable, "messages": HISTORY}
    marked = add_cache_breakpoints(body, "claude-sonnet-4-5", COUNTER)
    assert marked["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert marked["messages"][1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    for changing in ("request_id: r-1a2b", "Sent at 2026-11-26T10:15:22Z", "It is 10:15:22 now"):
        assert (
            add_cache_breakpoints({**body, "system": LONG_SYSTEM + changing}, "claude-sonnet-4-5", COUNTER)["messages"]
            == HISTORY
        )


def test_a_tool_schema_property_named_cache_control_is_no_client_breakpoint() -> None:
    schema = {"type": "object", "properties": {"cache_control": {"type": "string"}}}
    body = {"tools": [{"name": "set_headers", "input_schema": schema}], "system": LONG_SYSTEM, "messages": HISTORY}
    marked = add_cache_breakpoints(body, "claude-sonnet-4-5", COUNTER)
    assert marked["system"][-1]["cache_control"] == {"type": "ephemeral"}


def test_lint_finds_what_breaks_prefix_caching() -> None:
    messages = [
        {"role": "system", "content": "Current time: 2026-11-26 15:04:05. request_id=ab12cd. You are helpful."},
        {"role": "user", "content": "hello"},
    ]
    found = {(f.where, f.what, f.at) for f in lint_prefix(messages)}
    assert ("messages[0] (system)", "timestamp", 14) in found
    assert ("messages[0] (system)", "time of day", 0) in found
    assert ("messages[0] (system)", "request id", 35) in found
    assert lint_prefix([{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "x"}]) == []
    anthropic = "Current time: 2025-06-03T10:15:22Z. session_id: 7f3c9a"
    assert {f.what for f in lint_prefix([], anthropic)} == {"timestamp", "time of day", "session or user id"}


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("Date: Tuesday, June 3, 2025. It is 3 PM in London.", {"date", "time of day"}),
        ("Conversation ID 7f3c9a21b4, customer_id=88812.", {"session or user id"}),
        ("Today is June 3. Sent at 1717400000.", {"date", "Unix time"}),
        # Static text: opening hours, a knowledge cutoff, a phone number.
        ("We are open 9:00 AM to 5:30 PM. Knowledge cutoff: 2024-06-01. Call 18005550199.", set()),
    ],
)
def test_lint_reads_natural_dates_and_ids_and_spares_static_text(text: str, kinds: set[str]) -> None:
    assert {f.what for f in lint_prefix([{"role": "system", "content": text}])} == kinds


def test_tools_are_flagged_when_their_order_changes_not_when_unsorted() -> None:
    def tools(*names: str) -> list[dict[str, object]]:
        return [{"type": "function", "function": {"name": n}} for n in names]

    assert tool_order_changes([tools("search", "add"), tools("search", "add")]) == []
    (changed,) = tool_order_changes([tools("search", "add"), tools("search", "add"), tools("add", "search")])
    assert changed.where == "tools of request 3" and changed.excerpt == "search, add then add, search"


def test_the_watch_warns_once_per_kind_and_model_while_the_prefix_keeps_changing() -> None:
    now = [0.0]
    watch = PrefixWatch(every_s=600, clock=lambda: now[0])

    def body(system: str, tools: tuple[str, ...] = ()) -> dict[str, object]:
        functions = [{"type": "function", "function": {"name": n}} for n in tools]
        return {
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
            "tools": functions,
        }

    first = watch.check(body("Now: 2026-11-26 15:04:05. Be brief."), "m")
    assert [(f.where, f.what) for f in first] == [("system prompt", "timestamp"), ("system prompt", "date")]
    now[0] = 60
    assert watch.check(body("Now: 2026-11-26 15:05:11. Be brief."), "m") == []  # the same kinds: quiet for a while
    assert [f.what for f in watch.check(body("Now: 2026-11-26 15:05:12. Be brief."), "other")] == ["timestamp", "date"]
    now[0] = 700
    assert len(watch.check(body("Now: 2026-11-26 15:17:00. Be brief."), "m")) == 2  # ... and again after every_s
    assert watch.check(body("Be brief.", ("search", "add")), "m") == []  # unsorted, but maybe always so
    assert watch.check(body("Be brief.", ("search", "add")), "m") == []  # the same order: nothing to say
    assert watch.check(body("Be brief.", ("add", "search")), "m")[0].what == "tools in a different order"
    # The user's own turn and the conversation change by design: never findings.
    assert watch.check({"messages": [{"role": "user", "content": "It is 2026-11-26 15:04:05"}]}, "m") == []


def test_a_volatile_system_prompt_is_logged_by_the_gateway(
    tmp_path: Path, up: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "thrifty.toml").write_text(config_text(up))
    with caplog.at_level(logging.WARNING, logger="thrifty.caches.prompt_cache"):
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                for second in range(3):
                    system = f"Request time 2026-11-26 15:04:0{second}. " + LONG_SYSTEM
                    client.chat.completions.create(
                        model="claude",
                        messages=[{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
                    )
    warnings = [r.getMessage() for r in caplog.records if r.name == "thrifty.caches.prompt_cache"]
    assert len(warnings) == 1, warnings  # the timestamp, said once for three requests
    assert all("changes the cached prefix" in w and "claude" in w for w in warnings)


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=3000, output_tokens=100, cache_read_tokens=2600)) as upstream:
        yield upstream


def test_anthropic_prompt_cache_read_is_priced_and_credited(tmp_path: Path, up: FakeUpstream) -> None:
    (tmp_path / "thrifty.toml").write_text(config_text(up))
    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            client.chat.completions.create(
                model="claude", messages=[{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "hi"}]
            )
        (row,) = ledger_rows(gw)
        with gw.runtime.ledger.engine.connect() as conn:
            savings = {s.lever: s.savings_nusd for s in conn.execute(select(tables.savings))}
    sent = up.requests[-1].json
    assert sent["system"][-1]["cache_control"] == {"type": "ephemeral"}
    # claude-3-5-haiku: 400 uncached x $0.80 + 2,600 cache reads x $0.08 + 100 out x $4.00, per million.
    assert row["cost_nusd"] == 928_000
    assert row["baseline_cost_nusd"] == 2_800_000  # 3,000 x $0.80 + 100 x $4.00, as if nothing were cached
    assert savings == {"prompt_cache": 1_872_000}


def test_openai_prompt_cache_key_is_opt_in_off_openai(tmp_path: Path, up: FakeUpstream) -> None:
    text = config_text(up).replace("[providers.down]", "prompt_caching = true\n\n[providers.down]", 1)
    (tmp_path / "thrifty.toml").write_text(text)
    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
            client.chat.completions.create(model="mystery", messages=[{"role": "user", "content": "hi"}])
    assert up.requests[0].json["prompt_cache_key"].startswith("thrifty-")
    assert up.requests[0].json["prompt_cache_key"] == up.requests[1].json["prompt_cache_key"]
