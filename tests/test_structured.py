"""Structured output: schema fields the client never reads and long property names, found, measured on real
answers through a gateway, exported as metrics, and priced per 1,000 calls by ``thrifty lint --schema``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import func, select

from fakes.upstream import FakeUpstream
from gateway_harness import config_text, ledger_rows
from thrifty.ledger import tables
from thrifty.optimizers.structured import StructuredRule, find, measure, response_schema
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings
from thrifty.tokens import TiktokenCounter

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
