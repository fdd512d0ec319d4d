from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from thrifty.errors import ConfigError
from thrifty.optimizers.compress import LLMLinguaCompressor, compress_messages, compress_text, lean_spans
from thrifty.optimizers.prune import Selection
from thrifty.optimizers.text import number_spans
from thrifty.tokens import TiktokenCounter

MODEL = "gpt-4o"
COUNTER = TiktokenCounter()
NAMES = ["Amara", "Bilal", "Chen", "Dagny", "Emeka", "Farida", "Goran", "Hana", "Ines", "Jonas", "Kofi", "Lena"]
GOODS = ["apples", "bicycles", "candles", "notebooks", "lanterns", "teapots", "scarves", "kites", "drums", "maps"]


def story(rng: random.Random, name: str, goods: str) -> str:
    count, price, extra = rng.randint(3, 90), rng.randint(2, 40), rng.randint(2, 9)
    return (
        f"{name} runs a very small shop in the old market. Every week {name} buys {count} {goods} "
        f"at ${price} each from a supplier. However, the supplier also charges a flat fee of ${extra} per order. "
        f"{name} basically sells the {goods} to tourists who visit the harbour in the summer."
    )


def document(seed: int = 0) -> str:
    rng = random.Random(seed)
    return "\n\n".join(story(rng, name, goods) for name in NAMES for goods in GOODS[:3])


@pytest.mark.parametrize("ratio", [2.0, 3.0, 5.0])
def test_compression_hits_the_ratio_within_tolerance(ratio: float) -> None:
    text = document()
    result = compress_text(text, "How much does Chen pay for candles?", ratio, COUNTER, MODEL)
    assert result.tokens_before == COUNTER.count_text(MODEL, text)
    assert result.tokens_after == COUNTER.count_text(MODEL, result.text)
    achieved = result.tokens_before / result.tokens_after
    assert ratio <= achieved <= ratio * 1.1


def test_numbers_of_the_relevant_sentences_survive() -> None:
    text = document()
    target = next(p for p in text.split("\n\n") if p.startswith("Hana") and "candles" in p)
    for ratio in (2.0, 3.0, 5.0):
        result = compress_text(text, "How many candles does Hana buy and what does she pay?", ratio, COUNTER, MODEL)
        offset = text.index(target)
        for start, end in number_spans(target):
            number = target[start:end]
            assert any(s <= offset + start and offset + end <= e for s, e in result.kept), (ratio, number)
            assert number in result.text


def test_output_is_the_input_cut_down_in_order() -> None:
    text = document()
    result = compress_text(text, "Which supplier fee does Goran pay for bicycles?", 3.0, COUNTER, MODEL)
    starts = [s for s, _ in result.kept]
    assert starts == sorted(starts)
    for start, end in result.kept:
        assert text[start:end] in result.text


def test_lean_forms_drop_fillers_but_not_numbers_names_or_negations() -> None:
    text = "However, the very old shop does not sell A batteries for $3 each; it basically sells the Vitamin A tablets."
    lean = " ".join(text[s:e] for s, e in lean_spans(text, (0, len(text))))
    assert lean == "old shop does not sell A batteries for $3 each; it sells Vitamin A tablets."
    code = "Use `x = the value` as a default."
    assert lean_spans(code, (0, len(code))) == [(0, len(code))]


def test_no_compression_below_ratio_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        compress_text("Some text.", "q", 0.5, COUNTER, MODEL)
    same = compress_text("Some text.", "q", 1.0, COUNTER, MODEL)
    assert same.text == "Some text."


def test_compress_messages_only_touches_context() -> None:
    system = {"role": "system", "content": "Answer with a number only. " * 3}
    question = "How much does Emeka pay for apples?"
    messages = [system, {"role": "user", "content": document() + "\n\n" + question}]
    result = compress_messages(messages, 3.0, COUNTER, MODEL)
    assert result.messages[0] == system
    assert str(result.messages[1]["content"]).endswith("\n\n" + question)
    assert result.tokens_after == COUNTER.count_messages(MODEL, result.messages)
    assert result.tokens_before / result.tokens_after > 2.5


class UpperCompressor:
    """A fake model-based compressor: proves compress_messages goes through the slot."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def compress(self, text: str, query: str, ratio: float, model: str) -> Selection:
        self.queries.append(query)
        return Selection("SHORT", (), COUNTER.count_text(model, text), 1)


def test_a_pluggable_compressor_receives_context_and_question() -> None:
    fake = UpperCompressor()
    messages = [{"role": "user", "content": document() + "\n\nWhat about Lena?"}]
    result = compress_messages(messages, 3.0, COUNTER, MODEL, compressor=fake)
    assert result.messages[0]["content"] == "SHORT\n\nWhat about Lena?"
    assert fake.queries == ["What about Lena?"]


def test_llmlingua_without_weights_is_a_clear_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="never downloads"):
        LLMLinguaCompressor(tmp_path / "missing", COUNTER)


def test_llmlingua_without_the_extra_names_it(tmp_path: Path) -> None:
    if importlib.util.find_spec("llmlingua") is not None:
        pytest.skip("llmlingua is installed here")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"thrifty\[llmlingua\]"):
        LLMLinguaCompressor(tmp_path, COUNTER)
