from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from thrifty.workload import (
    ModelAnswer,
    ReplayIndex,
    WorkloadRecord,
    demo_workload_path,
    message_text,
    read_workload,
    write_workload,
)

REPO = Path(__file__).resolve().parent.parent
DATASETS = REPO.parent / "shared" / "datasets"
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
FEATURES = {"math-tutor": 1050, "chat-assistant": 450, "quiz": 750, "docs-faq": 750}

needs_datasets = pytest.mark.skipif(not DATASETS.is_dir(), reason=f"evaluation data not at {DATASETS}")


@pytest.fixture(scope="module")
def demo() -> list[WorkloadRecord]:
    return read_workload(demo_workload_path())


def user_texts(record: WorkloadRecord) -> list[str]:
    return [message_text(m) for m in record.messages if m["role"] == "user"]


def by_feature(records: list[WorkloadRecord], feature: str) -> list[WorkloadRecord]:
    return [r for r in records if r.feature == feature]


def test_bundled_workload_loads_in_time_order(demo: list[WorkloadRecord]) -> None:
    assert [r.id for r in demo] == [f"w{i:05d}" for i in range(1, 3001)]
    times = [r.t_s for r in demo]
    assert times == sorted(times)
    assert times[0] >= 0
    assert 3300 < times[-1] < 4000
    assert {r.tenant for r in demo} == {"acme", "globex", "default"}
    assert 30 <= len({r.user for r in demo}) <= 50


def test_counts_per_feature(demo: list[WorkloadRecord]) -> None:
    assert Counter(r.feature for r in demo) == FEATURES
    sources = {r.feature: r.source for r in demo}
    assert sources == {
        "math-tutor": "gsm8k",
        "chat-assistant": "mt_bench",
        "quiz": "mmlu",
        "docs-faq": "gptcache",
    }


def test_strong_model_requested_with_one_system_prompt_per_feature(demo: list[WorkloadRecord]) -> None:
    assert {r.request["model"] for r in demo} == {STRONG}
    for feature in FEATURES:
        prompts = {(r.messages[0]["role"], r.messages[0]["content"]) for r in by_feature(demo, feature)}
        assert len(prompts) == 1
        assert next(iter(prompts))[0] == "system"


def test_answers_carry_what_the_sources_recorded(demo: list[WorkloadRecord]) -> None:
    for record in demo:
        if record.feature == "docs-faq":
            assert record.answers == {}
            continue
        assert set(record.answers) == {STRONG, WEAK}
        for answer in record.answers.values():
            assert answer.quality is not None
            assert 0.0 <= answer.quality <= 1.0
            if record.feature == "quiz":
                assert answer.text is None
                assert answer.output_tokens is None
            else:
                assert answer.text
                assert answer.output_tokens
                assert answer.output_tokens > 0


def test_strong_model_answers_better_on_average(demo: list[WorkloadRecord]) -> None:
    for feature in ("math-tutor", "chat-assistant", "quiz"):
        records = by_feature(demo, feature)
        strong = sum(r.answers[STRONG].quality or 0.0 for r in records)
        weak = sum(r.answers[WEAK].quality or 0.0 for r in records)
        assert strong > weak


def test_chat_sessions_are_two_turns_continuing_the_strong_answer(demo: list[WorkloadRecord]) -> None:
    sessions: dict[str, list[WorkloadRecord]] = defaultdict(list)
    for record in by_feature(demo, "chat-assistant"):
        sessions[record.session].append(record)
    assert len(sessions) == 225
    for first, second in sessions.values():
        assert first.group.endswith("/1")
        assert second.group.endswith("/2")
        assert first.t_s < second.t_s
        assert [m["role"] for m in second.messages] == ["system", "user", "assistant", "user"]
        assert second.messages[1] == first.messages[1]
        assert second.messages[2]["content"] == first.answers[STRONG].text


@needs_datasets
def test_no_contaminated_prompt_is_replayed(demo: list[WorkloadRecord]) -> None:
    contaminated = set()
    for benchmark in ("gsm8k", "mmlu", "mt_bench"):
        path = DATASETS / "routellm" / benchmark / "contaminated_prompts.jsonl"
        contaminated |= {json.loads(line)["eval_prompt"] for line in path.read_text().splitlines()}
    assert len(contaminated) == 25
    assert not {text for r in demo for text in user_texts(r)} & contaminated


@needs_datasets
def test_nothing_comes_from_the_non_commercial_qqp_pairs(demo: list[WorkloadRecord]) -> None:
    qqp = json.loads((DATASETS / "gptcache" / "similiar_qqp_full.json").read_text())
    qqp_texts = {pair[side] for pair in qqp for side in ("text_a", "text_b")}
    assert not {text for r in demo for text in user_texts(r)} & qqp_texts


def test_popular_questions_repeat_and_the_tail_is_long(demo: list[WorkloadRecord]) -> None:
    for feature in FEATURES:
        counts = Counter(r.group for r in by_feature(demo, feature))
        assert counts.most_common(1)[0][1] >= 15
        singletons = sum(1 for n in counts.values() if n == 1)
        assert singletons >= 0.3 * len(counts)


def test_docs_faq_paraphrases_share_a_group(demo: list[WorkloadRecord]) -> None:
    texts: dict[str, set[str]] = defaultdict(set)
    for record in by_feature(demo, "docs-faq"):
        texts[record.group].add(user_texts(record)[-1])
    assert sum(1 for variants in texts.values() if len(variants) >= 2) >= 30
    owners = Counter(text for variants in texts.values() for text in variants)
    assert max(owners.values()) == 1


@needs_datasets
def test_the_bundled_file_is_what_the_script_builds(tmp_path: Path) -> None:
    out = tmp_path / "demo.jsonl.gz"
    script = REPO / "scripts" / "build_demo_workload.py"
    command = [sys.executable, str(script), "--datasets", str(DATASETS), "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True)
    assert gzip.decompress(out.read_bytes()) == gzip.decompress(demo_workload_path().read_bytes())


def make_record(rid: str, messages: list[dict[str, Any]], group: str) -> WorkloadRecord:
    return WorkloadRecord(
        id=rid,
        t_s=1.5,
        tenant="acme",
        user="u01",
        feature="chat-assistant",
        session="s0001",
        request={"model": STRONG, "messages": messages},
        group=group,
        source="test",
        answers={STRONG: ModelAnswer("answer " + group, 3, 1.0), WEAK: ModelAnswer(None, None, 0.0)},
    )


def test_replay_finds_every_demo_request_exactly(demo: list[WorkloadRecord]) -> None:
    index = ReplayIndex(demo)
    for wanted in demo:
        found = index.lookup(wanted.messages)
        assert found is not None
        assert (found.group, found.answers) == (wanted.group, wanted.answers)


def test_replay_finds_a_turn_whose_history_was_summarized_or_pruned(demo: list[WorkloadRecord]) -> None:
    index = ReplayIndex(demo)
    turn2 = next(r for r in demo if r.group.endswith("/2"))
    system, first, _, last = turn2.messages
    summarized = [
        {"role": "system", "content": "Be brief."},
        first,
        {"role": "assistant", "content": "(summary of the earlier answer)"},
        last,
    ]
    pruned = [system, last]
    for messages in (summarized, pruned):
        found = index.lookup(messages)
        assert found is not None
        assert found.group == turn2.group


def test_replay_reads_text_parts_like_plain_content(demo: list[WorkloadRecord]) -> None:
    index = ReplayIndex(demo)
    wanted = demo[0]
    parts = [
        {
            **m,
            "content": [
                {"type": "text", "text": m["content"][:5]},
                {"type": "text", "text": m["content"][5:]},
            ],
        }
        for m in wanted.messages
    ]
    found = index.lookup(parts)
    assert found is not None
    assert found.group == wanted.group


def test_replay_never_guesses(demo: list[WorkloadRecord]) -> None:
    index = ReplayIndex(demo)
    assert index.lookup([{"role": "user", "content": "What is the airspeed of an unladen swallow?"}]) is None
    faq = next(r for r in demo if r.feature == "docs-faq")
    reworded = user_texts(faq)[-1].replace(" ", "  ", 1) + " Please."
    assert index.lookup([{"role": "user", "content": reworded}]) is None
    assert index.lookup([]) is None


def test_replay_refuses_an_ambiguous_fallback() -> None:
    shared = {"role": "user", "content": "And in French?"}
    index = ReplayIndex(
        [
            make_record("w1", [{"role": "user", "content": "Say hello."}, shared], "a"),
            make_record("w2", [{"role": "user", "content": "Say goodbye."}, shared], "b"),
        ]
    )
    assert index.lookup([{"role": "user", "content": "Say hello."}, shared]) is not None
    assert index.lookup([{"role": "user", "content": "Greet me."}, shared]) is None
    assert len(index) == 2


@pytest.mark.parametrize("name", ["w.jsonl", "w.jsonl.gz"])
def test_write_then_read_round_trips(tmp_path: Path, name: str) -> None:
    records = [
        make_record("w1", [{"role": "user", "content": "Héllo ✓"}], "g/1"),
        make_record("w2", [{"role": "system", "content": "x"}, {"role": "user", "content": "y\nz"}], "g/2"),
    ]
    path = tmp_path / name
    write_workload(path, records)
    assert read_workload(path) == records


def test_a_bad_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    write_workload(path, [make_record("w1", [{"role": "user", "content": "hi"}], "g")])
    good = path.read_text()
    path.write_text(good + "\n" + good.replace('"t_s":1.5', '"t_s":"soon"') + "{not json\n")
    with pytest.raises(ValueError, match=r"line 3: field 't_s' has the wrong type"):
        read_workload(path)
    path.write_text(good + "{not json\n")
    with pytest.raises(ValueError, match="line 2"):
        read_workload(path)
    path.write_text(good.replace('"group":"g",', ""))
    with pytest.raises(ValueError, match="line 1: missing field 'group'"):
        read_workload(path)


def test_a_simulation_shares_nothing_with_the_gateway_whose_config_it_copies(tmp_path: Path) -> None:
    """Replayed answers must not reach a shared cache real users read, replayed traffic must not spend real
    tenants' shared rate limits, and no alert may leave."""
    from thrifty.settings import settings_from_dict
    from thrifty.simulate import sandboxed

    summarize = {"after_tokens": 100, "model": "fast", "store": "redis"}
    live = settings_from_dict(
        {
            "providers": {"up": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "models": {"fast": {"targets": ["up::gpt-4o-mini"]}},
            "cache": {"exact": True, "store": "redis", "url": "redis://127.0.0.1:6379/0", "semantic_store": "pgvector"},
            "guards": {"store": "redis", "url": "redis://127.0.0.1:6379/0"},
            "alerts": {"webhooks": ["http://127.0.0.1:9/hook"], "slack_webhooks": ["http://127.0.0.1:9/slack"]},
            "optimize": {"summarize": summarize, "features": {"chat": {"summarize": summarize}}},
            "otel": True,
        },
        base_dir=tmp_path,
        source="test",
    )
    sim = sandboxed(live, tmp_path / "sim")
    assert (sim.cache.store, sim.cache.semantic_store, sim.guards.store) == ("memory", "memory", "memory")
    assert sim.alerts.webhooks == sim.alerts.slack_webhooks == [] and not sim.otel
    summaries = [sim.optimize.summarize, sim.optimize.features["chat"].summarize]
    assert [s.store for s in summaries if s is not None] == ["memory", "memory"]
    assert sim.ledger.url.endswith("sim/ledger.sqlite") and sim.cache.exact  # the policy itself is kept
    assert live.cache.store == "redis" and live.alerts.webhooks  # the config it came from is untouched


async def test_replay_bills_the_prompt_as_sent_and_cuts_an_answer_at_the_policys_cap(tmp_path: Path) -> None:
    """A replayed call must cost what the new policy's call would: tool definitions are prompt tokens, and an
    answer longer than the cap the policy sends is stopped there (finish_reason length)."""
    from thrifty.providers.replay import ReplayProvider
    from thrifty.tokens import TiktokenCounter
    from thrifty.types import ChatRequest

    messages = [{"role": "user", "content": "Describe the weather in Paris."}]
    record = replace(
        make_record("w1", messages, "g"),
        answers={STRONG: ModelAnswer(" ".join(["word"] * 120), 120, 1.0)},
    )
    write_workload(tmp_path / "w.jsonl", [record])
    provider = ReplayProvider("rec", tmp_path / "w.jsonl", TiktokenCounter())
    tool = {"type": "function", "function": {"name": "lookup_weather", "description": "Forecast. " * 50}}
    plain = await provider.chat(ChatRequest({"model": STRONG, "messages": messages}, "r1"), STRONG)
    tooled = await provider.chat(ChatRequest({"model": STRONG, "messages": messages, "tools": [tool]}, "r2"), STRONG)
    capped = await provider.chat(ChatRequest({"model": STRONG, "messages": messages, "max_tokens": 30}, "r3"), STRONG)
    assert plain.usage is not None and tooled.usage is not None and capped.usage is not None
    assert tooled.usage.input_tokens > plain.usage.input_tokens + 90  # the tool's description is billed
    assert (plain.usage.output_tokens, plain.body["choices"][0]["finish_reason"]) == (120, "stop")
    assert (capped.usage.output_tokens, capped.body["choices"][0]["finish_reason"]) == (30, "length")
    assert len(capped.body["choices"][0]["message"]["content"].split()) == 30
