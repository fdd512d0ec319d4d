"""Providers that keep failing are tried last for a while, so a dead target stops costing every request a
timeout. A cooled target is still tried when nothing else is left."""

from __future__ import annotations

import time
from collections.abc import Sequence

from thrifty.types import Target


class Cooldowns:
    def __init__(self, failures: int = 3, cooldown_s: float = 30.0) -> None:
        self._failures, self._cooldown_s = failures, cooldown_s
        self._streak: dict[Target, int] = {}
        self._until: dict[Target, float] = {}

    def order(self, targets: Sequence[Target]) -> list[Target]:
        if not self._until:
            return list(targets)
        now = time.monotonic()
        warm = [t for t in targets if self._until.get(t, 0.0) <= now]
        return warm + [t for t in targets if t not in warm]

    def in_tiers(self, targets: Sequence[Target]) -> list[Target]:
        """A cascade's tiers in their order, less cooling ones a later warm tier can stand in for.

        ``order`` would move a cooling cheap tier behind the strong one, and the cascade would then escalate
        downward and return the cheap answer unchecked.
        """
        if not self._until:
            return list(targets)
        now = time.monotonic()
        warm = [self._until.get(t, 0.0) <= now for t in targets]
        return [t for i, t in enumerate(targets) if warm[i] or not any(warm[i + 1 :])]

    def failed(self, target: Target) -> None:
        streak = self._streak.get(target, 0) + 1
        self._streak[target] = streak
        if streak >= self._failures:
            self._until[target] = time.monotonic() + self._cooldown_s

    def succeeded(self, target: Target) -> None:
        if target in self._streak:
            del self._streak[target]
            self._until.pop(target, None)

    def cooling_among(self, targets: Sequence[Target]) -> list[Target]:
        """Those of ``targets`` cooling now, unless it is all of them (then nothing was reordered)."""
        if not self._until:
            return []
        now = time.monotonic()
        cooling = [t for t in targets if self._until.get(t, 0.0) > now]
        return cooling if len(cooling) < len(targets) else []

    def cooling(self) -> list[Target]:
        now = time.monotonic()
        return [t for t, until in self._until.items() if until > now]
