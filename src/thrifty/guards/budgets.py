"""Budgets that hold under concurrency: reserve the worst case before the call, settle to the real cost after.

A hard budget refuses a request whose worst-case cost (input tokens counted, ``max_tokens`` of output at the
dearest target's price) does not fit beside what is spent and what requests in flight have reserved. So however
many requests race, spend can pass the limit only by what one request costs beyond its reservation. With
``clamp``, a request that does not fit gets a smaller ``max_tokens`` instead, when at least a useful answer fits.
Soft budgets never refuse; they feed the 50/80/100% alerts.
"""

from __future__ import annotations

import asyncio
import calendar
import functools
import itertools
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

from thrifty.errors import BudgetExceeded
from thrifty.guards.estimate import CostEstimator
from thrifty.guards.stores import GuardStore
from thrifty.ledger.tables import from_nusd, to_nusd
from thrifty.observe.alerts import Alert, AlertSink
from thrifty.types import ChatRequest, Principal

SCOPES = ("tenant", "key", "user", "feature", "session")
PERIODS = ("day", "week", "month", "total")
MIN_CLAMPED_OUTPUT = 16
RESERVATION_TTL_S = 900.0
UNLIMITED = 2**62


@dataclass(frozen=True, slots=True)
class Budget:
    budget_id: str
    scope: str
    scope_id: str
    period: str
    limit_usd: Decimal
    hard: bool = True
    clamp: bool = False

    def applies(self, principal: Principal) -> bool:
        attribute = "key_id" if self.scope == "key" else self.scope
        return bool(self.scope_id) and getattr(principal, attribute) == self.scope_id


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
        self, store: GuardStore, holds: Sequence[Hold], request: ChatRequest, on_spent: OnSpent | None = None
    ) -> None:
        self._store, self._holds, self.request, self._on_spent = store, list(holds), request, on_spent
        self.holds = any(hold.budget.hard for hold in holds)

    async def settle(self, cost_usd: Decimal | None) -> None:
        actual = to_nusd(cost_usd) or 0
        holds, self._holds = self._holds, []
        for hold in holds:
            spent = await self._store.settle(hold.key, hold.token, actual)
            if self._on_spent is not None and actual:
                self._on_spent(hold.budget, hold.key, spent)


class BudgetGuard:
    def __init__(
        self,
        budgets: Callable[[], Sequence[Budget]],
        store: GuardStore,
        estimator: CostEstimator,
        spend_since: SpendSince,
        on_spent: OnSpent | None = None,
    ) -> None:
        self._budgets, self._store, self._estimator, self._spend_since = budgets, store, estimator, spend_since
        self._on_spent = on_spent
        self._seeded: set[str] = set()
        # Reservation ids: unique per process by the counter, across replicas by the random prefix.
        self._token_prefix, self._tokens = secrets.token_hex(4) + ".", itertools.count()

    async def admit(self, request: ChatRequest, principal: Principal) -> BudgetAdmission:
        applicable = [b for b in self._budgets() if b.applies(principal)]
        if not applicable:
            return BudgetAdmission(self._store, [], request)
        worst, input_tokens = self._estimator.worst_case(request)
        holds: list[Hold] = []
        try:
            for budget in applicable:
                hold, request, worst = await self._reserve(budget, request, worst, input_tokens)
                holds.append(hold)
        except BudgetExceeded:
            await BudgetAdmission(self._store, holds, request).settle(Decimal(0))
            raise
        return BudgetAdmission(self._store, holds, request, self._on_spent)

    async def _reserve(
        self, budget: Budget, request: ChatRequest, worst: Decimal | None, input_tokens: int
    ) -> tuple[Hold, ChatRequest, Decimal | None]:
        start, resets = _current_window(budget.period, int(time.time() // 3600))
        key = f"budget:{budget.budget_id}:{start:%Y%m%d}"
        seed = 0
        if key not in self._seeded:
            seed = to_nusd(await asyncio.to_thread(self._spend_since, budget, start.timestamp())) or 0
            self._seeded.add(key)
        token = f"{self._token_prefix}{next(self._tokens)}"
        amount = to_nusd(worst) or 0  # an unpriced model cannot be held to a budget in USD
        limit = to_nusd(budget.limit_usd) or 0 if budget.hard else UNLIMITED
        verdict = await self._store.reserve(key, token, amount, limit, RESERVATION_TTL_S, seed)
        if verdict.ok:
            return Hold(key, token, budget), request, worst
        if budget.clamp and worst:
            clamped = self._clamp(request, limit - verdict.spent - verdict.reserved, input_tokens, worst)
            if clamped is not None:
                return await self._reserve(replace(budget, clamp=False), clamped, *self._rewound(clamped))
        raise _refusal(budget, verdict.spent, verdict.reserved, resets)

    def _rewound(self, request: ChatRequest) -> tuple[Decimal | None, int]:
        return self._estimator.worst_case(request)

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
        body = dict(request.body)
        body.pop("max_completion_tokens", None)
        body["max_tokens"] = min(tokens, cap)
        return ChatRequest(body, request.request_id, request.cache_mode)


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

    def __call__(self, budget: Budget, period_key: str, spent_nusd: int) -> None:
        limit = to_nusd(budget.limit_usd) or 1
        for threshold in THRESHOLDS:
            percent = int(threshold * 100)
            if spent_nusd >= limit * threshold and f"{period_key}:{percent}" not in self._fired:
                self._fired.add(f"{period_key}:{percent}")
                self._sink.fire(
                    Alert(
                        "budget",
                        "critical" if threshold >= 1 else "warning",
                        budget.scope,
                        budget.scope_id,
                        f"{period_key}:{percent}",
                        f"budget {budget.budget_id} ({budget.scope} {budget.scope_id}) reached {percent}% of "
                        f"${budget.limit_usd} per {budget.period}: ${from_nusd(spent_nusd):.6f} spent"
                        + ("" if budget.hard else " (soft budget: nothing is refused)"),
                    )
                )
