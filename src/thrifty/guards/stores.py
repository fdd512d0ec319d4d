"""Atomic counters for the guards: in this process, or in Redis shared by replicas.

Two primitives, each atomic where it runs (one event loop here; one Lua script in Redis):

- ``reserve``: admit an amount against a limit counting what is spent *and* what is reserved by requests still
  in flight, so concurrent requests can never jointly overshoot; ``settle`` turns a reservation into spend;
  reservations expire, so a crashed request cannot hold budget forever.
- ``hit_window``: add to several fixed-window counters at once, all or none, refusing if any would pass its
  limit (agent caps per session, rate limits by key and tenant: one round trip for all of them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from thrifty.errors import GuardsUnavailable


@dataclass(frozen=True, slots=True)
class Window:
    key: str
    amount: int
    limit: int
    window_s: int


@dataclass(frozen=True, slots=True)
class Overflow:
    index: int
    """Which window refused."""
    retry_after_s: float


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    spent: int
    reserved: int
    missing: bool = False
    """Asked with ``SEEDED``, the store had no count for the key (Redis lost or expired it): nothing was done."""


SEEDED = -1
"""The seed to pass for a count seeded before: the store then never starts it (at zero) if it was lost, it says
``missing``, so that the caller can take the count again from the ledger."""


class GuardStore(Protocol):
    async def reserve(self, key: str, token: str, amount: int, limit: int, ttl_s: float, seed: int) -> Verdict: ...
    async def settle(self, key: str, token: str, actual: int) -> int:
        """Turn the reservation into ``actual`` of spend; the spend after it, or -1 if the count was lost."""
        ...

    async def extend(self, key: str, token: str, ttl_s: float) -> bool:
        """Keep a reservation for another ``ttl_s`` (a call still running); False if it is already gone."""
        ...

    async def hit_window(self, windows: Sequence[Window]) -> Overflow | None: ...
    async def reserved_total(self) -> int: ...


@dataclass
class _Account:
    spent: int
    reserved: int = 0
    """The sum of ``reservations``' amounts, kept as they come and go."""
    next_expiry: float = math.inf
    """No reservation expires before this: until then, nothing needs scanning."""
    reservations: dict[str, tuple[int, float]] = field(default_factory=dict)

    def live_reserved(self, now: float) -> int:
        if now >= self.next_expiry:
            for token in [t for t, (_, expires) in self.reservations.items() if expires <= now]:
                self.reserved -= self.reservations.pop(token)[0]
            self.next_expiry = min((expires for _, expires in self.reservations.values()), default=math.inf)
        return self.reserved


class MemoryGuardStore:
    """For one gateway process; every call runs to completion on the event loop, which makes it atomic."""

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}
        self._windows: dict[str, tuple[int, int]] = {}

    async def reserve(self, key: str, token: str, amount: int, limit: int, ttl_s: float, seed: int) -> Verdict:
        now = time.time()
        account = self._accounts.get(key)
        if account is None:
            if seed == SEEDED:
                return Verdict(False, 0, 0, missing=True)
            account = self._accounts[key] = _Account(seed)
        reserved = account.live_reserved(now)
        if account.spent + reserved + amount > limit:
            return Verdict(False, account.spent, reserved)
        expires = now + ttl_s
        previous = account.reservations.get(token)
        if previous is not None:  # the same token again replaces its reservation
            account.reserved -= previous[0]
        account.reservations[token] = (amount, expires)
        account.reserved += amount
        account.next_expiry = min(account.next_expiry, expires)
        return Verdict(True, account.spent, account.reserved)

    async def settle(self, key: str, token: str, actual: int) -> int:
        """Returns the spend after settling."""
        account = self._accounts.get(key)
        if account is None:
            account = self._accounts[key] = _Account(0)
        held = account.reservations.pop(token, None)
        if held is not None:
            account.reserved -= held[0]
        account.spent += actual
        return account.spent

    async def extend(self, key: str, token: str, ttl_s: float) -> bool:
        account = self._accounts.get(key)
        held = None if account is None else account.reservations.get(token)
        if account is None or held is None or held[1] <= time.time():
            return False
        account.reservations[token] = (held[0], time.time() + ttl_s)
        return True

    async def hit_window(self, windows: Sequence[Window]) -> Overflow | None:
        now = time.time()
        counters = self._windows
        previous: list[tuple[str, tuple[int, int] | None]] = []
        for index, w in enumerate(windows):
            number = int(now // w.window_s)
            held = counters.get(w.key)
            value = held[1] if held is not None and held[0] == number else 0
            if value + w.amount > w.limit:
                for key, counter in reversed(previous):  # all or none: undo the windows already counted
                    if counter is None:
                        del counters[key]
                    else:
                        counters[key] = counter
                return Overflow(index, (number + 1) * w.window_s - now)
            previous.append((w.key, held))
            counters[w.key] = (number, value + w.amount)
        return None

    async def reserved_total(self) -> int:
        now = time.time()
        return sum(account.live_reserved(now) for account in self._accounts.values())


# KEYS[1] spent, KEYS[2] reservations hash; ARGV token, amount, limit, expires_at, now, seed, key ttl
_RESERVE = """
if ARGV[6] == '-1' then
  if redis.call('EXISTS', KEYS[1]) == 0 then
    return {0, 0, 0, 1}
  end
else
  redis.call('SET', KEYS[1], ARGV[6], 'NX', 'EX', ARGV[7])
end
local spent = tonumber(redis.call('GET', KEYS[1]))
local reserved = 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local amount, expires = string.match(all[i + 1], '(%d+):([%d%.]+)')
  if tonumber(expires) <= tonumber(ARGV[5]) then
    redis.call('HDEL', KEYS[2], all[i])
  else
    reserved = reserved + tonumber(amount)
  end
end
if spent + reserved + tonumber(ARGV[2]) > tonumber(ARGV[3]) then
  return {0, spent, reserved, 0}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[7])
return {1, spent, reserved + tonumber(ARGV[2]), 0}
"""

# Spend counts even when the reservation already expired: the money was spent either way. A count Redis lost is
# not recreated from this one request's cost (it would hide the loss from the next reserve): -1 says it is gone.
_SETTLE = """
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
return redis.call('INCRBY', KEYS[1], ARGV[2])
"""

# KEYS[1] reservations hash; ARGV token, new expires_at, now, key ttl
_EXTEND = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held then
  return 0
end
local amount, expires = string.match(held, '(%d+):([%d%.]+)')
if tonumber(expires) <= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], amount .. ':' .. ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: counters (the window number is in the key); ARGV: amount, limit, ttl triples
_WINDOW = """
for i, key in ipairs(KEYS) do
  local current = tonumber(redis.call('GET', key) or '0')
  if current + tonumber(ARGV[3 * i - 2]) > tonumber(ARGV[3 * i - 1]) then
    return {i, redis.call('PTTL', key)}
  end
end
for i, key in ipairs(KEYS) do
  redis.call('INCRBY', key, ARGV[3 * i - 2])
  redis.call('EXPIRE', key, ARGV[3 * i])
end
return {0, 0}
"""

PREFIX = "thrifty:guard:"


class RedisGuardStore:
    """Shared by replicas: the limits hold across all of them, not per replica."""

    remote = True

    def __init__(self, url: str, key_ttl_s: int = 40 * 86400) -> None:
        import redis.asyncio as redis_asyncio

        self.url = url
        self._redis: Any = redis_asyncio.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._window = self._redis.register_script(_WINDOW)
        self._extend = self._redis.register_script(_EXTEND)
        self._key_ttl_s = key_ttl_s

    async def reserve(self, key: str, token: str, amount: int, limit: int, ttl_s: float, seed: int) -> Verdict:
        now = time.time()
        keys = [PREFIX + key + ":spent", PREFIX + key + ":res"]
        args: list[str | int] = [token, amount, limit, f"{now + ttl_s:.3f}", f"{now:.3f}", seed, self._key_ttl_s]
        ok, spent, reserved, missing = await _run(self._reserve, keys, args)
        return Verdict(bool(ok), int(spent), int(reserved), bool(missing))

    async def settle(self, key: str, token: str, actual: int) -> int:
        return int(await _run(self._settle, [PREFIX + key + ":spent", PREFIX + key + ":res"], [token, actual]))

    async def extend(self, key: str, token: str, ttl_s: float) -> bool:
        now = time.time()
        args: list[str | int] = [token, f"{now + ttl_s:.3f}", f"{now:.3f}", self._key_ttl_s]
        return bool(await _run(self._extend, [PREFIX + key + ":res"], args))

    async def hit_window(self, windows: Sequence[Window]) -> Overflow | None:
        now = time.time()
        keys = [f"{PREFIX}win:{w.key}:{int(now // w.window_s)}" for w in windows]
        args: list[int] = []
        for w in windows:
            args += [w.amount, w.limit, w.window_s + 1]
        index, pttl = await _run(self._window, keys, args)
        if int(index) == 0:
            return None
        return Overflow(int(index) - 1, max(int(pttl), 1) / 1000)

    async def reserved_total(self) -> int:
        total = 0
        async for name in self._redis.scan_iter(match=PREFIX + "*:res", count=1000):
            for value in (await self._redis.hgetall(name)).values():
                amount, expires = value.decode().split(":")
                if float(expires) > time.time():
                    total += int(amount)
        return total

    def ping(self) -> bool:
        """Whether Redis answers (``/readyz``; a blocking call, made off the event loop)."""
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    async def aclose(self) -> None:
        await self._redis.aclose()


async def _run(script: Any, keys: list[str], args: Sequence[str | int]) -> Any:
    """One script call; Redis out of reach is a clear, retryable 503 to the client, not an internal error."""
    from redis.exceptions import RedisError

    try:
        return await script(keys=keys, args=list(args))
    except RedisError as exc:
        raise GuardsUnavailable(
            "budgets and rate limits cannot be checked: their Redis store is unreachable; retry shortly"
        ) from exc
