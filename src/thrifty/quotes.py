"""``POST /v1/cost/quote`` and ``thrifty estimate``: what a request would cost on each of its alias's targets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from thrifty.errors import BadRequest
from thrifty.guards.estimate import CostEstimator, Quote
from thrifty.types import ChatRequest, JsonObject


def quote_body(estimator: CostEstimator, request: ChatRequest) -> JsonObject:
    """Each target's quote, and the alias's worst case: what a budget holds for the request (the dearest target a
    fallback may land on; a cascade's sum, since it may pay every tier). Unpriced if any target is."""
    quotes = estimator.quotes(request)
    worst, _ = estimator.worst_case(request)
    priced = all(q.worst_usd is not None for q in quotes)
    body = request.body
    return {
        "model": request.model,
        "worst_case_usd": format(worst, "f") if priced and worst is not None else None,
        # Without a cap in the request, the output is assumed to stop at the reserved default: only a hard budget
        # or an [optimize.caps] default makes the call stop there, so the worst case may then be an assumption.
        "output_capped": bool(body.get("max_completion_tokens") or body.get("max_tokens")),
        "quotes": [_quote_json(q) for q in quotes],
    }


def _quote_json(quote: Quote) -> dict[str, Any]:
    def usd(value: object) -> str | None:
        return None if value is None else format(value, "f")

    return {
        "target": str(quote.target),
        "input_tokens": quote.input_tokens,
        "max_output_tokens": quote.max_output_tokens,
        "expected_output_tokens": quote.expected_output_tokens,
        "expected_usd": usd(quote.expected_usd),
        "worst_case_usd": usd(quote.worst_usd),
        "priced": quote.worst_usd is not None,
    }


@dataclass(frozen=True)
class Limits:
    """What a CI check allows a request: ``thrifty estimate ... --max-usd 0.01 --max-input-tokens 4000``."""

    max_usd: Decimal | None = None
    max_input_tokens: int | None = None

    def breaches(self, quoted: JsonObject) -> list[str]:
        found = []
        if self.max_usd is not None:
            worst = quoted["worst_case_usd"]
            if worst is None:
                found.append(f"{quoted['model']}: a target is unpriced, so the worst case cannot be checked")
            elif Decimal(worst) > self.max_usd:
                found.append(f"{quoted['model']}: worst case ${worst} is over --max-usd {self.max_usd}")
        if self.max_input_tokens is not None:
            most = max(q["input_tokens"] for q in quoted["quotes"])
            if most > self.max_input_tokens:
                found.append(
                    f"{quoted['model']}: {most} input tokens is over --max-input-tokens {self.max_input_tokens}"
                )
        return found


def estimate_from_cli(
    settings: Any,
    model: str,
    prompt: str | None,
    messages_file: str | None,
    max_tokens: int | None,
    as_json: bool,
    limits: Limits | None = None,
) -> tuple[str, list[str]]:
    """The estimate to print, and what it breaches of ``limits`` (a CI step fails on any)."""
    from thrifty.assembly import build_pricer
    from thrifty.render import table
    from thrifty.routers.static import unknown_model
    from thrifty.tokens import TiktokenCounter

    aliases = {alias: settings.alias_targets(alias) for alias in settings.models}
    if model not in aliases:
        raise unknown_model(model, aliases)
    body = _body(model, prompt, messages_file, max_tokens)
    estimator = CostEstimator(
        build_pricer(settings),
        TiktokenCounter(),
        aliases,
        settings.reserved_output_tokens(),
        settings.cascade_aliases(),
        settings.sampled_aliases(),
    )
    quoted = quote_body(estimator, ChatRequest(body, "estimate"))
    breaches = (limits or Limits()).breaches(quoted)
    if as_json:
        return json.dumps(quoted, indent=2), breaches
    rows = [
        [
            q["target"],
            q["input_tokens"],
            q["max_output_tokens"],
            q["expected_usd"] or "unpriced",
            q["worst_case_usd"] or "unpriced",
        ]
        for q in quoted["quotes"]
    ]
    worst = quoted["worst_case_usd"] or "unpriced"
    text = table(["target", "input tok", "max output", "expected $", "worst case $"], rows)
    text += f"\n\nworst case for {model} (what a budget holds): {worst}"
    if not quoted["output_capped"]:
        text += "\n(no --max-tokens: the worst case assumes the max output above; a call is stopped there only by a"
        text += " hard budget or an [optimize.caps] default)"
    return text, breaches


def _body(model: str, prompt: str | None, messages_file: str | None, max_tokens: int | None) -> JsonObject:
    if messages_file:
        loaded = json.loads(Path(messages_file).read_text())
        body: JsonObject = dict(loaded) if isinstance(loaded, dict) else {"messages": loaded}
    elif prompt is not None:
        body = {"messages": [{"role": "user", "content": prompt}]}
    else:
        raise BadRequest("give --prompt TEXT or --messages FILE")
    body["model"] = model
    if max_tokens:
        body["max_tokens"] = max_tokens
    return body
