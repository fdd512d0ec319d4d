"""Query-aware extractive compression of long context to a target ratio, on the CPU, with no model.

Two levels, as in LLMLingua's coarse-to-fine split but with lexical scores instead of a language model:

- sentence level: every sentence is scored by how relevant its passage is to the question (BM25 over passages)
  plus half its own relevance (BM25 over sentences). The passage term keeps a relevant paragraph's other
  sentences, whose numbers and names rarely repeat the question's words. With no usable question, sentences
  are scored by how specific their words are (mean IDF).
- phrase level: a sentence may be kept whole or *lean*, without articles, hedges, intensifiers and discourse
  fillers ("very", "basically", "please note that", "However,"). Clearly relevant sentences are kept whole;
  the rest are kept lean when that lets more of them fit. Numbers, names and negations are never removed.

Output is rebuilt from the kept character spans of the input, in order. ``Compressor`` is the slot for
model-based compressors; ``LLMLinguaCompressor`` fills it from LLMLingua-2 weights the user already has.
"""

from __future__ import annotations

import importlib
import os
import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from thrifty.errors import ConfigError
from thrifty.optimizers.bm25 import BM25, normalised
from thrifty.optimizers.prune import Message, Selection, empty_context, find_context, rewrite, slice_text
from thrifty.optimizers.text import Span, join_spans, split_passages, split_sentences, terms
from thrifty.protocols import TokenCounter

_WHOLE_ABOVE = 0.5
"""Sentences scoring at least this share of the best one are kept whole when they fit."""
_SENTENCE_WEIGHT = 0.5

_FILLERS = (
    "the a an very really quite just actually basically simply literally certainly definitely indeed also, however, "
    "moreover, furthermore, additionally, of_course in_fact in_addition, needless_to_say, please_note_that note_that "
    "it_is_worth_noting_that it_should_be_noted_that"
)
_FILLER_PHRASES = tuple(
    variant
    for phrase in (w.replace("_", " ") for w in _FILLERS.split())
    for variant in (phrase + " ", phrase[0].upper() + phrase[1:] + " ")
)
_WORD_BEFORE = frozenset(" \t\n\"'(")
# Code, markup and data lose meaning when words vanish from them; such sentences are only ever kept whole.
_CODE_LIKE = re.compile(r"[{}<>=`|\\]")


class Compressor(Protocol):
    """Shortens one context text to about ``1/ratio`` of its tokens, keeping what matters to ``query``."""

    def compress(self, text: str, query: str, ratio: float, model: str) -> Selection: ...


@dataclass(frozen=True, slots=True)
class CompressResult:
    """The compressed messages (a new list; the input is untouched) and the prompt size before and after."""

    messages: list[Message]
    tokens_before: int
    tokens_after: int

    @property
    def tokens_saved(self) -> int:
        return self.tokens_before - self.tokens_after


class ExtractiveCompressor:
    """The built-in compressor (see the module docstring); the token counter decides the budget."""

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter

    def compress(self, text: str, query: str, ratio: float, model: str) -> Selection:
        return compress_text(text, query, ratio, self.counter, model)


def compress_text(text: str, query: str, ratio: float, counter: TokenCounter, model: str) -> Selection:
    """``text`` cut to at most ``tokens / ratio`` tokens, most relevant to ``query`` first, in original order."""
    if ratio < 1.0:
        raise ValueError(f"compression ratio must be at least 1, got {ratio}")
    before = counter.count_text(model, text)
    budget = int(before / ratio)
    if before <= budget:
        return Selection(text, ((0, len(text)),), before, before)
    sentences, owners = _sentences(text)
    scores = _scores(text, sentences, owners, query)
    forms = _LeanForms(text, sentences, counter, model)
    chosen = _choose(scores, forms, budget)
    while True:
        kept = tuple(span for i in sorted(chosen) for span in ([sentences[i]] if chosen[i] else forms.spans(i)))
        compressed = join_spans(text, kept)
        after = counter.count_text(model, compressed)
        if after <= budget or not chosen:
            return Selection(compressed, kept, before, after)
        del chosen[min(chosen, key=lambda i: (scores[i], -i))]  # joins can cost a token more than the parts


def _sentences(text: str) -> tuple[list[Span], list[int]]:
    """Every sentence, and the index of the passage it belongs to."""
    sentences: list[Span] = []
    owners: list[int] = []
    for number, passage in enumerate(split_passages(text)):
        for sentence in split_sentences(text, passage):
            sentences.append(sentence)
            owners.append(number)
    return sentences, owners


def _scores(text: str, sentences: Sequence[Span], owners: Sequence[int], query: str) -> list[float]:
    sentence_terms = [terms(text[s:e]) for s, e in sentences]
    by_sentence = BM25(sentence_terms)
    question = terms(query)
    own = normalised(by_sentence.scores(question))
    passage_terms: list[list[str]] = [[] for _ in range(owners[-1] + 1 if owners else 0)]
    for owner, words in zip(owners, sentence_terms, strict=True):
        passage_terms[owner].extend(words)
    passage = normalised(BM25(passage_terms).scores(question))
    if not any(own) and not any(passage):
        return normalised([by_sentence.information(words) for words in sentence_terms])
    return [passage[owner] + _SENTENCE_WEIGHT * score for owner, score in zip(owners, own, strict=True)]


class _LeanForms:
    """Each sentence's whole and lean token cost, counted only for the sentences the selection looks at."""

    def __init__(self, text: str, sentences: Sequence[Span], counter: TokenCounter, model: str) -> None:
        self.text = text
        self.sentences = sentences
        self.counter = counter
        self.model = model
        self._whole: dict[int, int] = {}
        self._fillers: list[Span] | None = None
        self._code: list[int] = []
        self._spans: dict[int, list[Span]] = {}
        self._costs: dict[int, int] = {}

    def spans(self, index: int) -> list[Span]:
        if self._fillers is None:
            self._fillers = filler_spans(self.text)
            self._code = [m.start() for m in _CODE_LIKE.finditer(self.text)]
        if index not in self._spans:
            start, end = sentence = self.sentences[index]
            first = bisect_left(self._fillers, (start, start))
            removals = self._fillers[first : bisect_left(self._fillers, (end, end), first)]
            code_at = bisect_left(self._code, start)
            is_code = code_at < len(self._code) and self._code[code_at] < end
            self._spans[index] = _cut(self.text, sentence, removals) if removals and not is_code else [sentence]
        return self._spans[index]

    def whole(self, index: int) -> int:
        if index not in self._whole:
            start, end = self.sentences[index]
            self._whole[index] = self.counter.count_text(self.model, self.text[start:end])
        return self._whole[index]

    def least(self, index: int) -> int:
        """A floor on the lean cost without counting: prose runs about four characters a token, never sixteen."""
        start, end = self.sentences[index]
        return (end - start) // 16

    def cost(self, index: int) -> int:
        """The lean form's cost."""
        if index not in self._costs:
            spans = self.spans(index)
            lean = self.counter.count_text(self.model, join_spans(self.text, spans)) if len(spans) > 1 else None
            self._costs[index] = self.whole(index) if lean is None else lean
        return self._costs[index]


def filler_spans(text: str) -> list[Span]:
    """Where filler words and phrases stand in ``text``, each with the whitespace after it, sorted.

    Found with ``str.find`` for each phrase rather than one regular expression: an alternation of words anchored
    on word boundaries made the ``re`` engine try every branch at every character, the slowest step of compression.
    """
    found: list[Span] = []
    for phrase in _FILLER_PHRASES:
        at = text.find(phrase)
        while at != -1:
            if at == 0 or text[at - 1] in _WORD_BEFORE:
                end = at + len(phrase)
                while end < len(text) and text[end].isspace():
                    end += 1
                found.append((at, end))
            at = text.find(phrase, at + 1)
    return sorted(found)


def lean_spans(text: str, sentence: Span) -> list[Span]:
    """The pieces of ``sentence`` left once fillers are removed; ``[sentence]`` when there is nothing to remove."""
    start, end = sentence
    if _CODE_LIKE.search(text, start, end):
        return [sentence]
    removals = [(s + start, e + start) for s, e in filler_spans(text[start:end])]
    return _cut(text, sentence, removals) if removals else [sentence]


def _cut(text: str, sentence: Span, removals: Sequence[Span]) -> list[Span]:
    start, end = sentence
    pieces: list[Span] = []
    cursor = start
    for removal_start, removal_end in removals:
        # A capitalised "A" or "The" inside a sentence is usually a name ("Vitamin A", "The Hague"): keep it.
        if removal_start > start and text[removal_start].isupper():
            continue
        if removal_start > cursor:
            pieces.append((cursor, removal_start))
        cursor = max(cursor, min(removal_end, end))  # "please note that" also holds "note that"
    if cursor < end:
        pieces.append((cursor, end))
    stripped = [(s, e) for s, e in (_rstrip(text, piece) for piece in pieces) if e > s]
    return stripped or [sentence]


def _rstrip(text: str, span: Span) -> Span:
    start, end = span
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _choose(scores: Sequence[float], forms: _LeanForms, budget: int) -> dict[int, bool]:
    """Sentence index -> kept whole (True) or lean (False), filled best-first within ``budget`` tokens."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    top = scores[order[0]] if order else 0.0
    chosen: dict[int, bool] = {}
    used = 0
    for index in order:
        # Once the budget is nearly spent most sentences are plainly too long: skip them without counting.
        if used + forms.least(index) > budget:
            continue
        if scores[index] >= _WHOLE_ABOVE * top and used + forms.whole(index) <= budget:
            chosen[index], used = True, used + forms.whole(index)
        # Fillers are rarely half a sentence: skip working out a lean form that could not fit anyway.
        elif used + forms.whole(index) // 2 <= budget and used + forms.cost(index) <= budget:
            chosen[index], used = False, used + forms.cost(index)
    # Budget left over after every sentence that fits is in: spend it on restoring the best lean ones.
    for index in order:
        if chosen.get(index) is False and used + forms.whole(index) - forms.cost(index) <= budget:
            chosen[index], used = True, used + forms.whole(index) - forms.cost(index)
    return chosen


def compress_messages(
    messages: Sequence[Message],
    ratio: float,
    counter: TokenCounter,
    model: str,
    compressor: Compressor | None = None,
    min_context_tokens: int = 200,
    *,
    latest_turn_only: bool = False,
) -> CompressResult:
    """Compress each context block of a chat request (found as ``prune.find_context`` does) by ``ratio``.

    Only context is compressed: instructions, the question and the conversation stay as sent, so the prompt as a
    whole shrinks by less than ``ratio``.
    """
    engine = compressor if compressor is not None else ExtractiveCompressor(counter)
    before = counter.count_messages(model, messages)
    query, slices = find_context(messages, counter, model, min_context_tokens, latest_turn_only=latest_turn_only)
    if not slices:
        return CompressResult(list(messages), before, before)
    replacements = {
        piece: engine.compress(slice_text(messages, piece), query, ratio, model).text or empty_context(messages, piece)
        for piece in slices
    }
    compressed = rewrite(messages, replacements)
    return CompressResult(compressed, before, counter.count_messages(model, compressed))


class LLMLinguaCompressor:
    """LLMLingua-2 (Pan et al., 2024) token classification, from weights already on disk.

    Thrifty never downloads weights: point ``model_dir`` at a local copy of, for example,
    ``microsoft/llmlingua-2-xlm-roberta-large-meetingbank``. LLMLingua-2 is query-agnostic, so ``query`` is unused,
    and it does not report which characters it kept.
    """

    def __init__(self, model_dir: str | os.PathLike[str], counter: TokenCounter, device: str = "cpu") -> None:
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"no LLMLingua-2 weights in {str(path)!r} (no config.json): download a model such as "
                "microsoft/llmlingua-2-xlm-roberta-large-meetingbank yourself and point to its folder; "
                "Thrifty never downloads weights at run time"
            )
        try:
            llmlingua = importlib.import_module("llmlingua")
        except ImportError as exc:
            raise ConfigError(
                "LLMLingua-2 compression needs the 'llmlingua' extra: pip install 'thrifty[llmlingua]'"
            ) from exc
        self.counter = counter
        self._engine: Any = llmlingua.PromptCompressor(model_name=str(path), use_llmlingua2=True, device_map=device)

    def compress(self, text: str, query: str, ratio: float, model: str) -> Selection:
        result = self._engine.compress_prompt(text, rate=1.0 / ratio, force_tokens=["\n", "?", "."])
        compressed = str(result["compressed_prompt"])
        return Selection(
            compressed, (), self.counter.count_text(model, text), self.counter.count_text(model, compressed)
        )
