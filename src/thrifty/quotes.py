"""``POST /v1/cost/quote`` and ``thrifty estimate``: what a request would cost on each of its alias's targets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thrifty.errors import BadRequest
from thrifty.guards.estimate import CostEstimator, Quote
from thrifty.types import ChatRequest, JsonObject


def quote_body(estimator: CostEstimator, request: ChatRequest) -> JsonObject:
    return {"model": request.model, "quotes": [_quote_json(q) for q in estimator.quotes(request)]}


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


def estimate_from_cli(
    settings: Any, model: str, prompt: str | None, messages_file: str | None, max_tokens: int | None, as_json: bool
) -> str:
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
    )
    quoted = quote_body(estimator, ChatRequest(body, "estimate"))
    if as_json:
        return json.dumps(quoted, indent=2)
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
    return table(["target", "input tok", "max output", "expected $", "worst case $"], rows)


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
