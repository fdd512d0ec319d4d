"""``AliasRouter``: the routing stage. Each alias has its own router, built from config."""

from __future__ import annotations

from collections.abc import Mapping

from thrifty.protocols import Router
from thrifty.routers.static import unknown_model
from thrifty.types import ChatRequest, Principal, Route


class AliasRouter:
    def __init__(self, routers: Mapping[str, Router]) -> None:
        self._routers = dict(routers)

    def route(self, request: ChatRequest, principal: Principal) -> Route:
        router = self._routers.get(request.model)
        if router is None:
            raise unknown_model(request.model, self._routers)
        return router.route(request, principal)
