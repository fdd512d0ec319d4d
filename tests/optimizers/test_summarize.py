"""History summarization: older turns folded into a per-session summary written through the gateway itself."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select

from fakes.upstream import FakeUpstream, Fault
from gateway_harness import config_text, ledger_rows
from thrifty.errors import ConfigError
from thrifty.ledger import tables
from thrifty.optimizers.summarize import PIN, SUMMARY_HEADER, HistorySummarizer, RedisSummaryStore, SummarizePlan
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings
from thrifty.tokens import TiktokenCounter
from thrifty.types import ChatRequest, ChatResponse, JsonObject, Principal, Target

SYSTEM = {"role": "system", "content": "You are the travel desk of Example Air. Answer briefly."}
SUMMARIZE = """
[models.smart]
targets = ["up::gpt-4o"]

[optimize.summarize]
after_tokens = 150
model = "fast"
keep_last_messages = 2
max_summary_tokens = 60
"""


def turn_text(n: int) -> str:
    return f"Turn {n}: " + " ".join(f"detail{n}x{k} about flight EA{100 + n} seat {k}" for k in range(12))


def is_summary_call(body: dict[str, Any]) -> bool:
    return "running summary" in str(body["messages"][0].get("content", ""))


def reply(body: dict[str, Any]) -> str:
    if is_summary_call(body):
        folded = body["messages"][1]["content"].count("Turn ")
        return f"SUMMARY of {folded} turns: the user is rebooking flights EA101 onwards, seats noted."
    return "Noted: " + str(body["messages"][-1]["content"])[:30]


def test_long_conversation_is_folded_incrementally_and_costs_are_charged_to_the_lever(tmp_path: Path) -> None:
    with FakeUpstream(reply=reply) as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=SUMMARIZE))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
            history: list[Any] = [SYSTEM]
            sent: list[dict[str, Any]] = []
            for n in range(1, 9):
                message: dict[str, Any] = {"role": "user", "content": turn_text(n)}
                if n == 2:
                    message[PIN] = True  # the client pins the turn with the booking reference
                    message["content"] = "Booking reference QX7-551; keep it. " + turn_text(n)
                history.append(message)
                answer = client.chat.completions.create(
                    model="smart", messages=history, extra_headers={"x-thrifty-session": "trip-42"}
                )
                history.append({"role": "assistant", "content": answer.choices[0].message.content})
                sent.append(up.requests[-1].json)
            client.close()
            rows = ledger_rows(gw)
            with gw.runtime.ledger.engine.connect() as conn:
                savings = [(s.request_id, s.lever, s.savings_nusd) for s in conn.execute(select(tables.savings))]

    calls = [r.json for r in up.requests if is_summary_call(r.json)]
    assert 1 <= len(calls) < len(sent), "a summary is written only when the unsummarized part passes the threshold"
    assert "Summary so far:" not in calls[0]["messages"][1]["content"]
    folded_before: set[str] = set()
    for n, call in enumerate(calls):  # incremental: each turn is folded once, never again from scratch
        ask = call["messages"][1]["content"]
        assert ("Summary so far:\nSUMMARY of" in ask) == (n > 0)
        turns = set(re.findall(r"Turn \d+:", ask))
        assert turns and not turns & folded_before
        folded_before |= turns
    first = next(i for i, body in enumerate(sent) if any(SUMMARY_HEADER in str(m["content"]) for m in body["messages"]))
    assert first >= 1, "the first turns are short enough to go out verbatim"
    for body in sent[first:]:
        messages = body["messages"]
        assert messages[0] == SYSTEM  # the system prompt stays first and verbatim
        assert messages[1]["role"] == "system" and messages[1]["content"].startswith(SUMMARY_HEADER)
        assert messages[-1]["content"].startswith("Turn ")  # the latest turn is verbatim
        assert any("Booking reference QX7-551" in str(m["content"]) for m in messages)  # pinned
        assert all(PIN not in m for m in messages)  # the flag never reaches the provider
        assert not any("Turn 1:" in str(m["content"]) for m in messages[2:])  # folded away
    assert all(PIN not in m for body in sent for m in body["messages"])
    assert len(str(sent[-1]["messages"])) < len(str(history[:-1])) * 0.8

    by_id = {row["request_id"]: row for row in rows}
    summary_rows = [row for row in rows if row["request_id"].endswith(".summary")]
    assert len(summary_rows) == len(calls)
    lever = {(rid, name): amount for rid, name, amount in savings}
    for row in summary_rows:  # the summarizer's own call: no baseline, its cost charged to the lever
        assert row["baseline_cost_nusd"] == 0 and row["cost_nusd"] > 0 and row["model"] == "gpt-4o-mini"
        assert lever[(row["request_id"], "summarize")] == -row["cost_nusd"]
    credited = [rid for (rid, name), amount in lever.items() if name == "summarize" and amount > 0]
    assert len(credited) == len(sent) - first
    for rid in credited:
        row = by_id[rid]
        assert row["baseline_cost_nusd"] - row["cost_nusd"] == sum(a for (r, _), a in lever.items() if r == rid)
    net = sum(amount for (_, name), amount in lever.items() if name == "summarize")
    assert net == sum(r["baseline_cost_nusd"] - r["cost_nusd"] for r in rows)  # nothing else saved anything


def test_a_failing_summarizer_never_fails_the_request(tmp_path: Path) -> None:
    with FakeUpstream(reply=reply) as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=SUMMARIZE))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            history: list[Any] = [SYSTEM]
            for n in range(1, 5):
                history += [{"role": "user", "content": turn_text(n)}, {"role": "assistant", "content": "Noted."}]
            history.append({"role": "user", "content": "And the last question?"})
            up.fail_next(Fault.status(400))  # the summary call is the first to reach the upstream
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                answer = client.chat.completions.create(model="smart", messages=history)
            rows = ledger_rows(gw)
    assert answer.choices[0].message.content == "Noted: And the last question?"
    assert up.requests[-1].json["messages"] == history  # sent unsummarized
    statuses = sorted((row["request_id"].endswith(".summary"), row["status"]) for row in rows)
    assert statuses == [(False, "ok"), (True, "error")]


def test_summarize_model_must_be_an_alias(tmp_path: Path) -> None:
    with FakeUpstream() as up:
        bad = SUMMARIZE.replace('model = "fast"', 'model = "nope"')
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=bad))
        with pytest.raises(ConfigError, match=r"optimize\.summarize\.model: .nope. is not an alias"):
            load_settings(tmp_path / "thrifty.toml")


class Recorder:
    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, request: ChatRequest, principal: Principal) -> ChatResponse:
        self.asked.append(request.messages[1]["content"])
        message = {"role": "assistant", "content": f"S{len(self.asked)}"}
        body: JsonObject = {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        return ChatResponse(body, None, Target("up", "gpt-4o-mini"), 0.0)


def conversation(turns: int) -> list[JsonObject]:
    messages: list[JsonObject] = [dict(SYSTEM)]
    for n in range(turns):
        messages.append({"role": "user", "content": turn_text(n)})
        call = {"id": f"c{n}", "type": "function", "function": {"name": "lookup", "arguments": f'{{"n": {n}}}'}}
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"c{n}", "content": f"result {n}"})
        messages.append({"role": "assistant", "content": f"answer {n}"})
    return messages


def run(summarizer: HistorySummarizer, messages: list[JsonObject], plan: SummarizePlan, session: str = "s") -> Any:
    request = ChatRequest({"model": "smart", "messages": messages}, "r1")
    return asyncio.run(summarizer.summarize(request, messages, Principal(session=session), plan, "gpt-4o"))


def test_tool_results_stay_with_their_call_and_the_tail_starts_at_a_user_turn() -> None:
    summarizer, complete = HistorySummarizer(TiktokenCounter()), Recorder()
    summarizer.bind(complete)
    plan = SummarizePlan(after_tokens=100, model="fast", keep_last_messages=3)
    out = run(summarizer, conversation(5), plan)
    assert out.called_model and out.tokens_saved > 0
    kept = out.messages[2:]
    assert kept[0]["role"] == "user" and kept[0]["content"] == turn_text(4)  # moved back to a user message
    assert [m["role"] for m in kept] == ["user", "assistant", "tool", "assistant"]


def test_same_history_reuses_the_summary_and_an_edited_history_starts_again() -> None:
    summarizer, complete = HistorySummarizer(TiktokenCounter()), Recorder()
    summarizer.bind(complete)
    plan = SummarizePlan(after_tokens=100, model="fast", keep_last_messages=2)
    messages = conversation(4)
    first = run(summarizer, messages, plan)
    again = run(summarizer, [*messages, {"role": "user", "content": "short follow-up"}], plan)
    assert len(complete.asked) == 1 and not again.called_model  # the new part is short: reused as is
    assert again.messages[1]["content"] == first.messages[1]["content"] == SUMMARY_HEADER + "S1"
    edited = [dict(m) for m in messages]
    edited[1]["content"] = "Something else entirely. " + turn_text(0)
    run(summarizer, edited, plan)
    assert len(complete.asked) == 2 and "Summary so far" not in complete.asked[1]
    other_session = run(summarizer, messages, plan, session="other")
    assert len(complete.asked) == 3 and other_session.called_model


def test_short_history_is_left_alone() -> None:
    summarizer, complete = HistorySummarizer(TiktokenCounter()), Recorder()
    summarizer.bind(complete)
    messages = conversation(1)
    out = run(summarizer, messages, SummarizePlan(after_tokens=10_000, model="fast"))
    assert out.messages == messages and out.tokens_saved == 0 and complete.asked == []


def test_replicas_share_summaries_through_redis() -> None:
    import redis

    url = "redis://127.0.0.1:6379/13"
    with redis.Redis.from_url(url) as r:
        r.flushdb()
    counter = TiktokenCounter()
    first, second = Recorder(), Recorder()
    replica_a = HistorySummarizer(counter, RedisSummaryStore(url, ttl_s=60))
    replica_b = HistorySummarizer(counter, RedisSummaryStore(url, ttl_s=60))
    replica_a.bind(first)
    replica_b.bind(second)
    plan = SummarizePlan(after_tokens=100, model="fast", keep_last_messages=2)
    messages = conversation(4)
    request = ChatRequest({"model": "smart", "messages": messages}, "r1")
    later = [*messages, {"role": "user", "content": "one more short question"}]

    async def both() -> tuple[Any, Any]:
        try:
            a = await replica_a.summarize(request, messages, Principal(session="shared"), plan, "gpt-4o")
            b = await replica_b.summarize(request, later, Principal(session="shared"), plan, "gpt-4o")
            return a, b
        finally:
            await replica_a.aclose()
            await replica_b.aclose()

    a, b = asyncio.run(both())
    assert len(first.asked) == 1 and second.asked == []  # the other replica reuses the stored summary
    assert b.messages[1] == a.messages[1] and b.tokens_saved > 0
    with redis.Redis.from_url(url) as r:
        (key,) = r.keys("thrifty:summary:*")
        assert 0 < r.ttl(key) <= 60


def test_conversations_sharing_a_key_keep_their_own_summaries() -> None:
    summarizer, complete = HistorySummarizer(TiktokenCounter()), Recorder()
    summarizer.bind(complete)
    plan = SummarizePlan(after_tokens=100, model="fast", keep_last_messages=2)
    one, other = conversation(4), conversation(4)
    for m in other[2:]:  # the same opening (system prompt and first message), then another conversation
        if m.get("role") == "user":
            m["content"] = "Other customer. " + str(m["content"])
    for _ in range(3):  # interleaved turns of two chats with the same opening and no session id
        for history in (one, other):
            history.append({"role": "user", "content": "short follow-up"})
            run(summarizer, history, plan, session="")
            history.append({"role": "assistant", "content": "ok"})
    fresh = [ask for ask in complete.asked if "Summary so far" not in ask]
    assert len(fresh) == 2  # one summary each from scratch, then only extended: never thrashing each other
    assert len(complete.asked) <= 4


class BrokenStore:
    async def get(self, key: str) -> list[Any]:
        raise ConnectionError("redis is down")

    async def put(self, key: str, summaries: list[Any]) -> None:
        raise ConnectionError("redis is down")


def test_a_store_outage_sends_the_history_unsummarized() -> None:
    summarizer, complete = HistorySummarizer(TiktokenCounter(), BrokenStore()), Recorder()
    summarizer.bind(complete)
    messages = conversation(4)
    out = run(summarizer, messages, SummarizePlan(after_tokens=100, model="fast", keep_last_messages=2))
    assert out.messages == messages and out.tokens_saved == 0 and complete.asked == []


def test_a_pinned_assistant_turn_first_makes_the_summary_a_user_turn() -> None:
    summarizer, complete = HistorySummarizer(TiktokenCounter()), Recorder()
    summarizer.bind(complete)
    messages = conversation(4)
    messages[4] = {**messages[4], PIN: True}  # the first answer, pinned
    out = run(summarizer, messages, SummarizePlan(after_tokens=100, model="fast", keep_last_messages=2))
    assert out.tokens_saved > 0
    assert [m["role"] for m in out.messages[:3]] == ["system", "user", "assistant"]
    assert out.messages[1]["content"].startswith(SUMMARY_HEADER) and out.messages[2]["content"] == "answer 0"
    assert all(PIN not in m for m in out.messages)


def test_pins_never_reach_the_provider_whatever_the_plan(tmp_path: Path) -> None:
    caps_only = "\n[optimize.caps]\nmax_tokens = 100\n"
    for extra in ("", caps_only):
        with FakeUpstream() as up:
            (tmp_path / "thrifty.toml").write_text(config_text(up, extra=extra))
            with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
                with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                    pinned: Any = {"role": "user", "content": "booking QX7", PIN: True}
                    client.chat.completions.create(model="fast", messages=[pinned])
        assert up.requests[-1].json["messages"] == [{"role": "user", "content": "booking QX7"}]


def test_a_long_backlog_is_folded_in_chunks_the_summarizer_can_take() -> None:
    summarizer, complete = HistorySummarizer(TiktokenCounter()), Recorder()
    summarizer.bind(complete)
    plan = SummarizePlan(after_tokens=100, model="fast", keep_last_messages=2, max_fold_tokens=400)
    messages = conversation(8)  # ~1,700 tokens of history at once
    first = run(summarizer, messages, plan)
    assert first.called_model and first.tokens_saved > 0
    counter = TiktokenCounter()
    assert counter.count_text("gpt-4o", complete.asked[0]) < 400 + 250  # one chunk (plus the prompt's framing)
    assert first.messages[2]["role"] != "tool"  # what stays verbatim starts at a call, never at its result
    turns = 0
    while True:  # each further turn folds the next chunk into the summary, until the backlog is under the limit
        messages = [*messages, {"role": "user", "content": "and?"}, {"role": "assistant", "content": "ok"}]
        out = run(summarizer, messages, plan)
        turns += 1
        if not out.called_model:
            break
        assert "Summary so far" in complete.asked[-1]
    assert 2 <= len(complete.asked) <= 8 and turns < 10
    assert not any("Turn 1:" in str(m.get("content")) for m in out.messages[2:])


def test_images_and_later_instructions_are_never_folded_into_the_text_summary() -> None:
    """A summary is text: an image folded into it would be gone from the request; a developer message in the
    middle is an instruction the model must still read as one."""
    summarizer, complete = HistorySummarizer(TiktokenCounter()), Recorder()
    summarizer.bind(complete)
    image = {"type": "image_url", "image_url": {"url": "https://example.com/floor-plan.png"}}
    plan_turn = {"role": "user", "content": [{"type": "text", "text": "Here is our floor plan."}, image]}
    french = {"role": "developer", "content": "From now on, answer in French."}
    messages = conversation(3)
    messages[1:1] = [plan_turn, {"role": "assistant", "content": "Nice plan."}, french]
    out = run(summarizer, messages, SummarizePlan(after_tokens=100, model="fast", keep_last_messages=2))
    assert out.called_model and out.tokens_saved > 0
    assert plan_turn in out.messages and french in out.messages
    assert all("floor plan" not in asked and "French" not in asked for asked in complete.asked)
