"""The optimize stage in the gateway: what is sent is shorter, the ledger credits each lever, caps apply."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
from sqlalchemy import select

from fakes.upstream import FakeUpstream, Fault
from gateway_harness import config_text, ledger_rows
from thrifty.guards.estimate import prompt_tokens
from thrifty.ledger import tables
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings
from thrifty.tokens import TiktokenCounter
from thrifty.types import ChatRequest


def problems() -> list[str]:
    path = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "routellm" / "gsm8k" / "test.jsonl"
    lines = path.read_text().splitlines()[:40] if path.exists() else []
    found = [json.loads(line)["question"] for line in lines]
    return found or [f"Shop {n} sells {n * 3} apples on day {n} and {n + 7} pears on the next day." for n in range(200)]


def test_pruned_prompt_and_savings_by_lever(tmp_path: Path) -> None:
    optimize = "\n[optimize.prune]\nbudget_tokens = 600\n[optimize.caps]\ndefault_max_tokens = 300\n"
    context = "\n\n".join(problems())
    question = problems()[7].split(".")[0] + ". What is the answer?"
    with FakeUpstream() as up:  # usage counts the words actually received
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=optimize))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                client.chat.completions.create(
                    model="fast", messages=[{"role": "user", "content": f"<context>{context}</context>\n\n{question}"}]
                )
            (row,) = ledger_rows(gw)
            with gw.runtime.ledger.engine.connect() as conn:
                savings = {s.lever: s.savings_nusd for s in conn.execute(select(tables.savings))}
    sent = up.requests[-1].json
    assert sent["max_tokens"] == 300
    sent_text = sent["messages"][0]["content"]
    assert len(sent_text) < len(context) / 2
    assert problems()[7][:40] in sent_text  # the problem the question is about survives
    assert savings["prune"] > 0
    assert row["baseline_cost_nusd"] - row["cost_nusd"] == sum(savings.values())


def test_a_stream_cut_short_is_counted_from_the_prompt_that_was_sent(tmp_path: Path) -> None:
    """No usage came (the stream broke): the tokens are counted offline from the pruned prompt the provider
    received, not from the client's, which would make up a cost and count the pruned tokens twice."""
    optimize = "\n[optimize.prune]\nbudget_tokens = 600\n"
    context = "\n\n".join(problems())
    question = problems()[7].split(".")[0] + ". What is the answer?"
    original = [{"role": "user", "content": f"<context>{context}</context>\n\n{question}"}]
    with FakeUpstream(usage=None) as up:
        up.mode = Fault.drop_mid_stream(after_chunks=3)
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=optimize))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                stream = client.chat.completions.create(model="fast", messages=original, stream=True)  # type: ignore[arg-type]
                with pytest.raises(openai.APIError):
                    for _ in stream:
                        pass
            (row,) = ledger_rows(gw)
    counter = TiktokenCounter()
    sent = prompt_tokens(counter, ChatRequest(up.requests[-1].json, "r"), "gpt-4o-mini")
    client_sent = prompt_tokens(counter, ChatRequest({"model": "fast", "messages": original}, "r"), "gpt-4o-mini")
    assert row["tokens_estimated"] and row["status"] == "error"
    assert row["input_tokens"] == sent < client_sent / 2


CAPS = """
[models.smart]
targets = ["up::gpt-4o"]

[optimize.caps]
max_tokens = 500
default_max_tokens = 200
stop = ["\\n\\nUser:"]

[optimize.models.smart.caps]
max_tokens = 50

[optimize.features.essays.caps]
max_tokens = 2000
"""


def test_caps_per_alias_and_feature_and_default_stop_sequences(tmp_path: Path) -> None:
    with FakeUpstream() as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=CAPS))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                ask = [{"role": "user", "content": "hi"}]
                client.chat.completions.create(model="fast", messages=ask)  # type: ignore[arg-type]
                client.chat.completions.create(model="fast", messages=ask, max_tokens=9000, stop=["END"])  # type: ignore[arg-type]
                client.chat.completions.create(model="smart", messages=ask, max_tokens=9000)  # type: ignore[arg-type]
                client.chat.completions.create(
                    model="smart",
                    messages=ask,  # type: ignore[arg-type]
                    max_completion_tokens=9000,
                    extra_headers={"x-thrifty-feature": "essays"},
                )
    sent = [r.json for r in up.requests]
    assert (sent[0]["max_tokens"], sent[0]["stop"]) == (200, ["\n\nUser:"])  # default cap and stop
    assert (sent[1]["max_tokens"], sent[1]["stop"]) == (500, ["END"])  # ceiling; the client's stop kept
    assert sent[2]["max_tokens"] == 50 and "stop" not in sent[2]  # the alias's table replaces the default
    assert sent[3]["max_completion_tokens"] == 2000  # the feature's wins over the alias's


def test_guards_reserve_for_the_largest_default_cap_the_optimize_stage_may_set(tmp_path: Path) -> None:
    from thrifty.settings import settings_from_dict

    raw: dict[str, object] = {"guards": {"default_max_output_tokens": 4096}}
    assert settings_from_dict(raw, base_dir=tmp_path).reserved_output_tokens() == 4096
    raw["optimize"] = {
        "caps": {"default_max_tokens": 1000},
        "features": {"long": {"caps": {"default_max_tokens": 8000}}},
    }
    assert settings_from_dict(raw, base_dir=tmp_path).reserved_output_tokens() == 8000


@pytest.mark.parametrize("stream", [False, True])
def test_a_hit_on_a_pruned_answer_keeps_the_baseline_of_the_whole_prompt(tmp_path: Path, stream: bool) -> None:
    """The miss paid for the pruned prompt and credited the pruned tokens to ``prune``; the hit saves the whole
    call, so its baseline is the client's whole prompt, as the miss's was."""
    optimize = "\n[cache]\nexact = true\n[optimize.prune]\nbudget_tokens = 600\n"
    context = "\n\n".join(problems())
    question = problems()[7].split(".")[0] + ". What is the answer?"
    messages = [{"role": "user", "content": f"<context>{context}</context>\n\n{question}"}]
    with FakeUpstream() as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=optimize))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                for _ in range(2):
                    answer = client.chat.completions.create(
                        model="fast",
                        messages=messages,  # type: ignore[arg-type]
                        temperature=0,
                        stream=stream,
                        stream_options={"include_usage": True} if stream else openai.NOT_GIVEN,
                    )
                    if stream:
                        list(answer)  # type: ignore[call-overload]
            miss, hit = ledger_rows(gw)
    assert (miss["cache"], hit["cache"]) == ("", "exact")
    assert hit["cost_nusd"] == 0 and miss["cost_nusd"] > 0
    assert hit["baseline_cost_nusd"] == miss["baseline_cost_nusd"] > miss["cost_nusd"] * 3 // 2
