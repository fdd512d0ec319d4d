"""Budgets that hold under concurrency: reserve the worst case before the call, settle to the real cost after.

A hard budget refuses a request whose worst-case cost (input tokens counted, ``max_tokens`` of output at the
dearest target's price) does not fit beside what is spent and what requests in flight have reserved. So however
many requests race, spend can pass the limit only by what one request costs beyond its reservation. While a
budget has plenty of room, the reservation is a bound found without encoding the prompt (its bytes); only near
the limit, where holding too much would refuse requests that fit, is the input counted. With
``clamp``, a request that does not fit gets a smaller ``max_tokens`` instead, when at least a useful answer fits.
Soft budgets never refuse; they feed the 50/80/100% alerts.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import functools
import itertools
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

from thrifty.errors import BudgetExceeded, GuardsUnavailable
from thrifty.guards.estimate import CostEstimator, ceil_nusd
from thrifty.guards.stores import SEEDED, GuardStore
from thrifty.ledger.tables import from_nusd, to_nusd
from thrifty.observe.alerts import Alert, AlertSink
from thrifty.types import ChatRequest, JsonObject, Principal

SCOPES = ("tenant", "key", "user", "feature", "session")
PERIODS = ("day", "week", "month", "total")
MIN_CLAMPED_OUTPUT = 16
RESERVATION_TTL_S = 900.0
UNLIMITED = 2**62
BOUND_HEADROOM = 1000
"""A budget reserves a request's cheap bound while its room holds this many of them, else the counted cost."""
MAX_PERIODS = 4096


@dataclass(frozen=True, slots=True)
class Budget:
    budget_id: str
    scope: str
    scope_id: str
    period: str
    limit_usd: Decimal
    hard: bool = True
    clamp: bool = False

    @property
    def attribute(self) -> str:
        """The ``Principal`` attribute this budget's scope is."""
        return "key_id" if self.scope == "key" else self.scope

    def applies(self, principal: Principal) -> bool:
        return bool(self.scope_id) and getattr(principal, self.attribute) == self.scope_id


def window(period: str, now: datetime) -> tuple[datetime, datetime | None]:
    """The current period's start and reset time (UTC calendar days, ISO weeks, months)."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        days = calendar.monthrange(start.year, start.month)[1]
        return start, start + timedelta(days=days)
    return datetime(1970, 1, 1, tzinfo=UTC), None


@functools.lru_cache(maxsize=32)
def _current_window(period: str, hour: int) -> tuple[datetime, datetime | None]:
    """Periods start on whole UTC hours at the earliest, so the window is the same all hour long."""
    return window(period, datetime.fromtimestamp(hour * 3600, UTC))


SpendSince = Callable[[Budget, float], Decimal]


@dataclass(frozen=True, slots=True)
class Hold:
    key: str
    token: str
    budget: Budget


OnSpent = Callable[[Budget, str, int], None]
"""Told each budget's spend (nano-dollars) after a settlement, with the period's key: for the 50/80/100% alerts."""


class BudgetAdmission:
    def __init__(
        self,
        store: GuardStore,
        holds: Sequence[Hold],
        request: ChatRequest,
        on_spent: OnSpent | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        """``on_lost(key)``: the store no longer had the period's count (Redis lost it) when settling."""
        self._store, self._holds, self.request, self._on_spent = store, holds, request, on_spent
        self._on_lost = on_lost
        self._settled = False

    @property
    def holds(self) -> bool:
        """Whether a hard budget holds this request."""
        return any(hold.budget.hard for hold in self._holds)

    async def extend(self) -> None:
        """Keep the holds of a call still running (a long stream) from expiring under it."""
        if not self._settled:
            for hold in self._holds:
                await self._store.extend(hold.key, hold.token, RESERVATION_TTL_S)

    async def settle(self, actual: int) -> None:
        """Turns each hold into ``actual`` nano-dollars of spend (0 releases it); once."""
        if self._settled:
            return
        self._settled = True
        failed: Exception | None = None
        for hold in self._holds:
            try:
                spent = await self._store.settle(hold.key, hold.token, actual)
            except Exception as exc:  # settle the other holds all the same
                failed = failed or exc
                continue
            if spent < 0:  # the count is gone: the next reserve takes it again from the ledger (this row included)
                if self._on_lost is not None:
                    self._on_lost(hold.key)
                continue
            if self._on_spent is not None and actual:
                self._on_spent(hold.budget, hold.key, spent)
        if failed is not None:
            raise failed


@dataclass(frozen=True, slots=True)
class _Period:
    """A budget's current period, worked out once an hour rather than once a request."""

    budget: Budget
    hour: int
    key: str
    start_ts: float
    resets: datetime | None
    limit_nusd: int


class _Worst:
    """One request's worst case: the bound first (no encoding), the counted one only when a budget needs it."""

    __slots__ = ("_counted", "_estimator", "bound", "request")

    def __init__(self, estimator: CostEstimator, request: ChatRequest) -> None:
        self._estimator, self.request = estimator, request
        self.bound = estimator.worst_case_bound(request)
        self._counted: tuple[Decimal | None, int] | None = None

    def counted(self) -> tuple[Decimal | None, int]:
        if self._counted is None:
            self._counted = self._estimator.worst_case(self.request)
        return self._counted

    def counted_nusd(self) -> int:
        usd = self.counted()[0] if self.bound is not None else None
        return 0 if usd is None else ceil_nusd(usd)


Index = dict[str, dict[str, list[tuple[int, Budget]]]]


class BudgetGuard:
    def __init__(
        self,
        budgets: Callable[[], Sequence[Budget]],
        store: GuardStore,
        estimator: CostEstimator,
        spend_since: SpendSince,
        on_spent: OnSpent | None = None,
    ) -> None:
        """``budgets`` should return the same sequence until the budgets change: it is indexed once per sequence."""
        self._budgets, self._store, self._estimator, self._spend_since = budgets, store, estimator, spend_since
        self._on_spent = on_spent
        self._seeded: set[str] = set()
        # Reservation ids: unique per process by the counter, across replicas by the random prefix.
        self._token_prefix, self._tokens = secrets.token_hex(4) + ".", itertools.count()
        self._indexed: Sequence[Budget] | None = None
        self._index: Index = {}
        self._periods: dict[int, _Period] = {}
        self._room: dict[str, int] = {}
        """Per period key, the limit minus spend and reservations at the last answer from the store."""

    async def admit(self, request: ChatRequest, principal: Principal) -> BudgetAdmission:
        applicable = self._applicable(principal)
        if not applicable:
            return BudgetAdmission(self._store, [], request)
        worst = _Worst(self._estimator, request)
        holds: list[Hold] = []
        try:
            for budget in applicable:
                hold, worst = await self._reserve(budget, worst)
                holds.append(hold)
        except BaseException:  # refused, the store unreachable, or cancelled: the holds taken so far go back
            with contextlib.suppress(Exception):
                await BudgetAdmission(self._store, holds, request).settle(0)
            raise
        return BudgetAdmission(self._store, holds, worst.request, self._on_spent, self._seeded.discard)

    def _applicable(self, principal: Principal) -> list[Budget]:
        """The budgets over this principal, in configured order: a few dict lookups however many budgets exist."""
        budgets = self._budgets()
        if budgets is not self._indexed:
            self._index, self._indexed = _index(budgets), budgets
        found: list[tuple[int, Budget]] = []
        for attribute, by_id in self._index.items():
            matches = by_id.get(getattr(principal, attribute))
            if matches:
                found += matches
        if len(found) > 1:
            found.sort(key=lambda item: item[0])
        return [budget for _, budget in found]

    async def _reserve(self, budget: Budget, worst: _Worst) -> tuple[Hold, _Worst]:
        """Reserve the bound while the budget has room for ``BOUND_HEADROOM`` of it, else the counted worst case.

        Either never undercounts; the bound only holds more than needed, which matters only near the limit."""
        period = self._period(budget)
        key, limit = period.key, period.limit_nusd
        seed = SEEDED
        if key not in self._seeded:
            seed = await self._seed(budget, period)
            self._room.setdefault(key, limit - seed)
        token = f"{self._token_prefix}{next(self._tokens)}"
        bound = worst.bound or 0  # an unpriced model cannot be held to a budget in USD
        counted = self._room.get(key, 0) < BOUND_HEADROOM * bound
        amount = worst.counted_nusd() if counted else bound
        verdict = await self._store.reserve(key, token, amount, limit, RESERVATION_TTL_S, seed)
        if verdict.missing:  # the store lost the count (a Redis restart, an eviction): seed it again, never at 0
            self._seeded.discard(key)
            return await self._reserve(budget, worst)
        self._seeded.add(key)
        if not verdict.ok and not counted and worst.counted_nusd() < amount:
            # Less room than last seen here (another replica spent it): the counted worst case may still fit.
            amount = worst.counted_nusd()
            verdict = await self._store.reserve(key, token, amount, limit, RESERVATION_TTL_S, seed)
        room = self._room[key] = limit - verdict.spent - verdict.reserved
        if verdict.ok:
            return Hold(key, token, budget), worst
        usd, input_tokens = worst.counted() if worst.bound is not None else (None, 0)
        if budget.clamp and usd:
            clamped = self._clamp(worst.request, room, input_tokens, usd)
            if clamped is not None:
                return await self._reserve(replace(budget, clamp=False), _Worst(self._estimator, clamped))
        raise _refusal(budget, verdict.spent, verdict.reserved, period.resets)

    async def _seed(self, budget: Budget, period: _Period) -> int:
        """The period's spend so far, from the ledger; refused (503, retryable) when the ledger cannot say."""
        try:
            return to_nusd(await asyncio.to_thread(self._spend_since, budget, period.start_ts)) or 0
        except Exception as exc:
            raise GuardsUnavailable(
                f"budget {budget.budget_id!r} cannot be checked: its spend so far is in the ledger database, "
                "which is unreachable; retry shortly"
            ) from exc

    def _period(self, budget: Budget) -> _Period:
        hour = int(time.time() // 3600)
        period = self._periods.get(id(budget))
        if period is None or period.budget is not budget or period.hour != hour:
            start, resets = _current_window(budget.period, hour)
            limit = (to_nusd(budget.limit_usd) or 0) if budget.hard else UNLIMITED
            key = f"budget:{budget.budget_id}:{start:%Y%m%d}"
            period = _Period(budget, hour, key, start.timestamp(), resets, limit)
            if len(self._periods) >= MAX_PERIODS:
                self._periods.clear()
            self._periods[id(budget)] = period
        return period

    def _clamp(self, request: ChatRequest, room_nusd: int, input_tokens: int, worst: Decimal) -> ChatRequest | None:
        """The largest ``max_tokens`` whose worst case fits the room left, if a useful answer still fits."""
        cap = self._estimator.max_output_tokens(request)
        input_share = worst * input_tokens / (input_tokens + cap)  # a linear split of the worst case
        per_output = (worst - input_share) / cap
        room = (from_nusd(room_nusd) or Decimal(0)) - input_share
        if per_output <= 0 or room <= 0:
            return None
        tokens = int((room / per_output).to_integral_value(rounding=ROUND_FLOOR))
        if tokens < MIN_CLAMPED_OUTPUT:
            return None
        choices = int(request.body.get("n") or 1)  # the caps are per choice; the tokens are for all of them
        if tokens // choices < MIN_CLAMPED_OUTPUT:
            return None
        return replace(request, body=capped_body(request.body, min(tokens, cap) // choices))


def capped_body(body: JsonObject, per_choice: int) -> JsonObject:
    """``body`` asking for at most ``per_choice`` output tokens a choice, in the field the client used
    (``max_completion_tokens``, which OpenAI's reasoning models require, or ``max_tokens``)."""
    field = "max_completion_tokens" if body.get("max_completion_tokens") else "max_tokens"
    return {**{k: v for k, v in body.items() if k not in ("max_tokens", "max_completion_tokens")}, field: per_choice}


def _index(budgets: Sequence[Budget]) -> Index:
    """Budgets by the principal attribute they apply to and its value, each with its position."""
    index: Index = {}
    for position, budget in enumerate(budgets):
        if budget.scope_id:
            index.setdefault(budget.attribute, {}).setdefault(budget.scope_id, []).append((position, budget))
    return index


def _refusal(budget: Budget, spent_nusd: int, reserved_nusd: int, resets: datetime | None) -> BudgetExceeded:
    spent = from_nusd(spent_nusd) or Decimal(0)
    reserved = from_nusd(reserved_nusd) or Decimal(0)
    when = f"resets {resets:%Y-%m-%dT%H:%M:%SZ}" if resets else "never resets"
    retry_after = (resets - datetime.now(UTC)).total_seconds() if resets else None
    return BudgetExceeded(
        f"budget {budget.budget_id} ({budget.scope} {budget.scope_id}): limit ${budget.limit_usd} per "
        f"{budget.period}, spent ${spent:.6f} (+${reserved:.6f} reserved by requests in flight); {when}",
        retry_after_s=retry_after,
    )


THRESHOLDS = (0.5, 0.8, 1.0)


class BudgetAlerts:
    """Fires when a budget's spend crosses 50, 80 and 100% of its limit, once per threshold per period."""

    def __init__(self, sink: AlertSink) -> None:
        self._sink = sink
        self._fired: set[str] = set()
        self._next: dict[tuple[str, int], float] = {}
        """Per period and limit, the spend at which the next threshold fires: other settlements return at once.
        Keyed by the limit too, so a budget whose limit is changed (``thrifty budget set``) is judged afresh."""
        self._first_limit: dict[str, int] = {}
        """Per period, the limit first seen: its alerts keep their plain keys, a changed limit's carry it."""

    def __call__(self, budget: Budget, period_key: str, spent_nusd: int) -> None:
        limit = to_nusd(budget.limit_usd) or 1
        if spent_nusd < self._next.get((period_key, limit), 0):
            return
        unfired = [limit * t for t in THRESHOLDS if spent_nusd < limit * t]
        self._next[(period_key, limit)] = min(unfired, default=math.inf)
        for threshold in THRESHOLDS:
            percent = int(threshold * 100)
            # Keyed by the limit too: a raised limit crossed again is news (a hard budget refuses again).
            first = self._first_limit.setdefault(period_key, limit)
            key = f"{period_key}:{percent}" if limit == first else f"{period_key}:limit-{limit}:{percent}"
            if spent_nusd >= limit * threshold and key not in self._fired:
                self._fired.add(key)
                self._sink.fire(
                    Alert(
                        "budget",
                        "critical" if threshold >= 1 else "warning",
                        budget.scope,
                        budget.scope_id,
                        key,
                        f"budget {budget.budget_id} ({budget.scope} {budget.scope_id}) reached {percent}% of "
                        f"${budget.limit_usd} per {budget.period}: ${from_nusd(spent_nusd):.6f} spent"
                        + ("" if budget.hard else " (soft budget: nothing is refused)"),
                    )
                )
