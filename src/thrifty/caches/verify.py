"""Measuring the semantic cache's false hits: a sample of semantic hits is also asked of the model.

The client already has the cached answer; in the background the same request goes to the model (the principal's
budgets pay for it, and refuse it when they cannot), and the two answers are compared (``answers_agree``): first
for the contradictions a false hit leaves in a short answer (numbers with none in common, opposite words, each
naming what the other does not: "Paris" / "Berlin"), then by meaning, the cosine of the two answers under the
cache's own embedder at least 0.75 (a word-overlap test, Jaccard 0.5, without one). The verification call is a
ledger row of its own (endpoint ``verify``, ``cache`` = ``verify-agree`` or ``verify-disagree``, its cost charged
to the cache lever), so the false-hit rate per feature is a query on the ledger, and a metric.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import replace
from typing import TYPE_CHECKING

from thrifty.accounting import Trace, settle
from thrifty.caches.text_signals import signals
from thrifty.errors import ThriftyError
from thrifty.types import ChatRequest, ChatResponse, Cost, Payload, Principal

if TYPE_CHECKING:
    from thrifty.pipeline import Gateway

log = logging.getLogger("thrifty.cache")

AGREEMENT = 0.5
"""Without an embedder: the Jaccard of the answers' word sets that counts as the same answer."""
AGREEMENT_COSINE = 0.75
_WORDS = re.compile(r"\w+")


def answers_agree(cached: str, fresh: str, cosine: float | None = None) -> bool:
    """Whether the fresh answer says what the cached one said: no contradiction, and close in meaning."""
    if not cached.strip() or not fresh.strip():
        return not cached.strip() and not fresh.strip()
    if contradiction(cached, fresh):
        return False
    if cosine is not None:
        return cosine >= AGREEMENT_COSINE
    a, b = set(_WORDS.findall(cached.lower())), set(_WORDS.findall(fresh.lower()))
    return len(a & b) / len(a | b) >= AGREEMENT


CONTRADICTION_MAX_WORDS = 40
"""Answers longer than this are compared by meaning only: in a paragraph, incidental numbers, names and opposite
words ("before" / "after") differ between two correct answers (and the comparison grows with the square of the
length)."""


def contradiction(cached: str, fresh: str) -> str:
    """What two short answers to one question disagree on, as the semantic guards read questions: numbers with none
    in common, an opposite word, or each naming what the other does not; empty when nothing (or when either answer
    is longer than ``CONTRADICTION_MAX_WORDS``)."""
    if max(len(cached.split()), len(fresh.split())) > CONTRADICTION_MAX_WORDS:
        return ""
    found = signals(cached, fresh, 0.0)
    numbers = found.numbers
    # The answer's figure (45 dollars / 120 dollars), not a list's numbering against a duration.
    if 0 < len(numbers[0]) <= 2 and 0 < len(numbers[1]) <= 2 and not numbers[0] & numbers[1]:
        return "numbers"
    if found.antonym is not None:
        return "opposites"
    if all(found.distinct_names):
        return "names"
    return ""


def verified_payload(request: ChatRequest, cached: ChatResponse, cached_text: str, fresh: str) -> Payload:
    """A verification's captured payload: what was asked, the stored question the hit answered and its score, the
    cached answer; the fresh answer as the answer. ``thrifty cache verified`` turns these into labelled pairs."""
    question, score = cached.matched or ("", None)
    body = {k: v for k, v in request.body.items() if k not in ("stream", "stream_options")}
    asked = {"asked": body, "cached_query": question, "score": score, "cached_answer": cached_text}
    return Payload(asked, fresh)


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
            # As a miss would have asked: the feature's optimizers (caps, stop sequences, pruning) shape the answer
            # the cached one is compared with, within what the budget holds.
            optimized = await gateway.optimizer.optimize(replace(admission.request, charged_to=""), principal)
            asked = admission.bounded(optimized)
            try:
                route = gateway.router.route(asked, principal)
                fresh = await gateway.caller.call(asked, route, trace)
            except ThriftyError as exc:
                log.warning("verifying a semantic hit failed: %s", exc.message)
                gateway.record_failure(trace, exc.error_type)  # like any failed call, with what it cost if anything
                return
            cost, answered_by = gateway.account(trace, asked, fresh), fresh.target.model
            cached_text, fresh_text = output_text(cached), output_text(fresh)
            agree = await self._agree(cached_text, fresh_text)
            trace.cache = "verify-agree" if agree else "verify-disagree"
            savings = {"cache": -cost.usd} if cost.usd else {}
            payload = verified_payload(request, cached, cached_text, fresh_text) if gateway.capture_payloads else None
            gateway.record(trace.entry("ok", cost, ZERO, savings=savings, payload=payload))
            gateway.metrics.verified(principal.feature, agree)
        finally:
            await settle(admission, cost or ZERO, trace, answered_by)  # zero releases the reservation

    async def _agree(self, cached: str, fresh: str) -> bool:
        """``answers_agree`` with the cosine of the two answers under the semantic cache's embedder (a remote one
        is paid for and in the ledger, as for lookups); without it, or when it fails, word overlap."""
        embedder = getattr(getattr(self._gateway.cache, "semantic", None), "embedder", None)
        cosine = None
        if embedder is not None and cached.strip() and fresh.strip():
            try:
                vectors = await asyncio.to_thread(embedder.embed, [cached, fresh])
                cosine = float(vectors[0] @ vectors[1])
            except Exception as exc:  # the verification still counts, on word overlap
                log.warning("verifying a semantic hit: the answers could not be embedded (%s)", exc)
        return answers_agree(cached, fresh, cosine)

    async def drain(self) -> None:
        """Let the verifications in flight finish (at shutdown: their calls are paid for, their rows due)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
