"""``OptimizerChain``: the optimize stage. History summary, hygiene, pruning, compression, then output caps.

Each step that shortens the prompt says by how many tokens, and the ledger credits each lever with those
tokens at the price of the model that answered. The original request is kept by the pipeline for the cache
and the baseline. Settings apply to every feature unless ``[optimize.features.NAME]`` replaces them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

from thrifty.optimizers.compress import compress_messages
from thrifty.optimizers.hygiene import clean_messages
from thrifty.optimizers.prune import prune_messages
from thrifty.optimizers.summarize import HistorySummarizer, SummarizePlan, unpin_body
from thrifty.tokens import TiktokenCounter
from thrifty.types import ChatRequest, JsonObject, Principal, Target


@dataclass(frozen=True, slots=True)
class OptimizePlan:
    hygiene: bool = False
    prune_budget_tokens: int | None = None
    compress_ratio: float | None = None
    latest_turn_only: bool = False
    """Pruning rewrites only the latest turn's context."""
    default_max_tokens: int | None = None
    max_tokens_limit: int | None = None
    summarize: SummarizePlan | None = None
    stop: tuple[str, ...] = ()
    compress_latest_turn_only: bool = False

    @property
    def rewrites_prompt(self) -> bool:
        return (
            self.hygiene
            or self.prune_budget_tokens is not None
            or self.compress_ratio is not None
            or self.summarize is not None
        )


NO_PLAN = OptimizePlan()


class OptimizerChain:
    def __init__(
        self,
        plan: OptimizePlan,
        features: Mapping[str, OptimizePlan],
        aliases: Mapping[str, tuple[Target, ...]],
        counter: TiktokenCounter,
        summarizer: HistorySummarizer | None = None,
        models: Mapping[str, OptimizePlan] | None = None,
    ) -> None:
        self._plan, self._features, self._aliases, self._counter = plan, dict(features), aliases, counter
        self._models = dict(models or {})
        self.summarizer = summarizer or HistorySummarizer(counter)

    def _plan_for(self, request: ChatRequest, principal: Principal) -> OptimizePlan:
        return self._features.get(principal.feature) or self._models.get(request.model) or self._plan

    def plan_key(self, request: ChatRequest, principal: Principal) -> str:
        if request.charged_to:
            return ""
        return _plan_digest(self._plan_for(request, principal))

    async def optimize(self, request: ChatRequest, principal: Principal) -> ChatRequest:
        if request.charged_to:  # the gateway's own call (a summary): sent as written
            return request
        plan = self._plan_for(request, principal)
        body = unpin_body(request.body)
        body = _capped(body, plan)
        saved: list[tuple[str, int]] = []
        if plan.rewrites_prompt:
            model = self._aliases[request.model][0].model
            messages = list(body["messages"])
            if plan.summarize is not None:  # it reads the client's pins (and removes them)
                pinned = list(request.messages)
                summary = await self.summarizer.summarize(request, pinned, principal, plan.summarize, model)
                messages = _note(saved, "summarize", summary.tokens_saved, summary.messages)
            if plan.hygiene:
                cleaned = clean_messages(messages, self._counter, model)
                messages = _note(saved, "hygiene", cleaned.tokens_before - cleaned.tokens_after, cleaned.messages)
            if plan.prune_budget_tokens is not None:
                pruned = prune_messages(
                    messages, plan.prune_budget_tokens, self._counter, model, latest_turn_only=plan.latest_turn_only
                )
                messages = _note(saved, "prune", pruned.tokens_saved, pruned.messages)
            if plan.compress_ratio is not None:
                squeezed = compress_messages(
                    messages,
                    plan.compress_ratio,
                    self._counter,
                    model,
                    latest_turn_only=plan.compress_latest_turn_only,
                )
                messages = _note(saved, "compress", squeezed.tokens_before - squeezed.tokens_after, squeezed.messages)
            body = {**body, "messages": messages}
        if body is request.body:
            return request
        return replace(request, body=body, saved_tokens=tuple(saved))


@functools.lru_cache(maxsize=256)
def _plan_digest(plan: OptimizePlan) -> str:
    """The cache's key for a plan ("" for none): computed once per plan, not per request."""
    return "" if plan == NO_PLAN else hashlib.sha256(repr(plan).encode()).hexdigest()[:32]


def _note(saved: list[tuple[str, int]], lever: str, tokens: int, messages: list[JsonObject]) -> list[JsonObject]:
    if tokens > 0:
        saved.append((lever, tokens))
    return messages


def _capped(body: JsonObject, plan: OptimizePlan) -> JsonObject:
    """A default ``max_tokens`` where the client set none, a ceiling on the one it set, default stop sequences."""
    if plan.stop and not body.get("stop"):
        body = {**body, "stop": list(plan.stop)}
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    cap = asked or plan.default_max_tokens
    if cap is not None and plan.max_tokens_limit is not None:
        cap = min(int(cap), plan.max_tokens_limit)
    if cap is None or cap == asked:
        return body
    field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    return {**body, field: cap}
