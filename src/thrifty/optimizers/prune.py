"""Context pruning: keep the passages of long context that matter to the latest question, up to a token budget.

What counts as context in a chat request (everything else is never touched):

- text inside ``<context>``, ``<document>``, ``<documents>`` or ``<search_results>`` tags, in any message but
  the assistant's: the client marked it as material, not instructions (this is the only way a system prompt is
  pruned);
- a tool or function result, or an earlier user message, of at least ``min_context_tokens``;
- the latest user message when it is that long, except its final paragraph, which is taken to be the question;
- but never JSON, markup or fenced code, which break when passages are cut out of them.

The question is the latest user message minus its context. Passages (paragraphs; long paragraphs cut into runs
of sentences) are ranked by BM25 against it, fused with embedding similarity when an ``Embedder`` is given, and
kept best-first while they fit, then put back in their original order. The original request is not modified.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from thrifty.optimizers.bm25 import BM25
from thrifty.optimizers.text import Span, join_spans, split_passages, strip_span, terms
from thrifty.protocols import TokenCounter

Message = dict[str, Any]

_TAGGED = re.compile(r"<(context|documents?|search_results)\b[^>]*>(.*?)</\1\s*>", re.DOTALL | re.IGNORECASE)
_CONTEXT_ROLES = frozenset({"user", "tool", "function"})
OMITTED = "[omitted]"
"""What a whole message of context becomes when none of it is relevant: an empty tool result confuses models."""
_RRF_K = 60
_SURELY_LONG_CHARS_PER_TOKEN = 8
_STRUCTURED_START = frozenset("{[<")


class Embedder(Protocol):
    """Sentence embeddings for relevance; rows must be L2-normalised (a numpy array of shape (n, d) fits)."""

    def embed(self, texts: Sequence[str]) -> Iterable[Iterable[float]]: ...


@dataclass(frozen=True, slots=True)
class Selection:
    """What an extractive optimizer kept of one text: the new text and the character spans it came from."""

    text: str
    kept: tuple[Span, ...]
    tokens_before: int
    tokens_after: int


@dataclass(frozen=True, slots=True)
class PruneResult:
    """The pruned messages (a new list; the input is untouched) and the prompt size before and after."""

    messages: list[Message]
    tokens_before: int
    tokens_after: int

    @property
    def tokens_saved(self) -> int:
        return self.tokens_before - self.tokens_after


@dataclass(frozen=True, slots=True)
class ContextSlice:
    """A run of context text: ``start:end`` of message ``message``'s content, or of its content part ``part``."""

    message: int
    part: int | None
    start: int
    end: int


def relevance(passages: Sequence[str], query: str, embedder: Embedder | None = None) -> list[float]:
    """One score per passage, higher is more relevant; only the order of the scores is meaningful."""
    lexical = BM25([terms(passage) for passage in passages]).scores(terms(query))
    if embedder is None or not passages:
        return lexical
    vectors = embedder.embed([query, *passages])
    to_list = getattr(vectors, "tolist", None)  # a numpy array converts in one call, row by row is much slower
    rows: list[list[float]] = to_list() if to_list is not None else [list(row) for row in vectors]
    semantic = [sum(q * p for q, p in zip(rows[0], row, strict=True)) for row in rows[1:]]
    # Reciprocal rank fusion: BM25 and cosine live on unrelated scales, their ranks do not. Tied scores share a
    # rank and a score of zero earns nothing, so a scorer that sees no difference cannot tip the balance.
    fused = [0.0] * len(passages)
    for scores in (lexical, semantic):
        rank_of: dict[float, int] = {}
        for rank, index in enumerate(_best_first(scores)):
            if scores[index] > 0:
                fused[index] += 1.0 / (_RRF_K + rank_of.setdefault(scores[index], rank))
    return fused


def _best_first(scores: Sequence[float]) -> list[int]:
    """Indices by descending score; ties go to the earlier passage."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def _fill(scores: Sequence[float], costs: Sequence[int], allowance: int) -> list[int]:
    """Best-first greedy fill: a passage too big for what is left is skipped and smaller ones still get a chance."""
    chosen: list[int] = []
    used = 0
    for index in _best_first(scores):
        if used + costs[index] <= allowance:
            chosen.append(index)
            used += costs[index]
    return chosen


def prune_text(
    text: str, query: str, budget_tokens: int, counter: TokenCounter, model: str, embedder: Embedder | None = None
) -> Selection:
    """The passages of ``text`` most relevant to ``query`` that fit in ``budget_tokens``, in their original order."""
    before = counter.count_text(model, text)
    if before <= budget_tokens:
        return Selection(text, ((0, len(text)),), before, before)
    passages = split_passages(text, max_chars=_window_chars(budget_tokens))
    scores = relevance([text[s:e] for s, e in passages], query, embedder)
    chosen = _fill(scores, [counter.count_text(model, text[s:e]) for s, e in passages], budget_tokens)
    while True:
        kept = tuple(passages[i] for i in sorted(chosen))
        pruned = join_spans(text, kept)
        after = counter.count_text(model, pruned)
        if after <= budget_tokens or not chosen:
            return Selection(pruned, kept, before, after)
        chosen.pop()  # joining can cost a token or two more than the parts; drop the least relevant


def prune_messages(
    messages: Sequence[Message],
    budget_tokens: int,
    counter: TokenCounter,
    model: str,
    embedder: Embedder | None = None,
    min_context_tokens: int = 200,
    *,
    latest_turn_only: bool = False,
) -> PruneResult:
    """Prune the request's context so the whole prompt fits ``budget_tokens``.

    Unchanged when it already fits, when it has no context, or when what is not context is already over budget
    (removing every passage would then change the answer and still not fit).
    """
    before = counter.count_messages(model, messages)
    unchanged = PruneResult(list(messages), before, before)
    if before <= budget_tokens:
        return unchanged
    query, slices = find_context(messages, counter, model, min_context_tokens, latest_turn_only=latest_turn_only)
    window = _window_chars(budget_tokens)
    pieces = [(n, span) for n, piece in enumerate(slices) for span in _passages_of(messages, piece, window)]
    texts = [slot_text(messages[slices[n].message], slices[n].part)[s:e] for n, (s, e) in pieces]
    costs = [counter.count_text(model, passage) for passage in texts]
    # The parts' sum is within a token or two of the whole; a whole message left empty needs a marker.
    markers = sum(counter.count_text(model, empty_context(messages, piece)) for piece in slices)
    allowance = budget_tokens - (before - sum(costs)) - markers
    if not slices or allowance <= 0:
        return unchanged
    scores = relevance(texts, query, embedder)
    chosen = _fill(scores, costs, allowance)
    while True:
        pruned = rewrite(messages, _replacements(messages, slices, pieces, sorted(chosen)))
        after = counter.count_messages(model, pruned)
        if after <= budget_tokens or not chosen:
            return PruneResult(pruned, before, after)
        chosen.pop()


def _replacements(
    messages: Sequence[Message], slices: Sequence[ContextSlice], pieces: Sequence[tuple[int, Span]], kept: list[int]
) -> dict[ContextSlice, str]:
    out: dict[ContextSlice, str] = {}
    for number, piece in enumerate(slices):
        spans = [pieces[i][1] for i in kept if pieces[i][0] == number]
        out[piece] = join_spans(slot_text(messages[piece.message], piece.part), spans) or empty_context(messages, piece)
    return out


def _passages_of(messages: Sequence[Message], piece: ContextSlice, max_chars: int) -> list[Span]:
    return split_passages(slot_text(messages[piece.message], piece.part), (piece.start, piece.end), max_chars)


def _window_chars(budget_tokens: int) -> int:
    """How long an unbroken paragraph may get before it is cut into windows of sentences.

    About a quarter of the budget (at roughly four characters a token): a window as big as the budget would
    leave the ranker an all-or-nothing choice.
    """
    return max(240, min(1200, budget_tokens))


def empty_context(messages: Sequence[Message], piece: ContextSlice) -> str:
    """What a slice becomes when none of it is kept: nothing inside tags, a marker where a message would be empty."""
    text = slot_text(messages[piece.message], piece.part)
    return "" if text[: piece.start].strip() or text[piece.end :].strip() else OMITTED


def slice_text(messages: Sequence[Message], piece: ContextSlice) -> str:
    return slot_text(messages[piece.message], piece.part)[piece.start : piece.end]


def find_context(
    messages: Sequence[Message],
    counter: TokenCounter,
    model: str,
    min_context_tokens: int,
    *,
    latest_turn_only: bool = False,
) -> tuple[str, list[ContextSlice]]:
    """The latest question and the context slices of ``messages`` (see the module docstring for the rules).

    ``latest_turn_only`` looks only after the last assistant message: earlier messages then stay byte for byte
    as they were sent on the previous turn, so a provider's prompt cache still matches that prefix.
    """
    latest = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if latest is None:
        return "", []
    first = 0
    if latest_turn_only:
        first = 1 + max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    slices: list[ContextSlice] = []
    for index, message in enumerate(messages):
        if index < first or message.get("role") == "assistant":
            continue
        parts = text_parts(message)
        for part in parts:
            slices.extend(_slices_in(message, index, part, last=index == latest and part == parts[-1]))
    slices = [s for s in slices if not _is_structured(messages, s)]
    slices = [s for s in slices if _is_long(messages, s, counter, model, min_context_tokens)]
    return _question(messages[latest], latest, slices), slices


def _slices_in(message: Message, index: int, part: int | None, *, last: bool) -> list[ContextSlice]:
    text = slot_text(message, part)
    tagged = [ContextSlice(index, part, *strip_span(text, span)) for span in _innermost_tagged(text)]
    if tagged or message.get("role") not in _CONTEXT_ROLES:
        return tagged
    if not last:
        return [ContextSlice(index, part, *strip_span(text, (0, len(text))))]
    passages = split_passages(text, max_chars=len(text) + 1)
    # The final paragraph of the latest user message is the question and is never a candidate for removal.
    return [ContextSlice(index, part, 0, passages[-2][1])] if len(passages) > 1 else []


def _innermost_tagged(text: str) -> list[Span]:
    """Contents of context tags; ``<documents>`` holding several ``<document>`` elements yields each of those."""
    found: list[Span] = []
    for match in _TAGGED.finditer(text):
        inner = _innermost_tagged(match.group(2))
        offset = match.start(2)
        found.extend([(s + offset, e + offset) for s, e in inner] if inner else [match.span(2)])
    return found


def _is_long(messages: Sequence[Message], piece: ContextSlice, counter: TokenCounter, model: str, least: int) -> bool:
    text = slot_text(messages[piece.message], piece.part)
    if _TAGGED.search(text):
        return piece.end > piece.start  # the client marked it: any size counts
    size = piece.end - piece.start
    if size < least or size >= _SURELY_LONG_CHARS_PER_TOKEN * least:
        return size >= least  # a token is at least one character; English runs about four to a token
    return counter.count_text(model, text[piece.start : piece.end]) >= least


def _is_structured(messages: Sequence[Message], piece: ContextSlice) -> bool:
    """JSON, markup and fenced code break when passages are cut out of them, so they are never pruned."""
    text = slot_text(messages[piece.message], piece.part)[piece.start : piece.end]
    return text[:1] in _STRUCTURED_START or "```" in text


def _question(message: Message, index: int, slices: Sequence[ContextSlice]) -> str:
    pieces: list[str] = []
    for part in text_parts(message):
        text = slot_text(message, part)
        cursor = 0
        for piece in sorted((s for s in slices if s.message == index and s.part == part), key=lambda s: s.start):
            pieces.append(text[cursor : piece.start])
            cursor = piece.end
        pieces.append(text[cursor:])
    return " ".join(piece.strip() for piece in pieces if piece.strip())


def text_parts(message: Message) -> list[int | None]:
    """The text slots of a message: ``[None]`` for string content, else the indices of its text parts."""
    content = message.get("content")
    if isinstance(content, str):
        return [None]
    if isinstance(content, list):
        return [i for i, p in enumerate(content) if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def slot_text(message: Message, part: int | None) -> str:
    content = message.get("content")
    if part is None:
        return content if isinstance(content, str) else ""
    text = content[part].get("text") if isinstance(content, list) else None
    return text if isinstance(text, str) else ""


def rewrite(messages: Sequence[Message], replacements: dict[ContextSlice, str]) -> list[Message]:
    """A copy of ``messages`` with each slice's text replaced; messages without replacements are shared, not copied."""
    out = list(messages)
    by_slot: dict[tuple[int, int | None], list[ContextSlice]] = {}
    for piece in replacements:
        by_slot.setdefault((piece.message, piece.part), []).append(piece)
    for (index, part), pieces in by_slot.items():
        text = slot_text(messages[index], part)
        for piece in sorted(pieces, key=lambda s: s.start, reverse=True):
            text = text[: piece.start] + replacements[piece] + text[piece.end :]
        message = dict(out[index])
        if part is None:
            message["content"] = text
        else:
            content = list(message["content"])
            content[part] = {**content[part], "text": text}
            message["content"] = content
        out[index] = message
    return out
