from __future__ import annotations

from decimal import Decimal
from typing import Any

from thrifty.optimizers.hygiene import clean_messages, collapse_whitespace, lint_prompt
from thrifty.tokens import TiktokenCounter

MODEL = "gpt-4o"
COUNTER = TiktokenCounter()
RULE = "Always answer in English and keep the answer under three sentences."


def test_collapse_whitespace_keeps_indentation_and_code() -> None:
    text = "Title   here  \n\n\n\n  - item   one\t\t(two)\n```python\nx  =   1\n\n\n\ny = 2\n```\nend  "
    assert collapse_whitespace(text) == "Title here\n\n  - item one (two)\n```python\nx  =   1\n\n\n\ny = 2\n```\nend"


def test_clean_messages_drops_a_verbatim_repeated_instruction_and_keeps_the_first() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": f"You are a support agent for a bike shop.  {RULE}\n\n\n\nBe friendly."},
        {"role": "user", "content": f"My chain slips.   {RULE}"},
        {"role": "assistant", "content": f"Try this.  {RULE}"},
        {"role": "user", "content": [{"type": "text", "text": f"{RULE}\nIt still slips after oiling."}]},
    ]
    result = clean_messages(messages, COUNTER, MODEL)
    assert result.messages[0] == messages[0]  # the system prompt is reported on, never silently rewritten
    assert result.messages[1]["content"] == "My chain slips."
    assert result.messages[2] == messages[2]  # what the model said is never rewritten
    assert result.messages[3] == messages[3]  # the latest user turn is what is asked now: it keeps every sentence
    assert result.dropped == (RULE,)
    assert result.tokens_after == COUNTER.count_messages(MODEL, result.messages)
    assert result.tokens_after < result.tokens_before
    assert messages[1]["content"] == f"My chain slips.   {RULE}"  # input untouched
    edited = clean_messages(messages, COUNTER, MODEL, edit_system=True)
    assert edited.messages[0]["content"] == f"You are a support agent for a bike shop. {RULE}\n\nBe friendly."
    assert edited.messages[1:] == result.messages[1:]


def test_a_repeat_inside_the_system_prompt_is_dropped_only_when_allowed() -> None:
    messages = [{"role": "system", "content": f"{RULE} Be kind. {RULE}"}, {"role": "user", "content": "Hi"}]
    assert clean_messages(messages, COUNTER, MODEL).messages == messages
    assert clean_messages(messages, COUNTER, MODEL, edit_system=True).messages[0]["content"] == f"{RULE} Be kind."


def test_clean_messages_leaves_data_short_phrases_and_lone_repeats_alone() -> None:
    rows = "date,item,qty\n2024-01-02,chain,3\n2024-01-02,chain,3"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": RULE},
        {"role": "tool", "tool_call_id": "t", "content": rows},
        {"role": "user", "content": "Thanks. Thanks."},
        {"role": "user", "content": RULE},  # dropping it would leave an empty message
    ]
    result = clean_messages(messages, COUNTER, MODEL)
    assert [m["content"] for m in result.messages] == [m["content"] for m in messages]
    assert result.dropped == ()


def test_lint_reports_a_repeated_instruction_in_tokens_and_usd_per_thousand_calls() -> None:
    prompt = f"{RULE}\nYou help customers choose bikes.\n{RULE}"
    price = Decimal("2.50")  # USD per million input tokens
    findings = {f.rule: f for f in lint_prompt(prompt, MODEL, price, COUNTER)}
    repeated = findings["repeated-instruction"]
    fixed = f"{RULE}\nYou help customers choose bikes.\n"
    expected = COUNTER.count_text(MODEL, prompt) - COUNTER.count_text(MODEL, fixed)
    assert repeated.tokens == expected > 10
    assert repeated.occurrences == 1
    assert repeated.excerpt == RULE
    assert isinstance(repeated.usd_per_1k_calls, Decimal)
    assert repeated.usd_per_1k_calls == Decimal(expected) * price / 1000


def test_lint_prices_filler_whitespace_and_a_verbose_prompt() -> None:
    body = "Please make sure to be very polite.   \n\n\n\nIn order to help, kindly list options.\n"
    prompt = body + "\n".join(f"Fact {i}: the shop opens at {i} o'clock on day {i}." for i in range(120))
    price = Decimal("0.15")
    findings = {f.rule: f for f in lint_prompt(prompt, MODEL, price, COUNTER, verbose_above_tokens=500)}
    total = COUNTER.count_text(MODEL, prompt)
    assert findings["verbose"].tokens == total
    assert findings["verbose"].usd_per_1k_calls == Decimal(total) * price / 1000
    whitespace = findings["whitespace"]
    assert whitespace.tokens == total - COUNTER.count_text(MODEL, collapse_whitespace(prompt)) > 0
    filler = findings["filler"]
    assert filler.occurrences == 5
    assert filler.excerpt == "in order to, kindly, make sure to, please, very"
    assert filler.tokens > 0
    assert list(findings) == sorted(findings, key=lambda r: -findings[r].tokens)


def test_a_clean_prompt_has_no_findings() -> None:
    assert lint_prompt("You help customers choose bikes. Answer in English.", MODEL, Decimal(1), COUNTER) == []


def test_the_latest_user_turn_keeps_an_instruction_an_earlier_turn_gave() -> None:
    ask = "Translate the following sentence into German for me please."
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": f"{ask} Hello my friend."},
        {"role": "assistant", "content": "Hallo mein Freund."},
        {"role": "user", "content": f"{ask} Good night."},
    ]
    assert clean_messages(messages, COUNTER, MODEL).messages == messages


def test_spaces_in_inline_code_json_and_tables_are_data() -> None:
    code = "Why does `re.split('a  b', s)` differ from `re.split('a b', s)`?"
    table = "name     qty   price\nchain      3   12.00\nbell            4.50"
    json_result = '{"label": "a  b", "note": "two  spaces"}'
    messages: list[dict[str, Any]] = [
        {"role": "tool", "tool_call_id": "t", "content": json_result},
        {"role": "tool", "tool_call_id": "u", "content": table},
        {"role": "user", "content": code},
    ]
    assert clean_messages(messages, COUNTER, MODEL).messages == messages
    assert collapse_whitespace("A  sloppy   line of prose.") == "A sloppy line of prose."
