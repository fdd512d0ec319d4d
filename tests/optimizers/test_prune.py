from __future__ import annotations

import copy
from collections.abc import Sequence

import pytest

from thrifty.optimizers.prune import ContextSlice, find_context, prune_messages, prune_text
from thrifty.tokens import TiktokenCounter

MODEL = "gpt-4o"
COUNTER = TiktokenCounter()

TOPICS = [
    "The lighthouse on the northern cape was built in 1874 from granite blocks hauled by ox carts.",
    "Our return policy lets customers send back unworn shoes within 45 days for a full refund.",
    "The orchestra rehearses on Tuesdays and performs a free concert in the park every August.",
    "Volcanic soil on the island makes the coffee grown there unusually sweet and low in acidity.",
    "The committee approved a budget of 2.4 million euros for repairing the old railway bridge.",
    "Penguins in the colony dive up to 200 meters deep while hunting for krill and small fish.",
    "The library lends laptops for up to 14 days to any student with a valid campus card.",
    "A late frost in April destroyed most of the apricot blossoms in the southern valley orchards.",
    "The ferry to the outer islands leaves at 7:15 each morning and returns before sunset.",
    "Engineers replaced the stadium roof with translucent panels that let grass grow evenly.",
    "The bakery's sourdough starter has been kept alive by the same family for ninety years.",
    "Refunds for cancelled flights are processed within 7 business days to the original card.",
]
DOCUMENT = "\n\n".join(f"{topic} {topic.split(' ', 3)[-1].capitalize()}" for topic in TOPICS)


def test_prune_text_keeps_the_relevant_passages_in_order_within_budget() -> None:
    budget = COUNTER.count_text(MODEL, DOCUMENT) // 4
    result = prune_text(DOCUMENT, "How long do I have to return shoes for a refund?", budget, COUNTER, MODEL)
    assert result.tokens_after <= budget
    assert result.tokens_after == COUNTER.count_text(MODEL, result.text)
    assert "within 45 days" in result.text
    starts = [start for start, _ in result.kept]
    assert starts == sorted(starts)
    positions = [DOCUMENT.index(topic) for topic in TOPICS if topic in result.text]
    assert positions == sorted(positions)
    assert len(positions) < len(TOPICS)


def test_prune_text_leaves_text_under_budget_alone() -> None:
    result = prune_text(DOCUMENT, "anything", 10_000, COUNTER, MODEL)
    assert result.text == DOCUMENT
    assert result.tokens_before == result.tokens_after


def _rag_request(question: str) -> list[dict[str, object]]:
    return [
        {"role": "system", "content": "You answer from the documents. Cite the passage you used. Be brief."},
        {"role": "user", "content": DOCUMENT + "\n\n" + question},
    ]


@pytest.mark.parametrize("budget_share", [0.3, 0.5, 0.8])
def test_prune_messages_respects_the_budget_and_never_touches_question_or_system(budget_share: float) -> None:
    question = "Which flights get a refund, and how quickly is it paid?"
    messages = _rag_request(question)
    original = copy.deepcopy(messages)
    budget = int(COUNTER.count_messages(MODEL, messages) * budget_share)
    result = prune_messages(messages, budget, COUNTER, MODEL)
    assert messages == original  # the caller keeps the original request
    assert result.tokens_after <= budget < result.tokens_before
    assert result.tokens_after == COUNTER.count_messages(MODEL, result.messages)
    assert result.messages[0] == messages[0]
    user = str(result.messages[1]["content"])
    assert user.endswith("\n\n" + question)
    assert "7 business days" in user


def test_latest_question_is_never_pruned_even_when_it_is_long() -> None:
    question = "Here is my question about refunds. " * 30 + "What is the refund policy for shoes?"
    messages: list[dict[str, object]] = [
        {"role": "tool", "tool_call_id": "t1", "content": DOCUMENT},
        {"role": "user", "content": question},
    ]
    result = prune_messages(messages, COUNTER.count_messages(MODEL, messages) // 2, COUNTER, MODEL)
    assert result.messages[1]["content"] == question
    assert "45 days" in str(result.messages[0]["content"])
    assert result.tokens_saved > 0


def test_only_tagged_context_in_a_system_prompt_is_pruned() -> None:
    instructions = "You are a travel assistant. Never invent prices."
    system = f"{instructions}\n<documents>\n{DOCUMENT}\n</documents>\nAnswer in one sentence."
    messages: list[dict[str, object]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": "When does the ferry leave?"},
    ]
    result = prune_messages(messages, COUNTER.count_messages(MODEL, messages) // 3, COUNTER, MODEL)
    pruned = str(result.messages[0]["content"])
    assert pruned.startswith(instructions + "\n<documents>\n")
    assert pruned.endswith("\n</documents>\nAnswer in one sentence.")
    assert "7:15" in pruned
    assert sum(topic in pruned for topic in TOPICS) < len(TOPICS) // 2


def test_what_counts_as_context() -> None:
    short_tool = {"role": "tool", "tool_call_id": "t", "content": "42"}
    long_system = {"role": "system", "content": DOCUMENT}  # untagged: instructions, however long
    assistant = {"role": "assistant", "content": DOCUMENT}
    earlier_user = {"role": "user", "content": DOCUMENT}
    latest = {"role": "user", "content": [{"type": "text", "text": "What about penguins?"}]}
    query, slices = find_context([long_system, earlier_user, assistant, short_tool, latest], COUNTER, MODEL, 200)
    assert slices == [ContextSlice(1, None, 0, len(DOCUMENT))]
    assert query == "What about penguins?"


class ConceptEmbedder:
    """A fake embedder that knows two synonyms BM25 cannot match: unit vectors over three concepts."""

    CONCEPTS: tuple[set[str], ...] = ({"automobile", "car", "vehicle"}, {"lighthouse", "beacon"})

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        rows = []
        for text in texts:
            words = set(text.lower().replace("?", " ").replace(".", " ").split())
            row = [1.0 if words & concept else 0.0 for concept in self.CONCEPTS] + [0.1]
            norm = sum(v * v for v in row) ** 0.5
            rows.append([v / norm for v in row])
        return rows


def test_embedding_relevance_finds_what_words_miss() -> None:
    document = "\n\n".join(TOPICS[1:] + TOPICS[:1])  # the lighthouse last, where ties never reach
    budget = COUNTER.count_text(MODEL, document) // 5
    query = "When was the beacon constructed?"
    lexical = prune_text(document, query, budget, COUNTER, MODEL)
    fused = prune_text(document, query, budget, COUNTER, MODEL, embedder=ConceptEmbedder())
    assert "lighthouse" not in lexical.text
    assert "lighthouse" in fused.text
    assert fused.tokens_after <= budget


def test_latest_turn_only_keeps_the_cached_prefix_byte_for_byte() -> None:
    messages: list[dict[str, object]] = [
        {"role": "user", "content": "Look up the shop facts."},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "t1", "content": DOCUMENT},
        {"role": "assistant", "content": "Found them."},
        {"role": "tool", "tool_call_id": "t2", "content": DOCUMENT},
        {"role": "user", "content": "When does the ferry leave?"},
    ]
    _, everywhere = find_context(messages, COUNTER, MODEL, 200)
    _, latest_turn = find_context(messages, COUNTER, MODEL, 200, latest_turn_only=True)
    assert [s.message for s in everywhere] == [2, 4]
    assert [s.message for s in latest_turn] == [4]
    budget = COUNTER.count_messages(MODEL, messages) - COUNTER.count_text(MODEL, DOCUMENT) // 2
    latest = prune_messages(messages, budget, COUNTER, MODEL, latest_turn_only=True)
    assert latest.messages[:4] == messages[:4]
    assert "7:15" in str(latest.messages[4]["content"])
    assert latest.tokens_after <= budget


def test_structured_data_is_never_context() -> None:
    rows = ",\n".join(f'  {{"id": {i}, "ferry": "leaves at {i}:15", "note": "{TOPICS[i % 12]}"}}' for i in range(40))
    messages: list[dict[str, object]] = [
        {"role": "tool", "tool_call_id": "t", "content": "[\n" + rows + "\n]"},
        {"role": "tool", "tool_call_id": "u", "content": "```python\n" + DOCUMENT + "\n```"},
        {"role": "user", "content": "When does the ferry leave?"},
    ]
    assert find_context(messages, COUNTER, MODEL, 200)[1] == []
    result = prune_messages(messages, 100, COUNTER, MODEL)
    assert result.messages == messages


def test_nested_document_tags_are_pruned_inside_each_document() -> None:
    documents = "".join(f'<document index="{i}">\n{topic}\n</document>\n' for i, topic in enumerate(TOPICS))
    system = f"Answer from the documents.\n<documents>\n{documents}</documents>"
    messages: list[dict[str, object]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": "When does the ferry leave for the outer islands?"},
    ]
    result = prune_messages(messages, COUNTER.count_messages(MODEL, messages) // 2, COUNTER, MODEL)
    pruned = str(result.messages[0]["content"])
    assert pruned.count("<document index=") == pruned.count("</document>") == len(TOPICS)  # markup intact
    assert "7:15" in pruned
    assert pruned.count(">\n\n</document>") > len(TOPICS) // 3  # emptied documents keep their tags, no marker
    assert "[omitted]" not in pruned
    assert result.tokens_after <= COUNTER.count_messages(MODEL, messages) // 2


def test_a_wholly_irrelevant_tool_result_becomes_a_marker() -> None:
    messages: list[dict[str, object]] = [
        {"role": "tool", "tool_call_id": "a", "content": "\n\n".join(TOPICS[:6])},
        {"role": "tool", "tool_call_id": "b", "content": "\n\n".join(TOPICS[6:])},
        {"role": "user", "content": "Library laptops, apricot frost, ferry, stadium roof, sourdough, flight refunds?"},
    ]
    budget = COUNTER.count_messages(MODEL, messages) - COUNTER.count_text(MODEL, str(messages[0]["content"])) + 10
    result = prune_messages(messages, budget, COUNTER, MODEL, min_context_tokens=50)
    assert result.messages[0]["content"] == "[omitted]"
    assert result.messages[1] == messages[1]
    assert result.tokens_after <= budget


def test_the_best_passage_does_not_jump_ahead_of_earlier_ones() -> None:
    budget = COUNTER.count_text(MODEL, DOCUMENT) // 4
    query = "When does the ferry to the outer islands leave each morning, and can I get a refund?"
    result = prune_text(DOCUMENT, query, budget, COUNTER, MODEL)
    kept = [topic for topic in TOPICS if topic in result.text]  # in document order
    assert len(kept) >= 2
    assert kept[0] != TOPICS[8]  # the ferry passage ranks first but is not the first in the document
    assert [result.text.index(topic) for topic in kept] == sorted(result.text.index(topic) for topic in kept)
    assert list(result.kept) == sorted(result.kept)
