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
from thrifty.types import ChatRequest, Principal, Usage

MINUTE_S = 60
NO_LIMIT = 2**62


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


class RateLimiter:
    def __init__(self, limits: Sequence[RateLimit], store: GuardStore) -> None:
        self._limits, self._store = list(limits), store

    def windows(self, principal: Principal) -> tuple[list[Window], list[str]]:
        """The windows to check and count now, and the subjects whose token and USD windows settle later."""
        windows: list[Window] = []
        subjects = []
        for index, limit in enumerate(self._limits):
            subject = limit.subject(principal)
            if subject is None:
                continue
            subjects.append(f"{index}:{subject}")
            if limit.rpm is not None:
                windows.append(Window(f"{index}:{subject}:req", 1, limit.rpm, MINUTE_S))
            if limit.tpm is not None:
                windows.append(Window(f"{index}:{subject}:tok", 0, limit.tpm - 1, MINUTE_S))
            if limit.usd_per_minute is not None:
                windows.append(Window(f"{index}:{subject}:usd", 0, (to_nusd(limit.usd_per_minute) or 0) - 1, MINUTE_S))
        return windows, subjects

    @staticmethod
    def refusal(window: Window, retry_after_s: float) -> RateLimited:
        subject = window.key.split(":", 1)[1].rsplit(":", 1)[0]
        return RateLimited(
            f"rate limit reached for {subject}; retry in {retry_after_s:.1f} s", retry_after_s=retry_after_s
        )

    async def count(self, subjects: Sequence[str], usage: Usage, cost_usd: Decimal | None) -> None:
        if not subjects:
            return
        tokens, nusd = usage.input_tokens + usage.output_tokens, to_nusd(cost_usd) or 0
        windows = []
        for subject in subjects:
            windows += [
                Window(f"{subject}:tok", tokens, NO_LIMIT, MINUTE_S),
                Window(f"{subject}:usd", nusd, NO_LIMIT, MINUTE_S),
            ]
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
