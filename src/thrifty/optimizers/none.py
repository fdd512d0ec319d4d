"""The optimize stage switched off: the request goes out as the client sent it."""

from __future__ import annotations

from thrifty.types import ChatRequest, Principal


class NoOptimizer:
    async def optimize(self, request: ChatRequest, principal: Principal) -> ChatRequest:
        return request
