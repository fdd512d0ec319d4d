from __future__ import annotations

import pytest

from thrifty.optimizers.bm25 import BM25, normalised
from thrifty.optimizers.text import join_spans, number_spans, split_passages, split_sentences, terms

PASSAGES = [
    "The museum opens at nine and closes at five on weekdays.",
    "Our refund policy: unused tickets can be refunded within 30 days of purchase.",
    "Parking is free for visitors on weekends in the north garage.",
    "The cafe on the second floor serves coffee, sandwiches and cake.",
]


def test_the_relevant_passage_ranks_first() -> None:
    index = BM25([terms(p) for p in PASSAGES])
    scores = index.scores(terms("How many days do I have to get a refund for my tickets?"))
    assert max(range(len(scores)), key=scores.__getitem__) == 1
    assert scores[1] > 2 * max(scores[0], scores[2], scores[3])


def test_repeating_a_query_word_changes_nothing_and_idf_never_goes_negative() -> None:
    documents = [["coffee", "cake"], ["coffee"], ["coffee", "tea"], ["coffee", "water"]]
    index = BM25(documents)
    assert index.scores(["tea"]) == index.scores(["tea", "tea", "tea"])
    assert index.idf("coffee") > 0  # in every document, yet still counts for a little
    assert index.scores(["coffee"])[1] > 0


def test_empty_inputs_score_zero() -> None:
    assert BM25([]).scores(["anything"]) == []
    assert BM25([["a"], []]).scores([]) == [0.0, 0.0]
    assert normalised([0.0, 0.0]) == [0.0, 0.0]
    assert normalised([1.0, 4.0]) == [0.25, 1.0]


def test_terms_drop_function_words_and_share_stems() -> None:
    assert terms("The eggs she sells") == terms("egg sell")
    assert "the" not in terms("The cat")
    assert "16" in terms("Janet's ducks lay 16 eggs")


def test_sentences_survive_abbreviations_and_decimals() -> None:
    text = "Dr. Smith paid $1.50 for tea. He left at 5 p.m. on Monday! Did he return?\nYes"
    sentences = [text[s:e] for s, e in split_sentences(text)]
    assert sentences == ["Dr. Smith paid $1.50 for tea.", "He left at 5 p.m. on Monday!", "Did he return?", "Yes"]


def test_passages_split_on_blank_lines_and_long_paragraphs_into_sentence_windows() -> None:
    text = "First para.\n\n  \nSecond para. Still second.\n\nThird."
    assert [text[s:e] for s, e in split_passages(text)] == ["First para.", "Second para. Still second.", "Third."]
    wall = " ".join(f"Sentence number {i} is here." for i in range(40))
    windows = split_passages(wall, max_chars=200)
    assert len(windows) > 4
    assert all(e - s <= 200 for s, e in windows)
    assert join_spans(wall, windows) == wall  # windows tile the paragraph, nothing lost or re-spaced


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("He buys a house for $80,000, then 150% more.", ["$80,000", "150%"]),
        ("One glass costs $5, but every second glass is half price.", ["One", "$5", "half"]),
        ("Twenty-five cats and 1.5 dogs", ["Twenty-five", "1.5"]),
    ],
)
def test_number_mentions(text: str, numbers: list[str]) -> None:
    assert [text[s:e] for s, e in number_spans(text)] == numbers
