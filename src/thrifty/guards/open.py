"""The guard stage with no limits configured: admits everything, reserves nothing."""

from __future__ import annotations

from dataclasses import dataclass

from thrifty.types import ChatRequest, Cost, Principal, Usage


@dataclass(frozen=True, slots=True)
class NoReservation:
    request: ChatRequest

    async def settle(self, cost: Cost, usage: Usage | None = None, model: str = "") -> None:
        return None


class OpenGuard:
    async def admit(self, request: ChatRequest, principal: Principal) -> NoReservation:
        return NoReservation(request)
