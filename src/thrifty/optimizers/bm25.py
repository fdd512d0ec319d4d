"""Okapi BM25 over a handful of in-memory documents: the lexical half of context relevance.

Built fresh for every request (a prompt's passages are the corpus) and usually scored once, so construction only
counts each document's terms; document frequencies are worked out for the query's terms when scoring.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence


class BM25:
    """Scores documents (lists of terms) against a query.

    IDF is Lucene's ``log(1 + (N - df + 0.5) / (df + 0.5))``, which never goes negative: with only a few dozen
    passages, a term in more than half of them would otherwise count against a passage that contains it.
    """

    def __init__(self, documents: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self.size = len(documents)
        self.counts = [Counter(document) for document in documents]
        self.lengths = [len(document) for document in documents]
        self.average_length = (sum(self.lengths) / self.size) if self.size else 0.0
        self._frequencies: Counter[str] | None = None

    def idf(self, term: str, frequency: int | None = None) -> float:
        if frequency is None:
            frequency = self._all_frequencies()[term]
        return math.log(1.0 + (self.size - frequency + 0.5) / (frequency + 0.5))

    def scores(self, query: Iterable[str]) -> list[float]:
        """One score per document; each distinct query term counts once, so repeating a word changes nothing."""
        totals = [0.0] * self.size
        if not self.size or not self.average_length:
            return totals
        norms = [self.k1 * (1.0 - self.b + self.b * length / self.average_length) for length in self.lengths]
        for term in set(query):
            hits = [(index, counts[term]) for index, counts in enumerate(self.counts) if term in counts]
            if not hits:
                continue
            weight = self.idf(term, len(hits)) * (self.k1 + 1.0)
            for index, frequency in hits:
                totals[index] += weight * frequency / (frequency + norms[index])
        return totals

    def information(self, document: Sequence[str]) -> float:
        """Mean IDF of a document's terms: how specific it is when there is no query to score it against."""
        if not document:
            return 0.0
        return sum(self.idf(term) for term in document) / len(document)

    def _all_frequencies(self) -> Counter[str]:
        if self._frequencies is None:
            self._frequencies = Counter()
            for counts in self.counts:
                self._frequencies.update(counts.keys())
        return self._frequencies


def normalised(scores: Sequence[float]) -> list[float]:
    """Scores divided by the largest, so that rankings from different scorers can be added; all-zero stays zero."""
    top = max(scores, default=0.0)
    if top <= 0.0:
        return [0.0] * len(scores)
    return [score / top for score in scores]
