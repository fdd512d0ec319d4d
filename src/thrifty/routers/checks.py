"""Answer checks a cascade runs on a cheap model's answer to decide whether to escalate.

Every check here runs in production: it sees the answer (and what the provider returned with it), never a gold
label. A check that cannot judge (no log-probabilities given, one sample where self-consistency needs several)
passes and says why: escalating on missing evidence would turn every such call into two. So does every check
of the text when the answer is a tool call: the call is the answer, and an agent's every step would otherwise
be paid twice.

Checks are plain objects with a ``name`` and ``check(answer) -> Verdict``; ``run_checks`` returns the first
failure, which the ledger records as the reason for escalating. A check that raises passes (and is logged): it
runs after the cheap answer was paid for, and an exception there would lose that answer and its ledger row.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

log = logging.getLogger("thrifty")


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    finish_reason: str | None = None
    logprobs: tuple[float, ...] | None = None
    """Per-token log-probabilities of the answer, when the provider returned them."""
    samples: tuple[str, ...] = ()
    """Further samples of the same request (``n > 1``), for self-consistency."""
    tool_calls: int = 0
    """How many tools the answer calls; its text (often none) is then not what the checks judge."""


@dataclass(frozen=True, slots=True)
class Verdict:
    passed: bool
    check: str
    reason: str = ""


class AnswerCheck(Protocol):
    @property
    def name(self) -> str: ...

    def check(self, answer: Answer) -> Verdict: ...


def answer_from_openai(body: dict[str, Any]) -> Answer:
    """The first choice of a ``chat.completion`` body, with its log-probabilities and the other choices as samples."""
    choices = body.get("choices") or [{}]
    first = choices[0]
    message = first.get("message") or {}
    content = message.get("content") or ""
    calls = len(message.get("tool_calls") or ()) + (1 if message.get("function_call") else 0)
    tokens = ((first.get("logprobs") or {}).get("content")) or None
    logprobs = tuple(float(t["logprob"]) for t in tokens) if tokens else None
    samples = tuple(((c.get("message") or {}).get("content") or "") for c in choices[1:])
    return Answer(content, first.get("finish_reason"), logprobs, samples, calls)


def run_checks(answer: Answer, checks: Iterable[AnswerCheck]) -> Verdict:
    """The first failing check's verdict, or a pass."""
    for check in checks:
        try:
            verdict = check.check(answer)
        except Exception:  # a check's own bug or an input it never met: see the module docstring
            log.exception("answer check %r raised; the answer passes it", check.name)
            continue
        if not verdict.passed:
            return verdict
    return Verdict(True, "all")


_TOOL_CALL = "a tool call: no text to judge"


@dataclass(frozen=True)
class LengthCheck:
    min_chars: int = 1
    max_chars: int | None = None
    name: str = "length"

    def check(self, answer: Answer) -> Verdict:
        size = len(answer.text.strip())
        if answer.finish_reason == "length":
            return Verdict(False, self.name, "cut off at the token limit")
        if answer.tool_calls:
            return Verdict(True, self.name, _TOOL_CALL)
        if size < self.min_chars:
            return Verdict(False, self.name, f"{size} characters, fewer than {self.min_chars}")
        if self.max_chars is not None and size > self.max_chars:
            return Verdict(False, self.name, f"{size} characters, more than {self.max_chars}")
        return Verdict(True, self.name)


@dataclass(frozen=True)
class RegexCheck:
    pattern: str
    must_match: bool = True
    name: str = "regex"

    def check(self, answer: Answer) -> Verdict:
        if answer.tool_calls:
            return Verdict(True, self.name, _TOOL_CALL)
        found = re.search(self.pattern, answer.text, re.S) is not None
        if found == self.must_match:
            return Verdict(True, self.name)
        return Verdict(False, self.name, f"{'no match for' if self.must_match else 'matched'} {self.pattern!r}")


_REFUSALS = (
    r"\bI(?:'m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:no|')t|am unable|won't)",
    r"\bI (?:can(?:no|')t|am unable to|am not able to|won't) (?:help|assist|provide|answer|comply|do that)",
    r"\bas an AI(?: language model)?\b",
    r"\b(?:I don't|I do not) (?:know|have enough information)\b",
    r"\b(?:not enough|insufficient) information\b",
    r"\b(?:cannot|can't|unable to) (?:be )?determine[d]?\b",
)


@dataclass(frozen=True)
class RefusalCheck:
    """Refusals and hedges: an answer that declines or gives up is worth a stronger model's try."""

    patterns: tuple[str, ...] = _REFUSALS
    name: str = "refusal"

    def check(self, answer: Answer) -> Verdict:
        if answer.tool_calls:
            return Verdict(True, self.name, _TOOL_CALL)
        for pattern in self.patterns:
            found = re.search(pattern, answer.text, re.I)
            if found:
                return Verdict(False, self.name, f"hedges or refuses: {found.group(0)!r}")
        return Verdict(True, self.name)


@dataclass(frozen=True)
class JsonCheck:
    """The answer parses as JSON (a Markdown code fence around it is allowed) and fits ``schema`` if given.

    The schema is the common subset of JSON Schema: type, properties, required, additionalProperties (false),
    items, prefixItems, enum, minimum, maximum, minLength, maxLength, and ``true``/``false`` schemas.
    """

    schema: dict[str, Any] | None = None
    name: str = "json"

    def check(self, answer: Answer) -> Verdict:
        if answer.tool_calls:
            return Verdict(True, self.name, _TOOL_CALL)
        text = answer.text.strip()
        fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.S)
        try:
            value = json.loads(fenced.group(1) if fenced else text)
        except json.JSONDecodeError as exc:
            return Verdict(False, self.name, f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        problem = schema_problem(value, self.schema or {}, "$")
        return Verdict(problem is None, self.name, problem or "")


_JSON_TYPES: dict[str, Callable[[object], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_problem(value: object, schema: object, where: str) -> str | None:
    """The first way ``value`` breaks ``schema``, or None.

    The schema is the client's, valid JSON Schema beyond the subset read here: what this cannot interpret (an
    unknown type name, a bound that is not a number, a keyword it does not know) is not checked, never a crash.
    A ``true`` schema accepts anything and ``false`` nothing, as JSON Schema says.
    """
    if schema is False:
        return f"{where}: not allowed by the schema"
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    kinds = [kind] if isinstance(kind, str) else kind if isinstance(kind, list) else []
    known = all(isinstance(k, str) and k in _JSON_TYPES for k in kinds)
    if kinds and known and not any(_JSON_TYPES[k](value) for k in kinds):
        return f"{where}: expected {' or '.join(kinds)}"
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        return f"{where}: {value!r} is not one of {enum}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
        if low is not None and value < low:
            return f"{where}: {value} < minimum {low}"
        if high is not None and value > high:
            return f"{where}: {value} > maximum {high}"
    if isinstance(value, str):
        shortest, longest = _bound(schema, "minLength"), _bound(schema, "maxLength")
        if shortest is not None and len(value) < shortest:
            return f"{where}: shorter than {shortest}"
        if longest is not None and len(value) > longest:
            return f"{where}: longer than {longest}"
    if isinstance(value, list):
        return _array_problem(value, schema, where)
    if isinstance(value, dict):
        return _object_problem(value, schema, where)
    return None


def _bound(schema: dict[str, Any], key: str) -> float | None:
    bound = schema.get(key)
    return bound if isinstance(bound, int | float) and not isinstance(bound, bool) else None


def _array_problem(value: list[Any], schema: dict[str, Any], where: str) -> str | None:
    # A list under "items" (before JSON Schema 2020-12) gives each position its schema and "additionalItems" the
    # rest; since 2020-12 "prefixItems" does that and "items" is for the rest.
    items, prefix = schema.get("items"), schema.get("prefixItems")
    if isinstance(items, list):
        prefix, items = items, schema.get("additionalItems")
    positional = prefix if isinstance(prefix, list) else []
    for i, item in enumerate(value):
        if problem := schema_problem(item, positional[i] if i < len(positional) else items, f"{where}[{i}]"):
            return problem
    return None


def _object_problem(value: dict[str, Any], schema: dict[str, Any], where: str) -> str | None:
    required = schema.get("required")
    missing = [k for k in required if isinstance(k, str) and k not in value] if isinstance(required, list) else []
    if missing:
        return f"{where}: missing {missing}"
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    # Keys that patternProperties allows are not extra, and that keyword is not read here.
    closed = schema.get("additionalProperties") is False and "patternProperties" not in schema
    if closed and (extra := sorted(set(value) - set(properties))):
        return f"{where}: unexpected {extra}"
    for key, sub in properties.items():
        if key in value and (problem := schema_problem(value[key], sub, f"{where}.{key}")):
            return problem
    return None


_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?"
_FINAL_MARKERS = (
    rf"####\s*({_NUMBER})",
    r"\\boxed\{\s*([^{}]*?)\s*\}",
    rf"(?:final answer|the answer)\s*(?:is|:|=)\s*\**\s*({_NUMBER})",
    rf"^\s*answer\s*:\s*\**\s*({_NUMBER})",
)


def extract_final_number(text: str, *, strict: bool = False) -> Decimal | None:
    """The final numeric answer of a math solution, as graders of GSM8K read it.

    Looks for an explicit final answer first (``#### 18``, ``\\boxed{18}``, "the answer is 18", "Answer: 18"); unless
    ``strict``, falls back to the last number in the text.
    """
    for marker in _FINAL_MARKERS:
        found = re.findall(marker, text, re.I | re.M)
        if found and (number := _to_decimal(found[-1])) is not None:
            return number
    if strict:
        return None
    numbers = re.findall(_NUMBER, text)
    return _to_decimal(numbers[-1]) if numbers else None


def _to_decimal(token: str) -> Decimal | None:
    cleaned = token.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


@dataclass(frozen=True)
class FinalNumberCheck:
    """A math answer must state a final number; a solution that trails off or never concludes fails."""

    strict: bool = True
    name: str = "final-number"

    def check(self, answer: Answer) -> Verdict:
        if answer.tool_calls:
            return Verdict(True, self.name, _TOOL_CALL)
        if extract_final_number(answer.text, strict=self.strict) is None:
            return Verdict(False, self.name, "no final numeric answer")
        return Verdict(True, self.name)


_OPS: dict[type[ast.AST], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def evaluate_arithmetic(expression: str) -> float | None:
    """The value of + - * / arithmetic on numbers (``x``, ``×``, ``÷``, ``$``, ``,`` allowed), or None.

    ``a/b`` written without spaces is read as one fraction, as people write it: "7 / 1/2" is 14.
    """
    text = expression.replace("\\*", "*").replace("×", "*").replace("÷", "/").replace("$", "").replace(",", "")
    text = re.sub(r"(?<=[\d)])\s*x\s*(?=[\d(])", "*", text)
    text = re.sub(r"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)", r"(\1/\2)", text)
    if not re.fullmatch(r"[\d\s.+\-*/()]+", text) or len(text) > 200:
        return None
    try:
        return _eval_node(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, ZeroDivisionError, ValueError, OverflowError):
        return None


def _eval_node(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_node(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval_node(node.left), _eval_node(node.right))
    raise ValueError("not plain arithmetic")


_ANNOTATION = re.compile(r"<<([^<>]*=[^<>]*)>>")
_PART = r"[\d\s.,+\-*/x×÷()$\\]*\d[\d\s.,+\-*/x×÷()$\\]*"
_CHAIN = re.compile(rf"{_PART}(?:=\s*{_PART})+")


@dataclass(frozen=True)
class ArithmeticCheck:
    """Every worked equation in the answer (``a op b = c = d``, and ``<<a*b=c>>`` calculator notes) is right.

    A cheap model's typical failure on word problems is one wrong product or sum; recomputing it needs no label.
    Sides that do not parse as plain arithmetic (units, words, percentages) are skipped, never failed.
    """

    name: str = "arithmetic"

    def check(self, answer: Answer) -> Verdict:
        if answer.tool_calls:
            return Verdict(True, self.name, _TOOL_CALL)
        chains = [m.group(1) for m in _ANNOTATION.finditer(answer.text)]
        chains += [m.group(0) for m in _CHAIN.finditer(_ANNOTATION.sub(" ", answer.text))]
        for chain in chains:
            sides = chain.split("=")
            values = [evaluate_arithmetic(side) for side in sides]
            for i in range(len(sides) - 1):
                lhs, rhs = values[i], values[i + 1]
                if lhs is not None and rhs is not None and not math.isclose(lhs, rhs, rel_tol=1e-3, abs_tol=0.01):
                    return Verdict(False, self.name, f"{sides[i].strip()} is {lhs:g}, not {sides[i + 1].strip()}")
        return Verdict(True, self.name)


def majority(values: Sequence[Hashable | None]) -> tuple[Hashable | None, float]:
    """The most common non-None value and the share of all values that agree with it."""
    counted = Counter(v for v in values if v is not None)
    if not counted:
        return None, 0.0
    value, count = counted.most_common(1)[0]
    return value, count / len(values)


@dataclass(frozen=True)
class SelfConsistencyCheck:
    """Several samples of the cheap model agree on the extracted answer (needs ``n >= 2`` samples to judge)."""

    min_agreement: float = 0.6
    extract: Callable[[str], Hashable | None] = field(default=extract_final_number)
    name: str = "self-consistency"

    def check(self, answer: Answer) -> Verdict:
        if answer.tool_calls:
            return Verdict(True, self.name, _TOOL_CALL)
        if not answer.samples:
            return Verdict(True, self.name, "one sample only: not judged")
        _, share = majority([self.extract(t) for t in (answer.text, *answer.samples)])
        if share < self.min_agreement:
            return Verdict(False, self.name, f"samples agree {share:.0%}, under {self.min_agreement:.0%}")
        return Verdict(True, self.name)


@dataclass(frozen=True)
class LogprobCheck:
    """The model's own confidence: the geometric mean token probability of the answer."""

    min_confidence: float = 0.8
    name: str = "logprob"

    def check(self, answer: Answer) -> Verdict:
        if not answer.logprobs:
            return Verdict(True, self.name, "no log-probabilities given: not judged")
        confidence = math.exp(sum(answer.logprobs) / len(answer.logprobs))
        if confidence < self.min_confidence:
            return Verdict(False, self.name, f"confidence {confidence:.2f} under {self.min_confidence:.2f}")
        return Verdict(True, self.name)
