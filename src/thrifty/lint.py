"""``thrifty lint PROMPT_FILE``: what a prompt costs on every call, and what breaks provider prompt caching.

The file is a system prompt as plain text, or JSON: a list of messages or a whole request body (with tools).
Nothing is changed; each finding says what fixing it would save per 1,000 calls at the model's input price.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from thrifty.caches.prompt_cache import lint_prefix
from thrifty.optimizers.hygiene import lint_prompt
from thrifty.pricing import CatalogPricer
from thrifty.render import table
from thrifty.tokens import TiktokenCounter, text_of
from thrifty.types import Target, Usage


def load_prompt(path: Path) -> tuple[list[dict[str, Any]], list[Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError:
        return [{"role": "system", "content": text}], []
    if isinstance(loaded, dict):
        return list(loaded.get("messages") or []), list(loaded.get("tools") or [])
    if isinstance(loaded, list):
        return loaded, []
    return [{"role": "system", "content": text}], []


def lint_file(path: Path, target: Target, pricer: CatalogPricer) -> str:
    messages, tools = load_prompt(path)
    per_mtok = pricer.cost(target, Usage(1_000_000, 0)).usd
    system = "\n\n".join(text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer"))
    lines = [
        f"{path}: {target.model}, input at " + (f"${per_mtok} per million tokens" if per_mtok else "no known price")
    ]
    findings = lint_prompt(system, target.model, per_mtok or Decimal(0), TiktokenCounter()) if system else []
    if findings:
        rows = [[f.rule, f.tokens, f"${f.usd_per_1k_calls:.4f}", f.message, f.excerpt] for f in findings]
        lines.append(table(["finding", "tokens/call", "per 1k calls", "what", "excerpt"], rows))
    prefix = lint_prefix(messages, tools)
    if prefix:
        lines.append("\nBreaks provider prompt caching (keep the start of the prompt identical between calls):")
        lines.extend(f"  {f.where}: {f.what}: ...{f.excerpt}..." for f in prefix)
    if not findings and not prefix:
        lines.append("no findings")
    return "\n".join(lines)
