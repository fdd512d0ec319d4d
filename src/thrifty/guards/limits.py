"""Rate limits (per key and per tenant, shared by replicas through the store) and agent caps (per session).

Requests per minute are counted at admission, atomically with the check, so the limit holds exactly per window
on any number of replicas. Tokens and USD per minute are checked at admission and counted when the call is
settled (their real amounts are known only then): a window can pass them by what the requests already in
flight use, never more.

Agent caps stop a runaway agent: at most so many LLM calls per session in a window, at most so many tool
results in one conversation, and no tool call repeated with the same arguments ``loop_repeats`` times.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import orjson

from thrifty.errors import AgentCapReached, RateLimited
from thrifty.guards.stores import GuardStore, Window
from thrifty.ledger.tables import to_nusd
from thrifty.types import ChatRequest, Principal

MINUTE_S = 60
NO_LIMIT = 2**62
MAX_SUBJECTS = 4096


@dataclass(frozen=True, slots=True)
class RateLimit:
    scope: str
    """``key`` or ``tenant``."""
    scope_id: str
    """An id, or ``*`` for each key (or tenant) on its own."""
    rpm: int | None = None
    tpm: int | None = None
    usd_per_minute: Decimal | None = None

    def subject(self, principal: Principal) -> str | None:
        actual = principal.key_id if self.scope == "key" else principal.tenant
        if not actual or self.scope_id not in ("*", actual):
            return None
        return f"{self.scope}:{actual}"


@dataclass(frozen=True, slots=True)
class Settled:
    """A subject's windows that count a call's real tokens and USD when it is settled (None: not limited)."""

    tokens_key: str | None
    usd_key: str | None


class RateLimiter:
    def __init__(self, limits: Sequence[RateLimit], store: GuardStore) -> None:
        self._limits, self._store = list(limits), store
        self._by_principal: dict[tuple[str, str], tuple[list[Window], list[Settled]]] = {}

    def windows(self, principal: Principal) -> tuple[list[Window], list[Settled]]:
        """The windows to check and count now, and those to count when the call is settled.

        The same for every request of a key and tenant, so built once for each (callers must not change them).
        """
        cache_key = (principal.key_id, principal.tenant)
        found = self._by_principal.get(cache_key)
        if found is None:
            if len(self._by_principal) >= MAX_SUBJECTS:
                self._by_principal.clear()
            found = self._by_principal[cache_key] = self._build(principal)
        return found

    def _build(self, principal: Principal) -> tuple[list[Window], list[Settled]]:
        windows: list[Window] = []
        settled = []
        for index, limit in enumerate(self._limits):
            subject = limit.subject(principal)
            if subject is None:
                continue
            prefix = f"{index}:{subject}"
            if limit.rpm is not None:
                windows.append(Window(f"{prefix}:req", 1, limit.rpm, MINUTE_S))
            if limit.tpm is not None:
                windows.append(Window(f"{prefix}:tok", 0, limit.tpm - 1, MINUTE_S))
            if limit.usd_per_minute is not None:
                windows.append(Window(f"{prefix}:usd", 0, (to_nusd(limit.usd_per_minute) or 0) - 1, MINUTE_S))
            if limit.tpm is not None or limit.usd_per_minute is not None:
                tokens_key = f"{prefix}:tok" if limit.tpm is not None else None
                settled.append(Settled(tokens_key, f"{prefix}:usd" if limit.usd_per_minute is not None else None))
        return windows, settled

    @staticmethod
    def refusal(window: Window, retry_after_s: float) -> RateLimited:
        subject = window.key.split(":", 1)[1].rsplit(":", 1)[0]
        return RateLimited(
            f"rate limit reached for {subject}; retry in {retry_after_s:.1f} s", retry_after_s=retry_after_s
        )

    async def count(self, settled: Sequence[Settled], tokens: int, nusd: int) -> None:
        """Adds the call's tokens and nano-dollars to the windows that limit them (the others are never read)."""
        windows = []
        for subject in settled:
            if subject.tokens_key is not None and tokens:
                windows.append(Window(subject.tokens_key, tokens, NO_LIMIT, MINUTE_S))
            if subject.usd_key is not None and nusd:
                windows.append(Window(subject.usd_key, nusd, NO_LIMIT, MINUTE_S))
        if windows:
            await self._store.hit_window(windows)


@dataclass(frozen=True, slots=True)
class AgentCaps:
    max_calls: int | None = None
    max_tool_calls: int | None = None
    window_s: int = 3600
    loop_repeats: int | None = None


class AgentGuard:
    def __init__(self, caps: AgentCaps) -> None:
        self._caps = caps

    def windows(self, request: ChatRequest, principal: Principal) -> list[Window]:
        """Refuses loops and too many tool results now; returns the session's call-count window to check."""
        caps = self._caps
        if not principal.session:
            return []
        messages = request.messages
        if caps.loop_repeats is not None and any(m.get("tool_calls") for m in messages):
            repeats = Counter(_tool_calls(messages)).most_common(1)
            if repeats and repeats[0][1] >= caps.loop_repeats:
                name = repeats[0][0][0]
                raise AgentCapReached(
                    f"session {principal.session}: tool call {name} repeated {repeats[0][1]} times with the same "
                    "arguments; stopping a likely loop",
                    code="agent_loop_detected",
                )
        if caps.max_tool_calls is not None:
            tool_results = sum(1 for m in messages if m.get("role") in ("tool", "function"))
            if tool_results > caps.max_tool_calls:
                raise AgentCapReached(
                    f"session {principal.session}: {tool_results} tool calls, over the cap of {caps.max_tool_calls}"
                )
        if caps.max_calls is None:
            return []
        return [Window(f"agent:{principal.tenant}:{principal.session}", 1, caps.max_calls, caps.window_s)]

    def refusal(self, window: Window, retry_after_s: float) -> AgentCapReached:
        session = window.key.split(":", 2)[2]
        return AgentCapReached(
            f"session {session}: over the cap of {self._caps.max_calls} LLM calls per {self._caps.window_s} s",
            retry_after_s=retry_after_s,
        )


def _tool_calls(messages: Sequence[dict[str, object]]) -> list[tuple[str, bytes]]:
    calls = []
    for message in messages:
        for call in message.get("tool_calls") or []:  # type: ignore[attr-defined]
            function = call.get("function") or {}
            arguments = function.get("arguments") or ""
            try:
                canonical = orjson.dumps(orjson.loads(arguments), option=orjson.OPT_SORT_KEYS)
            except orjson.JSONDecodeError:
                canonical = str(arguments).encode()
            calls.append((str(function.get("name", "")), canonical))
    return calls
