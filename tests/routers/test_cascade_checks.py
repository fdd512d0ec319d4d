"""A cascade's self-consistency, log-probability and custom checks, through the running gateway."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from fakes.upstream import FakeUpstream, FakeUsage, Fault
from gateway_harness import chat_raw, config_text, ledger_rows, running_gateway
from thrifty.assembly import build_pricer, build_router
from thrifty.errors import ConfigError
from thrifty.guards.estimate import CostEstimator
from thrifty.routers.cascade import Checks
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings
from thrifty.tokens import TiktokenCounter
from thrifty.types import ChatRequest, ChatResponse, Target, Usage

CASCADE = '\n[models.auto]\ntargets = ["up::gpt-4o-mini", "up::gpt-4o"]\nrouter = "cascade"\n[models.auto.cascade]\n'
# gpt-4o-mini: $0.15 / $0.60 per million tokens; 1,000 in and 200 out per choice.
ONE_CHOICE_NUSD = 270_000


def reply(body: dict[str, Any]) -> str:
    text = str(body["messages"][-1]["content"])
    if "unsure" in text:  # each sample a different answer
        return f"The answer is {body.get('choice_index', 0) + 1}."
    return f"{body['model']}: the answer is 42."


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200), reply=reply) as upstream:
        yield upstream


def gateway(tmp_path: Path, up: FakeUpstream, cascade: str) -> AbstractContextManager[ServerThread]:
    return running_gateway(tmp_path, up, extra=CASCADE + cascade)


ask = chat_raw


def test_self_consistency_samples_the_cheap_tier_and_escalates_when_samples_disagree(
    tmp_path: Path, up: FakeUpstream
) -> None:
    with gateway(tmp_path, up, 'checks = ["self_consistency"]\nsamples = 3\n') as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            agreed = ask(client, "what is six times seven?")
            split = ask(client, "unsure: pick a number")
        rows = ledger_rows(gw)
        learned = dict(gw.runtime.gateway.guard.estimator._outputs)  # type: ignore[attr-defined]
    assert agreed.headers["x-thrifty-model"] == "gpt-4o-mini"
    assert [c.message.content for c in agreed.parse().choices] == ["gpt-4o-mini: the answer is 42."]  # one, as asked
    assert split.headers["x-thrifty-model"] == "gpt-4o"
    assert [r.json.get("n") for r in up.requests] == [3, 3, None]  # the last tier is never sampled
    # Every sample is paid for: the cheap calls cost their input once and their output three times.
    three = 150_000 + 3 * 120_000
    assert [(r["model"], r["status"], r["error_type"], r["cost_nusd"]) for r in rows] == [
        ("gpt-4o-mini", "ok", "", three),
        ("gpt-4o-mini", "escalated", "check:self_consistency", three),
        ("gpt-4o", "ok", "", 4_500_000),
    ]
    assert learned["gpt-4o-mini"] == (1, 200)  # one answer's output, not the three samples billed
    # Without the cascade the client would have had one gpt-4o answer, not three: $0.0025 in + $0.002 out.
    assert rows[0]["baseline_cost_nusd"] == 4_500_000


def test_self_consistency_without_reported_usage_counts_every_sample(tmp_path: Path, up: FakeUpstream) -> None:
    """The offline count was of the one answer handed back, after the other samples were dropped: two thirds of
    what was billed went missing from the ledger and the budget."""
    up.chat_usage = False
    with gateway(tmp_path, up, 'checks = ["self_consistency"]\nsamples = 3\n') as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            agreed = ask(client, "what is six times seven?")
        (row,) = ledger_rows(gw)
    one = TiktokenCounter().count_text("gpt-4o-mini", "gpt-4o-mini: the answer is 42.")
    assert agreed.headers["x-thrifty-model"] == "gpt-4o-mini" and row["tokens_estimated"]
    assert row["output_tokens"] == 3 * one


def test_logprob_confidence_asks_for_logprobs_and_hands_back_the_answer_without_them(
    tmp_path: Path, up: FakeUpstream
) -> None:
    with gateway(tmp_path, up, 'checks = ["logprob"]\nmin_confidence = 0.9\n') as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            sure = ask(client, "what is six times seven?")
            up.token_logprob = -0.5  # exp(-0.5) = 0.61 per token
            doubtful = ask(client, "what is six times seven, again?")
            asked = ask(client, "and with logprobs?", logprobs=True)
        rows = ledger_rows(gw)
    assert sure.headers["x-thrifty-model"] == "gpt-4o-mini" and sure.parse().choices[0].logprobs is None
    assert doubtful.headers["x-thrifty-model"] == "gpt-4o"
    assert asked.parse().choices[0].logprobs is not None  # the client's own request is left as it was
    assert [r.json.get("logprobs") for r in up.requests] == [True, True, None, True, True]
    assert [r["error_type"] for r in rows if r["status"] == "escalated"] == ["check:logprob"] * 2


def test_a_custom_check_escalates_and_names_itself(
    tmp_path: Path, up: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "house_checks.py").write_text("def says_paris(answer):\n    return 'Paris' in answer.text\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def capital(body: dict[str, Any]) -> str:
        return "Paris." if body["model"] == "gpt-4o" else "Lyon, I believe."

    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200), reply=capital) as other:
        with gateway(tmp_path, other, 'custom = ["house_checks:says_paris"]\n') as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                answer = ask(client, "What is the capital of France?")
            rows = ledger_rows(gw)
    assert answer.parse().choices[0].message.content == "Paris."
    assert "house_checks:says_paris" in answer.headers["x-thrifty-route"]
    assert [r["error_type"] for r in rows if r["status"] == "escalated"] == ["check:house_checks:says_paris"]


def test_a_custom_check_that_cannot_be_loaded_is_a_start_up_error(tmp_path: Path, up: FakeUpstream) -> None:
    (tmp_path / "thrifty.toml").write_text(config_text(up, extra=CASCADE + 'custom = ["no_such_module:check"]\n'))
    settings = load_settings(tmp_path / "thrifty.toml")
    with pytest.raises(ConfigError, match="no_such_module"):  # `thrifty serve` and `thrifty config check`
        build_router(settings, {a: settings.alias_targets(a) for a in settings.models}, TiktokenCounter())


def test_only_providers_that_give_several_choices_are_sampled() -> None:
    checks = Checks(("self_consistency", "logprob"), samples=4)
    request = ChatRequest({"model": "auto", "messages": []}, "req_1")
    assert checks.prepare(request, samples=True).body == {"model": "auto", "messages": [], "n": 4, "logprobs": True}
    assert checks.prepare(request, samples=False).body == {"model": "auto", "messages": [], "logprobs": True}
    mine = ChatRequest({"model": "auto", "messages": [], "n": 2, "logprobs": True}, "req_2")
    assert checks.prepare(mine, samples=True) is mine  # the client's own n and logprobs are left alone


def test_a_budget_holds_for_every_sample_of_the_cheap_tier_and_no_more(tmp_path: Path, up: FakeUpstream) -> None:
    (tmp_path / "thrifty.toml").write_text(config_text(up, extra=CASCADE + 'checks = ["self_consistency"]\n'))
    settings = load_settings(tmp_path / "thrifty.toml")
    aliases = {"auto": settings.alias_targets("auto")}
    pricer, counter = build_pricer(settings), TiktokenCounter()
    plain = CostEstimator(pricer, counter, aliases, 4096, frozenset({"auto"}))
    sampled = CostEstimator(pricer, counter, aliases, 4096, frozenset({"auto"}), settings.sampled_aliases())

    def request(n: int = 1) -> ChatRequest:
        body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000, "n": n}
        return ChatRequest(body, "r")

    one, three = plain.worst_case(request())[0], sampled.worst_case(request())[0]
    assert one is not None and three is not None
    # The cheap tier's output three times ($0.60 per million, 1,000 tokens each), the last tier's once.
    assert three - one == Decimal("0.0012")
    assert sampled.worst_case_bound(request()) >= three * 10**9  # type: ignore[operator]
    assert sampled.worst_case(request(2))[0] == plain.worst_case(request(2))[0]  # the client's own n: no samples


def test_the_answer_handed_back_is_one_the_majority_gave() -> None:
    checks = Checks(("self_consistency",), samples=3)
    request = ChatRequest({"model": "auto", "messages": []}, "r")
    choices = [
        {"index": i, "message": {"role": "assistant", "content": f"So the answer is {n}."}, "finish_reason": "stop"}
        for i, n in enumerate((54, 51, 51))
    ]
    response = ChatResponse({"choices": choices}, Usage(10, 30), Target("up", "gpt-4o-mini"), 1.0)
    assert checks.first_failure(request, response) is None  # two of three agree
    (served,) = checks.finish(request, response).body["choices"]
    assert served["message"]["content"] == "So the answer is 51." and served["index"] == 0


def test_a_provider_refusing_the_checks_options_is_asked_again_without_them(tmp_path: Path, up: FakeUpstream) -> None:
    up.script([Fault.status(400)])  # e.g. a reasoning model, or a server without logprobs
    with gateway(tmp_path, up, 'checks = ["logprob"]\n') as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            answer = ask(client, "what is six times seven?")
    assert answer.headers["x-thrifty-model"] == "gpt-4o-mini"
    assert [(r.json["model"], r.json.get("logprobs")) for r in up.requests] == [
        ("gpt-4o-mini", True),
        ("gpt-4o-mini", None),
    ]
