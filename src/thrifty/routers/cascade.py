"""Cascades: the cheapest tier answers first; an answer that fails a check escalates to the next tier.

Only checks the gateway can run in production, on the answer alone (``routers.checks``): a refusal or hedge, an
empty, cut-off or too-short answer, JSON that does not parse (or fit the requested schema) when JSON was asked
for, no final number, wrong worked arithmetic, a regex that must match. The check that failed is recorded with
the escalated call's ledger row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thrifty.routers.checks import (
    AnswerCheck,
    ArithmeticCheck,
    FinalNumberCheck,
    JsonCheck,
    LengthCheck,
    RefusalCheck,
    RegexCheck,
    answer_from_openai,
    run_checks,
)
from thrifty.types import ChatRequest, ChatResponse, Principal, Route, Target

CHECK_NAMES = ("refusal", "nonempty", "json", "final_number", "arithmetic")


@dataclass(frozen=True, slots=True)
class Checks:
    names: tuple[str, ...] = ("refusal", "nonempty")
    min_length: int | None = None
    regex: str | None = None

    def first_failure(self, request: ChatRequest, response: ChatResponse) -> str | None:
        """The name of the first check the answer fails, or None when it passes them all."""
        verdict = run_checks(answer_from_openai(response.body), self._checks(request))
        return None if verdict.passed else verdict.check

    def _checks(self, request: ChatRequest) -> list[AnswerCheck]:
        checks: list[AnswerCheck] = []
        for name in self.names:
            if name == "refusal":
                checks.append(RefusalCheck())
            elif name == "nonempty":
                checks.append(LengthCheck(min_chars=1, name="nonempty"))
            elif name == "final_number":
                checks.append(FinalNumberCheck())
            elif name == "arithmetic":
                checks.append(ArithmeticCheck())
            elif name == "json" and _asks_json(request.body):
                checks.append(JsonCheck(_schema(request.body)))
        if self.min_length is not None:
            checks.append(LengthCheck(min_chars=self.min_length, name="min_length"))
        if self.regex is not None:
            checks.append(RegexCheck(self.regex))
        return checks


def _asks_json(body: dict[str, Any]) -> bool:
    return _object(body.get("response_format")).get("type") in ("json_object", "json_schema")


def _schema(body: dict[str, Any]) -> dict[str, Any] | None:
    schema = _object(_object(body.get("response_format")).get("json_schema")).get("schema")
    return schema if isinstance(schema, dict) else None


def _object(value: Any) -> dict[str, Any]:
    """A library caller's body is not validated as the server's is: a wrong type is read as absent."""
    return value if isinstance(value, dict) else {}


class CascadeRouter:
    def __init__(self, targets: Sequence[Target], checks: Checks) -> None:
        self._targets, self.checks = tuple(targets), checks

    def route(self, request: ChatRequest, principal: Principal) -> Route:
        reason = "cheapest tier first, escalate on " + "/".join(self.checks.names)
        return Route(self._targets, "cascade", reason, self.checks)
