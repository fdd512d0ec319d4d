"""The guard stage with no limits configured: admits everything, reserves nothing."""

from __future__ import annotations

from thrifty.types import ChatRequest, Cost, Principal


class NoReservation:
    def settle(self, cost: Cost) -> None:
        return None


class OpenGuard:
    def admit(self, request: ChatRequest, principal: Principal) -> NoReservation:
        return NoReservation()
