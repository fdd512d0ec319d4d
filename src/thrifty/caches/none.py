"""The cache stage switched off: every lookup misses and nothing is stored."""

from __future__ import annotations

from thrifty.types import ChatRequest, ChatResponse, Principal


class NoCache:
    async def lookup(self, request: ChatRequest, principal: Principal, spend: bool = True) -> ChatResponse | None:
        return None

    async def store(
        self, request: ChatRequest, principal: Principal, response: ChatResponse, asked_at: float = 0.0
    ) -> None:
        return None

    def release(self, request: ChatRequest, principal: Principal) -> None:
        return None
