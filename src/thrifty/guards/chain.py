"""``GuardChain``: the guard stage. Agent caps, then rate limits, then budgets; the first refusal wins.

Whatever was reserved is settled exactly once: to the real cost when the call ends, to zero when it fails or
the client goes away (the pipeline and the stream both settle in their ``finally``).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal

from thrifty.guards.budgets import BudgetAdmission, BudgetGuard, capped_body
from thrifty.guards.estimate import CostEstimator
from thrifty.guards.limits import AgentGuard, RateLimiter, Settled
from thrifty.guards.stores import GuardStore
from thrifty.ledger.tables import to_nusd
from thrifty.types import ChatRequest, Cost, Principal, Usage


class ChainAdmission:
    def __init__(
        self,
        request: ChatRequest,
        budget: BudgetAdmission | None,
        limiter: RateLimiter | None,
        subjects: list[Settled],
        estimator: CostEstimator,
        overlap: bool = False,
    ) -> None:
        self.request = request
        self._budget, self._limiter, self._subjects, self._estimator = budget, limiter, subjects, estimator
        self._settled = False
        self.remote = overlap
        """Settling makes round trips to a shared store (a client leaving mid-way could interrupt it)."""

    @property
    def output_allowance(self) -> int | None:
        """What a hard budget reserved for: a stream that runs past it is stopped, since nothing pays beyond it."""
        if self._budget is None or not self._budget.holds:
            return None
        return self._estimator.max_output_tokens(self.request)

    def bounded(self, request: ChatRequest) -> ChatRequest:
        """``request`` (as the optimizers left it) asking for no more output than a hard budget reserved for: one
        sent without ``max_tokens`` was reserved at the default cap, and nothing would stop it past that."""
        allowance = self.output_allowance
        if allowance is None:
            return request
        per_choice = max(allowance // int(request.body.get("n") or 1), 1)
        asked = request.body.get("max_completion_tokens") or request.body.get("max_tokens")
        if asked is not None and int(asked) <= per_choice:
            return request
        return replace(request, body=capped_body(request.body, per_choice))

    async def extend(self) -> None:
        if self._budget is not None and not self._settled:
            await self._budget.extend()

    async def settle(
        self, cost: Cost, usage: Usage | None = None, model: str = "", model_output: int | None = None
    ) -> None:
        if self._settled:
            return
        self._settled = True
        actual_nusd = to_nusd(cost.usd) or 0
        limiter, tokens = None, 0
        if usage is not None:
            limiter = self._limiter if self._subjects else None
            tokens = usage.input_tokens + usage.output_tokens
            if model:
                self._estimator.observe_output(model, usage.output_tokens if model_output is None else model_output)
        if self._budget is not None and limiter is not None and self.remote:
            # overlapping round trips to a shared store
            await asyncio.gather(self._budget.settle(actual_nusd), limiter.count(self._subjects, tokens, actual_nusd))
            return
        if self._budget is not None:
            await self._budget.settle(actual_nusd)
        if limiter is not None:
            await limiter.count(self._subjects, tokens, actual_nusd)


class GuardChain:
    def __init__(
        self,
        estimator: CostEstimator,
        store: GuardStore,
        budgets: BudgetGuard | None = None,
        limiter: RateLimiter | None = None,
        agents: AgentGuard | None = None,
    ) -> None:
        self.estimator, self._store = estimator, store
        self._budgets, self._limiter, self._agents = budgets, limiter, agents
        self._remote = bool(getattr(store, "remote", False))

    async def admit(self, request: ChatRequest, principal: Principal) -> ChainAdmission:
        if request.charged_to:  # the gateway's own call (a history summary): budgets pay for it, limits ignore it
            return await self._admit_budget_only(request, principal)
        agent_windows = self._agents.windows(request, principal) if self._agents is not None else []
        rate_windows, subjects = self._limiter.windows(principal) if self._limiter is not None else ([], [])
        windows = agent_windows + rate_windows if agent_windows else rate_windows
        if windows:
            overflow = await self._store.hit_window(windows)  # agent caps and rate limits in one round trip
            if overflow is not None:
                window = windows[overflow.index]
                if overflow.index < len(agent_windows) and self._agents is not None:
                    raise self._agents.refusal(window, overflow.retry_after_s)
                raise RateLimiter.refusal(window, overflow.retry_after_s)
        budget = None
        if self._budgets is not None:
            budget = await self._budgets.admit(request, principal)
            request = budget.request
        return ChainAdmission(request, budget, self._limiter, subjects, self.estimator, self._remote)

    async def _admit_budget_only(self, request: ChatRequest, principal: Principal) -> ChainAdmission:
        budget = await self._budgets.admit(request, principal) if self._budgets is not None else None
        return ChainAdmission(budget.request if budget else request, budget, None, [], self.estimator, self._remote)


ZERO = Cost(Decimal(0))
