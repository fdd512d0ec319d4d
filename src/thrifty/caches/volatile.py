"""Text in a prompt that changes between requests (timestamps, today's date, ids), found fast enough for every request.

Provider prompt caching reuses a prefix only while it is identical, so the gateway looks for such text in the
stable part of a prompt: to key OpenAI's ``prompt_cache_key`` by the part before it, to leave a system prompt that
changes on every request unmarked for Anthropic, and to name it in ``thrifty lint`` and the log.

Python's regular expressions scan fast only from a literal: a pattern led by word alternatives, or by ``\\d``, costs
about 0.1 ms per 4 KB, and five of them a request cost 1.8 ms. Each kind is therefore found in two steps: a short
literal anchor (``:`` and two digits, ``id``, ``today``) over the lowercased text, then the exact pattern in a
window around each place the anchor matched. Results are kept per text, so a stable prompt is read once.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

_DAY = r"(?:mon|tues|wednes|thurs|fri|satur|sun)day"
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
Span = tuple[int, int]
Check = Callable[[str, "re.Match[str]"], "Span | None"]


@dataclass(frozen=True, slots=True)
class _Kind:
    what: str
    anchors: tuple[tuple[re.Pattern[str], Check], ...]
    """A literal-led pattern, and what checks the text around each of its matches (the span found, or None)."""
    per_request: bool
    """Changes on every request (a clock reading, a request id), not once a day or a conversation."""


def _word_start(low: str, end: int) -> int:
    start = end
    while start > 0 and low[start - 1].isalpha():
        start -= 1
    return start


def _at(pattern: str, back: Callable[[str, int], int] = lambda low, p: p) -> Check:
    """The exact pattern matched where ``back`` says it must begin (before the anchor), on a word boundary."""
    exact = re.compile(pattern)

    def check(low: str, anchor: re.Match[str]) -> Span | None:
        start = back(low, anchor.start())
        if start < 0 or (start > 0 and low[start - 1].isalnum()):
            return None
        found = exact.match(low, start)
        return None if found is None else (start, found.end())

    return check


def _clock(low: str, anchor: re.Match[str]) -> Span | None:
    """``2026-11-26T10:15`` or ``10:15:22`` around the first ``:dd``."""
    p = anchor.start()
    for start, exact in ((p - 13, _ISO_TIME), (p - 2, _HMS), (p - 1, _HMS)):
        if start >= 0 and not (start > 0 and low[start - 1].isdigit()):
            found = exact.match(low, start)
            if found is not None:
                return start, found.end()
    return None


_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[t ]\d{2}:\d{2}")
_HMS = re.compile(r"\d{1,2}:\d{2}:\d{2}(?!\d)")
_ID = re.compile(r"id\b\s*[:=#]?\s*(?=[\w-]*\d)[\w-]+")
"""``id`` and a value with a digit in it: a literal first, the rest read by the regex engine at its matches only."""


def _labelled_id(labels: frozenset[str]) -> Check:
    """``request_id=ab12``, ``Conversation ID 7f3c``: a label word before the anchor's ``id`` and its value."""

    def check(low: str, anchor: re.Match[str]) -> Span | None:
        end = anchor.start()
        if end > 0 and low[end - 1] in " _-":
            end -= 1
        start = _word_start(low, end)
        return (start, anchor.end()) if low[start:end] in labels else None

    return check


_DATE_VALUE = rf"(?:\s+is)?\s*[:=]?\s*(?:\d{{4}}-\d{{2}}-\d{{2}}|{_DAY}|{_MONTH}\s+\d)"
_AFTER_WEEKDAY = rf",?\s+(?:the\s+)?(?:\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?)?{_MONTH}"
"""What follows a weekday's name in a date: "Tuesday, June 3", "Tuesday the 3rd of June"."""
_WEEKDAY_DATE = re.compile(_DAY + _AFTER_WEEKDAY)


def _on_word_start(low: str, anchor: re.Match[str]) -> Span | None:
    start = anchor.start()
    return None if start > 0 and low[start - 1].isalnum() else anchor.span()


def _weekday(low: str, anchor: re.Match[str]) -> Span | None:
    """The anchor is ``day`` and a month after it; the word it ends must be a weekday's name."""
    start = _word_start(low, anchor.start())
    found = _WEEKDAY_DATE.match(low, start)
    return None if found is None or (start > 0 and low[start - 1].isalnum()) else (start, found.end())


KINDS = (
    _Kind("timestamp", ((re.compile(r":\d\d"), _clock),), per_request=True),
    _Kind(
        "time of day",
        (
            (re.compile(r"time"), _at(r"(?:current|local) time\b", lambda low, p: _word_start(low, p - 1))),
            (re.compile(r"time is"), _at(r"the time is\b", lambda low, p: p - 4)),
            (re.compile(r"it is "), _at(r"it is (?:now )?\d{1,2}(?::\d{2})?\s?[ap]\.?m\b")),
        ),
        per_request=False,
    ),
    _Kind(
        # A date said to be today's (not any date: a knowledge cutoff or a release date does not change).
        "date",
        (
            *((re.compile(word + _DATE_VALUE), _on_word_start) for word in ("today(?:'s date)?", "date", "now")),
            (re.compile("day" + _AFTER_WEEKDAY), _weekday),
        ),
        per_request=False,
    ),
    _Kind(
        "uuid",
        (
            (
                re.compile(r"-[0-9a-f]{4}-[0-9a-f]{4}-"),
                _at(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", lambda low, p: p - 8),
            ),
        ),
        per_request=False,
    ),
    _Kind(
        "request id",
        ((_ID, _labelled_id(frozenset({"request", "trace", "span", "correlation", "transaction"}))),),
        per_request=True,
    ),
    _Kind(
        "session or user id",
        (
            (
                _ID,
                _labelled_id(
                    frozenset(
                        {"session", "user", "conversation", "customer", "order", "account", "chat", "thread", "message"}
                    )
                ),
            ),
        ),
        per_request=False,
    ),
    _Kind("Unix time", ((re.compile(r"1[5-9]\d{8}"), _at(r"1[5-9]\d{8}(?:\d{3})?\b")),), per_request=False),
)


@dataclass(frozen=True, slots=True)
class Found:
    what: str
    start: int
    end: int
    per_request: bool


_SEEN: OrderedDict[tuple[int, int], tuple[Found, ...]] = OrderedDict()
"""Results by (length, hash) of the text: a stable prompt is read once, and no prompt is kept alive here."""
_SEEN_MAX = 1024


def find_volatile(text: str) -> tuple[Found, ...]:
    """The first place of each kind in ``text``, in the order of ``KINDS``."""
    key = (len(text), hash(text))
    known = _SEEN.get(key)
    if known is not None:
        _SEEN.move_to_end(key)
        return known
    low = text.lower()
    found = tuple(hit for kind in KINDS if (hit := _first(kind, low)) is not None)
    _SEEN[key] = found
    if len(_SEEN) > _SEEN_MAX:
        _SEEN.popitem(last=False)
    return found


def _first(kind: _Kind, low: str) -> Found | None:
    best: Span | None = None
    for anchor, check in kind.anchors:
        for place in anchor.finditer(low):
            if best is not None and place.start() >= best[0]:
                break
            span = check(low, place)
            if span is not None:
                best = span if best is None or span[0] < best[0] else best
                break
    return None if best is None else Found(kind.what, best[0], best[1], kind.per_request)


def changes_every_request(text: str) -> bool:
    """A clock reading or a request id: a prefix holding it is never the same twice."""
    return any(found.per_request for found in find_volatile(text))


def stable_head(text: str) -> str:
    """``text`` up to the first thing in it that changes between requests."""
    return text[: min((found.start for found in find_volatile(text)), default=len(text))]
