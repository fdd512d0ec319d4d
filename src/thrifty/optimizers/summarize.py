"""History summarization: older turns of a long conversation replaced by a running summary.

When the part of a conversation's history that is neither the system prompt, nor the last turns, nor pinned
passes ``after_tokens``, a cheap model (an alias of this gateway, called through the gateway itself, so its
cost is in the ledger and charged to the ``summarize`` lever) folds it into a summary. The summary is stored
per session (tenant + ``x-thrifty-session``, or the conversation's opening when there is no session id) with a
fingerprint of the messages it covers; the next turns reuse it while the client sends the same history, send
the turns that came after it verbatim, and extend it incrementally (old summary + the new turns, never the
whole history again) once those pass the threshold in turn. Conversations that share a key each keep their own
summary (up to ``PER_KEY``, found by the longest matching prefix); a client that edits the history gets a fresh
one. A store outage costs only the saving.

What stays verbatim, always: system and developer messages (at the start or later: a later one is an
instruction, not a turn to paraphrase), messages that carry images, audio or files (a summary is text: they
would be lost), the last ``keep_last_messages`` messages (moved back to a user message, so the kept part starts
where a provider expects one), any message the client marks ``"thrifty_pin": true`` (the flag is removed before
the request leaves), and tool results stay with the assistant message that called them. If the summarizer
fails or is refused (budget, rate limit), the request goes out unsummarized: the summary is an optimization,
never a reason to fail a request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from thrifty.errors import ThriftyError
from thrifty.tokens import TiktokenCounter, message_text
from thrifty.types import ChatRequest, ChatResponse, JsonObject, Principal

log = logging.getLogger("thrifty.summarize")

PIN = "thrifty_pin"
LEVER = "summarize"
SUMMARY_HEADER = "Summary of the earlier conversation (older turns, condensed by the gateway):\n"
_SYSTEM_ROLES = frozenset({"system", "developer"})
_INSTRUCTIONS = (
    "You maintain the running summary of a conversation between a user and an assistant, so that the assistant "
    "can continue it without the full transcript. Keep every fact, number, name, decision, constraint, open "
    "question and stated preference, and what the assistant has already answered or promised; drop greetings and "
    "filler. Write terse plain text, no preamble, at most {words} words."
)

Complete = Callable[[ChatRequest, Principal], Awaitable[ChatResponse]]
"""Calls a model through the gateway as the given principal (ledger row, guards, no optimize stage)."""


@dataclass(frozen=True, slots=True)
class SummarizePlan:
    after_tokens: int
    model: str
    """The alias of the cheap model that writes the summary."""
    keep_last_messages: int = 4
    max_summary_tokens: int = 400
    max_fold_tokens: int = 8000
    """At most this much history goes to the summarizer in one call (a long history is folded over several
    turns), so a first fold never exceeds the cheap model's context."""


@dataclass(frozen=True, slots=True)
class StoredSummary:
    covered: int
    """How many foldable messages (in order, pins excluded) the summary stands for."""
    fingerprint: str
    """A hash of those messages: the summary is reused only for the same history."""
    text: str


PER_KEY = 8
"""Summaries kept per session key: conversations that share a key (one session id, or one opening without a
session id) each keep their own, found by the longest history prefix that matches."""


def dump_summaries(summaries: Sequence[StoredSummary]) -> str:
    return json.dumps([{"covered": s.covered, "fingerprint": s.fingerprint, "text": s.text} for s in summaries])


def load_summaries(raw: str | bytes) -> list[StoredSummary]:
    return [StoredSummary(int(d["covered"]), str(d["fingerprint"]), str(d["text"])) for d in json.loads(raw)]


class SummaryStore(Protocol):
    async def get(self, key: str) -> list[StoredSummary]: ...
    async def put(self, key: str, summaries: list[StoredSummary]) -> None: ...


class MemorySummaryStore:
    """One process: the most recently used session keys, each for ``ttl_s``."""

    def __init__(self, max_sessions: int = 10_000, ttl_s: float = 86_400.0) -> None:
        self._items: OrderedDict[str, tuple[float, list[StoredSummary]]] = OrderedDict()
        self._max, self._ttl = max_sessions, ttl_s

    async def get(self, key: str) -> list[StoredSummary]:
        item = self._items.get(key)
        if item is None:
            return []
        if item[0] <= time.monotonic():
            del self._items[key]
            return []
        self._items.move_to_end(key)
        return item[1]

    async def put(self, key: str, summaries: list[StoredSummary]) -> None:
        self._items[key] = (time.monotonic() + self._ttl, summaries)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)


class RedisSummaryStore:
    """Shared by replicas: one JSON string per session key, with its TTL."""

    PREFIX = "thrifty:summary:"

    def __init__(self, url: str, ttl_s: float = 86_400.0) -> None:
        import redis.asyncio as redis_asyncio

        self._redis: Any = redis_asyncio.Redis.from_url(url)
        self._ttl = max(1, int(ttl_s))

    async def get(self, key: str) -> list[StoredSummary]:
        raw = await self._redis.get(self.PREFIX + key)
        return [] if raw is None else load_summaries(raw)

    async def put(self, key: str, summaries: list[StoredSummary]) -> None:
        await self._redis.set(self.PREFIX + key, dump_summaries(summaries), ex=self._ttl)

    async def aclose(self) -> None:
        await self._redis.aclose()


@dataclass(frozen=True, slots=True)
class Summarized:
    messages: list[JsonObject]
    tokens_saved: int
    """Prompt tokens removed from this request (the summarizer's own cost is recorded on its own row)."""
    called_model: bool


class HistorySummarizer:
    def __init__(self, counter: TiktokenCounter, store: SummaryStore | None = None) -> None:
        self._counter = counter
        self._store: SummaryStore = store or MemorySummaryStore()
        self._complete: Complete | None = None

    async def aclose(self) -> None:
        close = getattr(self._store, "aclose", None)
        if close is not None:
            await close()

    def bind(self, complete: Complete) -> None:
        """The gateway this summarizer calls its model through (set once the gateway exists)."""
        self._complete = complete

    async def summarize(
        self, request: ChatRequest, messages: list[JsonObject], principal: Principal, plan: SummarizePlan, model: str
    ) -> Summarized:
        """``messages`` with the older history folded into the session's summary, when it is long enough."""
        clean = [_unpinned(m) for m in messages]
        head = 0
        while head < len(messages) and messages[head].get("role") in _SYSTEM_ROLES:
            head += 1
        groups = _groups(messages, head)
        keep_from = _tail_start(messages, groups, plan.keep_last_messages)
        older = [g for g in groups if g[0] < keep_from]
        foldable = [i for start, end, pinned in older if not pinned for i in range(start, end)]
        unchanged = Summarized(clean, 0, False)
        if not foldable or self._complete is None:
            return unchanged
        key = _session_key(principal, messages, head)
        try:
            entries = await self._store.get(key)
        except Exception as exc:  # a store outage (Redis down, a damaged value) only costs the saving
            log.warning("history summary store unavailable (%s): request sent unsummarized", exc.__class__.__name__)
            return unchanged
        stored = _longest_match(entries, clean, foldable)
        covered = stored.covered if stored is not None else 0
        pending = foldable[covered:]
        called = False
        if self._counter.count_messages(model, [clean[i] for i in pending]) >= plan.after_tokens:
            chunk = _fold_chunk(clean, pending, plan.max_fold_tokens, self._counter, model)
            text = await self._fold(request, principal, plan, stored, [clean[i] for i in chunk])
            if text is not None:
                reach = covered + len(chunk)
                extended = StoredSummary(reach, _fingerprint(clean, foldable[:reach]), text)
                kept = [e for e in entries if e is not stored][: PER_KEY - 1]
                try:
                    await self._store.put(key, [extended, *kept])
                except Exception as exc:
                    log.warning("history summary not stored (%s)", exc.__class__.__name__)
                stored, covered, called = extended, reach, True
        if stored is None:
            return Summarized(clean, 0, called)
        folded = set(foldable[:covered])
        rest = [clean[i] for i in range(head, len(clean)) if i not in folded]
        # After the system prompt, providers such as Anthropic expect a user turn first: when a pinned assistant
        # turn would come first, the summary itself is that user turn.
        role = "system" if rest and rest[0].get("role") == "user" else "user"
        out = [*clean[:head], {"role": role, "content": SUMMARY_HEADER + stored.text}, *rest]
        saved = self._counter.count_messages(model, clean) - self._counter.count_messages(model, out)
        if saved <= 0:  # a summary longer than what it replaces: send the history as it was
            return Summarized(clean, 0, called)
        return Summarized(out, saved, called)

    async def _fold(
        self,
        request: ChatRequest,
        principal: Principal,
        plan: SummarizePlan,
        previous: StoredSummary | None,
        new: Sequence[JsonObject],
    ) -> str | None:
        assert self._complete is not None
        transcript = "\n\n".join(_line(m) for m in new)
        if previous is not None:
            ask = (
                f"Summary so far:\n{previous.text}\n\nNew turns to fold in:\n{transcript}\n\nWrite the updated summary."
            )
        else:
            ask = f"Conversation:\n{transcript}\n\nWrite the summary."
        words = max(20, plan.max_summary_tokens * 3 // 4)
        body: JsonObject = {
            "model": plan.model,
            "messages": [
                {"role": "system", "content": _INSTRUCTIONS.format(words=words)},
                {"role": "user", "content": ask},
            ],
            "max_tokens": plan.max_summary_tokens,
            "temperature": 0,
        }
        summary_request = ChatRequest(body, f"{request.request_id}.summary", cache_mode="bypass", charged_to=LEVER)
        try:
            response = await self._complete(summary_request, principal)
        except ThriftyError as exc:
            log.warning("history summary skipped for %s: %s", request.request_id, exc.message)
            return None
        choices = response.body.get("choices") or []
        text = message_text(choices[0].get("message") or {}).strip() if choices else ""
        if not text or (choices[0].get("finish_reason") == "length" and len(text) < 40):
            log.warning("history summary skipped for %s: the summarizer returned no usable text", request.request_id)
            return None
        return text


def unpin_body(body: JsonObject) -> JsonObject:
    """The client's ``thrifty_pin`` flags never reach a provider, whatever the plan (the same body if none)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(isinstance(m, dict) and PIN in m for m in messages):
        return body
    return {**body, "messages": [_unpinned(m) if isinstance(m, dict) else m for m in messages]}


def _unpinned(message: JsonObject) -> JsonObject:
    if PIN not in message:
        return message
    return {k: v for k, v in message.items() if k != PIN}


def _groups(messages: Sequence[JsonObject], head: int) -> list[tuple[int, int, bool]]:
    """``(start, end, pinned)`` units after the system prompt: a message and the tool results that answer it."""
    groups: list[tuple[int, int, bool]] = []
    for i in range(head, len(messages)):
        pinned = _kept_verbatim(messages[i])
        if groups and messages[i].get("role") == "tool":
            start, _, was = groups[-1]
            groups[-1] = (start, i + 1, was or pinned)
        else:
            groups.append((i, i + 1, pinned))
    return groups


def _kept_verbatim(message: JsonObject) -> bool:
    """Pinned by the client, an instruction (a system or developer message), or carrying media a text summary
    would drop."""
    if message.get(PIN) or message.get("role") in _SYSTEM_ROLES:
        return True
    content = message.get("content")
    return isinstance(content, list) and any(
        isinstance(part, dict) and part.get("type", "text") != "text" for part in content
    )


def _tail_start(messages: Sequence[JsonObject], groups: Sequence[tuple[int, int, bool]], keep: int) -> int:
    """Where the verbatim tail starts: at least ``keep`` messages, beginning with a user message."""
    if not groups:
        return len(messages)
    index = len(groups) - 1
    while index > 0 and (len(messages) - groups[index][0] < keep or messages[groups[index][0]].get("role") != "user"):
        index -= 1
    return groups[index][0]


def _fold_chunk(
    messages: Sequence[JsonObject], pending: Sequence[int], limit: int, counter: TiktokenCounter, model: str
) -> list[int]:
    """The oldest pending messages up to ``limit`` tokens (at least one), never leaving a tool result behind its
    call: what stays verbatim after the summary starts at a message that is not a tool result."""
    chunk: list[int] = []
    total = 0
    for i in pending:
        tokens = counter.count_messages(model, [messages[i]])
        if chunk and total + tokens > limit and messages[i].get("role") != "tool":
            break
        chunk.append(i)
        total += tokens
    return chunk


def _longest_match(
    entries: Sequence[StoredSummary], messages: Sequence[JsonObject], foldable: Sequence[int]
) -> StoredSummary | None:
    """The stored summary of the longest prefix of this history (None: none of them is this conversation's)."""
    wanted = {e.covered for e in entries if 0 < e.covered <= len(foldable)}
    if not wanted:
        return None
    running = _running_fingerprints(messages, foldable[: max(wanted)])
    prefixes = {n: fingerprint for n, fingerprint in enumerate(running, start=1) if n in wanted}
    matches = [e for e in entries if prefixes.get(e.covered) == e.fingerprint]
    return max(matches, key=lambda e: e.covered, default=None)


def _running_fingerprints(messages: Sequence[JsonObject], indexes: Sequence[int]) -> Iterator[str]:
    """The fingerprint of each prefix of ``messages[indexes]``, in one pass."""
    digest = hashlib.sha256()
    for i in indexes:
        digest.update(json.dumps(messages[i], sort_keys=True, separators=(",", ":")).encode())
        digest.update(b"\x1e")
        yield digest.hexdigest()[:32]


def _fingerprint(messages: Sequence[JsonObject], indexes: Sequence[int]) -> str:
    last = deque(_running_fingerprints(messages, indexes), maxlen=1)  # the whole is the last prefix
    return last[0] if last else hashlib.sha256().hexdigest()[:32]


def _session_key(principal: Principal, messages: Sequence[JsonObject], head: int) -> str:
    """Tenant and session id; without one, the conversation's opening (system prompt and first message)."""
    if principal.session:
        return f"{principal.tenant}\x1f{principal.session}"
    opening = _fingerprint([_unpinned(m) for m in messages], range(min(head + 1, len(messages))))
    return f"{principal.tenant}\x1f#{opening}"


def _line(message: JsonObject) -> str:
    role = str(message.get("role", "user"))
    name = message.get("name")
    who = f"{role} ({name})" if isinstance(name, str) and name else role
    calls = message.get("tool_calls")
    text = message_text({"content": message.get("content")})
    if isinstance(calls, list) and calls:
        names = ", ".join(
            f"{(c.get('function') or {}).get('name', '?')}({(c.get('function') or {}).get('arguments', '')})"
            for c in calls
            if isinstance(c, dict)
        )
        text = (text + "\n" if text else "") + f"[called tools: {names}]"
    return f"{who}: {text}"
