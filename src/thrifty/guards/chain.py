"""``GuardChain``: the guard stage. Agent caps, then rate limits, then budgets; the first refusal wins.

Whatever was reserved is settled exactly once: to the real cost when the call ends, to zero when it fails or
the client goes away (the pipeline and the stream both settle in their ``finally``).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from thrifty.guards.budgets import BudgetAdmission, BudgetGuard
from thrifty.guards.estimate import CostEstimator
from thrifty.guards.limits import AgentGuard, RateLimiter
from thrifty.guards.stores import GuardStore
from thrifty.types import ChatRequest, Cost, Principal, Usage


class ChainAdmission:
    def __init__(
        self,
        request: ChatRequest,
        budget: BudgetAdmission | None,
        limiter: RateLimiter | None,
        subjects: list[str],
        estimator: CostEstimator,
        overlap: bool = False,
    ) -> None:
        self.request = request
        self._budget, self._limiter, self._subjects, self._estimator = budget, limiter, subjects, estimator
        self._settled = False
        self._overlap = overlap
        # What a hard budget reserved for: a stream that runs past it is stopped, since nothing pays beyond it.
        self.output_allowance = estimator.max_output_tokens(request) if budget is not None and budget.holds else None

    async def settle(self, cost: Cost, usage: Usage | None = None, model: str = "") -> None:
        if self._settled:
            return
        self._settled = True
        pending = []
        if self._budget is not None:
            pending.append(self._budget.settle(cost.usd))
        if usage is not None:
            if self._limiter is not None and self._subjects:
                pending.append(self._limiter.count(self._subjects, usage, cost.usd))
            if model:
                self._estimator.observe_output(model, usage.output_tokens)
        if len(pending) > 1 and self._overlap:
            await asyncio.gather(*pending)  # overlapping round trips to a shared store
        else:
            for step in pending:
                await step


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

    async def admit(self, request: ChatRequest, principal: Principal) -> ChainAdmission:
        agent_windows = self._agents.windows(request, principal) if self._agents is not None else []
        rate_windows, subjects = self._limiter.windows(principal) if self._limiter is not None else ([], [])
        windows = agent_windows + rate_windows
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
        remote = getattr(self._store, "remote", False)
        return ChainAdmission(request, budget, self._limiter, subjects, self.estimator, remote)


ZERO = Cost(Decimal(0))
