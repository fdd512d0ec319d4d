"""The task a prompt asks for, for rules (``task = ["code", "math"]``): a few regular expressions, microseconds.

A heuristic, and says so: it reads the last user turn for the marks each kind of task leaves (a code fence or a
language's keywords, arithmetic, "translate", "summarize", "classify", "extract"), first match wins in the order
of ``TASKS``, and anything else is ``chat``. A team whose traffic it misreads trains the learned router on its
own outcomes instead.
"""

from __future__ import annotations

import re

TASKS = ("translate", "summarize", "classify", "extract", "code", "math", "chat")

_LANGUAGES = (
    "english|french|spanish|german|italian|portuguese|dutch|russian|chinese|japanese|korean|arabic|hindi|turkish|"
    "polish|swedish|greek|hebrew"
)
_PATTERNS = {
    "translate": re.compile(rf"\btranslat(?:e|ion|ing)\b|\b(?:in|into|to) (?:{_LANGUAGES})\b[.?!:]?\s*$"),
    "summarize": re.compile(
        r"\bsummar(?:y|ies|i[sz]e|i[sz]ing)\b|\btl;?dr\b|\bkey (?:points|takeaways)\b|\bcondense\b"
    ),
    "classify": re.compile(
        r"\bclassif(?:y|ication)\b|\bcategori[sz]e\b|\bsentiment\b|\bwhich (?:category|label)\b|\blabel (?:this|the)\b"
    ),
    "extract": re.compile(r"\bextract\b|\bpull out\b|\blist (?:all|every) (?:the )?\w+ (?:in|from)\b|\bparse\b"),
    "code": re.compile(
        r"```|\b(?:python|javascript|typescript|java|golang|rust|kotlin|swift|c\+\+|c#|sql|bash|regex|html|css)\b|"
        r"\b(?:function|compile[rs]?|refactor|debug|stack ?trace|exception|unit tests?|api endpoint|bug)\b|"
        r"\b(?:def|class|import|return|const|let|var|select|lambda)\s+\w|[{};]\s*$|=>|\w\(\w*\)"
    ),
    "math": re.compile(
        r"\d\s*[-+*/^×÷=]\s*\d|\b(?:solve|equation|integral|derivative|probability|calculate|compute|percent(?:age)?|"
        r"sum of|product of|square root)\b"
    ),
}


SCANNED_CHARS = 2000
"""The start and the end of a long turn are read (where the instruction is), so a pasted document costs nothing."""


def task_of(text: str) -> str:
    """One of ``TASKS`` for a prompt's text (case does not matter)."""
    if len(text) > 2 * SCANNED_CHARS:
        text = text[:SCANNED_CHARS] + "\n" + text[-SCANNED_CHARS:]
    lowered = text.lower()
    for task, pattern in _PATTERNS.items():
        if pattern.search(lowered):
            return task
    return "chat"
