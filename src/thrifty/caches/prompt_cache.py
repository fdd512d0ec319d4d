"""Provider-side prompt caching: make the stable prefix of a prompt cacheable, and say what breaks it.

Anthropic caches a prompt prefix only where the request marks it (``cache_control``) and only if the prefix is
long enough; reads then cost a tenth of input, writes a quarter more. OpenAI caches prefixes of 1,024+ tokens by
itself, and ``prompt_cache_key`` steers requests that share a prefix to the same cache. The lint names what
makes a prefix change from one request to the next: timestamps, ids and other volatile text early in the
prompt, and tools sent in a different order each time.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from thrifty.caches.volatile import changes_every_request, find_volatile, stable_head
from thrifty.tokens import TiktokenCounter, text_of
from thrifty.types import JsonObject

log = logging.getLogger(__name__)
EPHEMERAL = {"type": "ephemeral"}
MAX_BREAKPOINTS = 4
# Anthropic's documented minimum cacheable prefix: 4,096 tokens on Opus 4.5 and 4.6 and on Haiku 4.5, 2,048 on
# the older Haiku models, 1,024 on the others. Below it a breakpoint is ignored (no error, no cost).
_MIN_4096 = re.compile(r"opus-4[-.][56]|haiku-4[-.]5")
MIN_TOKENS_HAIKU = 2048
MIN_TOKENS = 1024


def min_cacheable_tokens(model: str) -> int:
    name = model.lower()
    if _MIN_4096.search(name):
        return 4096
    return MIN_TOKENS_HAIKU if "haiku" in name else MIN_TOKENS


def add_cache_breakpoints(body: JsonObject, model: str, counter: TiktokenCounter) -> JsonObject:
    """Mark the end of the tools, of the system prompt and of the history before the last user turn, each
    where the prefix up to it is long enough to be cached. A request that already marks anything is the
    client's to manage and is left alone."""
    if _has_breakpoint(body):
        return body
    out = dict(body)
    system = out.get("system")
    # A system prompt that changes on every request (a timestamp, an id) would be written to the cache each time
    # at 1.25x the input price and never read: only the tools before it are worth marking then.
    volatile = bool(system) and changes_every_request(text_of(system))
    minimum, prefix, used = min_cacheable_tokens(model), 0, 0
    tools = out.get("tools")
    if tools:
        prefix += counter.count_text(model, orjson.dumps(tools).decode())
        if prefix >= minimum:
            out["tools"] = [*tools[:-1], {**tools[-1], "cache_control": EPHEMERAL}]
            used += 1
    if system:
        blocks = [{"type": "text", "text": system}] if isinstance(system, str) else list(system)
        prefix += counter.count_text(model, text_of(blocks))
        if volatile:
            return out
        if prefix >= minimum:
            out["system"] = [*blocks[:-1], {**blocks[-1], "cache_control": EPHEMERAL}]
            used += 1
    messages = list(out.get("messages") or [])
    if len(messages) >= 3 and used < MAX_BREAKPOINTS:
        prefix += sum(counter.count_text(model, text_of(m.get("content"))) for m in messages[:-1])
        if prefix >= minimum:
            messages[-2] = _mark_last_block(messages[-2])
            out["messages"] = messages
    return out


def _has_breakpoint(body: JsonObject) -> bool:
    """The client marks its own breakpoints: on a tool, a system block or a message's content block (not the word
    anywhere: a tool whose schema has a ``cache_control`` property marks nothing)."""
    system = body.get("system")
    blocks = [*(body.get("tools") or []), *(system if isinstance(system, list) else [])]
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        blocks.extend(content if isinstance(content, list) else [])
    return any(isinstance(block, dict) and "cache_control" in block for block in blocks)


def _mark_last_block(message: JsonObject) -> JsonObject:
    content = message.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
    if not blocks:
        return message
    return {**message, "content": [*blocks[:-1], {**blocks[-1], "cache_control": EPHEMERAL}]}


KEY_HEAD_CHARS = 4096
"""The part of the first system prompt the key reads: about the first 1,024 tokens, the least OpenAI caches."""


def prompt_cache_key(body: JsonObject) -> str:
    """Requests that share a prefix share a key, so OpenAI routes them to one cache: the tools and the stable head
    of the first system (or developer) message, up to the first text that changes between requests (a
    timestamp, an id). Later system messages, and what follows the changing text, are no part of a shared
    prefix: in the key, they gave every request its own and scattered traffic that would have landed together."""
    messages = body.get("messages") or []
    first = messages[0] if messages and isinstance(messages[0], dict) else {}
    head = text_of(first.get("content")) if first.get("role") in ("system", "developer") else ""
    digest = hashlib.sha256(
        orjson.dumps([body.get("tools"), stable_head(head[:KEY_HEAD_CHARS])], option=orjson.OPT_SORT_KEYS)
    )
    return "thrifty-" + digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class PrefixFinding:
    where: str
    what: str
    excerpt: str
    at: int | None = None
    """Characters of ``where`` before it (what comes before can still be cached); None: not a place in a text."""


def lint_prefix(messages: Sequence[JsonObject], system: Any = None) -> list[PrefixFinding]:
    """What in the stable prefix (an Anthropic body's ``system``, the system prompt and earlier turns) changes
    between requests."""
    findings = _volatile("system", text_of(system)) if system else []
    for index, message in enumerate(messages[:-1] if len(messages) > 1 else messages):
        findings += _volatile(f"messages[{index}] ({message.get('role')})", text_of(message.get("content")))
    return findings


def tool_names(tools: Any) -> tuple[str, ...]:
    return tuple(str((t.get("function") or t).get("name", "")) for t in tools or [] if isinstance(t, dict))


def tool_order_changes(requests_tools: Sequence[Any]) -> list[PrefixFinding]:
    """Requests sending the same tools in different orders (each order is another prefix): one finding a set."""
    first: dict[frozenset[str], tuple[str, ...]] = {}
    findings = []
    for index, tools in enumerate(requests_tools):
        names = tool_names(tools)
        seen = first.setdefault(frozenset(names), names)
        if names and seen != names:
            findings.append(_reordered(f"tools of request {index + 1}", seen, names))
            first[frozenset(names)] = names
    return findings


def _reordered(where: str, before: tuple[str, ...], now: tuple[str, ...]) -> PrefixFinding:
    return PrefixFinding(where, "tools in a different order", f"{', '.join(before)} then {', '.join(now)}")


def _volatile(where: str, text: str) -> list[PrefixFinding]:
    findings = []
    for found in find_volatile(text):
        excerpt = text[max(found.start - 20, 0) : found.end + 20].replace("\n", " ")
        findings.append(PrefixFinding(where, found.what, excerpt, found.start))
    return findings


class PrefixWatch:
    """The lint at run time: a provider with prompt caching on hands it each request, and what in the stable prefix
    (the system prompt, the tools) would change from one request to the next is logged as a warning, at most once
    every ``every_s`` per model and kind of finding. Each distinct prefix is read once (an LRU of their digests),
    so a stable prompt costs one hash a request; a prompt that carries a timestamp is new every time, and read."""

    def __init__(self, every_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self._clock = every_s, clock
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._warned: dict[tuple[str, str, str], float] = {}
        self._tool_orders: OrderedDict[frozenset[str], tuple[str, ...]] = OrderedDict()
        """The order each set of tools came in first: another order of the same set is another prefix."""

    def check(self, body: JsonObject, model: str) -> list[PrefixFinding]:
        """The findings logged now (most calls: none)."""
        system = [m for m in body.get("messages") or [] if m.get("role") in ("system", "developer")]
        tools = body.get("tools")
        digest = hashlib.sha256(orjson.dumps([tools, [m.get("content") for m in system]])).digest()
        if digest in self._seen:
            self._seen.move_to_end(digest)
            return []
        self._seen[digest] = None
        if len(self._seen) > 1024:
            self._seen.popitem(last=False)
        findings = [f for m in system for f in _volatile("system prompt", text_of(m.get("content")))]
        findings += _volatile("system prompt", text_of(body.get("system"))) if body.get("system") else []
        findings += self._tools_reordered(tool_names(tools if isinstance(tools, list) else None))
        now, logged = self._clock(), []
        for finding in findings:
            key = (model, finding.where, finding.what)
            if now - self._warned.get(key, -self.every_s) >= self.every_s:
                self._warned[key] = now
                logged.append(finding)
                # Not the excerpt: a system prompt may hold what the payload settings keep out of logs.
                log.warning(
                    "prompt caching for %s: a %s in the %s changes the cached prefix between requests "
                    "(thrifty lint on the prompt shows where)",
                    model,
                    finding.what,
                    finding.where,
                )
        return logged

    def _tools_reordered(self, names: tuple[str, ...]) -> list[PrefixFinding]:
        if not names:
            return []
        key = frozenset(names)
        seen = self._tool_orders.setdefault(key, names)
        self._tool_orders.move_to_end(key)
        if len(self._tool_orders) > 1024:
            self._tool_orders.popitem(last=False)
        if seen == names:
            return []
        self._tool_orders[key] = names
        return [_reordered("tools", seen, names)]
