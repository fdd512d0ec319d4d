"""The semantic hit decision: guards veto the known false-hit patterns whatever the cosine; paraphrases hit."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from thrifty.caches.similarity import DEFAULT_THRESHOLD, CosineJudge, GuardedJudge, ScorerWeights
from thrifty.caches.text_signals import Signals, document_payload, guard_veto, normalise, signals

# A cosine as high as MiniLM gives these near-identical pairs: the guard must decide, not the embedding.
HIGH_COSINE = 0.97
DOC_A = "The quarterly report shows revenue grew in Europe while costs in Asia fell after the new contracts."
DOC_B = "Our hiking club met on Sunday to plan the autumn trip, the budget and who brings the tents and stoves."

MUST_MISS = [
    ("How do I enable 2FA?", "How do I disable 2FA?", "opposite words"),
    ("weather in Paris on 2024-05-01", "weather in Paris on 2024-05-02", "numbers differ"),
    (f"summarize this: {DOC_A}", f"summarize this: {DOC_B}", "document"),
    ("Can I delete my account?", "Why can't I delete my account?", "negated"),
    ("What is the weather in Paris today?", "What is the weather in London today?", "names differ"),
    ("How long does it take to boil 2 eggs?", "How long does it take to boil 3 eggs?", "numbers differ"),
    ("How do I turn on dark mode?", "How do I turn off dark mode?", "opposite words"),
    ("Book a table for Monday", "Book a table for Friday", "dates differ"),
    ("How do I install numpy?", "How do I uninstall numpy?", "opposite words"),
    ("Is Python faster than Java?", "Is Python faster than Rust?", "names differ"),
    ("Best phone under 15k?", "Best phone under 20k?", "numbers differ"),
    ("Best phone under 15k?", "Best phone under 20,000?", "numbers differ"),
    ("Visa rules for Iran", "Visa rules for Iraq", "names differ"),
    ("Flights to Austria from Berlin", "Flights to Australia from Berlin", "names differ"),
    ("Best universities in India?", "Best universities in Indiana?", "names differ"),
    ("Visa rules for Niger?", "Visa rules for Nigeria?", "names differ"),
    ("Flights to Cuba", "Flights to Colombia", "names differ"),
    ("Convert 100 USD to EUR", "Convert 100 USD to GBP", "units differ"),
    ("Is 1 GB of RAM enough?", "Is 1 TB of RAM enough?", "units differ"),
    ("Will one dose of the vaccine protect me?", "Will two doses of the vaccine protect me?", "numbers differ"),
    ("Which one of the three options is best?", "Which two of the three options are best?", "numbers differ"),
    ("How much is 1/4 cup of butter in grams?", "How much is 4 cups of butter in grams?", "numbers differ"),
    ("Best phone under 15k?", "Best phone under 150k?", "numbers differ"),
]


@pytest.fixture(scope="module")
def judge() -> GuardedJudge:
    return GuardedJudge()


@pytest.mark.parametrize(("query", "cached", "why"), MUST_MISS)
def test_guards_veto_whatever_the_cosine(judge: GuardedJudge, query: str, cached: str, why: str) -> None:
    decision = judge.decide(query, cached, HIGH_COSINE)
    assert not decision.hit
    assert decision.score == 0.0
    assert why in decision.reason


@pytest.mark.parametrize(("query", "cached", "why"), MUST_MISS)
def test_guards_are_symmetric(judge: GuardedJudge, query: str, cached: str, why: str) -> None:
    assert not judge.decide(cached, query, HIGH_COSINE).hit


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("what is the capital of austria", "what is the capital of australia"),
        ("how do i install docker on ubuntu", "how do i install docker on windows"),
        ("symptoms of flu in adults", "symptoms of flu in children"),
        ("how to make pizza dough", "how to make bread dough"),
        ("how do i reset my iphone", "how do i reset my ipad"),
    ],
)
def test_with_real_embeddings_one_lowercase_word_swapped_misses(
    judge: GuardedJudge, minilm_cosine: object, query: str, cached: str
) -> None:
    """No guard sees these (no capitals, numbers or opposites): the scorer must. Given the cosine, it scores a
    pair lower the more words the two share, which reads as a penalty on unmatched words only at equal cosine:
    a one-word swap embeds far closer than a paraphrase and still scores well below the threshold (0.07 to 0.56)."""
    cosine = minilm_cosine(query, cached)  # type: ignore[operator]
    decision = judge.decide(query, cached, cosine)
    assert not decision.hit and decision.score < 0.7, decision.reason


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("How do I reset my password?", "How can I reset my password?"),
        ("What is the capital of France?", "What's the capital city of France?"),
        ("Is it possible to learn Python in 2 weeks?", "Can I learn Python in 2 weeks?"),
        ("Check whether or not the file exists", "Check if the file exists or not"),
        ("What is ML used for?", "What is Machine Learning used for?"),
    ],
)
def test_paraphrases_pass_the_guards_and_hit_at_a_high_cosine(judge: GuardedJudge, query: str, cached: str) -> None:
    decision = judge.decide(query, cached, 0.99)
    assert decision.hit, decision.reason
    assert decision.score >= DEFAULT_THRESHOLD
    assert "hit: score" in decision.reason


def test_identical_text_hits_with_full_score(judge: GuardedJudge) -> None:
    decision = judge.decide("How do I reset my password?", "  how do I reset my PASSWORD ", 0.2)
    assert decision == dataclasses.replace(decision, hit=True, score=1.0)


def test_a_low_cosine_misses_without_any_guard(judge: GuardedJudge) -> None:
    decision = judge.decide("How do I reset my password?", "How can I reset my password?", 0.55)
    assert not decision.hit
    assert decision.reason.startswith("miss: score")


def test_score_rises_with_the_cosine(judge: GuardedJudge) -> None:
    scores = [judge.decide("How do I bake bread?", "How can I bake bread at home?", c).score for c in (0.6, 0.8, 0.95)]
    assert scores == sorted(scores)
    assert scores[0] < scores[-1]


def test_the_threshold_decides(judge: GuardedJudge) -> None:
    score = judge.decide("How do I bake bread?", "How can I bake bread at home?", 0.9).score
    assert (
        GuardedJudge(threshold=max(score - 0.01, 0.01))
        .decide("How do I bake bread?", "How can I bake bread at home?", 0.9)
        .hit
    )
    assert (
        not GuardedJudge(threshold=min(score + 0.01, 1.0))
        .decide("How do I bake bread?", "How can I bake bread at home?", 0.9)
        .hit
    )


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.5])
def test_threshold_out_of_range_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        GuardedJudge(threshold=threshold)


def test_same_document_with_reworded_instruction_is_not_vetoed(judge: GuardedJudge) -> None:
    decision = judge.decide(f"Summarize this: {DOC_A}", f"Please summarise the following:\n{DOC_A}", HIGH_COSINE)
    assert "document" not in decision.reason


def test_a_comma_groups_thousands_but_also_lists_numbers() -> None:
    listed = signals("banning the 500,1000 notes", "banning the 500 and 1000 notes", 0.9)
    assert listed.numbers == (frozenset({"500", "1000"}), frozenset({"500", "1000"}))
    grouped = signals("a prize of 1,000,000 dollars", "a prize of 1000000 dollars", 0.9)
    assert grouped.numbers == (frozenset({"1000000"}), frozenset({"1000000"}))
    assert signals("is pi 3.14", "is pi 3.15", 0.9).numbers == (frozenset({"3.14"}), frozenset({"3.15"}))


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("Which is the best phone under 15k?", "Which is the best phone under 15,000?"),
        ("Which is the best laptop under Rs 60000?", "Which is the best laptop under 60K INR?"),
        ("Best bike under 1.5 lakh?", "Best bike under 150000?"),
        ("What is a 401(k) plan?", "What is a 401k plan?"),
        ("How should one prepare for the IAS exam?", "How do I prepare for the IAS exam?"),
        (
            "What are the differences between Chinese and western table manners?",
            "How do China and the west differ at table?",
        ),
        ("Why do people use Google instead of asking?", "Why don't people just search Googling things?"),
        ("Who won the presidential debate in September?", "Who won the presidential debate?"),
        ("Best earphones under 1k?", "Best earphones under 1000Rs?"),
        ("Is olive oil good for the face?", "Is olive oil good for the face? Why or why not?"),
        ("What is the Non-Proliferation Treaty?", "What is the non proliferation treaty?"),
        (
            "Will banning Rs 500 and Rs 1000 notes curb black money?",
            "Will banning the 500/1000 notes curb black money?",
        ),
    ],
)
def test_what_only_looks_different_is_not_vetoed(judge: GuardedJudge, query: str, cached: str) -> None:
    """Spelling a number another way, a pronoun "one", a demonym, a month or a currency: not a substitution."""
    decision = judge.decide(query, cached, HIGH_COSINE)
    assert not any(word in decision.reason for word in ("numbers differ", "names differ", "dates differ")), (
        decision.reason
    )


def test_a_slash_lists_numbers_but_a_fraction_still_differs(judge: GuardedJudge) -> None:
    assert "numbers differ" in judge.decide("Why is 2/7 like 1/7 shifted?", "Why is 3/7 like 1/7 shifted?", 0.97).reason
    assert "opposite words" in judge.decide("Best non violent anime?", "Best violent anime?", 0.97).reason


def test_spelled_multipliers_are_values() -> None:
    assert signals("under 15k", "under 15 K", 0.9).numbers == (frozenset({"15000"}), frozenset({"15000"}))
    assert signals("a 1.5k budget", "2 lakh", 0.9).numbers == (frozenset({"1500"}), frozenset({"200000"}))
    assert signals("5 kids", "10k-12k", 0.9).numbers == (frozenset({"5"}), frozenset({"10000", "12000"}))
    assert signals("4.1 lakh", "1,50,000", 0.9).numbers == (frozenset({"410000"}), frozenset({"150000"}))
    # A range multiplies both ends: "10-12k" is "10k-12k", neither "10-12" nor "10-12 lakh".
    assert signals("10-12k", "10k-12k", 0.9).numbers == (frozenset({"10000", "12000"}),) * 2
    assert signals("10-12", "10-12 lakh", 0.9).numbers == (frozenset({"10-12"}), frozenset({"1000000", "1200000"}))
    assert signals("10-12k", "1/2k", 0.9).numbers == (frozenset({"10000", "12000"}), frozenset({"1/2k"}))
    # Whitespace of any kind and digits of any script: values, never a crash.
    assert signals("under 15\u00a0k", "under 15\tk", 0.9).numbers[0] == frozenset({"15000"})
    assert "numbers differ" in guard_veto(signals("under ५००", "under ७००", 0.9))


def test_contractions_are_whole_words() -> None:
    assert normalise("Is it for nothing?") == "is it for nothing"
    assert normalise("Why can't I, or why not?") == "why can not i or why"
    # Typed without the apostrophe, the same negation; "or not" closing a question, or after "whether", is none;
    # "fake or not genuine" is one.
    assert normalise("Why isnt it, and why cant I? I dont know") == "why is not it and why can not i i do not know"
    assert normalise("Is this a tenant or not?") == "is this a tenant or"
    assert normalise("a word meaning fake or not genuine") == "a word meaning fake or not genuine"
    assert normalise("I wonder whether or not to go") == "i wonder whether to go"
    judge = GuardedJudge()
    assert "negated" not in judge.decide("Why isnt OF2 an oxide?", "Why isn't OF2 an Oxide?", 0.99).reason
    assert "negated" in judge.decide("Is OF2 an oxide?", "Why isnt OF2 an oxide?", 0.99).reason


def test_long_pasted_text_is_a_document() -> None:
    assert document_payload("word " * 100) is not None
    assert document_payload("How do I reset my password?") is None
    assert document_payload("Translate: hi") is not None  # however short, the text to act on


def test_bundled_weights_match_the_features() -> None:
    weights = ScorerWeights.bundled()
    assert weights.names == Signals.feature_names()
    assert len(weights.weights) == len(Signals.feature_names())
    features = signals("How do I bake bread?", "How can I bake bread?", 0.9).features()
    assert 0.0 < weights.probability(features) < 1.0


def test_probability_survives_extreme_inputs() -> None:
    weights = ScorerWeights(bias=1e6, weights=(0.0,), names=("x",))
    assert weights.probability([0.0]) == pytest.approx(1.0)
    assert ScorerWeights(bias=-1e6, weights=(0.0,), names=("x",)).probability([0.0]) == pytest.approx(0.0)


def test_cosine_judge_is_cosine_against_the_threshold() -> None:
    assert CosineJudge(0.9).decide("a", "b", 0.91).hit
    assert not CosineJudge(0.9).decide("a", "b", 0.89).hit
    assert CosineJudge(0.9).decide("a", "b", 0.95).score == 0.95


_REQUIRE = os.environ.get("THRIFTY_REQUIRE_SERVICES") == "1"


@pytest.fixture(scope="module")
def minilm_cosine() -> object:
    if not _REQUIRE:
        pytest.importorskip("sentence_transformers", reason="the semantic extra is not installed")
    from thrifty.caches.embedders import MiniLMEmbedder

    model = MiniLMEmbedder()

    def cosine(a: str, b: str) -> float:
        vectors = model.embed([a, b])
        return float(np.dot(vectors[0], vectors[1]))

    return cosine


@pytest.mark.parametrize(("query", "cached", "why"), MUST_MISS)
def test_with_real_embeddings_the_false_hit_patterns_miss(
    judge: GuardedJudge, minilm_cosine: object, query: str, cached: str, why: str
) -> None:
    cosine = minilm_cosine(query, cached)  # type: ignore[operator]
    assert not judge.decide(query, cached, cosine).hit


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("How do I reset my password?", "How can I reset my password?"),
        ("How do I delete my account?", "How can I delete my account?"),
        ("How do I cancel my subscription?", "How can I cancel my subscription?"),
    ],
)
def test_with_real_embeddings_paraphrases_hit(
    judge: GuardedJudge, minilm_cosine: object, query: str, cached: str
) -> None:
    cosine = minilm_cosine(query, cached)  # type: ignore[operator]
    decision = judge.decide(query, cached, cosine)
    assert decision.hit, decision.reason


CODE = "```python\nprint(total / count)\n```"


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        # Opposites in any form ("enabled", "stopped", "closed" once slipped past a list of base words).
        ("Why is 2FA enabled on my account?", "Why is 2FA disabled on my account?"),
        ("Why is my RAM usage increasing?", "Why is my RAM usage decreasing?"),
        ("Why has the service started?", "Why has the service stopped?"),
        ("Why is port 22 open?", "Why is port 22 closed?"),
        ("How to be more productive at work", "How to be less productive at work"),
        ("What is the largest planet?", "What is the smallest planet?"),
        ("Is Python better than Java for scripting?", "Is Python worse than Java for scripting?"),
        ("Which programming language is the most popular?", "Which programming language is the least popular?"),
        ("How do I sign in to my account?", "How do I sign out of my account?"),
        ("Sort the results in ascending order", "Sort the results in descending order"),
        # Units and spelled numbers.
        ("Is my baby's sleep normal at 6 months old?", "Is my baby's sleep normal at 6 weeks old?"),
        ("How much is 10 mg of melatonin?", "How much is 10 grams of melatonin?"),
        ("How many dollars are in 500 rupees?", "How many pesos are in 500 rupees?"),
        ("What did the sixteenth amendment change?", "What did the seventeenth amendment change?"),
        ("Fashion of the twentieth century", "Fashion of the nineteenth century"),
        # Dates.
        ("What is the weather this week in Rome?", "What is the weather next week in Rome?"),
        ("Cheap flights to Rome in March", "Cheap flights to Rome in May"),
        ("Set an alarm for 7 am", "Set an alarm for 7 pm"),
        # What is asked of a document, however short.
        (f"Summarize this: {DOC_A}", f"Translate this into French: {DOC_A}"),
        (f"Summarize in one sentence: {DOC_A}", f"Summarize as bullet points: {DOC_A}"),
        (f"Fix the bug:\n{CODE}", f"Explain the code:\n{CODE}"),
        ("Translate: good morning", "Translate: good night"),
        ("Translate 'good morning' to French", "Translate 'good night' to French"),
        # Names sharing a word name different things ("President" is a title, not another person: see below).
        ("How do I share a file in Google Sheets?", "How do I share a file in Google Docs?"),
        ("Is Harvard University worth the money?", "Is Stanford University worth the money?"),
        ("Where was Barack Obama born?", "Where was Michelle Obama born?"),
        ("Best pizza in New York?", "Best pizza in New Jersey?"),
        # Identical only when the text is: symbols and other scripts are not noise.
        ("How do I learn C++?", "How do I learn C#?"),
        ("Is x > 5 here?", "Is x < 5 here?"),
    ],
)
def test_questions_that_differ_in_what_they_ask_never_hit(judge: GuardedJudge, query: str, cached: str) -> None:
    decision = judge.decide(query, cached, HIGH_COSINE)
    assert not decision.hit, decision.reason


def test_text_in_other_scripts_is_never_taken_for_identical(judge: GuardedJudge) -> None:
    """Letters outside a-z once all normalised away: any two questions in Chinese were 'identical', a hit at any
    cosine."""
    assert not judge.decide("北京今天天气怎么样", "上海明天天气怎么样", 0.3).hit
    assert not judge.decide(
        "Как включить двухфакторную аутентификацию", "Как отключить двухфакторную аутентификацию", 0.3
    ).hit
    assert judge.decide("How do I learn Python?", "how do i learn python", 0.3).hit  # case and the mark only
    assert judge.decide("北京今天天气怎么样?", "北京今天天气怎么样", 0.3).hit


def test_in_and_out_are_opposites_only_after_a_verb_they_turn(judge: GuardedJudge) -> None:
    assert not judge.decide("How do I turn on dark mode?", "How do I turn off dark mode?", 0.97).hit
    same = judge.decide(
        "How do I get the dog smell in my carpet?", "How do I get the dog smell out of my carpet?", 0.97
    )
    assert "opposite" not in same.reason


def test_a_title_is_not_another_name(judge: GuardedJudge) -> None:
    decision = judge.decide("What did President Trump say about China?", "What did Donald Trump say about China?", 0.97)
    assert "names differ" not in decision.reason
