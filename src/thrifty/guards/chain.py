"""``GuardChain``: the guard stage. Agent caps, then rate limits, then budgets; the first refusal wins.

Whatever was reserved is settled exactly once: to the real cost when the call ends, to zero when it fails or
the client goes away (the pipeline and the stream both settle in their ``finally``).
"""

from __future__ import annotations

from decimal import Decimal

from thrifty.guards.budgets import BudgetAdmission, BudgetGuard
from thrifty.guards.estimate import CostEstimator
from thrifty.guards.limits import AgentGuard, RateLimiter
from thrifty.types import ChatRequest, Cost, Principal, Usage


class ChainAdmission:
    def __init__(
        self,
        request: ChatRequest,
        budget: BudgetAdmission | None,
        limiter: RateLimiter | None,
        subjects: list[str],
        estimator: CostEstimator,
    ) -> None:
        self.request = request
        self._budget, self._limiter, self._subjects, self._estimator = budget, limiter, subjects, estimator
        self._settled = False

    async def settle(self, cost: Cost, usage: Usage | None = None, model: str = "") -> None:
        if self._settled:
            return
        self._settled = True
        if self._budget is not None:
            await self._budget.settle(cost.usd)
        if usage is not None:
            if self._limiter is not None:
                await self._limiter.count(self._subjects, usage, cost.usd)
            if model:
                self._estimator.observe_output(model, usage.output_tokens)


class GuardChain:
    def __init__(
        self,
        estimator: CostEstimator,
        budgets: BudgetGuard | None = None,
        limiter: RateLimiter | None = None,
        agents: AgentGuard | None = None,
    ) -> None:
        self.estimator = estimator
        self._budgets, self._limiter, self._agents = budgets, limiter, agents

    async def admit(self, request: ChatRequest, principal: Principal) -> ChainAdmission:
        if self._agents is not None:
            await self._agents.admit(request, principal)
        subjects = await self._limiter.admit(principal) if self._limiter is not None else []
        budget = None
        if self._budgets is not None:
            budget = await self._budgets.admit(request, principal)
            request = budget.request
        return ChainAdmission(request, budget, self._limiter, subjects, self.estimator)


ZERO = Cost(Decimal(0))
