"""The configured targets of the requested alias, in order: the first that answers wins."""

from __future__ import annotations

from collections.abc import Mapping

from thrifty.errors import UnknownModel
from thrifty.types import ChatRequest, Principal, Route, Target


class StaticRouter:
    def __init__(self, aliases: Mapping[str, tuple[Target, ...]]) -> None:
        self._aliases = dict(aliases)

    def route(self, request: ChatRequest, principal: Principal) -> Route:
        targets = self._aliases.get(request.model)
        if targets is None:
            raise unknown_model(request.model, self._aliases)
        return Route(targets, "static", "configured order")


def unknown_model(model: str, aliases: Mapping[str, object]) -> UnknownModel:
    known = ", ".join(sorted(aliases)) or "none configured"
    return UnknownModel(f"model {model!r} is not configured (models: {known})", param="model")
