from __future__ import annotations

from dataclasses import dataclass
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
    Verdict,
    answer_from_openai,
    evaluate_arithmetic,
    extract_final_number,
    majority,
    run_checks,
    schema_problem,
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


def test_a_tool_call_is_the_answer_and_text_checks_pass_it() -> None:
    """An agent's step answers with a tool call and no text: read as empty, it would escalate every time."""
    from thrifty.routers.cascade import Checks
    from thrifty.types import ChatRequest, ChatResponse, Target

    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = {"choices": [{"message": {"content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}]}
    answer = answer_from_openai(body)
    assert answer == Answer("", "tool_calls", tool_calls=1)
    checks = [RefusalCheck(), LengthCheck(min_chars=20), RegexCheck(r"\d"), JsonCheck(), FinalNumberCheck()]
    checks += [ArithmeticCheck(), SelfConsistencyCheck()]
    assert run_checks(answer, checks).passed
    # A tool call cut off at the token limit has incomplete arguments: that is still a failure.
    assert not LengthCheck().check(Answer("", "length", tool_calls=1)).passed
    cascade = Checks(names=("refusal", "nonempty", "json"), min_length=5, regex=r"\d")
    request = ChatRequest({"model": "auto", "messages": [], "response_format": {"type": "json_object"}}, "r")
    assert cascade.first_failure(request, ChatResponse(body, None, Target("up", "m"), 1.0)) is None
    # A failure is named by the check that failed, as configured.
    empty = {"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]}
    assert cascade.first_failure(request, ChatResponse(empty, None, Target("up", "m"), 1.0)) == "nonempty"


@pytest.mark.parametrize(
    ("schema", "value", "problem"),
    [
        ({"properties": {"a": True}}, {"a": [1]}, None),
        ({"properties": {"a": False}}, {"a": 1}, "$.a: not allowed by the schema"),
        ({"properties": {"a": False}}, {"b": 1}, None),
        ({"items": [{"type": "integer"}, {"type": "string"}]}, [1, "x", None], None),
        ({"items": [{"type": "integer"}], "additionalItems": False}, [1, 2], "$[1]: not allowed by the schema"),
        ({"prefixItems": [{"type": "string"}], "items": {"type": "integer"}}, ["a", 1], None),
        ({"prefixItems": [{"type": "string"}], "items": {"type": "integer"}}, ["a", "b"], "$[1]: expected integer"),
        ({"enum": None}, 1, None),
        ({"type": "int"}, 1, None),
        ({"type": ["int", "string"]}, 1, None),
        ({"type": {"not": "a type"}}, 1, None),
        ({"minimum": "0"}, -1, None),
        ({"maxLength": None}, "abc", None),
        ({"required": [["a"]], "properties": []}, {}, None),
        ({"additionalProperties": False, "patternProperties": {"^x": {}}}, {"x1": 1}, None),
    ],
)
def test_a_json_schema_is_read_as_far_as_it_can_be_and_never_crashes(
    schema: dict[str, object], value: object, problem: str | None
) -> None:
    """Valid JSON Schema beyond the subset the check reads (boolean schemas, tuple items, unknown type names)
    used to raise after the cheap answer was paid for."""
    assert schema_problem(value, schema, "$") == problem


@dataclass(frozen=True)
class BrokenCheck:
    name: str = "broken"

    def check(self, answer: Answer) -> Verdict:
        raise KeyError("a check's own bug")


def test_a_check_that_raises_passes_the_answer_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """It runs after the cheap answer was paid for: raising would lose that answer and its ledger row."""
    assert run_checks(Answer("fine"), [BrokenCheck(), RefusalCheck()]).passed
    verdict = run_checks(Answer("I'm sorry, but I can't help with that."), [BrokenCheck(), RefusalCheck()])
    assert (verdict.passed, verdict.check) == (False, "refusal")  # the checks after it still judge
    assert "answer check 'broken' raised" in caplog.text
