"""Cascades: the cheapest tier answers first; an answer that fails a check escalates to the next tier.

Only checks the gateway can run in production, on the answer alone: a refusal, an empty or too-short answer,
JSON that does not parse when JSON was asked for, no final number where one is expected, a regex that must
match. The check that failed is recorded with the escalated call's ledger row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from thrifty.types import ChatRequest, ChatResponse, Principal, Route, Target

REFUSALS = re.compile(
    r"\b(i('m| am)? (sorry|unable|not able)|i can(no|')t (help|assist|answer|provide|do)|as an ai\b"
    r"|i do not have (access|the ability))",
    re.IGNORECASE,
)
FINAL_NUMBER = re.compile(r"(-?\d[\d,]*(\.\d+)?)\D*$")


@dataclass(frozen=True, slots=True)
class Checks:
    names: tuple[str, ...] = ("refusal", "nonempty")
    min_length: int | None = None
    regex: str | None = None

    def first_failure(self, request: ChatRequest, answer: str) -> str | None:
        """The name of the first check the answer fails, or None when it passes them all."""
        for name in self.names:
            if not _CHECKS[name](request, answer):
                return name
        if self.min_length is not None and len(answer.strip()) < self.min_length:
            return "min_length"
        if self.regex is not None and not re.search(self.regex, answer):
            return "regex"
        return None


def _nonempty(request: ChatRequest, answer: str) -> bool:
    return bool(answer.strip())


def _no_refusal(request: ChatRequest, answer: str) -> bool:
    return not REFUSALS.search(answer[:400])


def _json(request: ChatRequest, answer: str) -> bool:
    if (request.body.get("response_format") or {}).get("type") not in ("json_object", "json_schema"):
        return True
    try:
        orjson.loads(answer.strip().removeprefix("```json").removesuffix("```"))
    except orjson.JSONDecodeError:
        return False
    return True


def _final_number(request: ChatRequest, answer: str) -> bool:
    return bool(FINAL_NUMBER.search(answer.strip()))


_CHECKS = {"nonempty": _nonempty, "refusal": _no_refusal, "json": _json, "final_number": _final_number}


def answer_text(response: ChatResponse) -> str:
    choices = response.body.get("choices") or [{}]
    return str((choices[0].get("message") or {}).get("content") or "")


class CascadeRouter:
    def __init__(self, targets: Sequence[Target], checks: Checks) -> None:
        self._targets, self.checks = tuple(targets), checks

    def route(self, request: ChatRequest, principal: Principal) -> Route:
        return Route(
            self._targets, "cascade", "cheapest tier first, escalate on " + "/".join(self.checks.names), self.checks
        )
