"""Structured output: schema fields the client never reads and long property names, found, measured on real
answers through a gateway, exported as metrics, and priced per 1,000 calls by ``thrifty lint --schema``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import func, select

from fakes.upstream import FakeUpstream
from gateway_harness import config_text, ledger_rows
from thrifty.ledger import tables
from thrifty.observe.metrics import GatewayMetrics
from thrifty.optimizers.structured import (
    MAX_NODES,
    StructuredRule,
    StructuredWatch,
    estimate,
    find,
    measure,
    properties,
    response_schema,
)
from thrifty.pricing import CatalogPricer
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings
from thrifty.tokens import TiktokenCounter
from thrifty.types import Cost, LedgerEntry, Payload, Principal, Target, Usage

MODEL = "gpt-4o-mini"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "price": {"type": "number"},
        "internal_reasoning_notes": {"type": "string"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}},
    },
    "$defs": {
        "item": {
            "type": "object",
            "properties": {"sku": {"type": "string"}, "unit_price_including_vat": {"type": "number"}},
        }
    },
}
READ = ("name", "price", "items.unit_price_including_vat", "address.city")
ANSWER: dict[str, Any] = {
    "name": "Desk lamp",
    "price": 39.5,
    "internal_reasoning_notes": "The cheapest lamp in stock, chosen over the floor lamp.",
    "items": [{"sku": "LMP-001", "unit_price_including_vat": 39.5}, {"sku": "LMP-002", "unit_price_including_vat": 4}],
    "address": {"city": "Leeds", "zip": "LS1 4AP"},
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "product", "schema": SCHEMA}}


def test_unread_fields_and_long_names_are_found_in_nested_schemas() -> None:
    counter = TiktokenCounter()
    findings = find(SCHEMA, StructuredRule(READ, max_name_tokens=3), counter, MODEL)
    assert findings.unused == ("internal_reasoning_notes", "items.sku", "address.zip")
    long = dict(findings.long_names)
    assert list(long) == ["unit_price_including_vat"]  # an unread long name is reported as unread, not as long
    assert long["unit_price_including_vat"] == counter.count_text(MODEL, "unit_price_including_vat") > 3
    everything_read = find(SCHEMA, StructuredRule(None, max_name_tokens=10), counter, MODEL)
    assert not everything_read  # no declared list and no name over 10 tokens: nothing to say
    assert response_schema({"response_format": RESPONSE_FORMAT}) == SCHEMA
    assert response_schema({"response_format": {"type": "json_object"}}) is None


def test_answers_are_measured_field_by_field() -> None:
    counter = TiktokenCounter()
    findings = find(SCHEMA, StructuredRule(READ), counter, MODEL)
    cost = measure(ANSWER, findings, counter, MODEL)
    one_item = measure({**ANSWER, "items": ANSWER["items"][:1]}, findings, counter, MODEL)
    notes = json.dumps({"internal_reasoning_notes": ANSWER["internal_reasoning_notes"]})[1:-1]
    assert cost.unused["internal_reasoning_notes"] == counter.count_text(MODEL, notes) > 10
    assert cost.unused["items.sku"] == 2 * one_item.unused["items.sku"] > 0  # every array item pays again
    assert cost.unused["address.zip"] > 0
    extra = dict(findings.long_names)["unit_price_including_vat"] - 1
    assert cost.long_names == {"unit_price_including_vat": 2 * extra}
    assert measure({"name": "x"}, findings, counter, MODEL).unused_tokens == 0


def test_the_gateway_warns_once_and_counts_the_tokens_answers_waste(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    structured = f"\n[optimize.features.catalog.structured]\nread_fields = {json.dumps(list(READ))}\n"
    with FakeUpstream(reply=lambda body: json.dumps(ANSWER)) as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=structured))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw, caplog.at_level(logging.WARNING):
            headers = {"x-thrifty-feature": "catalog"}
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                for n in range(2):
                    messages = [{"role": "user", "content": f"which lamp? {n}"}]
                    client.chat.completions.create(
                        model="fast", messages=messages, response_format=RESPONSE_FORMAT, extra_headers=headers
                    )
                stream = client.chat.completions.create(
                    model="fast",
                    messages=[{"role": "user", "content": "which lamp, streamed?"}],
                    response_format=RESPONSE_FORMAT,
                    stream=True,
                    extra_headers=headers,
                )
                assert json.loads("".join(c.choices[0].delta.content or "" for c in stream if c.choices)) == ANSWER
                client.chat.completions.create(  # another feature: not watched
                    model="fast", messages=[{"role": "user", "content": "hi"}], response_format=RESPONSE_FORMAT
                )
            rows = ledger_rows(gw)
            metrics = gw.runtime.gateway.metrics.render().decode()
            with gw.runtime.ledger.engine.connect() as conn:
                stored = conn.execute(select(func.count()).select_from(tables.payloads)).scalar_one()
    assert len(rows) == 4
    counter = TiktokenCounter()
    per_answer = measure(ANSWER, find(SCHEMA, StructuredRule(READ), counter, MODEL), counter, MODEL)
    assert per_answer.unused_tokens > 0
    unused = 'thrifty_structured_waste_tokens_total{feature="catalog",kind="unused_field",model="gpt-4o-mini"}'
    assert f"{unused} {3.0 * per_answer.unused_tokens}" in metrics
    long = 'thrifty_structured_waste_tokens_total{feature="catalog",kind="long_name",model="gpt-4o-mini"}'
    assert f"{long} {3.0 * per_answer.long_name_tokens}" in metrics
    assert 'thrifty_structured_waste_usd_total{feature="catalog",kind="unused_field"' in metrics
    assert 'feature=""' not in metrics.split("thrifty_structured_waste_tokens_total", 1)[1].split("# HELP", 1)[0]
    warnings = [r.getMessage() for r in caplog.records if r.name == "thrifty.structured"]
    assert (
        len(warnings) == 1 and "internal_reasoning_notes" in warnings[0] and "unit_price_including_vat" in warnings[0]
    )
    assert stored == 0  # answers were read in-process for the watch, never stored: capture_payloads is off


def test_lint_schema_prices_the_waste_per_1000_calls(tmp_path: Path) -> None:
    (tmp_path / "schema.json").write_text(json.dumps(RESPONSE_FORMAT))
    (tmp_path / "answers.jsonl").write_text(json.dumps(ANSWER) + "\n" + json.dumps(ANSWER) + "\n")
    env = {**os.environ, "THRIFTY_CONFIG": str(tmp_path / "absent.toml")}
    base = [sys.executable, "-m", "thrifty.cli", "lint", "--schema", "schema.json", "--model", "gpt-4o"]
    read = ["--read-fields", ",".join(READ)]
    run = subprocess.run(
        [*base, *read, "--answers", "answers.jsonl"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    counter = TiktokenCounter()
    cost = measure(ANSWER, find(SCHEMA, StructuredRule(READ), counter, "gpt-4o"), counter, "gpt-4o")
    total = cost.unused_tokens + cost.long_name_tokens
    assert "output at $10.00 per million tokens" in run.stdout
    assert f"total: {total:.1f} output tokens per answer, ${total * 10 / 1000:.4f} per 1,000 calls" in run.stdout
    assert "mean over 2 sample answers" in run.stdout
    lines = {line.split()[0]: line for line in run.stdout.splitlines()[3:-1]}
    assert set(lines) == {"internal_reasoning_notes", "items.sku", "address.zip", "unit_price_including_vat"}
    assert "unused field" in lines["items.sku"] and "long name" in lines["unit_price_including_vat"]
    estimated = subprocess.run([*base, *read], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert estimated.returncode == 0 and "estimated from the schema" in estimated.stdout
    nothing = subprocess.run([*base, "--max-name-tokens", "20"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "no findings (give --read-fields to find unused)" in nothing.stdout


def test_the_rule_comes_from_the_feature_config_unless_given(write_config: Any) -> None:
    from thrifty.errors import ConfigError
    from thrifty.lint import structured_rule

    settings = write_config(
        '[optimize.structured]\nread_fields = ["name"]\n'
        '[optimize.features.catalog.structured]\nread_fields = ["name", "price"]\nmax_name_tokens = 5\n'
    )
    assert structured_rule(settings, None, None, None) == StructuredRule(("name",), 3)
    assert structured_rule(settings, "catalog", None, None) == StructuredRule(("name", "price"), 5)
    assert structured_rule(settings, "catalog", "sku, qty", 2) == StructuredRule(("sku", "qty"), 2)
    assert structured_rule(None, None, None, None) == StructuredRule(None, 3)
    with pytest.raises(ConfigError, match=r"unknown key .optimize\.structured\.read_field."):
        write_config('[optimize.structured]\nread_field = ["name"]\n')


BAD_SCHEMAS: list[Any] = [
    {"type": "object", "properties": ["a"]},
    {"type": "object", "properties": {"a": "string", "b": None, "c": {"type": "string"}}},
    {"type": "object", "properties": {"xs": {"type": "array", "items": [{"type": "string"}], "minItems": "two"}}},
    {"anyOf": {"properties": {"a": {}}}, "oneOf": 3, "allOf": ["x", None]},
    {"properties": {"a": {"$ref": 7}, "b": {"$ref": "#/$defs/missing"}, "c": {"$ref": "#/$defs/x/y"}}, "$defs": []},
    {"properties": {"e": {"enum": "abc"}, "f": {"enum": [], "const": "x"}, "g": {"type": ["null"], "maxLength": -4}}},
]


@pytest.mark.parametrize("schema", BAD_SCHEMAS)
def test_schemas_of_the_wrong_shape_are_skipped_where_they_are_wrong(schema: Any) -> None:
    counter = TiktokenCounter()
    findings = find(schema, StructuredRule(("zzz",)), counter, MODEL)
    assert estimate(schema, findings, counter, MODEL).unused_tokens >= 0
    assert measure({"a": 1, "c": "x", "xs": ["y"]}, findings, counter, MODEL).unused_tokens >= 0
    assert response_schema({"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}) == schema


def test_what_is_not_a_json_schema_object_asks_for_no_schema() -> None:
    for spec in ("oops", ["a"], None, {"schema": ["a"]}, {"schema": "x"}):
        assert response_schema({"response_format": {"type": "json_schema", "json_schema": spec}}) is None


def _bad_schema_request(client: openai.OpenAI, json_schema: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="fast",
        messages=[{"role": "user", "content": "which lamp?"}],
        response_format={"type": "json_schema", "json_schema": json_schema},
        extra_headers={"x-thrifty-feature": "catalog"},
    )


def test_a_schema_the_upstream_accepted_but_we_cannot_read_still_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The watch runs after the answer was paid for and recorded: the client gets it, whatever the schema."""
    structured = f"\n[optimize.features.catalog.structured]\nread_fields = {json.dumps(list(READ))}\n"
    with FakeUpstream(reply=lambda body: json.dumps(ANSWER)) as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=structured))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw, caplog.at_level(logging.WARNING):
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                for bad in BAD_SCHEMAS:
                    answer = _bad_schema_request(client, {"name": "product", "schema": bad})
                    assert answer.status_code == 200 and json.loads(answer.parse().choices[0].message.content) == ANSWER
                for wrapper in ("product", ["a"]):
                    assert _bad_schema_request(client, wrapper).status_code == 200
            rows = ledger_rows(gw)
    assert len(rows) == len(BAD_SCHEMAS) + 2 and {r["status"] for r in rows} == {"ok"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # skipped where wrong, not failed


class BrokenPricer:
    """A pricer that fails: whatever goes wrong inside the watch stays inside it."""

    def __init__(self) -> None:
        self.calls = 0

    def cost(self, target: Target, usage: Usage) -> Cost:
        self.calls += 1
        raise RuntimeError("price list unreadable")


def test_the_watch_never_raises_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    pricer = BrokenPricer()
    watch = StructuredWatch(StructuredRule(READ), {}, TiktokenCounter(), pricer, GatewayMetrics())
    entry = LedgerEntry(
        request_id="req_1",
        started_at=1_764_000_000.0,
        endpoint="chat",
        principal=Principal("acme", "key_1", "u1", "catalog", "s1"),
        requested_model="fast",
        provider="up",
        model=MODEL,
        usage=Usage(100, 80),
        cost_usd=Decimal("0.0001"),
        baseline_cost_usd=Decimal("0.0001"),
        total_ms=5.0,
        upstream_ms=4.0,
        ttft_ms=None,
        status="ok",
        payload=Payload({"response_format": RESPONSE_FORMAT}, json.dumps(ANSWER)),
    )
    with caplog.at_level(logging.WARNING, logger="thrifty.structured"):
        watch(entry)
        watch(entry)
    assert pricer.calls == 2
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1 and "req_1" in failures[0].getMessage() and failures[0].exc_info is not None


def tree(fan_out: int, *extra_defs: str) -> dict[str, Any]:
    """A recursive schema: a node whose ``fan_out`` children are nodes again (and nodes of ``extra_defs``, which
    point back at it), as a tree, a comment thread or a category hierarchy is written."""
    children = {f"child_{n}": {"$ref": "#/$defs/node"} for n in range(fan_out)}
    children |= {f"other_{name}": {"$ref": f"#/$defs/{name}"} for name in extra_defs}
    node = {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "debug_trace": {"type": "string"},
            "replies": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            **children,
        },
    }
    defs: dict[str, Any] = {"node": node}
    for name in extra_defs:  # each points at every definition: paths through them are permutations
        refs = {f"to_{other}": {"$ref": f"#/$defs/{other}"} for other in ("node", *extra_defs)}
        defs[name] = {"type": "object", "properties": {"label": {"type": "string"}, **refs}}
    return {"$ref": "#/$defs/node", "$defs": defs}


def test_recursive_schemas_are_walked_once_per_path_and_quickly() -> None:
    counter = TiktokenCounter()
    read = ("title", "replies", "child_0", "child_1", "child_2")
    started = time.perf_counter()
    findings = find(tree(3), StructuredRule(read), counter, MODEL)
    elapsed = time.perf_counter() - started
    assert [path for path, _, _ in properties(tree(3))] == ["title", "debug_trace", "replies", *read[2:]]
    assert findings.unused == ("debug_trace",)  # a child is a node: "child_0" read means all of it is
    assert elapsed < 1.0  # it took 2.8 s (2.6 million properties) when each recursion ran to depth 12
    answer = {"title": "a", "debug_trace": "x" * 40, "child_0": {"title": "b", "debug_trace": "y"}}
    assert measure(answer, findings, counter, MODEL).unused_tokens > 10
    assert estimate(tree(3), findings, counter, MODEL).unused_tokens > 0


def test_mutually_recursive_definitions_stop_at_the_node_budget() -> None:
    schema = tree(3, *(f"def_{n}" for n in range(8)))  # 9 definitions all pointing at each other: 9! paths
    started = time.perf_counter()
    found = list(properties(schema))
    counter = TiktokenCounter()
    findings = find(schema, StructuredRule(("title",)), counter, MODEL)
    assert estimate(schema, findings, counter, MODEL).unused_tokens > 0  # thrifty lint --schema, estimated
    assert time.perf_counter() - started < 2.0
    assert MAX_NODES // 4 < len(found) < MAX_NODES  # stopped by the budget, not by running out of paths
    assert findings.unused[:2] == ("debug_trace", "replies")


def test_rules_are_picked_like_optimize_plans_feature_then_alias_then_default() -> None:
    default, by_alias, by_feature = StructuredRule(("a",)), StructuredRule(("b",)), StructuredRule(("c",))
    watch = StructuredWatch(
        default,
        {"catalog": by_feature, "plain": None},
        TiktokenCounter(),
        CatalogPricer(),
        GatewayMetrics(),
        {"smart": by_alias},
    )
    assert watch.rule_for("catalog", "smart") is by_feature
    assert watch.rule_for("plain", "smart") is None  # a feature's table without [structured] turns it off
    assert watch.rule_for("other", "smart") is by_alias
    assert watch.rule_for("other", "fast") is default
