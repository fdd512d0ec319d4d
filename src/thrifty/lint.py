"""``thrifty lint PROMPT_FILE``: what a prompt costs on every call, and what breaks provider prompt caching.

The file is a system prompt as plain text, or JSON: a list of messages or a whole request body (with tools).
Nothing is changed; each finding says what fixing it would save per 1,000 calls at the model's input price.

``thrifty lint --schema SCHEMA.json``: the output tokens a JSON schema spends on fields the client never reads
and on long property names, per 1,000 calls at the model's output price; measured on sample answers when given
(``--answers``), else estimated from the schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from thrifty.caches.prompt_cache import lint_prefix, min_cacheable_tokens, tool_order_changes
from thrifty.errors import BadRequest
from thrifty.optimizers.hygiene import lint_prompt
from thrifty.optimizers.structured import (
    FieldCost,
    StructuredRule,
    estimate,
    find,
    measure,
    parse_answer,
    response_schema,
)
from thrifty.pricing import CatalogPricer
from thrifty.render import table
from thrifty.settings import Settings, StructuredSettings
from thrifty.tokens import TiktokenCounter, text_of
from thrifty.types import Target, Usage


@dataclass(frozen=True)
class PromptRequest:
    messages: list[dict[str, Any]]
    tools: list[Any]
    system: Any = None
    """An Anthropic body's top-level ``system``."""


def load_prompt(path: Path) -> list[PromptRequest]:
    """A system prompt as plain text; or JSON: a list of messages, a request body, or several bodies (a JSON list
    of them, or one a line), whose tools' orders are compared."""
    text = path.read_text(encoding="utf-8")
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError:
        bodies = _json_lines(text)
        return [_request(b) for b in bodies] if bodies else [PromptRequest([{"role": "system", "content": text}], [])]
    if isinstance(loaded, dict):
        return [_request(loaded)]
    if isinstance(loaded, list) and loaded and all(isinstance(b, dict) and "messages" in b for b in loaded):
        return [_request(b) for b in loaded]
    if isinstance(loaded, list):
        return [PromptRequest(loaded, [])]
    return [PromptRequest([{"role": "system", "content": text}], [])]


def _json_lines(text: str) -> list[dict[str, Any]]:
    bodies = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            body = json.loads(line)
        except json.JSONDecodeError:
            return []
        if not isinstance(body, dict) or "messages" not in body:
            return []
        bodies.append(body)
    return bodies


def _request(body: dict[str, Any]) -> PromptRequest:
    return PromptRequest(list(body.get("messages") or []), list(body.get("tools") or []), body.get("system"))


def lint_file(path: Path, target: Target, pricer: CatalogPricer) -> str:
    requests = load_prompt(path)
    messages, first = requests[0].messages, requests[0]
    per_mtok = pricer.cost(target, Usage(1_000_000, 0)).usd
    parts = [text_of(first.system)] if first.system else []
    parts += [text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    system = "\n\n".join(parts)
    known = f"${per_mtok} per million tokens" if per_mtok is not None else "no known price (costs not shown)"
    lines = [f"{path}: {target.model}, input at {known}"]
    findings = lint_prompt(system, target.model, per_mtok or Decimal(0), TiktokenCounter()) if system else []
    if findings:

        def per_1k(usd: Decimal) -> str:
            return "unpriced" if per_mtok is None else f"${usd:.4f}"

        rows = [[f.rule, f.tokens, per_1k(f.usd_per_1k_calls), f.message, f.excerpt] for f in findings]
        lines.append(table(["finding", "tokens/call", "per 1k calls", "what", "excerpt"], rows))
    prefix = lint_prefix(messages, first.system) + tool_order_changes([r.tools for r in requests])
    if prefix:
        lines.append("\nBreaks provider prompt caching (keep the start of the prompt identical between calls):")
        for f in prefix:
            at = "" if f.at is None else f" at character {f.at}"
            lines.append(f"  {f.where}: {f.what}{at}: ...{f.excerpt}...")
        counter, minimum = TiktokenCounter(), min_cacheable_tokens(target.model)
        before = messages[:-1] if len(messages) > 1 else messages  # as lint_prefix reads it
        stable = sum(counter.count_text(target.model, text_of(m.get("content"))) for m in before)
        stable += counter.count_text(target.model, text_of(first.system)) if first.system else 0
        if stable < minimum:
            lines.append(
                f"  (the prompt before the last turn is {stable} tokens, under the {minimum} a provider caches: "
                "none of this costs anything until it grows)"
            )
    if not findings and not prefix:
        lines.append("no findings")
    return "\n".join(lines)


def structured_rule(
    settings: Settings | None, feature: str | None, read_fields: str | None, max_name_tokens: int | None
) -> StructuredRule:
    """``--read-fields`` and ``--max-name-tokens``, else the config's ``[optimize.structured]`` (of ``--feature``)."""
    optimize = settings.optimize if settings is not None else None
    chosen = optimize.features.get(feature, optimize) if optimize is not None and feature else optimize
    configured = chosen.structured if chosen is not None else None
    read = configured.read_fields if configured is not None else None
    if read_fields is not None:
        read = [name.strip() for name in read_fields.split(",") if name.strip()]
    default = configured or StructuredSettings()
    return StructuredRule(None if read is None else tuple(read), max_name_tokens or default.max_name_tokens)


def load_schema(path: Path) -> dict[str, Any]:
    """A bare JSON schema, an OpenAI ``json_schema`` object (``{"name", "schema"}``), a whole ``response_format``,
    or a request body carrying one."""
    loaded = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(loaded, dict):
        raise BadRequest(f"{path}: not a JSON object")
    for candidate in (loaded, {"response_format": loaded}, {"response_format": {"type": "json_schema", **loaded}}):
        schema = response_schema(candidate)
        if schema is not None:
            return schema
    if isinstance(loaded.get("schema"), dict):
        return dict(loaded["schema"])
    return loaded


def load_answers(path: Path) -> list[Any]:
    """Sample answers: one JSON value, a JSON list of them, or JSON lines."""
    text = path.read_text(encoding="utf-8")
    whole = parse_answer(text)
    if isinstance(whole, list):
        return whole
    if whole is not None:
        return [whole]
    return [a for a in (parse_answer(line) for line in text.splitlines() if line.strip()) if a is not None]


def lint_schema(
    path: Path, target: Target, pricer: CatalogPricer, rule: StructuredRule, answers_path: Path | None = None
) -> str:
    schema, counter = load_schema(path), TiktokenCounter()
    per_mtok = pricer.cost(target, Usage(0, 1_000_000)).usd
    findings = find(schema, rule, counter, target.model)
    price = f"${per_mtok} per million tokens" if per_mtok is not None else "no known price"
    lines = [f"{path}: {target.model}, output at {price}, schema {findings.fingerprint}"]
    if not findings:
        lines.append("no findings" + ("" if rule.read_fields is not None else " (give --read-fields to find unused)"))
        return "\n".join(lines)
    answers = load_answers(answers_path) if answers_path else []
    if answers:
        costs = [measure(a, findings, counter, target.model) for a in answers]
        basis = f"tokens per answer: mean over {len(answers)} sample answers"
    else:
        costs = [estimate(schema, findings, counter, target.model)]
        basis = "tokens per answer: estimated from the schema (each property written once; --answers to measure)"
    rows = [
        [name, kind, f"{tokens:.1f}", _per_1k(tokens, per_mtok), what]
        for kind, name, tokens, what in _finding_rows(findings.long_names, costs, findings.unused)
    ]
    lines.append(table(["field", "finding", "tokens/answer", "per 1k calls", "what"], rows))
    total = sum(float(row[2]) for row in rows)
    lines.append(f"total: {total:.1f} output tokens per answer, {_per_1k(total, per_mtok)} per 1,000 calls; {basis}")
    return "\n".join(lines)


def _finding_rows(
    long_names: tuple[tuple[str, int], ...], costs: list[FieldCost], unused: tuple[str, ...]
) -> list[tuple[str, str, float, str]]:
    def mean(values: list[int]) -> float:
        return sum(values) / len(costs)

    rows = [
        (
            "unused field",
            path,
            mean([c.unused.get(path, 0) for c in costs]),
            "the client never reads it: key and value",
        )
        for path in unused
    ]
    rows += [
        (
            "long name",
            name,
            mean([c.long_names.get(name, 0) for c in costs]),
            f"{tokens} tokens each time it is written; a one-token name saves {tokens - 1}",
        )
        for name, tokens in long_names
    ]
    return rows


def _per_1k(tokens: float, per_mtok: Decimal | None) -> str:
    if per_mtok is None:
        return "unpriced"
    return f"${Decimal(str(round(tokens, 3))) * per_mtok / 1000:.4f}"
