"""``thrifty cache verified``: the semantic hits the model was asked to verify, as labelled pairs.

Each verification (``[cache] verify_sample``) recorded with ``[ledger] capture_payloads = true`` (prompts are
kept only where their owner chose to) keeps the question asked, the stored question whose answer served it and
the decision's score; the model's fresh answer agreeing with the cached one labels the pair 1, disagreeing 0.
The pairs are in ``thrifty eval cache``'s format, so the threshold can be tuned on one's own traffic (``thrifty
eval cache --pairs``) and the decision learned from it (``thrifty cache train --pairs``). Only hits are verified,
so the pairs say how precise the decision is at and above the threshold it ran with, not what a lower one would
have found.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, select

from thrifty.caches.keys import turn_text
from thrifty.errors import BadRequest
from thrifty.ledger import queries, tables

VERIFIED = ("verify-agree", "verify-disagree")


def verified_pairs(
    engine: Engine, since_day: str | None = None, feature: str | None = None
) -> Iterator[dict[str, Any]]:
    r, p = tables.requests.c, tables.payloads.c
    query = (
        select(r.feature, r.cache, p.request_json)
        .join(tables.payloads, p.request_id == r.request_id)
        .where(r.endpoint == "verify", r.cache.in_(VERIFIED))
        .order_by(r.started_at)
    )
    since = queries.since_timestamp(since_day)
    if since is not None:
        query = query.where(r.started_at >= since)
    if feature is not None:
        query = query.where(r.feature == feature)
    with engine.connect() as conn:
        for row in conn.execute(query):
            pair = _pair(orjson.loads(row.request_json), row.cache == "verify-agree", row.feature)
            if pair is not None:
                yield pair


def _pair(saved: dict[str, Any], agreed: bool, feature: str) -> dict[str, Any] | None:
    messages = (saved.get("asked") or {}).get("messages") or []
    question = saved.get("cached_query")
    if not isinstance(question, str) or not question or not messages or not isinstance(messages[-1], dict):
        return None  # recorded before verifications kept the stored question
    context = messages[:-1]
    return {
        "query": turn_text(messages[-1].get("content")),
        "cached": question,
        "label": int(agreed),
        "score": saved.get("score"),
        "feature": feature,
        "context_query": context,
        "context_cached": context,
    }


def verified_command(engine: Engine, out: Path, since_day: str | None, feature: str | None) -> str:
    try:
        queries.since_timestamp(since_day)  # before the output file is opened (and emptied)
    except ValueError as exc:
        raise BadRequest(f"--since {since_day}: {exc}") from exc
    counts = [0, 0]
    try:
        with out.open("w", encoding="utf-8") as file:
            for pair in verified_pairs(engine, since_day, feature):
                counts[pair["label"]] += 1
                file.write(json.dumps(pair, ensure_ascii=False) + "\n")
    except OSError as exc:
        raise BadRequest(f"--out {out}: cannot be written ({exc.strerror or exc})") from exc
    total = sum(counts)
    if not total:
        return (
            f"no verified semantic hits in the ledger (they need [cache] verify_sample and [ledger] capture_payloads "
            f"= true); {out} is empty"
        )
    return (
        f"{total} verified semantic hits ({counts[1]} agreed, {counts[0]} disagreed: "
        f"{counts[0] / total:.1%} false hits) written to {out}; `thrifty eval cache --pairs {out}` scores the "
        f"configured decision on them, `thrifty cache train --pairs {out}` learns from them"
    )
