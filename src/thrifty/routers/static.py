"""Routers that need no model: the configured order, and plain rules from config."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from thrifty.errors import UnknownModel
from thrifty.routers.pool import ModelInfo, eligible, needs_of
from thrifty.routers.tasks import task_of
from thrifty.tokens import TiktokenCounter
from thrifty.types import ChatRequest, Principal, Route, Target


class StaticRouter:
    """The configured targets of the requested alias, in order, less those lacking what the request needs.

    Over a pool (``tiers``) the order is the pool's, cheapest tier first, and the choice is routing: it names
    itself ``tiers`` (in ``x-thrifty-route``), and what it saves against the pool's strongest model is credited
    to the routing lever, not to fallbacks."""

    def __init__(
        self,
        aliases: Mapping[str, tuple[Target, ...]],
        info: Mapping[Target, ModelInfo] | None = None,
        counter: TiktokenCounter | None = None,
        tiers: bool = False,
    ) -> None:
        self._aliases, self._info, self._counter = dict(aliases), dict(info or {}), counter
        self._name, self._reason = ("tiers", "cheapest capable tier first") if tiers else ("static", "configured order")

    def route(self, request: ChatRequest, principal: Principal) -> Route:
        targets = self._aliases.get(request.model)
        if targets is None:
            raise unknown_model(request.model, self._aliases)
        if self._info and self._counter is not None:
            needs = needs_of(request, self._counter, targets[0].model)
            targets = tuple(eligible(targets, self._info, needs, request.model))
        return Route(targets, self._name, self._reason)


@dataclass(frozen=True, slots=True)
class Rule:
    use: Target
    feature: str | None = None
    tenant: str | None = None
    keywords: tuple[str, ...] = ()
    max_input_tokens: int | None = None
    min_input_tokens: int | None = None
    tasks: tuple[str, ...] = ()
    """``routers.tasks.task_of`` of the last turn must be one of these (any when empty)."""

    def matches(self, request: ChatRequest, principal: Principal, input_tokens: int, text: str, task: str = "") -> bool:
        """``task``: ``task_of(text)``, read once by the router for all its rules."""
        return (
            (self.feature is None or principal.feature == self.feature)
            and (self.tenant is None or principal.tenant == self.tenant)
            and (not self.keywords or any(k.lower() in text for k in self.keywords))
            and (not self.tasks or task in self.tasks)
            and (self.max_input_tokens is None or input_tokens <= self.max_input_tokens)
            and (self.min_input_tokens is None or input_tokens >= self.min_input_tokens)
        )

    def describe(self) -> str:
        parts = [f"{name}={value}" for name, value in (("feature", self.feature), ("tenant", self.tenant)) if value]
        if self.keywords:
            parts.append("keywords=" + "|".join(self.keywords))
        if self.tasks:
            parts.append("task=" + "|".join(self.tasks))
        if self.max_input_tokens is not None:
            parts.append(f"input<={self.max_input_tokens}")
        if self.min_input_tokens is not None:
            parts.append(f"input>={self.min_input_tokens}")
        return " ".join(parts) or "always"


class RulesRouter:
    """The first matching rule picks a target; the alias's others follow it as fallbacks."""

    def __init__(
        self, targets: Sequence[Target], rules: Sequence[Rule], default: Target, counter: TiktokenCounter
    ) -> None:
        self._targets, self._rules, self._default, self._counter = tuple(targets), list(rules), default, counter

    def route(self, request: ChatRequest, principal: Principal) -> Route:
        from thrifty.tokens import text_of

        last = request.messages[-1]
        text = text_of(last.get("content")).lower()
        tokens = self._counter.count_messages(self._default.model, request.messages)
        task = task_of(text) if any(rule.tasks for rule in self._rules) else ""
        for number, rule in enumerate(self._rules, start=1):
            if rule.matches(request, principal, tokens, text, task):
                return Route(_first(rule.use, self._targets), "rules", f"rule {number}: {rule.describe()}")
        return Route(_first(self._default, self._targets), "rules", "no rule matched: default")


def _first(chosen: Target, targets: tuple[Target, ...]) -> tuple[Target, ...]:
    return (chosen, *(t for t in targets if t != chosen))


def unknown_model(model: str, aliases: Mapping[str, object]) -> UnknownModel:
    known = ", ".join(sorted(aliases)) or "none configured"
    return UnknownModel(f"model {model!r} is not configured (models: {known})", param="model")
