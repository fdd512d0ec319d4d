"""Prompt hygiene: remove what costs tokens and carries nothing, and report what only a person should change.

``clean_messages`` changes a request in ways that keep its meaning: runs of spaces and blank lines collapse,
and an instruction or boilerplate sentence repeated verbatim is kept only where it first appears. It never
touches fenced code, assistant messages or data (a sentence must read as prose to count as repeated), nor,
unless asked, the system prompt.

``lint_prompt`` changes nothing. It reports what a system prompt spends on whitespace, repetition, filler,
shouting and decoration, each with its tokens per call and what that costs per 1,000 calls at a given price,
so the prompt's owner can decide; rewording instructions silently could change what the model does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from thrifty.optimizers.prune import Message, slot_text, text_parts
from thrifty.optimizers.text import Span, split_sentences
from thrifty.protocols import TokenCounter
from thrifty.tokens import TiktokenCounter

_FENCE = re.compile(r"^[ \t]*(?:```|~~~).*?^[ \t]*(?:```|~~~)[ \t]*$", re.MULTILINE | re.DOTALL)
_INNER_RUN = re.compile(r"(?<=\S)[ \t]{2,}")
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n){2,}")
_PROSE_WORD = re.compile(r"^[\"'(]?[A-Za-z][A-Za-z'-]*[.,;:!?\"')]*$")
_CODE_LIKE = re.compile(r"[{}<>=;`|\\]")
_EDITED_ROLES = frozenset({"system", "developer", "user", "tool", "function"})
_SYSTEM_ROLES = frozenset({"system", "developer"})
_THOUSAND = Decimal(1000)
_MTOK = Decimal(1_000_000)

_FILLER_PHRASES = {
    "in order to": "to",
    "please ": "",
    "kindly ": "",
    "i would like you to ": "",
    "i want you to ": "",
    "make sure to ": "",
    "make sure that ": "",
    "it is very important that ": "",
    "it is important that ": "",
    "remember to ": "",
    "feel free to ": "",
    "do your best to ": "",
    "as an ai language model, ": "",
    "at all times": "",
    "basically ": "",
    "really ": "",
    "very ": "",
}
_FILLER = re.compile("|".join(re.escape(p) for p in _FILLER_PHRASES), re.IGNORECASE)
# Emphasis words rather than every capitalised word: acronyms ("ACME", "JSON") are not shouting.
_SHOUTING = re.compile(
    r"\b(?:IMPORTANT|CRITICAL|NEVER|ALWAYS|MUST|NOT|ONLY|STRICTLY|EXACTLY|DO NOT|DON'T|NOTE|WARNING)\b|!{2,}"
)
_DECORATION = re.compile(r"^[ \t]*([=\-*#_~+])\1{3,}[ \t]*\n?", re.MULTILINE)


def collapse_whitespace(text: str) -> str:
    """Trailing spaces, runs of spaces inside lines and runs of blank lines go; indentation and code stay."""
    pieces: list[str] = []
    cursor = 0
    for fence in _FENCE.finditer(text):
        pieces.append(_collapse(text[cursor : fence.start()]))
        pieces.append(fence.group())
        cursor = fence.end()
    pieces.append(_collapse(text[cursor:]))
    return "".join(pieces).strip("\n")


def _collapse(prose: str) -> str:
    prose = _TRAILING.sub("", prose)
    if prose.lstrip()[:1] in ("{", "["):  # JSON: spaces inside its strings are data
        return _BLANK_LINES.sub("\n\n", prose)
    lines = prose.split("\n")
    runs = [len(_INNER_RUN.findall(line)) for line in lines]
    for i, line in enumerate(lines):
        # A line with code (inline code spans, operators, markup) keeps its spaces; so does a row of a fixed-width
        # table (runs in it and in a neighbour, two or more in one of them), where a run may be an empty cell.
        near = [runs[j] for j in (i - 1, i + 1) if 0 <= j < len(lines)]
        table = runs[i] > 0 and any(n > 0 and max(n, runs[i]) > 1 for n in near)
        if runs[i] and not table and not _CODE_LIKE.search(line):
            lines[i] = _INNER_RUN.sub(" ", line)
    return _BLANK_LINES.sub("\n\n", "\n".join(lines))


def is_prose(sentence: str, min_words: int = 6) -> bool:
    """Whether a sentence reads as an instruction or boilerplate rather than data, code or a table row."""
    words = sentence.split()
    if len(words) < min_words or _CODE_LIKE.search(sentence):
        return False
    return sum(1 for word in words if _PROSE_WORD.match(word)) >= 0.8 * len(words)


def repeated_sentences(text: str, seen: set[str], min_words: int = 6) -> list[Span]:
    """Spans of prose sentences of ``text`` already in ``seen`` (whitespace-normalised); adds the new ones."""
    repeats: list[Span] = []
    fences = [m.span() for m in _FENCE.finditer(text)]
    for start, end in split_sentences(text):
        if any(f_start <= start < f_end for f_start, f_end in fences):
            continue
        key = " ".join(text[start:end].split())
        if not is_prose(key, min_words):
            continue
        if key in seen:
            repeats.append((start, end))
        else:
            seen.add(key)
    return repeats


def _without(text: str, spans: Sequence[Span]) -> str:
    """``text`` minus ``spans``; a span that filled its whole line takes the line break with it."""
    for start, sentence_end in sorted(spans, reverse=True):
        end = sentence_end
        while end < len(text) and text[end] in " \t":
            end += 1
        if end < len(text) and text[end] == "\n" and (start == 0 or text[start - 1] == "\n"):
            end += 1
        text = text[:start] + text[end:]
    return text


@dataclass(frozen=True, slots=True)
class HygieneResult:
    """The cleaned messages (a new list), prompt tokens before and after, and the repeated sentences dropped."""

    messages: list[Message]
    tokens_before: int
    tokens_after: int
    dropped: tuple[str, ...]

    @property
    def tokens_saved(self) -> int:
        return self.tokens_before - self.tokens_after


def clean_messages(
    messages: Sequence[Message],
    counter: TokenCounter,
    model: str,
    min_repeat_words: int = 6,
    *,
    edit_system: bool = False,
) -> HygieneResult:
    """Collapse whitespace and drop verbatim repeats of prose sentences, keeping each sentence's first appearance.

    System and developer prompts are left exactly as written unless ``edit_system``: their owner hears about
    them from ``lint_prompt`` instead. Their sentences still count as said, so a user message repeating one
    loses the repeat, except the latest user message, which keeps every sentence (it is what is asked now). A
    text that would be left empty keeps its repeats: an empty message changes the dialogue.
    """
    seen: set[str] = set()
    dropped: list[str] = []
    out: list[Message] = []
    latest = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in _EDITED_ROLES:
            out.append(message)
            continue
        read_only = role in _SYSTEM_ROLES and not edit_system
        # The latest user turn is what is being asked now: a sentence repeated from an earlier turn is its
        # instruction again, not boilerplate, and stays.
        keeps_repeats = read_only or index == latest
        cleaned = dict(message)
        for part in text_parts(message):
            text = slot_text(message, part) if read_only else collapse_whitespace(slot_text(message, part))
            repeats = repeated_sentences(text, seen, min_repeat_words)
            kept = collapse_whitespace(_without(text, repeats))
            if repeats and kept.strip() and not keeps_repeats:
                dropped.extend(text[s:e] for s, e in repeats)
                text = kept
            _set_text(cleaned, part, text)
        out.append(message if read_only else cleaned)
    before = counter.count_messages(model, messages)
    return HygieneResult(out, before, counter.count_messages(model, out), tuple(dropped))


def _set_text(message: Message, part: int | None, text: str) -> None:
    if part is None:
        message["content"] = text
        return
    content = list(message["content"])
    content[part] = {**content[part], "text": text}
    message["content"] = content


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a prompt pays for on every call: ``tokens`` is what fixing it saves per call."""

    rule: str
    message: str
    excerpt: str
    occurrences: int
    tokens: int
    usd_per_1k_calls: Decimal


def lint_prompt(
    text: str,
    model: str,
    usd_per_mtok_input: Decimal,
    counter: TokenCounter | None = None,
    verbose_above_tokens: int = 1000,
) -> list[Finding]:
    """Findings for a (system) prompt, most expensive first. The prompt itself is not changed.

    Each finding's ``tokens`` is the prompt's count minus the count with that one fix applied, so it is what
    the fix would save per call at ``model``'s tokenizer; ``usd_per_1k_calls`` prices that at the input price.
    """
    tokens_of = (counter if counter is not None else TiktokenCounter()).count_text
    total = tokens_of(model, text)

    def finding(rule: str, message: str, excerpt: str, occurrences: int, fixed: str) -> Finding | None:
        tokens = total - tokens_of(model, fixed)
        if tokens <= 0:
            return None
        cost = Decimal(tokens) * usd_per_mtok_input * _THOUSAND / _MTOK
        return Finding(rule, message, excerpt[:80], occurrences, tokens, cost)

    candidates = [
        finding("whitespace", "runs of spaces and blank lines", "", 1, collapse_whitespace(text)),
        *_repeat_findings(text, finding),
        *_pattern_findings(text, finding),
    ]
    found = [f for f in candidates if f is not None]
    if total > verbose_above_tokens:
        cost = Decimal(total) * usd_per_mtok_input * _THOUSAND / _MTOK
        message = f"prompt is {total} tokens, sent with every call: trim it or use provider prompt caching"
        found.append(Finding("verbose", message, text[:80], 1, total, cost))
    return sorted(found, key=lambda f: (-f.tokens, f.rule))


def _repeat_findings(text: str, finding: _FindingFn) -> list[Finding | None]:
    seen: set[str] = set()
    by_sentence: dict[str, list[Span]] = {}
    for start, end in repeated_sentences(text, seen):
        by_sentence.setdefault(" ".join(text[start:end].split()), []).append((start, end))
    return [
        finding("repeated-instruction", f"said {len(spans) + 1} times verbatim", key, len(spans), _without(text, spans))
        for key, spans in by_sentence.items()
    ]


def _pattern_findings(text: str, finding: _FindingFn) -> list[Finding | None]:
    fillers = [m.group() for m in _FILLER.finditer(text)]
    shouting = [m.group() for m in _SHOUTING.finditer(text)]
    decoration = [m.group() for m in _DECORATION.finditer(text)]
    return [
        finding(
            "filler",
            "politeness and filler phrases the model does not need",
            ", ".join(sorted({f.strip().lower() for f in fillers})),
            len(fillers),
            _FILLER.sub(lambda m: _FILLER_PHRASES[m.group().lower()], text),
        ),
        finding(
            "shouting",
            "capitals and '!!' cost more tokens than plain words",
            ", ".join(dict.fromkeys(shouting)),
            len(shouting),
            _SHOUTING.sub(lambda m: "!" if m.group().startswith("!") else m.group().lower(), text),
        ),
        finding(
            "decoration",
            "separator lines",
            decoration[0].strip() if decoration else "",
            len(decoration),
            _DECORATION.sub("", text),
        ),
    ]


class _FindingFn(Protocol):
    def __call__(self, rule: str, message: str, excerpt: str, occurrences: int, fixed: str) -> Finding | None: ...
