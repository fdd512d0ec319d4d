"""Finish reasons in the ledger and the report of answers cut off by their output cap, on a real gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from fakes.upstream import FakeUpstream
from gateway_harness import config_text, ledger_rows
from thrifty.ledger.cutoffs import CapRule, cutoff_report, percentile, suggest
from thrifty.ledger.writer import SqlLedger
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings
from thrifty.types import LedgerEntry, Principal, Usage


class CutOffUpstream(FakeUpstream):
    """Answers to a prompt that says "long" end as if ``max_tokens`` cut them off: ``finish_reason`` "length"
    (OpenAI), ``stop_reason`` "max_tokens" (Anthropic), streamed or not."""

    async def _respond(self, request: Any, route: Any, body: Any, seq: int, fault: Any) -> Any:
        # The fake's route table holds FakeUpstream's own methods: look them up on this class instead.
        return await super()._respond(request, route and getattr(type(self), route.__name__), body, seq, fault)

    def _chat(self, body: dict[str, Any], seq: int, stream: bool) -> dict[str, Any] | list[bytes]:
        answer = super()._chat(body, seq, stream)
        if not _asks_long(body):
            return answer
        if isinstance(answer, dict):
            answer["choices"][0]["finish_reason"] = "length"
            return answer
        return [frame.replace(b'"finish_reason":"stop"', b'"finish_reason":"length"') for frame in answer]

    def _messages(self, body: dict[str, Any], seq: int, stream: bool) -> dict[str, Any] | list[bytes]:
        answer = super()._messages(body, seq, stream)
        if not _asks_long(body):
            return answer
        if isinstance(answer, dict):
            return {**answer, "stop_reason": "max_tokens"}
        return [frame.replace(b'"stop_reason":"end_turn"', b'"stop_reason":"max_tokens"') for frame in answer]


def _asks_long(body: dict[str, Any]) -> bool:
    return "long" in json.dumps(body.get("messages"))


def thrifty(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "THRIFTY_CONFIG": str(cwd / "thrifty.toml")}
    return subprocess.run(
        [sys.executable, "-m", "thrifty.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


CAPS = """
[cache]
exact = true

[optimize.caps]
default_max_tokens = 1024
"""


@pytest.fixture
def up() -> Iterator[CutOffUpstream]:
    with CutOffUpstream() as upstream:
        yield upstream


def test_cut_off_answers_are_recorded_and_the_report_flags_their_feature(tmp_path: Path, up: CutOffUpstream) -> None:
    (tmp_path / "thrifty.toml").write_text(config_text(up, extra=CAPS))
    with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
        summaries = {"x-thrifty-feature": "summaries"}
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
            for n in range(10):
                long = [{"role": "user", "content": f"a long summary of report {n}"}]
                answer = client.chat.completions.create(
                    model="fast", messages=long, max_tokens=100, temperature=0, extra_headers=summaries
                )
                assert answer.choices[0].finish_reason == "length"
            again = client.chat.completions.with_raw_response.create(
                model="fast", messages=long, max_tokens=100, temperature=0, extra_headers=summaries
            )
            assert again.headers["x-thrifty-cache"] == "miss"  # an answer cut at its cap is never cached
            streamed = list(
                client.chat.completions.create(
                    model="fast",
                    messages=[{"role": "user", "content": "a long summary, streamed"}],
                    max_tokens=100,
                    stream=True,
                    extra_headers=summaries,
                )
            )
            assert streamed[-1].choices[0].finish_reason == "length"
            essay = client.chat.completions.create(
                model="claude",
                messages=[{"role": "user", "content": "a long essay, streamed"}],
                max_tokens=50,
                stream=True,
                extra_headers={"x-thrifty-feature": "essays"},
            )
            assert [c.choices[0].finish_reason for c in essay if c.choices][-1] == "length"
            for n in range(10):
                short = [{"role": "user", "content": f"a short question {n}"}]
                client.chat.completions.create(
                    model="fast", messages=short, extra_headers={"x-thrifty-feature": "chat"}
                )
        with anthropic.Anthropic(base_url=gw.base_url, api_key="x", max_retries=0) as claude:
            message = claude.messages.create(
                model="claude",
                max_tokens=50,
                messages=[{"role": "user", "content": "a long essay"}],
                extra_headers={"x-thrifty-feature": "essays"},
            )
            assert message.stop_reason == "max_tokens"
        rows = ledger_rows(gw)
        metrics = gw.runtime.gateway.metrics.render().decode()

    by_feature: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_feature.setdefault(row["feature"], []).append(row)
    assert len(by_feature["summaries"]) == 12
    assert {(r["finish_reason"], r["max_output_tokens"]) for r in by_feature["summaries"]} == {("length", 100)}
    assert {r["cache"] for r in by_feature["summaries"]} == {""}
    assert any(r["streamed"] for r in by_feature["summaries"])
    # The chat feature sent no max_tokens: the row records the cap sent, [optimize.caps] default_max_tokens.
    assert {(r["finish_reason"], r["max_output_tokens"]) for r in by_feature["chat"]} == {("stop", 1024)}
    assert [(r["finish_reason"], r["max_output_tokens"]) for r in by_feature["essays"]] == [("length", 50)] * 2
    assert 'thrifty_cut_off_answers_total{feature="summaries",model="gpt-4o-mini"} 12.0' in metrics
    assert 'thrifty_cut_off_answers_total{feature="chat"' not in metrics

    result = thrifty("report", "--cutoffs", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = {row["feature"]: row for row in json.loads(result.stdout)["cutoffs"]}
    assert report["summaries"]["answers"] == 12 and report["summaries"]["cut_off_share"] == 1.0
    assert report["summaries"]["max_tokens"] == 100
    assert report["summaries"]["suggestion"] == "raise max_tokens (try 200)"
    # The chat feature sent no max_tokens: the cap in force is [optimize.caps] default_max_tokens, far above them.
    assert report["chat"]["cut_off"] == 0 and report["chat"]["max_tokens"] == 1024
    assert report["chat"]["p95_output_tokens"] == 5
    assert report["chat"]["suggestion"] == "lower max_tokens (try 64)"
    assert report["essays"]["suggestion"].startswith("too few answers")
    text = thrifty("report", "--cutoffs", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    first = text.stdout.splitlines()[2]
    assert first.startswith("summaries") and "100.0%" in first and "raise max_tokens" in first


def test_a_stream_the_budget_stopped_is_recorded_as_such(tmp_path: Path) -> None:
    budget = (
        "\n[guards]\ndefault_max_output_tokens = 20\n"
        '[[budgets]]\nscope = "tenant"\nid = "default"\nusd = 10\nperiod = "day"\n'
    )
    long_answer = " ".join(f"word{n}" for n in range(400))
    with FakeUpstream(reply=lambda body: long_answer) as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=budget))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                chunks = list(
                    client.chat.completions.create(
                        model="fast", messages=[{"role": "user", "content": "hi"}], stream=True
                    )
                )
            (row,) = ledger_rows(gw)
            metrics = gw.runtime.gateway.metrics.render().decode()
    assert chunks[-1].choices[0].finish_reason == "length"  # what the client hears
    assert row["finish_reason"] == "budget"  # what the ledger knows
    assert "thrifty_cut_off_answers_total{" not in metrics
    result = thrifty("report", "--cutoffs", "--json", cwd=tmp_path)
    (report,) = json.loads(result.stdout)["cutoffs"]
    assert report["budget_stops"] == 1 and report["cut_off"] == 0


def answer(
    n: int,
    feature: str,
    output_tokens: int,
    reason: str | None,
    cap: int | None,
    alias: str = "fast",
    model: str = "gpt-4o-mini",
    cache: str = "",
    request_id: str = "",
) -> LedgerEntry:
    return LedgerEntry(
        request_id=request_id or f"req_{feature}_{alias}_{n}",
        started_at=1_764_000_000.0 + n,
        endpoint="chat",
        principal=Principal("acme", "key_1", "u1", feature, "s1"),
        requested_model=alias,
        provider="up",
        model=model,
        usage=Usage(100, output_tokens),
        cost_usd=Decimal("0.0001"),
        baseline_cost_usd=Decimal("0.0001"),
        total_ms=5.0,
        upstream_ms=4.0,
        ttft_ms=None,
        status="ok",
        finish_reason=reason,
        max_output_tokens=cap,
        cache=cache,
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlLedger]:
    url = f"sqlite:///{tmp_path / 'l.sqlite'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    ledger = SqlLedger(url, tmp_path / "journal", 10)
    ledger.start()
    yield ledger
    ledger.close()


def test_report_per_feature_and_model_with_the_cap_in_force(ledger: SqlLedger) -> None:
    for n in range(40):  # 3 of 40 cut off (7.5%) at the client's cap of 500
        ledger.record(answer(n, "qa", 500 if n < 3 else 100 + n, "length" if n < 3 else "stop", 500))
    for n in range(20):  # no cap from the client: the feature's configured limit of 2,000 applies
        ledger.record(answer(n, "tags", 10 + n, "stop", None))
    for n in range(20):  # 1 of 20 cut off: 5%, not above the threshold
        ledger.record(answer(n, "chat", 300 if n == 0 else 200, "length" if n == 0 else "stop", 300))
    ledger.record(answer(99, "qa", 7, None, 500))  # written before finish reasons were recorded: left out
    assert ledger.flush()
    rules = {"tags": CapRule(default_max_tokens=2000)}
    rows = {row.feature: row for row in cutoff_report(ledger.engine, None, CapRule(), rules)}
    assert list(rows) == ["qa", "chat", "tags"]  # most cut off first
    qa, tags, chat = rows["qa"], rows["tags"], rows["chat"]
    assert (qa.answers, qa.cut_off, qa.cap, qa.suggestion) == (40, 3, 500, "raise max_tokens (try 1000)")
    assert (qa.p50_output_tokens, qa.p95_output_tokens) == (122, 500)  # nearest rank: the 20th and 38th of 40
    assert (tags.cap, tags.p95_output_tokens, tags.suggestion) == (2000, 28, "lower max_tokens (try 64)")
    assert (chat.cut_off_share, chat.suggestion) == (0.05, "ok")
    assert cutoff_report(ledger.engine, since=1_764_000_000.0 + 50) == []


PLANS = """
[optimize.caps]
default_max_tokens = 1024

[optimize.models.fast.caps]
default_max_tokens = 300

[optimize.models.claude.caps]
max_tokens = 100

[optimize.features.tags]
hygiene = true
"""
"""The default's caps, an alias's (a default, a ceiling), and a feature whose table has no caps at all."""
CLAUDE = "claude-3-5-haiku-latest"


def record_plans_workload(ledger: SqlLedger) -> None:
    for n in range(20):  # "fast" without a cap from the client: the alias's default of 300, not [optimize]'s 1024
        ledger.record(answer(n, "qa", 40 + n, "stop", None))
    for n in range(12):  # "claude", the client asked 500: the alias's ceiling of 100 applied, and cut them off
        ledger.record(answer(n, "qa", 100, "length", 500, alias="claude", model=CLAUDE))
    for n in range(12):  # the feature's table replaces the alias's: no caps table, no cap
        ledger.record(answer(n, "tags", 30, "stop", None))
    for n in range(12):  # an alias without a table of its own: [optimize]'s default
        ledger.record(answer(n, "search", 30, "stop", None, alias="resilient"))
    for n in range(5):  # history summaries for "qa": the gateway's own call, at its own cap, not the client's
        summary = f"req_qa_fast_{n}.summary"
        ledger.record(answer(n, "qa", 400, "length", 400, request_id=summary))
    ledger.record(answer(90, "qa", 100, "length", 500, alias="claude", model=CLAUDE, cache="exact"))  # counted
    ledger.record(answer(91, "qa", 9, "length", None, cache="semantic"))  # another request's finish: left out
    assert ledger.flush()


def test_caps_come_from_the_plan_the_optimize_stage_chose(
    ledger: SqlLedger, write_config: Any, up: CutOffUpstream
) -> None:
    record_plans_workload(ledger)
    optimize = write_config(config_text(up, extra=PLANS)).optimize

    def rule(o: Any) -> CapRule:
        return CapRule(o.caps.default_max_tokens, o.caps.max_tokens) if o.caps else CapRule()

    features = {name: rule(f) for name, f in optimize.features.items()}
    models = {alias: rule(m) for alias, m in optimize.models.items()}
    rows = {(r.feature, r.model): r for r in cutoff_report(ledger.engine, None, rule(optimize), features, models)}
    fast, claude = rows["qa", "gpt-4o-mini"], rows["qa", CLAUDE]
    assert (fast.answers, fast.cut_off, fast.cap, fast.mixed_caps) == (20, 0, 300, False)  # no summaries in it
    assert fast.suggestion == "lower max_tokens (try 128)"
    assert (claude.answers, claude.cut_off, claude.cap) == (13, 13, 100)
    assert claude.suggestion == "raise max_tokens (try 200)"
    assert rows["tags", "gpt-4o-mini"].cap is None
    assert rows["search", "gpt-4o-mini"].cap == 1024


def test_report_cutoffs_applies_feature_then_alias_then_default_caps(tmp_path: Path, up: CutOffUpstream) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    (tmp_path / "thrifty.toml").write_text(config_text(up, ledger_url=url, extra=PLANS))
    ledger = SqlLedger(url, tmp_path / "journal", 10)
    ledger.start()
    try:
        record_plans_workload(ledger)
    finally:
        ledger.close()
    result = thrifty("report", "--cutoffs", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = {(row["feature"], row["model"]): row for row in json.loads(result.stdout)["cutoffs"]}
    assert (report["qa", "gpt-4o-mini"]["answers"], report["qa", "gpt-4o-mini"]["max_tokens"]) == (20, 300)
    assert report["qa", CLAUDE]["max_tokens"] == 100
    assert report["tags", "gpt-4o-mini"]["max_tokens"] is None
    assert report["search", "gpt-4o-mini"]["max_tokens"] == 1024


def test_cap_rules_and_suggestions() -> None:
    assert CapRule(256, 1024).apply(None) == 256
    assert CapRule(256, 1024).apply(4096) == 1024
    assert CapRule().apply(None) is None
    assert percentile([1, 2, 3, 4], 0.5) == 2 and percentile([], 0.95) == 0
    assert suggest(100, 0.2, None, 4000).startswith("cut off with no cap")
    assert suggest(100, 0.0, 1000, 300) == "ok"
    assert suggest(5, 0.9, 100, 100).startswith("too few")
