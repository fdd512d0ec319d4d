"""The optimize stage switched off: the request goes out as the client sent it."""

from __future__ import annotations

from dataclasses import replace

from thrifty.optimizers.summarize import unpin_body
from thrifty.types import ChatRequest, Principal


class NoOptimizer:
    async def optimize(self, request: ChatRequest, principal: Principal) -> ChatRequest:
        body = unpin_body(request.body)  # a client's pin flags never reach a provider
        return request if body is request.body else replace(request, body=body)

    def plan_key(self, request: ChatRequest, principal: Principal) -> str:
        return ""
