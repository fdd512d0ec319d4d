"""Splitting prompt text into passages and sentences, and into terms for relevance scoring.

Everything here works on character offsets into the original text (``Span = (start, end)``) rather than on copies,
so that an optimizer can say exactly which parts of the input it kept, and so that output is rebuilt from the
client's own bytes: kept text is never re-typed, re-cased or re-spaced.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

Span = tuple[int, int]

# A blank line separates passages in nearly every way people paste documents, retrieved chunks or tool output.
_PASSAGE_BREAK = re.compile(r"\n[ \t]*\n\s*")
# Sentence ends: terminal punctuation plus closing quotes/brackets followed by whitespace, or a line break.
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*\s+|\n\s*")
_ABBREVIATION_LIST = "mr mrs ms dr prof sr jr st vs etc e.g i.e fig no approx inc ltd co corp dept est govt u.s a.m p.m"
_ABBREVIATIONS = frozenset(_ABBREVIATION_LIST.split())
_LAST_WORD = re.compile(r"([\w.]+)$")

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")
# Function words carry no topic: a query and a passage that share only these are not related.
_STOPWORD_LIST = """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just let me more
    most my myself no nor not of off on once only or other our ours ourselves out over own same she
    should so some such than that the their theirs them themselves then there these they this those
    through to too under until up very was we were what when where which while who whom why will with
    would you your yours yourself yourselves s t
"""
STOPWORDS = frozenset(_STOPWORD_LIST.split())

_NUMBER_WORDS = (
    "zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
    "seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|million|"
    "billion|half|twice|double|triple|thrice|dozen|quarter"
)
NUMBER = re.compile(
    r"[$€£]?\d(?:[\d,]*\d)?(?:\.\d+)?%?|\b(?:" + _NUMBER_WORDS + r")(?:[- ](?:" + _NUMBER_WORDS + r"))*\b",
    re.IGNORECASE,
)


def split_passages(text: str, span: Span | None = None, max_chars: int = 1200) -> list[Span]:
    """Passages of ``text`` (or of ``span`` within it): paragraphs separated by blank lines.

    A paragraph longer than ``max_chars`` is cut into runs of whole sentences of about that size, so that one
    unbroken wall of text still gives the ranker something to choose between.
    """
    start, end = span if span is not None else (0, len(text))
    passages: list[Span] = []
    cursor = start
    for match in _PASSAGE_BREAK.finditer(text, start, end):
        passages.extend(_windows(text, strip_span(text, (cursor, match.start())), max_chars))
        cursor = match.end()
    passages.extend(_windows(text, strip_span(text, (cursor, end)), max_chars))
    return passages


def _windows(text: str, span: Span, max_chars: int) -> list[Span]:
    if span[1] <= span[0]:
        return []
    if span[1] - span[0] <= max_chars:
        return [span]
    windows: list[Span] = []
    for sentence in split_sentences(text, span):
        if windows and sentence[1] - windows[-1][0] <= max_chars:
            windows[-1] = (windows[-1][0], sentence[1])
        else:
            windows.append(sentence)
    return windows


def split_sentences(text: str, span: Span | None = None) -> list[Span]:
    """Sentences of ``text`` (or of ``span``), without their surrounding whitespace.

    A period after a common abbreviation ("Dr.", "e.g.") or a single capital ("J. Smith") does not end a sentence.
    """
    start, end = span if span is not None else (0, len(text))
    sentences: list[Span] = []
    cursor = start
    for match in _SENTENCE_END.finditer(text, start, end):
        if text[match.start()] == "." and _is_abbreviation(text, cursor, match.start()):
            continue
        sentences.append(strip_span(text, (cursor, match.end())))
        cursor = match.end()
    sentences.append(strip_span(text, (cursor, end)))
    return [s for s in sentences if s[1] > s[0]]


def _is_abbreviation(text: str, start: int, period: int) -> bool:
    """Whether the word ending at ``period`` is an abbreviation or an initial; looks back a few characters only."""
    found = _LAST_WORD.search(text, max(start, period - 12), period)
    if found is None:
        return False
    word = found.group(1).lower().rstrip(".")
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def strip_span(text: str, span: Span) -> Span:
    """``span`` without the whitespace at its ends."""
    start, end = span
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def terms(text: str) -> list[str]:
    """Content words of ``text``, lower-cased and crudely stemmed; numbers are kept because questions cite them."""
    return [stem(word) for word in _WORD.findall(text.lower()) if word not in STOPWORDS]


@lru_cache(maxsize=1 << 16)
def stem(word: str) -> str:
    """A deliberately small suffix stripper: it only has to map a query and a passage to the same key."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) <= 3 or word[0].isdigit():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("ing") and len(word) > 5:
        return word[:-3]
    if word.endswith("ed") and len(word) > 4:
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def number_spans(text: str, span: Span | None = None) -> list[Span]:
    """Where numbers are mentioned, in digits ("$80,000", "150%") or in words ("three", "half")."""
    start, end = span if span is not None else (0, len(text))
    return [m.span() for m in NUMBER.finditer(text, start, end)]


def join_spans(text: str, spans: Sequence[Span]) -> str:
    """The text of ``spans`` (sorted, non-overlapping) with the original text between adjacent ones.

    Where something was cut out, the gap becomes the strongest break it contained: a blank line between
    passages, a newline between lines, nothing before punctuation, otherwise a space.
    """
    pieces: list[str] = []
    previous_end: int | None = None
    for start, end in spans:
        if previous_end is not None:
            pieces.append(_gap(text[previous_end:start], text[previous_end - 1], text[start]))
        pieces.append(text[start:end])
        previous_end = end
    return "".join(pieces)


def _gap(between: str, before: str, after: str) -> str:
    if not between or (between.isspace() and len(between) <= 2):
        return between  # nothing was cut: keep the client's own spacing
    if _PASSAGE_BREAK.search(between):
        return "\n\n"
    if "\n" in between:
        return "\n"
    return "" if after in _CLOSING or before in _OPENING else " "


_CLOSING = frozenset(",.;:!?)]}")
_OPENING = frozenset("([{")


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    """Sorted spans with touching or overlapping ones merged."""
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def covered(span: Span, kept: Sequence[Span]) -> bool:
    """Whether ``span`` lies entirely inside one of the sorted, merged ``kept`` spans."""
    return any(start <= span[0] and span[1] <= end for start, end in kept)
