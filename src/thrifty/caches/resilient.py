"""A shared cache store that is slow, down or returns garbage costs a request a miss, never an error or a wait.

Redis, a SQLite file another process holds locked, or PostgreSQL behind a stalled connection can each take far
longer than the model call the cache was meant to save, and a blocked socket may never answer at all. Every
lookup and store of a shared store therefore runs under a ``Breaker``: bounded by a timeout, and after a
failure the store is skipped outright for a cool-down (doubling while it keeps failing, up to a minute), after
which one call probes it again. A skipped lookup is a miss; a skipped store an answer not kept. Purges are never
skipped: an operator asking for one must hear that it failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger("thrifty.cache")
T = TypeVar("T")

LOOKUP_TIMEOUT_S = 1.0
"""A cache lookup slower than this is a miss: a hit is worth milliseconds, not seconds."""
STORE_TIMEOUT_S = 2.0
FIRST_COOLDOWN_S = 2.0
MAX_COOLDOWN_S = 60.0


class Breaker:
    """Skips a failing store for a while instead of paying its timeout on every request.

    Closed, it lets every call through; the first failure opens it for a cool-down. Calls already in flight when it
    opened may fail too: they do not lengthen it (a burst of timeouts is one outage, not ten). When the cool-down
    is over one call probes: its failure doubles the cool-down (up to ``MAX_COOLDOWN_S``), its success closes the
    breaker; the others skip meanwhile. A call's error that says nothing of the store's health (``trips`` false:
    one request's input refused) is that call's miss only.
    """

    def __init__(
        self,
        name: str,
        clock: Callable[[], float] = time.monotonic,
        trips: Callable[[Exception], bool] = lambda exc: True,
    ) -> None:
        self.name = name
        self._clock, self._trips = clock, trips
        self._until = 0.0
        self._cooldown = 0.0
        self._probing = False
        self.skipped = 0

    @property
    def open(self) -> bool:
        return self._probing or self._clock() < self._until

    async def call(self, make: Callable[[], Awaitable[T]], timeout_s: float | None, default: T, doing: str) -> T:
        """``make()``'s result, or ``default`` when the store is cooling down, fails or takes over ``timeout_s``
        (None: a store in this process, which cannot stall; its errors are still caught)."""
        if self.open:
            self.skipped += 1
            return default
        probe = self._probing = self._cooldown > 0
        try:
            if timeout_s is None:
                result = await make()
            else:
                async with asyncio.timeout(timeout_s):  # no task per call, as wait_for makes on Python 3.11
                    result = await make()
        except Exception as exc:  # TimeoutError, a driver's errors, a corrupt value: the cache is optional
            self._failed(exc, doing, probe)
            return default
        finally:
            if probe:
                self._probing = False
        if probe:
            self._cooldown, self._until = 0.0, 0.0
        return result

    def _failed(self, exc: Exception, doing: str, probe: bool) -> None:
        reason = "no answer in time" if isinstance(exc, TimeoutError) else f"{exc.__class__.__name__}: {exc}"
        if not self._trips(exc):
            log.warning("%s: %s (%s)", self.name, doing, reason)
            return
        if self._cooldown and not probe:
            return  # in flight when the breaker opened: the same outage
        self._cooldown = min(MAX_COOLDOWN_S, self._cooldown * 2 or FIRST_COOLDOWN_S)
        self._until = self._clock() + self._cooldown
        log.warning("%s unavailable (%s): %s; skipped for %.0f s", self.name, reason, doing, self._cooldown)
