"""The ledger reads behind ``/dashboard``: spend over time, top spenders, savings by lever, budgets, alerts.

Like every report, these are sums of recorded rows; nothing here estimates. Money stays integer nano-dollars
until ``snapshot`` writes it as exact decimal strings (``"0.00024"``); the page parses them only to draw.
Unpriced requests are counted apart and never as $0, so the page can say how much spend it cannot see.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, Integer, case, cast, func, literal_column, select
from sqlalchemy.engine import Row

from thrifty.guards.budget_book import load_budgets, spend_since
from thrifty.guards.budgets import Budget, window
from thrifty.ledger import tables
from thrifty.ledger.queries import CACHE_HITS, GROUPS, plain, savings_by_lever

HOUR_S = 3600
DAY_S = 86400
HOURLY_UP_TO_S = 2 * DAY_S
"""Windows up to two days are drawn by the hour; longer ones by the (UTC) day."""
TOP_GROUPS = ("feature", "tenant", "model", "session")
TOP_LIMIT = 8
ALERT_LIMIT = 20
WARNING_PCT = 80
"""A budget at or over this share of its limit is shown as a warning, as the 80% alert fires there."""

_DURATION = re.compile(r"(\d{1,4})([hd])")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True, slots=True)
class Window:
    """The time the dashboard covers: ``since`` (inclusive) up to the end of the current bucket."""

    since: float
    until: float
    bucket_s: int

    @property
    def buckets(self) -> range:
        return range(int(self.since // self.bucket_s), int(self.until // self.bucket_s))


def parse_window(since: str | None, now: float) -> Window:
    """``24h`` / ``7d``: the last N hourly or daily buckets, the current one included; ``YYYY-MM-DD``: from
    that UTC midnight. Raises ``ValueError`` for anything else, or for a start in the future."""
    text = (since or "24h").strip()
    duration = _DURATION.fullmatch(text)
    if duration:
        count, unit = int(duration[1]), duration[2]
        hours = count if unit == "h" else count * 24
        if count == 0:
            raise ValueError("the window must cover at least one hour")
        bucket_s = HOUR_S if hours * HOUR_S <= HOURLY_UP_TO_S else DAY_S
        per_bucket = bucket_s // HOUR_S
        current = int(now // bucket_s)
        first = current - -(-hours // per_bucket) + 1  # ceiling division: 36h by the day is two days
        return Window(first * bucket_s, (current + 1) * bucket_s, bucket_s)
    if _DATE.fullmatch(text):
        start = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
        if start > now:
            raise ValueError(f"{text} is in the future")
        bucket_s = HOUR_S if now - start <= HOURLY_UP_TO_S else DAY_S
        return Window(start, (int(now // bucket_s) + 1) * bucket_s, bucket_s)
    raise ValueError("'since' must be a number of hours or days ('24h', '7d') or a date ('2025-01-31')")


@dataclass(frozen=True, slots=True)
class Spend:
    """What a set of requests cost: the dashboard's one aggregate, for a bucket, a group or the whole window."""

    requests: int = 0
    errors: int = 0
    cost_nusd: int = 0
    baseline_nusd: int = 0
    unpriced: int = 0
    cache_hits: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "cost_usd": usd(self.cost_nusd),
            "baseline_cost_usd": usd(self.baseline_nusd),
            "unpriced_requests": self.unpriced,
            "cache_hits": self.cache_hits,
        }


def usd(nusd: int) -> str:
    return plain(tables.from_nusd(nusd) or Decimal(0))


def _count_where(flag: Any) -> Any:
    return func.coalesce(func.sum(case((flag, 1), else_=0)), 0)


def _spend_columns() -> list[Any]:
    r = tables.requests.c
    return [
        func.count(),
        _count_where(r.status != "ok"),
        func.coalesce(func.sum(r.cost_nusd), 0),
        func.coalesce(func.sum(r.baseline_cost_nusd), 0),
        _count_where(r.unpriced),
        _count_where(r.cache.in_(CACHE_HITS)),  # not the semantic cache's verification calls
    ]


def _spend(values: Row[Any] | tuple[Any, ...]) -> Spend:
    return Spend(*(int(value or 0) for value in values))


def _bucket_of(bucket_s: int, dialect: str) -> Any:
    """The bucket number of each row's start time, computed in the database so only buckets come back.

    The divisor is inlined, not bound: PostgreSQL only matches the GROUP BY to the SELECT expression when both
    are textually equal, and two bound parameters are not. SQLite's ``floor()`` is an optional build feature;
    its CAST truncates, which is the floor for any time after 1970.
    """
    scaled = tables.requests.c.started_at / literal_column(str(int(bucket_s)))
    return cast(scaled, Integer) if dialect == "sqlite" else func.floor(scaled)


def totals(engine: Engine, since: float) -> Spend:
    query = select(*_spend_columns()).where(tables.requests.c.started_at >= since)
    with engine.connect() as conn:
        return _spend(conn.execute(query).one())


def spend_series(engine: Engine, window: Window) -> list[tuple[int, Spend]]:
    """One ``(bucket start, spend)`` per bucket of the window, empty buckets included so time reads evenly."""
    r = tables.requests.c
    bucket = _bucket_of(window.bucket_s, engine.dialect.name)
    query = (
        select(bucket, *_spend_columns())
        .where(r.started_at >= window.since, r.started_at < window.until)
        .group_by(bucket)
    )
    with engine.connect() as conn:
        found = {int(row[0]): _spend(row[1:]) for row in conn.execute(query)}
    return [(index * window.bucket_s, found.get(index, Spend())) for index in window.buckets]


def top_spenders(engine: Engine, by: str, since: float, limit: int = TOP_LIMIT) -> list[tuple[str, Spend]]:
    r = tables.requests.c
    group = GROUPS[by]
    cost = func.coalesce(func.sum(r.cost_nusd), 0)
    query = (
        select(group, *_spend_columns())
        .where(r.started_at >= since)
        .group_by(group)
        .order_by(cost.desc(), func.count().desc(), group)
        .limit(limit)
    )
    with engine.connect() as conn:
        return [(str(row[0]), _spend(row[1:])) for row in conn.execute(query)]


@dataclass(frozen=True, slots=True)
class BudgetState:
    budget: Budget
    spent_usd: Decimal
    period_start: datetime
    resets_at: datetime | None

    @property
    def used_pct(self) -> int:
        """Whole percent used, rounded down: 99.9% is not yet the 100% that refuses."""
        limit = self.budget.limit_usd
        return int(self.spent_usd * 100 // limit) if limit > 0 else 100

    @property
    def state(self) -> str:
        if self.used_pct >= 100:
            return "exhausted"
        return "warning" if self.used_pct >= WARNING_PCT else "ok"

    def as_json(self) -> dict[str, Any]:
        b = self.budget
        return {
            "budget_id": b.budget_id,
            "scope": b.scope,
            "scope_id": b.scope_id,
            "period": b.period,
            "hard": b.hard,
            "limit_usd": plain(b.limit_usd),
            "spent_usd": plain(self.spent_usd),
            "used_pct": self.used_pct,
            "state": self.state,
            "period_start": self.period_start.timestamp(),
            "resets_at": None if self.resets_at is None else self.resets_at.timestamp(),
        }


def budget_states(engine: Engine, now: datetime, budgets: Sequence[Budget] | None = None) -> list[BudgetState]:
    """Budgets (the gateway's, config and stored; else the stored ones) with what the ledger says was spent in
    their current period, fullest first.

    Spend comes from recorded rows, as in reports; reservations of requests still in flight are not spend.
    """
    states = []
    for budget in load_budgets(engine) if budgets is None else budgets:
        start, resets = window(budget.period, now)
        states.append(BudgetState(budget, spend_since(engine, budget, start.timestamp()), start, resets))
    return sorted(states, key=lambda s: (-s.used_pct, s.budget.scope, s.budget.scope_id))


def recent_alerts(engine: Engine, since: float, limit: int = ALERT_LIMIT) -> list[dict[str, Any]]:
    a = tables.alerts.c
    query = (
        select(a.created_at, a.kind, a.severity, a.scope, a.scope_id, a.message, a.delivered)
        .where(a.created_at >= since)
        .order_by(a.created_at.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        # str(): the keys are SQLAlchemy's quoted_name, a str subclass that orjson refuses as a key.
        return [{str(key): value for key, value in row.items()} for row in conn.execute(query).mappings()]


def snapshot(engine: Engine, window: Window, now: float, budgets: Sequence[Budget] | None = None) -> dict[str, Any]:
    """Everything the page draws, as JSON-ready values."""
    levers = sorted(savings_by_lever(engine, window.since).items(), key=lambda item: (-item[1], item[0]))
    return {
        "generated_at": now,
        "since": window.since,
        "until": window.until,
        "bucket_s": window.bucket_s,
        "totals": {
            **totals(engine, window.since).as_json(),
            "savings_usd": plain(sum((saved for _, saved in levers), Decimal(0))),
        },
        "series": [{"start": start, **spend.as_json()} for start, spend in spend_series(engine, window)],
        "savings_by_lever": [{"lever": lever, "savings_usd": plain(saved)} for lever, saved in levers],
        "top": {
            by: [{"group": group, **spend.as_json()} for group, spend in top_spenders(engine, by, window.since)]
            for by in TOP_GROUPS
        },
        "budgets": [state.as_json() for state in budget_states(engine, datetime.fromtimestamp(now, UTC), budgets)],
        "alerts": recent_alerts(engine, window.since),
    }


def rate_history(engine: Engine, since: float, bucket_s: int) -> list[tuple[str, str, int, int, int]]:
    """``(scope, scope id, bucket, nano-dollars, tokens)`` per feature and per tenant since ``since``: what the
    anomaly detector needs to judge rates against their past after a restart. Tokens are those billed (a cache
    hit's row keeps the stored call's, which no model read again)."""
    from thrifty.ledger.writer import utc_day

    r = tables.requests.c
    bucket = _bucket_of(bucket_s, engine.dialect.name)
    billed = case((r.cache.in_(CACHE_HITS), 0), else_=r.input_tokens + r.output_tokens)
    found: list[tuple[str, str, int, int, int]] = []
    with engine.connect() as conn:
        for scope, column in (("feature", r.feature), ("tenant", r.tenant)):
            query = (
                select(column, bucket, func.coalesce(func.sum(r.cost_nusd), 0), func.coalesce(func.sum(billed), 0))
                .where(r.day >= utc_day(since), r.started_at >= since, column != "")
                .group_by(column, bucket)
            )
            found.extend((scope, str(k), int(b), int(n or 0), int(t or 0)) for k, b, n, t in conn.execute(query))
    return found
