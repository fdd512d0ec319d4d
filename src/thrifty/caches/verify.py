"""Measuring the semantic cache's false hits: a sample of semantic hits is also asked of the model.

The client already has the cached answer; in the background the same request goes to the model (the principal's
budgets pay for it, and refuse it when they cannot), and the two answers are compared. Agreement is a word-overlap
test (Jaccard of the answers' word sets at least 0.5): cheap, and a paraphrase served another question's answer
fails it by far. The verification call is a ledger row of its own (endpoint ``verify``, ``cache`` =
``verify-agree`` or ``verify-disagree``, its cost charged to the cache lever), so the false-hit rate per feature is
a query on the ledger, and a metric.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import replace
from typing import TYPE_CHECKING

from thrifty.accounting import Trace, settle
from thrifty.errors import ThriftyError
from thrifty.types import ChatRequest, ChatResponse, Cost, Principal

if TYPE_CHECKING:
    from thrifty.pipeline import Gateway

log = logging.getLogger("thrifty.cache")

AGREEMENT = 0.5
_WORDS = re.compile(r"\w+")


def answers_agree(cached: str, fresh: str) -> bool:
    a, b = set(_WORDS.findall(cached.lower())), set(_WORDS.findall(fresh.lower()))
    if not a and not b:
        return True
    return len(a & b) / len(a | b) >= AGREEMENT


class SemanticVerifier:
    def __init__(self, gateway: Gateway, share: float, rng: random.Random | None = None) -> None:
        self._gateway, self._share, self._rng = gateway, share, rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()

    def sample(self, request: ChatRequest, principal: Principal, cached: ChatResponse) -> None:
        if self._share <= 0 or self._rng.random() >= self._share:
            return
        task = asyncio.get_running_loop().create_task(self._verify(request, principal, cached))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _verify(self, request: ChatRequest, principal: Principal, cached: ChatResponse) -> None:
        from thrifty.pipeline import ZERO, output_text

        gateway = self._gateway
        trace = Trace(f"{request.request_id}.verify", "verify", request.model)
        trace.principal = principal
        try:
            # The principal's budgets pay for it, as for a history summary; rate limits ignore it.
            admission = await gateway.guard.admit(replace(request, charged_to="cache"), principal)
        except ThriftyError as exc:
            log.info("semantic hit not verified: %s", exc.message)  # a budget that cannot pay: no verification
            return
        cost: Cost | None = None
        answered_by = ""
        try:
            asked = admission.bounded(replace(admission.request, charged_to=""))  # within what the budget holds
            try:
                route = gateway.router.route(asked, principal)
                fresh = await gateway.caller.call(asked, route, trace)
            except ThriftyError as exc:
                log.warning("verifying a semantic hit failed: %s", exc.message)
                gateway.record_failure(trace, exc.error_type)  # like any failed call, with what it cost if anything
                return
            cost, answered_by = gateway.account(trace, asked, fresh), fresh.target.model
            agree = answers_agree(output_text(cached), output_text(fresh))
            trace.cache = "verify-agree" if agree else "verify-disagree"
            gateway.record(trace.entry("ok", cost, ZERO, savings={"cache": -cost.usd} if cost.usd else {}))
            gateway.metrics.verified(principal.feature, agree)
        finally:
            await settle(admission, cost or ZERO, trace, answered_by)  # zero releases the reservation

    async def drain(self) -> None:
        """Let the verifications in flight finish (at shutdown: their calls are paid for, their rows due)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
