"""Answers cut off by their output cap, per feature and model: so caps are tuned from data, not guessed.

A cap that cuts off many answers costs quality (and often a retry, paid twice); a cap far above what answers
use costs nothing per call but reserves budget for output that never comes and lets a runaway answer run long.
The report reads only recorded rows: each answer's finish reason, output tokens and the cap its request carried,
with the configured caps applied to it as the optimize stage does: the feature's ``[optimize.features.NAME]`` table
if it has one, else the requested alias's ``[optimize.models.ALIAS]``, else ``[optimize]``.

Counted: every answer a client received, exact-cache replays included. A replay repeats the stored answer and its
finish reason, but the exact key includes the client's ``max_tokens``, so it was cut off (or not) under the same
cap, and the client got it cut off once more: the share is of answers delivered, not of upstream calls.
Not counted: the gateway's own calls (history summaries, request id ``<id>.summary``), which no configured cap
applies to, and semantic-cache replays, whose finish reason came from another request with perhaps another cap.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from thrifty.ledger import tables

CUT_OFF_SHARE = 0.05
"""Above this share of answers cut off, raise the cap."""
FAR_BELOW = 0.25
"""A 95th percentile under this fraction of the cap is far below it: lower the cap."""
MIN_ANSWERS = 10
"""Fewer answers than this make no suggestion."""
SUMMARY_SUFFIX = ".summary"
"""The request id of a history summary: the gateway's own call, made while answering ``<id>``."""


@dataclass(frozen=True, slots=True)
class CapRule:
    """The optimize stage's caps for one feature: a default where the client set none, and a ceiling."""

    default_max_tokens: int | None = None
    max_tokens_limit: int | None = None

    def apply(self, asked: int | None) -> int | None:
        cap = asked or self.default_max_tokens
        if cap is not None and self.max_tokens_limit is not None:
            cap = min(cap, self.max_tokens_limit)
        return cap


@dataclass(slots=True)
class _Tally:
    answers: int = 0
    cut_off: int = 0
    budget_stops: int = 0
    caps: Counter[int | None] = field(default_factory=Counter)
    output_tokens: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class CutoffRow:
    feature: str
    model: str
    answers: int
    cut_off: int
    budget_stops: int
    cap: int | None
    """The cap most of these answers were given (None: no cap, the model's own limit)."""
    mixed_caps: bool
    p50_output_tokens: int
    p95_output_tokens: int
    suggestion: str

    @property
    def cut_off_share(self) -> float:
        return self.cut_off / self.answers if self.answers else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "model": self.model,
            "answers": self.answers,
            "cut_off": self.cut_off,
            "cut_off_share": round(self.cut_off_share, 4),
            "budget_stops": self.budget_stops,
            "max_tokens": self.cap,
            "mixed_caps": self.mixed_caps,
            "p50_output_tokens": self.p50_output_tokens,
            "p95_output_tokens": self.p95_output_tokens,
            "suggestion": self.suggestion,
        }


def cutoff_report(
    engine: Engine,
    since: float | None = None,
    default: CapRule = CapRule(),
    features: Mapping[str, CapRule] | None = None,
    models: Mapping[str, CapRule] | None = None,
) -> list[CutoffRow]:
    """One row per feature and model that answered, most cut off first (then most answers). Rows written before
    finish reasons were recorded (NULL) are left out: they cannot say whether they were cut off. ``features`` and
    ``models`` (by requested alias) are the caps of ``[optimize.features]`` and ``[optimize.models]``."""
    r = tables.requests.c
    query = select(r.feature, r.requested_model, r.model, r.finish_reason, r.output_tokens, r.max_output_tokens)
    query = query.where(
        r.endpoint == "chat",
        r.status == "ok",
        r.finish_reason.is_not(None),
        r.cache != "semantic",
        r.request_id.not_like(f"%{SUMMARY_SUFFIX}"),
    )
    if since is not None:
        query = query.where(r.started_at >= since)
    tallies: dict[tuple[str, str], _Tally] = {}
    with engine.connect() as conn:
        for feature, alias, model, reason, output_tokens, asked in conn.execute(query):
            tally = tallies.setdefault((feature, model), _Tally())
            tally.answers += 1
            tally.cut_off += reason == "length"
            tally.budget_stops += reason == "budget"
            tally.caps[_rule(feature, alias, default, features or {}, models or {}).apply(asked)] += 1
            tally.output_tokens.append(int(output_tokens))
    rows = [_row(feature, model, tally) for (feature, model), tally in tallies.items()]
    return sorted(rows, key=lambda row: (-row.cut_off_share, -row.answers, row.feature, row.model))


def _rule(
    feature: str, alias: str, default: CapRule, features: Mapping[str, CapRule], models: Mapping[str, CapRule]
) -> CapRule:
    """The plan the optimize stage chose: a feature's table replaces an alias's, which replaces the default."""
    if feature in features:
        return features[feature]
    return models.get(alias, default)


def _row(feature: str, model: str, tally: _Tally) -> CutoffRow:
    ordered = sorted(tally.output_tokens)
    cap = tally.caps.most_common(1)[0][0]
    p50, p95 = percentile(ordered, 0.50), percentile(ordered, 0.95)
    return CutoffRow(
        feature=feature,
        model=model,
        answers=tally.answers,
        cut_off=tally.cut_off,
        budget_stops=tally.budget_stops,
        cap=cap,
        mixed_caps=len(tally.caps) > 1,
        p50_output_tokens=p50,
        p95_output_tokens=p95,
        suggestion=suggest(tally.answers, tally.cut_off / tally.answers, cap, p95),
    )


def percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of a sorted list: a value that was really observed."""
    if not ordered:
        return 0
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def suggest(answers: int, cut_off_share: float, cap: int | None, p95: int) -> str:
    if answers < MIN_ANSWERS:
        return f"too few answers (under {MIN_ANSWERS})"
    if cut_off_share > CUT_OFF_SHARE:
        if cap is None:
            return "cut off with no cap set: the model's own output limit (shorten what is asked for)"
        return f"raise max_tokens (try {2 * cap})"
    if cap is not None and p95 < cap * FAR_BELOW:
        return f"lower max_tokens (try {_round_up(2 * p95)})"
    return "ok"


def _round_up(tokens: int, step: int = 64) -> int:
    return max(step, -(-tokens // step) * step)
