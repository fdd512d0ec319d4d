from __future__ import annotations

from decimal import Decimal

import pytest

from thrifty.routers.checks import (
    Answer,
    ArithmeticCheck,
    FinalNumberCheck,
    JsonCheck,
    LengthCheck,
    LogprobCheck,
    RefusalCheck,
    RegexCheck,
    SelfConsistencyCheck,
    answer_from_openai,
    evaluate_arithmetic,
    extract_final_number,
    majority,
    run_checks,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She sells 9 eggs for $2 each.\n#### 18", Decimal(18)),
        ("So the total is $1,250.50. The answer is $1,250.50", Decimal("1250.50")),
        ("Thus \\boxed{42} is it, not 7.", Decimal(42)),
        ("Working: 3 + 4 = 7\nAnswer: -3", Decimal(-3)),
        ("First 12, then 30.", Decimal(30)),
        ("No numbers here.", None),
    ],
)
def test_extract_final_number(text: str, expected: Decimal | None) -> None:
    assert extract_final_number(text) == expected


def test_strict_extraction_needs_a_final_answer_marker() -> None:
    assert extract_final_number("First 12, then 30.", strict=True) is None
    assert not FinalNumberCheck().check(Answer("so we get 15 + 2 = <<15+2")).passed
    assert FinalNumberCheck().check(Answer("#### 17")).passed
    assert FinalNumberCheck(strict=False).check(Answer("it is 17")).passed


@pytest.mark.parametrize(
    ("expression", "value"),
    [("7 / 1/2", 14.0), ("16 \\* 3/4", 12.0), ("2 x 60", 120.0), ("$1,200 + 5", 1205.0), ("(2+3)*4", 20.0)],
)
def test_evaluate_arithmetic(expression: str, value: float) -> None:
    assert evaluate_arithmetic(expression) == pytest.approx(value)


@pytest.mark.parametrize("expression", ["2 ** 99999", "__import__('os')", "3 apples", "1/0", "x"])
def test_evaluate_arithmetic_refuses_anything_else(expression: str) -> None:
    assert evaluate_arithmetic(expression) is None


def test_arithmetic_check_recomputes_worked_equations() -> None:
    check = ArithmeticCheck()
    good = "He runs 3 x 3 = <<3*3=9>>9 sprints, so 9 * 60 = 540 meters, and 540 / 2 = 270 = 27 * 10.\n#### 270"
    assert check.check(Answer(good)).passed
    bad = check.check(Answer("She has 12 + 5 * 3 = <<12+5*3=39>>39 apples."))
    assert not bad.passed and "is 27" in bad.reason
    chained = check.check(Answer("Aaron has 40 / 2 + 5 = 20 + 5 = 26 jewels."))
    assert not chained.passed and "is 25" in chained.reason
    assert check.check(Answer("It is 15 floors * 8 units/floor * 3/4 = 90 units, 50% = half")).passed


def test_refusal_length_regex_and_json_checks() -> None:
    assert not RefusalCheck().check(Answer("I'm sorry, but I can't help with that.")).passed
    assert not RefusalCheck().check(Answer("There is not enough information to answer.")).passed
    assert RefusalCheck().check(Answer("The capital of France is Paris.")).passed
    assert not LengthCheck().check(Answer("  ")).passed
    assert not LengthCheck(max_chars=5).check(Answer("too long")).passed
    assert not LengthCheck().check(Answer("partial", finish_reason="length")).passed
    assert RegexCheck(r"^\d{4}-\d{2}-\d{2}$").check(Answer("2024-06-01")).passed
    assert not RegexCheck(r"TODO", must_match=False).check(Answer("a TODO left")).passed
    schema = {
        "type": "object",
        "required": ["name", "age"],
        "additionalProperties": False,
        "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0}},
    }
    check = JsonCheck(schema)
    assert check.check(Answer('```json\n{"name": "Ada", "age": 36}\n```')).passed
    for text, reason in [
        ('{"name": "Ada"}', "missing ['age']"),
        ('{"name": "Ada", "age": -1}', "minimum"),
        ('{"name": "Ada", "age": 3, "x": 1}', "unexpected ['x']"),
        ('{"name": "Ada", "age": true}', "expected integer"),
        ("{name: Ada}", "not JSON"),
    ]:
        verdict = check.check(Answer(text))
        assert not verdict.passed and reason in verdict.reason, text


def test_self_consistency_and_logprobs_judge_only_with_evidence() -> None:
    check = SelfConsistencyCheck(min_agreement=0.6)
    single = check.check(Answer("#### 5"))
    assert single.passed and "not judged" in single.reason
    assert check.check(Answer("#### 5", samples=("so 5", "#### 5.0"))).passed
    assert not check.check(Answer("#### 5", samples=("#### 6", "#### 7"))).passed
    assert majority([1, 1, 2, None]) == (1, 0.5)
    assert majority([None]) == (None, 0.0)
    assert LogprobCheck().check(Answer("x")).passed
    assert LogprobCheck(0.8).check(Answer("x", logprobs=(-0.01, -0.05))).passed
    low = LogprobCheck(0.8).check(Answer("x", logprobs=(-2.0, -0.5)))
    assert not low.passed and "confidence 0.29" in low.reason


def test_answers_from_openai_bodies_and_the_first_failure_wins() -> None:
    body = {
        "choices": [
            {
                "message": {"content": "#### 4"},
                "finish_reason": "stop",
                "logprobs": {"content": [{"token": "4", "logprob": -0.1}]},
            },
            {"message": {"content": "#### 5"}},
        ]
    }
    answer = answer_from_openai(body)
    assert answer == Answer("#### 4", "stop", (-0.1,), ("#### 5",))
    verdict = run_checks(answer, [FinalNumberCheck(), SelfConsistencyCheck(0.9), RefusalCheck()])
    assert (verdict.passed, verdict.check) == (False, "self-consistency")
    assert run_checks(Answer("#### 4"), [FinalNumberCheck(), RefusalCheck()]).passed


def test_a_cascade_reads_a_json_schema_it_cannot_use_as_none() -> None:
    """The server passes ``response_format`` through as sent (the provider judges it): a wrapper that is not an
    object must not crash the check that runs after the cheap answer was paid for."""
    from thrifty.routers.cascade import Checks
    from thrifty.types import ChatRequest, ChatResponse, Target

    for wrapper in ("s", ["a"], None):
        body = {"model": "auto", "messages": [], "response_format": {"type": "json_schema", "json_schema": wrapper}}
        answer = {"choices": [{"message": {"role": "assistant", "content": '{"a": 1}'}, "finish_reason": "stop"}]}
        response = ChatResponse(answer, None, Target("up", "gpt-4o-mini"), 1.0)
        assert Checks(names=("json",)).first_failure(ChatRequest(body, "r"), response) is None
