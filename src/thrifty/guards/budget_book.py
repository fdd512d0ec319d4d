"""Where budgets come from (config and the ``budgets`` table) and what was spent under one (the ledger)."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from thrifty.guards.budgets import Budget
from thrifty.ledger import tables
from thrifty.settings import BudgetSettings

log = logging.getLogger("thrifty.budgets")

_SCOPE_COLUMNS = {
    "tenant": tables.requests.c.tenant,
    "key": tables.requests.c.key_id,
    "user": tables.requests.c.user_id,
    "feature": tables.requests.c.feature,
    "session": tables.requests.c.session_id,
}


def from_settings(configured: Sequence[BudgetSettings]) -> list[Budget]:
    return [
        Budget(f"config-{b.scope}-{b.id}-{b.period}", b.scope, b.id, b.period, b.usd, b.hard, b.clamp)
        for b in configured
    ]


def save_budget(engine: Engine, budget: Budget) -> Budget:
    """Create or replace the budget for this scope and period (the CLI's ``thrifty budget set``)."""
    t = tables.budgets
    with engine.begin() as conn:
        conn.execute(
            t.delete().where(t.c.scope == budget.scope, t.c.scope_id == budget.scope_id, t.c.period == budget.period)
        )
        saved = Budget(
            "bud_" + secrets.token_hex(6),
            *(budget.scope, budget.scope_id, budget.period),
            budget.limit_usd,
            budget.hard,
            budget.clamp,
        )
        conn.execute(
            t.insert().values(
                budget_id=saved.budget_id,
                scope=saved.scope,
                scope_id=saved.scope_id,
                period=saved.period,
                limit_nusd=tables.to_nusd(saved.limit_usd),
                hard=saved.hard,
                clamp=saved.clamp,
                created_at=time.time(),
            )
        )
    return saved


def load_budgets(engine: Engine) -> list[Budget]:
    t = tables.budgets.c
    with engine.connect() as conn:
        rows = conn.execute(select(t.budget_id, t.scope, t.scope_id, t.period, t.limit_nusd, t.hard, t.clamp))
        return [
            Budget(
                r.budget_id,
                r.scope,
                r.scope_id,
                r.period,
                tables.from_nusd(r.limit_nusd) or Decimal(0),
                r.hard,
                r.clamp,
            )
            for r in rows
        ]


def spend_since(engine: Engine, budget: Budget, since: float) -> Decimal:
    r = tables.requests.c
    query = select(func.coalesce(func.sum(r.cost_nusd), 0)).where(
        _SCOPE_COLUMNS[budget.scope] == budget.scope_id, r.started_at >= since
    )
    with engine.connect() as conn:
        return tables.from_nusd(int(conn.execute(query).scalar_one())) or Decimal(0)


class BudgetBook:
    """Config budgets plus the database's, refreshed in the background (the CLI can add one at any time)."""

    def __init__(self, engine: Engine, configured: Sequence[Budget], refresh_s: float = 5.0) -> None:
        self._engine, self._configured, self._refresh_s = engine, list(configured), refresh_s
        self._stored: list[Budget] = []
        self._all: list[Budget] = list(configured)
        self._stop = threading.Event()

    def __call__(self) -> Sequence[Budget]:
        return self._all

    def start(self) -> None:
        self.refresh()
        threading.Thread(target=self._loop, name="thrifty-budgets", daemon=True).start()

    def refresh(self) -> None:
        try:
            self._stored = load_budgets(self._engine)
        except SQLAlchemyError as exc:
            log.warning("cannot refresh budgets (%s); using the last known set", exc.__class__.__name__)
        self._all = self._configured + self._stored

    def spend_since(self, budget: Budget, since: float) -> Decimal:
        return spend_since(self._engine, budget, since)

    def _loop(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self.refresh()

    def close(self) -> None:
        self._stop.set()
