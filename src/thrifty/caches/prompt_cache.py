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

from thrifty.tokens import TiktokenCounter, text_of
from thrifty.types import JsonObject

log = logging.getLogger(__name__)
EPHEMERAL = {"type": "ephemeral"}
MAX_BREAKPOINTS = 4
# Anthropic's documented minimum cacheable prefix: 2,048 tokens on Haiku models, 1,024 on the others.
MIN_TOKENS_HAIKU = 2048
MIN_TOKENS = 1024


def min_cacheable_tokens(model: str) -> int:
    return MIN_TOKENS_HAIKU if "haiku" in model.lower() else MIN_TOKENS


def add_cache_breakpoints(body: JsonObject, model: str, counter: TiktokenCounter) -> JsonObject:
    """Mark the end of the tools, of the system prompt and of the history before the last user turn, each
    where the prefix up to it is long enough to be cached. A request that already marks anything is the
    client's to manage and is left alone."""
    if _has_breakpoint(body):
        return body
    out = dict(body)
    minimum, prefix, used = min_cacheable_tokens(model), 0, 0
    tools = out.get("tools")
    if tools:
        prefix += counter.count_text(model, orjson.dumps(tools).decode())
        if prefix >= minimum:
            out["tools"] = [*tools[:-1], {**tools[-1], "cache_control": EPHEMERAL}]
            used += 1
    system = out.get("system")
    if system:
        blocks = [{"type": "text", "text": system}] if isinstance(system, str) else list(system)
        prefix += counter.count_text(model, text_of(blocks))
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
    return b'"cache_control"' in orjson.dumps(body)


def _mark_last_block(message: JsonObject) -> JsonObject:
    content = message.get("content")
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
    if not blocks:
        return message
    return {**message, "content": [*blocks[:-1], {**blocks[-1], "cache_control": EPHEMERAL}]}


def prompt_cache_key(body: JsonObject) -> str:
    """The same tools and system prompt give the same key, so OpenAI routes those requests to one cache."""
    system = [m.get("content") for m in body.get("messages", []) if m.get("role") in ("system", "developer")]
    digest = hashlib.sha256(orjson.dumps([body.get("tools"), system], option=orjson.OPT_SORT_KEYS))
    return "thrifty-" + digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class PrefixFinding:
    where: str
    what: str
    excerpt: str


_VOLATILE = [
    (
        "timestamp",
        re.compile(r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?|\b\d{1,2}:\d{2}(:\d{2})?\s?(AM|PM|am|pm)?\b"),
    ),
    ("date", re.compile(r"\b\d{4}-\d{2}-\d{2}\b|\b(today is|current date|now is)\b", re.IGNORECASE)),
    ("uuid", re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.IGNORECASE)),
    ("request or session id", re.compile(r"\b(request|session|trace|user)[ _-]?id\s*[:=]\s*\S+", re.IGNORECASE)),
    ("long number", re.compile(r"\b\d{9,}\b")),
]


def lint_prefix(messages: Sequence[JsonObject], tools: Sequence[Any] | None = None) -> list[PrefixFinding]:
    """What in the stable prefix (system prompt and earlier turns) changes between requests."""
    findings = []
    for index, message in enumerate(messages[:-1] if len(messages) > 1 else messages):
        findings += _volatile(f"messages[{index}] ({message.get('role')})", text_of(message.get("content")))
    return findings + _tool_order(tools)


def _volatile(where: str, text: str) -> list[PrefixFinding]:
    findings = []
    for what, pattern in _VOLATILE:
        match = pattern.search(text)
        if match:
            start = max(match.start() - 20, 0)
            excerpt = text[start : match.end() + 20].replace("\n", " ")
            findings.append(PrefixFinding(where, what, excerpt))
    return findings


def _tool_order(tools: Sequence[Any] | None) -> list[PrefixFinding]:
    findings = []
    names = [str((t.get("function") or t).get("name", "")) for t in tools or [] if isinstance(t, dict)]
    if names != sorted(names):
        findings.append(PrefixFinding("tools", "tools not in a stable order", "sort them by name: " + ", ".join(names)))
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
        findings += _tool_order(tools if isinstance(tools, list) else None)
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
