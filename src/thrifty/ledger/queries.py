"""Reads of the ledger for reports and exports. Sums of recorded rows only: nothing here estimates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, case, func, select

from thrifty.ledger import tables

GROUPS = {
    "tenant": tables.requests.c.tenant,
    "key": tables.requests.c.key_id,
    "user": tables.requests.c.user_id,
    "feature": tables.requests.c.feature,
    "session": tables.requests.c.session_id,
    "model": tables.requests.c.model,
    "provider": tables.requests.c.provider,
    "alias": tables.requests.c.requested_model,
    "day": tables.requests.c.day,
}


@dataclass(frozen=True, slots=True)
class ReportRow:
    group: str
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    cost_usd: Decimal | None
    """None when no request of the group has a price: never shown as $0."""
    baseline_cost_usd: Decimal | None
    unpriced: int
    estimated: int

    def as_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "requests": self.requests,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "cost_usd": None if self.cost_usd is None else plain(self.cost_usd),
            "baseline_cost_usd": None if self.baseline_cost_usd is None else plain(self.baseline_cost_usd),
            "unpriced_requests": self.unpriced,
            "estimated_token_requests": self.estimated,
        }


def plain(usd: Decimal) -> str:
    """A decimal string without exponent or trailing zeros: '0.00054', '12'."""
    return format(usd.normalize(), "f")


def since_timestamp(day: str | None) -> float | None:
    if not day:
        return None
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()


def _count_where(flag: Any) -> Any:
    return func.sum(case((flag, 1), else_=0))


CACHE_HITS = ("exact", "semantic")


def _billed_sum(column: Any) -> Any:
    """Tokens a provider billed: a cache hit's row keeps the stored call's tokens (its baseline is priced on
    them), but no model read or wrote them again, so they are left out of the sums."""
    r = tables.requests.c
    return func.coalesce(func.sum(case((r.cache.in_(CACHE_HITS), 0), else_=column)), 0)


def report(engine: Engine, by: str, since: float | None = None) -> list[ReportRow]:
    """``by`` is one grouping or several joined by commas (``feature,day``: cost per feature per day)."""
    r = tables.requests.c
    names = [name.strip() for name in by.split(",")]
    unknown = [name for name in names if name not in GROUPS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    groups = [GROUPS[name] for name in names]
    query = select(
        *groups,
        func.count(),
        _count_where(r.status != "ok"),
        *(
            _billed_sum(column)
            for column in (r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens)
        ),
        func.sum(r.cost_nusd),  # NULL when every row of the group is unpriced
        func.sum(r.baseline_cost_nusd),
        _count_where(r.unpriced),
        _count_where(r.tokens_estimated),
    ).group_by(*groups)
    if since is not None:
        query = query.where(r.started_at >= since)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(*groups[1:], func.coalesce(func.sum(r.cost_nusd), 0).desc())).all()
    width = len(groups)
    return [
        ReportRow(
            group=" / ".join(str(v) for v in row[:width]),
            requests=int(row[width] or 0),
            errors=int(row[width + 1] or 0),
            input_tokens=int(row[width + 2] or 0),
            output_tokens=int(row[width + 3] or 0),
            cache_read_tokens=int(row[width + 4] or 0),
            cache_write_tokens=int(row[width + 5] or 0),
            cost_usd=None if row[width + 6] is None else _usd(row[width + 6]),
            baseline_cost_usd=None if row[width + 7] is None else _usd(row[width + 7]),
            unpriced=int(row[width + 8] or 0),
            estimated=int(row[width + 9] or 0),
        )
        for row in rows
    ]


def _usd(nusd: Any) -> Decimal:
    return tables.from_nusd(int(nusd or 0)) or Decimal(0)


def savings_by_lever(engine: Engine, since: float | None = None) -> dict[str, Decimal]:
    s, r = tables.savings.c, tables.requests.c
    query = select(s.lever, func.sum(s.savings_nusd)).group_by(s.lever)
    if since is not None:
        query = query.join(tables.requests, r.request_id == s.request_id).where(r.started_at >= since)
    with engine.connect() as conn:
        return {row[0]: _usd(row[1]) for row in conn.execute(query)}
