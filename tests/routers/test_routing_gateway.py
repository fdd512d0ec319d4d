"""Routing through the running gateway: pools and capabilities, rules, cascades, cooldowns, route headers."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select

from fakes.upstream import FakeUpstream, FakeUsage, Fault
from gateway_harness import chat_raw, config_text, ledger_rows
from thrifty.accounting import Trace, with_escalations
from thrifty.ledger import tables
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings
from thrifty.types import Cost, Usage

POOL = """
[pool.mini]
target = "up::gpt-4o-mini"
tier = 1
context_window = 2000
capabilities = ["json"]

[pool.big]
target = "up::gpt-4o"
tier = 2
context_window = 128000
"""


def reply(body: dict[str, Any]) -> str:
    text = str(body["messages"][-1]["content"])
    if body["model"] == "gpt-4o-mini" and "hard" in text:
        return "I'm sorry, I can't help with that."
    return f"{body['model']} says: {text}"


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200), reply=reply) as upstream:
        yield upstream


def gateway(tmp_path: Path, up: FakeUpstream, extra: str) -> ServerThread:
    (tmp_path / "thrifty.toml").write_text(config_text(up, extra=POOL + extra))
    return ServerThread(load_settings(tmp_path / "thrifty.toml"))


ask = chat_raw


def test_pool_skips_models_lacking_a_capability_or_the_context(tmp_path: Path, up: FakeUpstream) -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with gateway(tmp_path, up, '\n[models.auto]\npool = ["mini", "big"]\n') as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            assert ask(client, "easy").headers["x-thrifty-model"] == "gpt-4o-mini"
            assert ask(client, "easy", tools=[tool]).headers["x-thrifty-model"] == "gpt-4o"
            assert ask(client, "easy " * 3000).headers["x-thrifty-model"] == "gpt-4o"
            assert ask(client, "easy", max_tokens=1995).headers["x-thrifty-model"] == "gpt-4o"
        rows = ledger_rows(gw)
    # An alias over a pool is measured against the pool's strongest model: gpt-4o, $2.50 / $10 per million.
    assert rows[0]["baseline_cost_nusd"] == 4_500_000 and rows[0]["cost_nusd"] == 270_000


def test_a_history_of_tool_calls_needs_a_model_with_tools(tmp_path: Path, up: FakeUpstream) -> None:
    """The turn after a tool result may offer no tools; a model without tool use would still refuse the history."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "easy"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        {"role": "user", "content": "thanks, and so?"},
    ]
    with gateway(tmp_path, up, '\n[models.auto]\npool = ["mini", "big"]\n') as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            raw = client.chat.completions.with_raw_response.create(model="auto", messages=history)  # type: ignore[arg-type]
            plain = ask(client, "thanks, and so?")
    assert raw.headers["x-thrifty-model"] == "gpt-4o"
    assert plain.headers["x-thrifty-model"] == "gpt-4o-mini"


@pytest.mark.parametrize("router", ['router = "rules"\ndefault = "mini"', 'router = "cascade"'])
def test_rules_and_cascades_leave_out_models_lacking_a_capability_or_the_context(
    tmp_path: Path, up: FakeUpstream, router: str
) -> None:
    """A rule or a cascade's cheap tier may name a model without tools or a long enough context: its 400 would not
    be retried, so the model that can answer would never be asked."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with gateway(tmp_path, up, f'\n[models.auto]\npool = ["mini", "big"]\n{router}\n') as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            assert ask(client, "easy").headers["x-thrifty-model"] == "gpt-4o-mini"
            tools = ask(client, "easy", tools=[tool])
            assert ask(client, "easy " * 3000).headers["x-thrifty-model"] == "gpt-4o"
    assert tools.headers["x-thrifty-model"] == "gpt-4o"
    assert tools.headers["x-thrifty-route"].endswith("; left out gpt-4o-mini (cannot take this request)")
    assert [r.json["model"] for r in up.requests] == ["gpt-4o-mini", "gpt-4o", "gpt-4o"]


@pytest.mark.parametrize("router", ["", 'router = "cascade"', 'router = "rules"\ndefault = "mini"'])
def test_a_capability_no_target_has_is_refused_before_any_call(tmp_path: Path, up: FakeUpstream, router: str) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with gateway(tmp_path, up, f'\n[models.auto]\npool = ["mini"]\n{router}\n') as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, image]}]
                )
            # Too long by our count, for every window: the provider, whose count is exact, has the last word.
            assert ask(client, "easy " * 3000).headers["x-thrifty-model"] == "gpt-4o-mini"
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "model_not_capable" and "vision" in error["message"]
    assert [r.json["messages"][0]["content"] for r in up.requests] == ["easy " * 3000]


def test_rules_pick_by_feature_and_keyword_and_say_why(tmp_path: Path, up: FakeUpstream) -> None:
    rules = """
[models.auto]
pool = ["mini", "big"]
router = "rules"
default = "big"
[[models.auto.rules]]
feature = "faq"
use = "mini"
[[models.auto.rules]]
keywords = ["translate"]
max_input_tokens = 200
use = "mini"
"""
    with gateway(tmp_path, up, rules) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            faq = ask(client, "what is a token?", extra_headers={"x-thrifty-feature": "faq"})
            translate = ask(client, "translate this to French: hello")
            other = ask(client, "write me a sonnet")
        rows = ledger_rows(gw)
        with gw.runtime.ledger.engine.connect() as conn:
            savings = conn.execute(select(tables.savings)).all()
    assert faq.headers["x-thrifty-model"] == "gpt-4o-mini"
    assert faq.headers["x-thrifty-route"] == "rules; rule 1: feature=faq"
    assert translate.headers["x-thrifty-model"] == "gpt-4o-mini"
    assert translate.headers["x-thrifty-route"].startswith("rules; rule 2: keywords=translate")
    assert other.headers["x-thrifty-model"] == "gpt-4o"
    assert other.headers["x-thrifty-route"] == "rules; no rule matched: default"
    assert [r["model"] for r in rows] == ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o"]
    assert sorted((s.lever, s.savings_nusd) for s in savings) == [("routing", 4_230_000)] * 2


def test_cascade_escalates_on_a_failed_check_and_records_both_calls(tmp_path: Path, up: FakeUpstream) -> None:
    cascade = '\n[models.auto]\npool = ["mini", "big"]\nrouter = "cascade"\n'
    with gateway(tmp_path, up, cascade) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            easy = ask(client, "easy question")
            hard = ask(client, "hard question")
            streamed = list(
                client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": "hard again"}], stream=True
                )
            )
        rows = ledger_rows(gw)
        learned = dict(gw.runtime.gateway.guard.estimator._outputs)  # type: ignore[attr-defined]
    assert easy.headers["x-thrifty-model"] == "gpt-4o-mini"
    assert hard.headers["x-thrifty-model"] == "gpt-4o"
    assert hard.headers["x-thrifty-route"].endswith("; gpt-4o-mini failed check refusal, escalated")
    assert hard.parse().choices[0].message.content == "gpt-4o says: hard question"
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "gpt-4o says: hard again"
    escalated = [r for r in rows if r["status"] == "escalated"]
    assert [(r["model"], r["error_type"], r["cost_nusd"]) for r in escalated] == [
        ("gpt-4o-mini", "check:refusal", 270_000)
    ] * 2
    assert len(rows) == 5
    # Quotes learn each model's own output: gpt-4o wrote 200 tokens a call, not its own plus the cheap tier's.
    assert learned["gpt-4o"] == (2, 400) and learned["gpt-4o-mini"] == (1, 200)


def test_a_cascade_takes_a_tool_call_as_the_answer(tmp_path: Path, up: FakeUpstream) -> None:
    """A tool call has no text to check: read as an empty or too short answer, every agent step would escalate
    and be paid for twice."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    # Not the pool's mini, which has no tools.
    agent = '\n[models.agent]\ntargets = ["up::gpt-4.1-mini", "up::gpt-4.1"]\nrouter = "cascade"\n'
    agent += '[models.agent.cascade]\nmin_length = 20\nregex = "\\\\d"\n'
    with gateway(tmp_path, up, agent) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            called = client.chat.completions.with_raw_response.create(
                model="agent", messages=[{"role": "user", "content": "please call tool f"}], tools=[tool]
            )
        rows = ledger_rows(gw)
    assert called.headers["x-thrifty-model"] == "gpt-4.1-mini"
    assert called.parse().choices[0].message.tool_calls[0].function.name == "f"  # type: ignore[index]
    assert [(r["model"], r["status"]) for r in rows] == [("gpt-4.1-mini", "ok")]


def test_a_cascade_checks_json_against_any_valid_schema_and_records_the_paid_call(tmp_path: Path) -> None:
    """Boolean sub-schemas, tuple items, a null enum, an unknown type name: valid JSON Schema the check does not
    fully read. Crashing on it lost the cheap call already paid for (an internal error with no cost)."""
    schema = {
        "type": "object",
        "properties": {"a": True, "b": {"items": [{"type": "integer"}]}, "c": {"enum": None}, "d": {"type": "int"}},
        "required": ["a"],
    }
    json_cascade = '\n[models.auto]\npool = ["mini", "big"]\nrouter = "cascade"\n'
    json_cascade += '[models.auto.cascade]\nchecks = ["json"]\n'
    with FakeUpstream(
        usage=FakeUsage(input_tokens=1000, output_tokens=200), reply=lambda body: '{"a": 1, "b": [2]}'
    ) as up:
        with gateway(tmp_path, up, json_cascade) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                answer = ask(
                    client,
                    "json please",
                    response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
                )
            rows = ledger_rows(gw)
    assert answer.headers["x-thrifty-model"] == "gpt-4o-mini"
    assert [(r["model"], r["status"], r["cost_nusd"]) for r in rows] == [("gpt-4o-mini", "ok", 270_000)]


def test_a_cascade_keeps_its_tiers_in_order_while_one_cools_down(tmp_path: Path) -> None:
    """A cooling cheap tier is skipped, never moved behind the strong one: the cascade would then escalate
    downward and serve the cheap model's answer unchecked."""

    def strong_hedges(body: dict[str, Any]) -> str:
        return "I don't know." if body["model"] == "gpt-4o" else "mini answers"

    cascade = '\n[models.auto]\npool = ["mini", "big"]\nrouter = "cascade"\n'
    with FakeUpstream(usage=FakeUsage(input_tokens=10, output_tokens=5), reply=strong_hedges) as up:
        up.script([Fault.status(503), Fault.ok()] * 3)  # mini fails three times: it cools down
        with gateway(tmp_path, up, cascade) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                for _ in range(4):
                    last = ask(client, "a question")
            assert [str(t) for t in gw.runtime.gateway.caller.cooldowns.cooling()] == ["up::gpt-4o-mini"]
        models = [r.json["model"] for r in up.requests]
    assert last.headers["x-thrifty-model"] == "gpt-4o"
    assert models == ["gpt-4o-mini", "gpt-4o"] * 3 + ["gpt-4o"]


CASCADE_WITH_BUDGET = """
[models.auto]
pool = ["mini", "big"]
router = "cascade"

[[budgets]]
scope = "tenant"
id = "default"
usd = 0.0047
period = "day"
hard = true
"""


def test_a_budget_pays_for_every_cascade_step(tmp_path: Path, up: FakeUpstream) -> None:
    """An escalated request cost its cheap answer too ($0.00027 + $0.0045 here): the budget counts both, and the
    cost header says both, so the next request no longer fits under $0.0047."""
    with gateway(tmp_path, up, CASCADE_WITH_BUDGET) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            hard = ask(client, "hard question", max_tokens=10)
            with pytest.raises(openai.RateLimitError) as refused:
                ask(client, "easy question", max_tokens=10)
        rows = ledger_rows(gw)
    assert Decimal(hard.headers["x-thrifty-cost-usd"]) == Decimal("0.00477")
    assert refused.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    assert sorted((r["status"], r["cost_nusd"]) for r in rows) == [
        ("error", 0),
        ("escalated", 270_000),
        ("ok", 4_500_000),
    ]


def test_a_streamed_cascade_answer_cut_short_still_counts_what_was_paid(tmp_path: Path) -> None:
    """A cascade asks for whole answers and replays the chosen one as a stream: when the stream stops early (here
    a hard budget's output allowance), the row keeps the usage the provider billed, not an estimate of the part
    the client read."""
    long_reply = " ".join(f"word{n}" for n in range(400))
    budget = CASCADE_WITH_BUDGET.replace("usd = 0.0047", "usd = 1") + "\n[cache]\nexact = true\n"
    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200), reply=lambda body: long_reply) as up:
        with gateway(tmp_path, up, budget) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                streams, chunks = [], []
                for _ in range(2):  # one after the other: the first has ended (and stored, if it would) first
                    streams.append(
                        client.chat.completions.with_raw_response.create(
                            model="auto",
                            messages=[{"role": "user", "content": "tell"}],
                            stream=True,
                            max_tokens=10,
                            temperature=0,
                        )
                    )
                    chunks.append(list(streams[-1].parse()))
            rows = ledger_rows(gw)
    text = "".join(c.choices[0].delta.content or "" for c in chunks[0] if c.choices)
    assert 0 < len(text) < len(long_reply)  # stopped at the allowance
    # An answer cut short is not a whole answer: never served from the cache as if it were.
    assert [s.headers["x-thrifty-cache"] for s in streams] == ["miss", "miss"]
    first = rows[0]
    assert (first["input_tokens"], first["output_tokens"], first["tokens_estimated"]) == (1000, 200, False)
    assert first["cost_nusd"] == 270_000


def test_a_cascade_with_an_unpriced_step_is_unpriced_in_all() -> None:
    trace = Trace("req", "chat", "auto")
    trace.escalations, trace.escalated_usd, trace.escalated_usage = 1, Decimal("0.001"), Usage(10, 10)
    assert with_escalations(Cost(Decimal("0.002")), trace) == Cost(Decimal("0.003"))
    assert with_escalations(Cost(None), trace) == Cost(None)
    trace.escalated_unpriced = True
    assert with_escalations(Cost(Decimal("0.002")), trace) == Cost(None)


def test_a_failing_target_is_cooled_down(tmp_path: Path, up: FakeUpstream) -> None:
    with gateway(tmp_path, up, "") as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            for _ in range(3):
                client.chat.completions.create(model="resilient", messages=[{"role": "user", "content": "x"}])
            fourth = client.chat.completions.with_raw_response.create(
                model="resilient", messages=[{"role": "user", "content": "x"}], stream=True
            )
            list(fourth.parse())
        cooling = gw.runtime.gateway.caller.cooldowns.cooling()
    assert [str(t) for t in cooling] == ["down::gpt-4o-mini"]
    # After three refused connections the dead target is tried last: the fourth call goes straight to 'up',
    # and says why in its route header.
    assert len(up.requests) == 4
    route = fourth.headers["x-thrifty-route"]
    assert route == "static; configured order; down::gpt-4o-mini cooling down after repeated failures, tried last"


def test_the_cooldown_is_configured(tmp_path: Path, up: FakeUpstream) -> None:
    text = config_text(up, extra=POOL).replace("[server]\n", "[server]\ncooldown_failures = 1\ncooldown_s = 600\n", 1)
    (tmp_path / "thrifty.toml").write_text(text)
    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            client.chat.completions.create(model="resilient", messages=[{"role": "user", "content": "x"}])
        cooling = gw.runtime.gateway.caller.cooldowns.cooling()
    assert [str(t) for t in cooling] == ["down::gpt-4o-mini"]  # one refused connection was enough (default 3)


def test_streams_fall_back_and_carry_the_route(tmp_path: Path, up: FakeUpstream) -> None:
    up.script([Fault.status(503)])
    with gateway(tmp_path, up, '\n[models.auto]\npool = ["mini", "big"]\n') as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            list(raw.parse())
    assert raw.headers["x-thrifty-model"] == "gpt-4o"
    assert raw.headers["x-thrifty-route"] == (
        "tiers; cheapest capable tier first; gpt-4o-mini failed (upstream_unavailable), fell back"
    )


@pytest.mark.parametrize(
    ("router", "targets"),
    [
        ('router = "cascade"', '["up::gpt-4o-mini", "up::gpt-4o"]'),
        ('router = "rules"\ndefault = "up::gpt-4o-mini"', '["up::gpt-4o-mini", "up::gpt-4o"]'),
    ],
)
def test_a_routed_list_of_targets_is_measured_against_its_strongest(
    tmp_path: Path, up: FakeUpstream, router: str, targets: str
) -> None:
    """Listed cheapest first, a cascade's first target is the model it saves on, not the one it saves against;
    a rules router's is whichever the list names first. Without a router a team would send everything to the
    dearest, so that is the baseline, and the cheap answer is credited to routing."""
    up.usage = FakeUsage(input_tokens=1000, output_tokens=100)
    config = f"\n[models.routed]\ntargets = {targets}\n{router}\n"
    with gateway(tmp_path, up, config) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            client.chat.completions.create(model="routed", messages=[{"role": "user", "content": "What is 2 + 2?"}])
        (row,) = ledger_rows(gw)
        with gw.runtime.ledger.engine.connect() as conn:
            savings = {s.lever: s.savings_nusd for s in conn.execute(select(tables.savings))}
    # gpt-4o-mini: 1,000 x 0.15 + 100 x 0.60 per million; gpt-4o: 1,000 x 2.50 + 100 x 10.
    assert (row["model"], row["cost_nusd"], row["baseline_cost_nusd"]) == ("gpt-4o-mini", 210_000, 3_500_000)
    assert savings == {"routing": 3_290_000}


def test_a_pool_credits_its_cheaper_tier_to_routing(tmp_path: Path, up: FakeUpstream) -> None:
    with gateway(tmp_path, up, '\n[models.auto]\npool = ["mini", "big"]\n') as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            raw = ask(client, "hi")
        (row,) = ledger_rows(gw)
        with gw.runtime.ledger.engine.connect() as conn:
            savings = {s.lever: s.savings_nusd for s in conn.execute(select(tables.savings))}
    assert raw.headers["x-thrifty-route"] == "tiers; cheapest capable tier first"
    # gpt-4o-mini: 1,000 x 0.15 + 200 x 0.60 per million, against gpt-4o's 1,000 x 2.50 + 200 x 10.
    assert (row["model"], row["cost_nusd"], row["baseline_cost_nusd"]) == ("gpt-4o-mini", 270_000, 4_500_000)
    assert savings == {"routing": 4_230_000}


def test_a_static_list_credits_its_first_target_to_routing_and_a_fallback_to_fallback(
    tmp_path: Path, up: FakeUpstream
) -> None:
    """With an explicit baseline, a plain list's first target answering is the configured choice of a cheaper
    model (routing); it was credited to the fallback lever, though nothing fell back."""
    extra = '\n[models.cheap]\ntargets = ["down::gpt-4o-mini", "up::gpt-4o-mini"]\nbaseline = "up::gpt-4o"\n'
    extra += '\n[models.direct]\ntargets = ["up::gpt-4o-mini"]\nbaseline = "up::gpt-4o"\n'
    extra += '\n[models.plain]\ntargets = ["up::gpt-4o-mini", "up::gpt-4o"]\n'
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    with gateway(tmp_path, up, extra) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            for alias in ("direct", "cheap"):
                client.chat.completions.create(model=alias, messages=[{"role": "user", "content": "hi"}])
            # gpt-4o-mini has no tools in this pool: left out, the next target answers, a fallback's loss.
            client.chat.completions.create(model="plain", messages=[{"role": "user", "content": "hi"}], tools=[tool])  # type: ignore[list-item]
        rows = ledger_rows(gw)
        with gw.runtime.ledger.engine.connect() as conn:
            savings = {(s.request_id, s.lever): s.savings_nusd for s in conn.execute(select(tables.savings))}
    direct, cheap, plain = rows
    assert savings == {
        (direct["request_id"], "routing"): 4_230_000,
        (cheap["request_id"], "fallback"): 4_230_000,
        (plain["request_id"], "fallback"): -4_230_000,
    }


def test_a_cooling_cascade_tier_is_still_the_last_resort(tmp_path: Path) -> None:
    cascade = '\n[models.auto]\npool = ["mini", "big"]\nrouter = "cascade"\n'
    with FakeUpstream(usage=FakeUsage(input_tokens=10, output_tokens=5)) as up:
        up.script([Fault.status(503), Fault.ok()] * 3 + [Fault.status(503)])  # mini cools; then big fails once
        with gateway(tmp_path, up, cascade) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                for _ in range(4):
                    last = ask(client, "a question")
        models = [r.json["model"] for r in up.requests]
    assert models == ["gpt-4o-mini", "gpt-4o"] * 3 + ["gpt-4o", "gpt-4o-mini"]
    assert last.headers["x-thrifty-model"] == "gpt-4o-mini"
    assert (
        "up::gpt-4o-mini cooling down after repeated failures, skipped for a later tier"
        in last.headers["x-thrifty-route"]
    )


def test_a_summary_escalating_through_a_cascade_is_charged_to_the_summarize_lever(tmp_path: Path) -> None:
    from thrifty.assembly import build_runtime
    from thrifty.types import ChatRequest, ChatResponse, Principal, Target

    with FakeUpstream() as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=POOL))
        runtime = build_runtime(load_settings(tmp_path / "thrifty.toml"))
        runtime.start()
        try:
            request = ChatRequest({"model": "fast", "messages": []}, "req_sum.summary", charged_to="summarize")
            trace = Trace("req_sum.summary", "chat", "fast")
            trace.principal = Principal("acme")
            answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": ""}}]}
            response = ChatResponse(answer, Usage(1000, 10), Target("up", "gpt-4o-mini"), 1.0)
            runtime.gateway._record_escalation(trace, request, response, "nonempty")
            assert runtime.ledger.flush(10)
            with runtime.ledger.engine.connect() as conn:
                saved = conn.execute(select(tables.savings.c.lever, tables.savings.c.savings_nusd)).all()
        finally:
            import asyncio

            asyncio.run(runtime.aclose())
    assert [(lever, nusd) for lever, nusd in saved] == [("summarize", -156_000)]


def test_a_target_whose_format_cannot_take_the_request_is_passed_over(tmp_path: Path, up: FakeUpstream) -> None:
    """Anthropic's adapter refuses ``n`` > 1 before any call: that 400 stopped the fallback chain, so a request the
    next target could answer failed, and a retryable 503 of the target before it reached the client as a 400."""
    extra = (
        '\n[models.mixed]\ntargets = ["anth::claude-3-5-haiku-latest", "up::gpt-4o-mini"]\n'
        '\n[models.outage]\ntargets = ["down::gpt-4o-mini", "anth::claude-3-5-haiku-latest"]\n'
    )
    with gateway(tmp_path, up, extra) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            two = [{"role": "user", "content": "easy"}]
            raw = client.chat.completions.with_raw_response.create(model="mixed", messages=two, n=2)  # type: ignore[arg-type]
            with pytest.raises(openai.APIStatusError) as failed:
                client.chat.completions.create(model="outage", messages=two, n=2)  # type: ignore[arg-type]
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model="claude", messages=two, n=2)  # type: ignore[arg-type]
    assert raw.headers["x-thrifty-model"] == "gpt-4o-mini"
    assert "claude-3-5-haiku-latest cannot take this request" in raw.headers["x-thrifty-route"]
    assert failed.value.status_code == 503  # the outage, which a client retries; not the format's 400
    assert "'n' must be 1" in refused.value.message
    assert [r.json["model"] for r in up.requests] == ["gpt-4o-mini"]


def test_a_mistake_in_the_request_is_not_passed_on_to_the_next_target(tmp_path: Path, up: FakeUpstream) -> None:
    """Only what Anthropic's format lacks passes a target over; a request that is wrong anywhere is the answer."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    broken = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    extra = '\n[models.mixed]\ntargets = ["anth::claude-3-5-haiku-latest", "up::gpt-4o-mini"]\n'
    with gateway(tmp_path, up, extra) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model="mixed", messages=broken)  # type: ignore[arg-type]
    assert "not valid JSON" in refused.value.message and up.requests == []


def test_only_a_cooling_target_moved_behind_a_warm_one_is_named() -> None:
    from thrifty.calling import ProviderCaller
    from thrifty.routers.cooldown import Cooldowns
    from thrifty.types import Target

    first, last = Target("up", "a"), Target("up", "b")
    cooldowns = Cooldowns(failures=1)
    caller = ProviderCaller({}, cooldowns, lambda *_: None)
    cooldowns.failed(last)
    trace = Trace("r", "chat", "auto")
    caller._note_cooling([first, last], trace)  # already last: nothing was reordered
    assert trace.detours == []
    cooldowns.failed(first)
    cooldowns.succeeded(last)
    caller._note_cooling([first, last], trace)
    assert trace.detours == ["up::a cooling down after repeated failures, tried last"]
