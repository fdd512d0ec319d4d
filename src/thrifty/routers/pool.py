"""What a request needs (tools, vision, JSON mode, context length) and which models of a pool can give it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from thrifty.errors import NotCapable
from thrifty.protocols import Router
from thrifty.tokens import TiktokenCounter
from thrifty.types import ChatRequest, Principal, Route, Target

ALL_CAPABILITIES = frozenset({"tools", "vision", "json"})


@dataclass(frozen=True, slots=True)
class ModelInfo:
    tier: int = 1
    context_window: int | None = None
    capabilities: frozenset[str] = ALL_CAPABILITIES


@dataclass(frozen=True, slots=True)
class Needs:
    capabilities: frozenset[str]
    tokens: int
    """Prompt tokens plus the output the request allows."""


def needs_of(request: ChatRequest, counter: TiktokenCounter, model: str) -> Needs:
    body = request.body
    wanted = set()
    if body.get("tools") or body.get("functions") or any(map(_is_tool_turn, request.messages)):
        # A conversation that already holds tool calls or their results needs a model that reads them, whether or
        # not this turn offers tools again: a model without tool use refuses such a history.
        wanted.add("tools")
    if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
        wanted.add("json")
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in content):
            wanted.add("vision")
            break
    output = int(body.get("max_completion_tokens") or body.get("max_tokens") or 0)
    return Needs(frozenset(wanted), counter.count_messages(model, request.messages) + output)


def _is_tool_turn(message: object) -> bool:
    if not isinstance(message, dict):
        return False
    if message.get("role") in ("tool", "function"):
        return True
    return bool(message.get("tool_calls") or message.get("function_call"))


def eligible(targets: Sequence[Target], info: Mapping[Target, ModelInfo], needs: Needs, alias: str) -> list[Target]:
    """The targets that can serve the request, in their order.

    A capability none of them is configured with is refused here (``NotCapable``, 400): the request must never
    go to a model said to lack it. A prompt too long for every window by our count goes to the models that have
    the capabilities: the count is an estimate (another provider's tokenizer), and a provider refuses an
    over-long prompt itself, free of charge, with its own exact count.
    """
    capable = [t for t in targets if needs.capabilities <= info.get(t, ModelInfo()).capabilities]
    if not capable:
        lacking = sorted({c for t in targets for c in needs.capabilities - info.get(t, ModelInfo()).capabilities})
        raise NotCapable(
            f"no model behind '{alias}' can take this request: it needs {' and '.join(lacking)}, which none of "
            f"{', '.join(str(t) for t in targets)} is configured with (the pool's capabilities)",
            param="model",
        )
    fit = []
    for target in capable:
        window = info.get(target, ModelInfo()).context_window
        if window is None or needs.tokens <= window:
            fit.append(target)
    return fit or capable


class EligibleRouter:
    """Another router's order less the targets lacking what the request needs.

    Rules, cascades and learned routers choose by cost and quality, not by what a model can take: a tool call,
    an image or a long prompt sent to a model without it is a 400, which is not retried, so the capable model
    after it would never be asked. Filtering the whole route also keeps such models out of fallbacks and
    cascade tiers; the order, the cascade's checks and the router's reason are kept.
    """

    def __init__(self, inner: Router, info: Mapping[Target, ModelInfo], counter: TiktokenCounter) -> None:
        self._inner, self._info, self._counter = inner, dict(info), counter

    def route(self, request: ChatRequest, principal: Principal) -> Route:
        route = self._inner.route(request, principal)
        if not any(target in self._info for target in route.targets):
            return route  # nothing known about these models: counting the prompt would tell nothing
        needs = needs_of(request, self._counter, route.targets[0].model)
        kept = tuple(eligible(route.targets, self._info, needs, request.model))
        if kept == route.targets:
            return route
        left_out = ", ".join(t.model for t in route.targets if t not in kept)
        return replace(route, targets=kept, reason=f"{route.reason}; left out {left_out} (cannot take this request)")
