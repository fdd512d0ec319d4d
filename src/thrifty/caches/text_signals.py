"""What two short requests differ in, read off their words: the evidence behind a semantic hit decision.

Two kinds of difference. A *substitution* (2 where the other says 3, Paris where the other says London, enable
where the other says disable, another pasted document) changes the question whatever the embedding says: those
are guard vetoes. An *addition* ("... in 2016", "... today", a name only one side mentions) often does not:
those are features of the scorer, which learned from labelled pairs how much each one costs.

Pure Python and cheap (about 0.2 ms for a pair of Quora questions on a busy core), because it runs for every
candidate of every lookup.
English-centred: in other languages the lexical signals go quiet and the decision leans on the embedding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from thrifty.caches.lexicon import (
    ANTONYMS,
    BEFORE_PRONOUN_ONE,
    DAYS,
    MAY_BEFORE,
    MONTHS,
    NEGATING_PREFIXES,
    NEGATIONS,
    NUMBER_SUFFIXES,
    NUMBER_WORDS,
    PARTICLE_VERBS,
    PARTICLES,
    PERIODS,
    QUESTION_WORDS,
    RELATIVE,
    ROOT_ENDINGS,
    STOPWORDS,
    TITLES,
    TOPS,
    UNITS,
    words,
)

_TOKEN = re.compile(r"[a-z0-9]+")
_NUMBER = re.compile(
    r"(?P<value>\d{1,3}(?:,\d{2})+,\d{3}(?!\d)|\d+(?:,\d{3}(?!\d))*)(?P<rest>(?:[.:/-]\d+)*)"
    r"(?: ?(?P<unit>(?i:k|lakhs?|lacs?))(?![A-Za-z]))?"
)
"""A comma groups thousands ("1,000,000", or lakhs: "1,50,000"); "500,1000" is a list of two numbers, as in
"500 and 1000". A "k" or "lakh" after a number multiplies it: "under 15k" and "under 15,000" name one price."""
_RETIREMENT_PLAN = re.compile(r"\b(401|403|457) ?\(?([kb])\)?", re.IGNORECASE)
_MULTIPLIERS = {"k": 1_000, "lakh": 100_000, "lac": 100_000}
_UNIT = re.compile(r"(?<![a-z])(" + "|".join(sorted(map(re.escape, UNITS), key=len, reverse=True)) + r")(?![a-z])")
_CASED = re.compile(r"[A-Za-z0-9][\w'-]*")
_NON = re.compile(r"\bnon[\s-]+(?=[a-z])")
_SENTENCE_END = re.compile(r"^[.!?:;]")
_CONTRACTIONS = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"\bcan't\b", "can not"),
        (r"\bcannot\b", "can not"),
        (r"\bwon't\b", "will not"),
        (r"n't\b", " not"),
        # Typed without the apostrophe ("isnt", "dont", "cant"): the same negations.
        (r"\bcant\b", "can not"),
        (r"\bwont\b", "will not"),
        (r"\b(is|are|was|were|do|does|did|has|have|had|could|would|should|must|need|ai)nt\b", r"\1 not"),
        # Not negations: "whether or not", "why or why not", "... or not?" and "not only" assert nothing is false
        # ("fake or not genuine" does).
        (r"\bor why not\b", "or why"),
        (r"\bwhether or not\b", "whether"),
        (r"\bor not\b(?=\s*(?:[^\w\s]|$))", "or"),
        (r"\bnot only\b", "only"),
    )
)
_ACTION = re.compile(
    r"^\W*(?:please\s+)?(?:summari[sz]e|translate|rewrite|rephrase|paraphrase|proofread|correct|fix|edit|shorten|"
    r"expand|improve|classify|extract|review|analy[sz]e|convert|format|explain|refactor|debug|answer|reply|"
    r"simplify|critique|grade|tag|label|complete|continue)\b",
    re.IGNORECASE,
)
DOCUMENT_CHARS = 400
"""Longer than almost any question in the evaluation sets: text this long is something pasted to be worked on."""
ACTION_PAYLOAD_CHARS = 1
"""After "translate:" even "good night" is the text to act on."""
NEGATION_VETO_OVERLAP = 0.6
"""Negation flips a question when little else differs; in looser rephrasings it is left to the scorer."""

NOT_NAMES = frozenset(UNITS)
"""Capitalised, but currencies and units, which the units guard compares: "Rs 500" and "500 rupees" ask about
the same notes, "1 GB" and "1 TB" do not."""


def _stem(word: str) -> str:
    """A deliberately crude stemmer: enough to see "installing" and "installed" as the same word."""
    for suffix in ("ations", "ation", "ings", "ing", "edly", "ies", "ied", "es", "ed", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: -len(suffix)]
            return stem + "y" if suffix in ("ies", "ied") else stem
    return word


def _antonym_key(stem: str) -> str:
    """One key for a word's forms, from its stem (the text's words are stemmed once, and so are the list's):
    "enabled" and "enable", "stopped" and "stop", "closed" and "close", "increasing" and "increase"."""
    key = stem
    if len(key) > 3 and key[-1] == key[-2] and key[-1] not in "aeiouls":  # stopp -> stop, but not less / fall
        key = key[:-1]
    return key[:-1] if len(key) > 3 and key.endswith("e") else key


_ANTONYM_PAIRS = frozenset(tuple(_antonym_key(_stem(w)) for w in pair.split()) for pair in ANTONYMS.split("|"))


def plain(text: str) -> str:
    """The text itself, but for case, spacing and punctuation that asks nothing (commas, quotes, question and
    exclamation marks, a final full stop): what ``identical`` compares. Not ``normalise``, which keeps only Latin
    letters and digits: "C++" and "C#", "x > 5" and "x < 5", "-40" and "40" and any two questions in Chinese
    would all read the same."""
    kept = _QUIET_MARKS.sub(" ", text.casefold().replace("’", "'"))
    return " ".join(kept.split()).rstrip(".")


_QUIET_MARKS = re.compile(r"[,;:!?\"“”'()\[\]¿¡，。？！、：；]|\.(?=\s|$)")


def normalise(text: str) -> str:
    lowered = text.lower().replace("’", "'")
    for pattern, replacement in _CONTRACTIONS:
        lowered = pattern.sub(replacement, lowered)
    lowered = _NON.sub("non", lowered)  # "non-proliferation", "non proliferation", "nonproliferation"
    return " ".join(_TOKEN.findall(lowered))


def _numbers(text: str, words: list[str]) -> frozenset[str]:
    # "401k" and "401(k)" are a plan's name, not 401,000.
    text = _RETIREMENT_PLAN.sub(r"\1_\2", text.replace("\u00a0", " "))
    found = {v for m in _NUMBER.finditer(text) for v in _number_values(m)}
    spelled = {NUMBER_WORDS[w] for i, w in enumerate(words) if w in NUMBER_WORDS and not _pronoun(words, i)}
    return frozenset(found | spelled)


def _pronoun(words: list[str], i: int) -> bool:
    """ "How should one prepare?", "What books should one read?", "one of the best", "one another": "one" that
    counts nothing. "Will one dose do?" (the question's first word) and "Which one of the three?" count one."""
    if words[i] != "one":
        return False
    if i >= 2 and words[i - 1] in BEFORE_PRONOUN_ONE:
        return True
    after = words[i + 1 : i + 4]
    superlative = len(after) == 3 and after[:2] == ["of", "the"] and (after[2] in TOPS or after[2].endswith("est"))
    return superlative or after[:1] == ["another"]


def _number_values(match: re.Match[str]) -> tuple[str, ...]:
    """ "15,000", "15k" and "15 K" are 15000, "1.5k" is 1500, "1,50,000" and "1.5 lakh" are 150000; a range with
    a multiplier ("10-12k") is both ends multiplied, as "10k-12k" is; anything else with one ("1/2k") keeps its
    text and the multiplier's name."""
    number = match["value"].replace(",", "") + match["rest"]
    if match["unit"] is None:
        return (number,)
    unit = match["unit"].lower().rstrip("s")
    rest = match["rest"]
    if re.fullmatch(r"-\d+", rest):
        return (_multiplied(match["value"].replace(",", ""), unit), _multiplied(rest[1:], unit))
    if rest and not re.fullmatch(r"\.\d+", rest):
        return (number + unit,)
    return (_multiplied(number, unit),)


def _multiplied(number: str, unit: str) -> str:
    value = Decimal(number) * _MULTIPLIERS[unit]
    return str(int(value)) if value == value.to_integral_value() else str(value.normalize())


def _units(text: str) -> frozenset[str]:
    return frozenset(UNITS[m.group()] for m in _UNIT.finditer(text.lower()))


def _dates(words: list[str]) -> frozenset[str]:
    """Months, days, seasons and holidays; "this / next / last week" as one period each; "7 am" and "7 pm"."""
    found = {MONTHS[w] for w in words if w in MONTHS and w != "mar"} | {w for w in words if w in DAYS}
    for i, word in enumerate(words):
        before, after = words[i - 1] if i else "", words[i + 1] if i + 1 < len(words) else ""
        if word == "may" and (any(w.isdigit() for w in (before, after)) or before in MAY_BEFORE):
            found.add("may")
        if word in RELATIVE and after in PERIODS:
            found.add(f"{word} {after}")
        if word in ("am", "pm") and before.isdigit():
            found.add(word)
    return frozenset(found)


def _names(text: str) -> list[str]:
    """Runs of name-like words: capitalised inside a sentence, acronyms, letters mixed with digits or inner capitals.

    A capitalised first word is a name only when its shape says so ("PyTorch", "AWS", "2FA"): every sentence
    starts with a capital. "Cornell University" is one name, so "Cornell" on the other side matches it.
    """
    names: list[list[str]] = []
    sentence_start, previous_end = True, -2
    for match in _CASED.finditer(text):
        word = match.group().strip("'-")
        shaped = any(c.isdigit() for c in word) and any(c.isalpha() for c in word)
        shaped = shaped or any(c.isupper() for c in word[1:])
        ordinary = len(word) < 2 or word.lower() in STOPWORDS or _not_a_name(word.lower())
        if not ordinary and (shaped or (word[0].isupper() and not sentence_start)):
            if names and match.start() == previous_end + 1 and text[previous_end] == " ":
                names[-1].append(word)
            else:
                names.append([word])
            previous_end = match.end()
        sentence_start = bool(_SENTENCE_END.match(text[match.end() :].lstrip(" )\"'")))
    return [" ".join(name) for name in names]


def _not_a_name(word: str) -> bool:
    """Currencies, units, months and weekdays (the dates guard compares those), and numbers with a unit or an
    ordinal suffix ("15k", "2000rs", "12th", "24x7"): capitalised or mixed with digits, but not names."""
    if word in NOT_NAMES or word in MONTHS or word in DAYS:
        return True
    if not word[0].isdigit():
        return False
    unit = word.lstrip("0123456789.,")
    return unit == "" or unit in NOT_NAMES or unit in NUMBER_SUFFIXES or re.fullmatch(r"x\d+", unit) is not None


def _unmatched_names(
    names: list[str], other_names: list[str], other_words: set[str], strict: bool = False
) -> frozenset[str]:
    """``names`` none of whose words (stemmed or not) occur in the other text (``other_words``), nor abbreviate one
    of its names, nor share a root with one."""
    unmatched = set()
    other_name_words = {w for n in other_names for w in normalise(n).split()}
    compact = {"".join(normalise(n).split()) for n in other_names}  # "Wi-Fi" and "WiFi", "Times Now" and "TimesNow"
    for name in names:
        words = [w for w in normalise(name).split() if w not in STOPWORDS] or normalise(name).split()
        matched = "".join(normalise(name).split()) in compact

        def found(w: str) -> bool:
            return w in other_words or _stem(w) in other_words or _same_root(w, other_name_words)

        # ``strict`` (the guard): every word of the name must be found, titles aside: "Google Sheets" is not
        # "Google Docs", nor "Harvard University" "Stanford University", while "President Trump" is "Donald
        # Trump". Otherwise (the scorer's feature, as it was fitted) one shared word matches the name.
        distinctive = [w for w in words if w not in TITLES] or words
        # "REUSE EXISTING DATA", "REUSE_DATASET_IF_EXISTS": emphasis or an identifier, not a name of several words.
        shouted = name.isupper() and len(normalise(name).split()) > 1
        every = strict and not shouted
        matched = matched or (any(found(w) for w in words) and (not every or all(found(w) for w in distinctive)))
        if not matched and not any(_abbreviates(name, n) or _abbreviates(n, name) for n in other_names):
            unmatched.add(name.lower())
    return frozenset(unmatched)


def _same_root(word: str, other_names: set[str]) -> bool:
    """ "China" and "Chinese", "India" and "Indian", "Democratic" and "Democrats", "Google" and "Googled": one
    name is the other with a demonym's or an inflection's ending (the shorter one's last letter may be dropped
    first, and then the ending is longer than one letter). Five letters at least, so "Iran" and "Iraq" stay
    apart; "Austria" and "Australia", "India" and "Indiana", "Niger" and "Nigeria" differ by more than an
    ending."""
    for other in other_names:
        short, long = sorted((word, other), key=len)
        if len(short) < 5:
            continue
        if long.startswith(short) and long[len(short) :] in ROOT_ENDINGS:
            return True
        ending = long[len(short) - 1 :]
        if long.startswith(short[:-1]) and len(ending) >= 2 and ending in ROOT_ENDINGS:
            return True
    return False


def _abbreviates(short: str, long: str) -> bool:
    """ "ML" for "Machine Learning", "USA" for "United States", "js" for "JavaScript": written in capitals (or
    three letters at most), same first letter, then the short form's letters in order. "India" does not
    abbreviate "Indiana", nor "Cuba" "Colombia"."""
    letters = short.replace(" ", "")
    if not (letters.isupper() or len(letters) <= 3):
        return False
    letters, long = letters.lower(), long.lower()
    if not 2 <= len(letters) <= 5 or len(long) <= len(letters) or letters[0] != long[0]:
        return False
    rest = iter(long[1:])
    return all(c in rest for c in letters[1:])


def _is_antonym(a: str, b: str) -> bool:
    ka, kb = _antonym_key(a), _antonym_key(b)
    if (ka, kb) in _ANTONYM_PAIRS or (kb, ka) in _ANTONYM_PAIRS:
        return True
    return len(min(a, b, key=len)) >= 4 and any(b == p + a or a == p + b for p in NEGATING_PREFIXES)


def document_payload(text: str) -> str | None:
    """The document a request carries to be acted on ("summarize this: ...", "translate 'good night'", code),
    with what is asked of it, normalised; None for a question.

    Both must match for a hit: the same text summarised or translated, shortened or put in bullet points, is
    another request, and so is the same instruction on another text, however short. The instruction may be
    reworded ("Summarize this:" and "Please summarise the following:") but not changed.
    """
    acts = _ACTION.match(text) is not None
    fenced = "```" in text
    if fenced:
        blocks = re.findall(r"```.*?(?:```|$)", text, re.S)
        instruction, payload = re.sub(r"```.*?(?:```|$)", " ", text, flags=re.S), " ".join(blocks)
    elif acts and (quoted := _QUOTED.findall(text)):
        instruction, payload = _QUOTED.sub(" ", text), " ".join(quoted)
    elif acts:
        instruction, payload = _instruction_and_payload(text)
    else:
        instruction, payload = "", text
    if not (len(text) >= DOCUMENT_CHARS or fenced or (acts and len(payload.strip()) >= ACTION_PAYLOAD_CHARS)):
        return None
    words = normalise(instruction).split()
    asked = sorted({_stem(w.replace("ise", "ize")) for w in words if w not in _INSTRUCTION_FILLER})
    return " ".join(asked) + " | " + normalise(payload)


_INSTRUCTION_FILLER = STOPWORDS | words("please following text below above kindly can you could would me")


def _instruction_and_payload(text: str) -> tuple[str, str]:
    match = re.search(r"[:\n]", text)
    return (text, "") if match is None else (text[: match.start()], text[match.end() :])


_QUOTED = re.compile(r"[\"“`]\s*\S[^\"”`]*[\"”`]|(?<![\w'])'[^']+'(?![\w'])")
"""A quoted span (double or curly quotes, backticks, or single quotes that are not apostrophes): after an
instruction, the text to act on."""


@dataclass(frozen=True, slots=True)
class Signals:
    """The evidence for one (query, candidate) pair: pairs of sets are (query's, candidate's)."""

    cosine: float
    identical: bool
    numbers: tuple[frozenset[str], frozenset[str]]
    units: tuple[frozenset[str], frozenset[str]]
    dates: tuple[frozenset[str], frozenset[str]]
    negated: tuple[bool, bool]
    antonym: tuple[str, str] | None
    names: tuple[frozenset[str], frozenset[str]]
    """Names one side mentions and the other does not."""
    distinct_names: tuple[frozenset[str], frozenset[str]]
    """The same, stricter: a name whose distinctive words are not all found ("Google Sheets" / "Google Docs")."""
    documents: tuple[str | None, str | None]
    word_jaccard: float
    content_jaccard: float
    unmatched: int
    substituted: int
    question_word_differs: bool
    length_ratio: float

    @staticmethod
    def feature_names() -> tuple[str, ...]:
        return (
            "cosine",
            "cosine_squared",
            "word_jaccard",
            "content_jaccard",
            "unmatched_words",
            "substituted_words",
            "unmatched_names",
            "number_added",
            "date_added",
            "negation_differs",
            "question_word_differs",
            "length_ratio",
        )

    def features(self) -> tuple[float, ...]:
        return (
            self.cosine,
            self.cosine * self.cosine,
            self.word_jaccard,
            self.content_jaccard,
            float(min(self.unmatched, 6)),
            float(min(self.substituted, 3)),
            float(min(len(self.names[0]) + len(self.names[1]), 3)),
            float(self.numbers[0] != self.numbers[1]),
            float(self.dates[0] != self.dates[1]),
            float(self.negated[0] != self.negated[1]),
            float(self.question_word_differs),
            self.length_ratio,
        )


def signals(query: str, candidate: str, cosine: float) -> Signals:
    q_norm, c_norm = normalise(query), normalise(candidate)
    q_words, c_words = q_norm.split(), c_norm.split()
    q_stems, c_stems = {_stem(w) for w in q_words}, {_stem(w) for w in c_words}
    q_content, c_content = q_stems - STOPWORDS - NEGATIONS, c_stems - STOPWORDS - NEGATIONS
    q_only, c_only = q_content - c_content, c_content - q_content
    q_names, c_names = _names(query), _names(candidate)
    return Signals(
        cosine=cosine,
        identical=plain(query) == plain(candidate),
        numbers=(_numbers(query, q_words), _numbers(candidate, c_words)),
        units=(_units(query), _units(candidate)),
        dates=(_dates(q_words), _dates(c_words)),
        negated=(bool(NEGATIONS.intersection(q_words)), bool(NEGATIONS.intersection(c_words))),
        antonym=_antonym(q_stems - c_stems, c_stems - q_stems) or _particle_flip(q_words, c_words),
        names=(
            _unmatched_names(q_names, c_names, c_stems | set(c_words)),
            _unmatched_names(c_names, q_names, q_stems | set(q_words)),
        ),
        distinct_names=(
            _unmatched_names(q_names, c_names, c_stems | set(c_words), strict=True),
            _unmatched_names(c_names, q_names, q_stems | set(q_words), strict=True),
        ),
        documents=(document_payload(query), document_payload(candidate)),
        word_jaccard=_jaccard(q_stems, c_stems),
        content_jaccard=_jaccard(q_content, c_content),
        unmatched=len(q_only) + len(c_only),
        substituted=min(len(q_only), len(c_only)),
        question_word_differs=_question_word(q_words) != _question_word(c_words),
        length_ratio=min(len(q_words), len(c_words)) / max(len(q_words), len(c_words), 1),
    )


def _antonym(q_only: set[str], c_only: set[str]) -> tuple[str, str] | None:
    # Over all words, stopwords included ("best" / "worst", "before" / "after").
    return next(((a, b) for a in sorted(q_only) for b in sorted(c_only) if _is_antonym(a, b)), None)


def _particle_flip(q_words: list[str], c_words: list[str]) -> tuple[str, str] | None:
    """ "turn on" against "turn off": a particle one side has and the other lacks, after the same verb."""
    for first, second in PARTICLES:
        for a, b, mine, theirs in ((first, second, q_words, c_words), (second, first, q_words, c_words)):
            if a in theirs or b in mine:
                continue
            before = {mine[i - 1] for i in range(1, len(mine)) if mine[i] == a and mine[i - 1] in PARTICLE_VERBS}
            if any(theirs[j - 1] in before for j in range(1, len(theirs)) if theirs[j] == b):
                return a, b
    return None


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _question_word(words: list[str]) -> str:
    return next((w for w in words if w in QUESTION_WORDS), "")


def _swapped(sides: tuple[frozenset[str], frozenset[str]]) -> bool:
    """Each side has something the other lacks: a substitution, not an addition."""
    return bool(sides[0] - sides[1]) and bool(sides[1] - sides[0])


def _numbers_swapped(sides: tuple[frozenset[str], frozenset[str]]) -> bool:
    """As ``_swapped``, but "500/1000" on one side is matched by 500 and 1000 on the other (a list, as in "500
    and 1000"), while "1/4" against "4" still differs."""
    q, c = sides
    q_only = {n for n in q - c if not _listed(n, c)}
    c_only = {n for n in c - q if not _listed(n, q)}
    return bool(q_only) and bool(c_only)


def _listed(number: str, other: frozenset[str]) -> bool:
    parts = [p for p in number.split("/") if p]
    return len(parts) > 1 and all(p in other for p in parts)


def guard_veto(found: Signals) -> str:
    """Why the pair must not hit whatever its score, or "" when no guard objects."""
    q_doc, c_doc = found.documents
    if (q_doc is not None or c_doc is not None) and q_doc != c_doc:
        return "guard: the request carries a document to act on, and the documents differ"
    if _numbers_swapped(found.numbers):
        return f"guard: numbers differ ({_show(found.numbers[0])} vs {_show(found.numbers[1])})"
    if _swapped(found.units):
        return f"guard: units differ ({_show(found.units[0])} vs {_show(found.units[1])})"
    if _swapped(found.dates):
        return f"guard: dates differ ({_show(found.dates[0])} vs {_show(found.dates[1])})"
    if found.antonym is not None:
        return f"guard: opposite words ({found.antonym[0]} vs {found.antonym[1]})"
    if _swapped(found.distinct_names):
        return f"guard: names differ ({_show(found.distinct_names[0])} vs {_show(found.distinct_names[1])})"
    if found.negated[0] != found.negated[1] and found.content_jaccard >= NEGATION_VETO_OVERLAP:
        return "guard: one is negated and the other is not"
    return ""


def _show(items: frozenset[str]) -> str:
    return ", ".join(sorted(items)) or "none"
