"""Cascades: the cheapest tier answers first; an answer that fails a check escalates to the next tier.

Only checks the gateway can run in production, on the answer alone (``routers.checks``): a refusal or hedge, an
empty, cut-off or too-short answer, JSON that does not parse (or fit the requested schema) when JSON was asked
for, no final number, wrong worked arithmetic, a regex that must match, samples that disagree, low token
confidence, and the user's own checks. The check that failed is recorded with the escalated call's ledger row.

Two checks need more from the cheap tier than the client asked: ``self_consistency`` asks it for ``samples``
choices (``n``, where the provider gives several; all are paid for and in the ledger), ``logprob`` for its token
log-probabilities. ``Checks.prepare`` adds them to the cheap tiers' calls only and ``Checks.finish`` takes them
out of the answer the client gets, which is then what it asked for: its one choice, no log-probabilities.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from thrifty.errors import ConfigError
from thrifty.routers.checks import (
    AnswerCheck,
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
    extract_final_number,
    majority,
    run_checks,
)
from thrifty.types import ChatRequest, ChatResponse, Principal, Route, Target

CHECK_NAMES = ("refusal", "nonempty", "json", "final_number", "arithmetic", "self_consistency", "logprob")


@dataclass(frozen=True, slots=True)
class CustomCheck:
    """A user's check, ``package.module:function``: the function takes an ``Answer`` and returns a bool."""

    name: str
    function: Callable[[Any], object]

    def check(self, answer: Any) -> Verdict:
        return Verdict(bool(self.function(answer)), self.name)


def load_custom_check(path: str) -> CustomCheck:
    """``package.module:function`` imported now: a typo is a start-up error, not a check that never runs."""
    module_name, _, attribute = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"custom check {path!r} cannot be loaded ({exc}); write it as 'package.module:function'"
        ) from exc
    if not callable(function):
        raise ConfigError(f"custom check {path!r} is not a function")
    return CustomCheck(path, function)


def final_number_or_text(text: str) -> Hashable | None:
    """What self-consistency compares: the final number where the answers have one, else the whole answer with
    case, spacing and punctuation set aside (labels, short answers)."""
    number = extract_final_number(text)
    if number is not None:
        return number
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split()) or None


@dataclass(frozen=True, slots=True)
class Checks:
    names: tuple[str, ...] = ("refusal", "nonempty")
    min_length: int | None = None
    regex: str | None = None
    samples: int = 3
    min_agreement: float = 0.6
    min_confidence: float = 0.8
    custom: tuple[CustomCheck, ...] = ()

    def first_failure(self, request: ChatRequest, response: ChatResponse) -> str | None:
        """The name of the first check the answer fails, or None when it passes them all."""
        verdict = run_checks(answer_from_openai(response.body), self._checks(request))
        return None if verdict.passed else verdict.check

    def prepare(self, request: ChatRequest, samples: bool) -> ChatRequest:
        """The cheap tier's request: several choices for ``self_consistency`` (``samples``: the provider can give
        them), log-probabilities for ``logprob``; what the client asked for itself is left as it is."""
        body = request.body
        extra: dict[str, Any] = {}
        if "self_consistency" in self.names and samples and int(body.get("n") or 1) == 1:
            extra["n"] = self.samples
        if "logprob" in self.names and not body.get("logprobs"):
            extra["logprobs"] = True
        return replace(request, body={**body, **extra}) if extra else request

    def finish(self, request: ChatRequest, response: ChatResponse) -> ChatResponse:
        """The answer as the client asked for it: one choice (of the samples, one giving the majority's answer),
        log-probabilities only if asked."""
        body = request.body
        choices = response.body.get("choices")
        if not isinstance(choices, list):
            return response
        if "self_consistency" in self.names and int(body.get("n") or 1) == 1 and choices:
            choices = [{**_majority_choice(choices), "index": 0}]
        if "logprob" in self.names and not body.get("logprobs"):
            choices = [{**c, "logprobs": None} if isinstance(c, dict) else c for c in choices]
        return replace(response, body={**response.body, "choices": choices}, raw=None)  # not the bytes as sent

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
            elif name == "self_consistency" and int(request.body.get("n") or 1) == 1:
                # Only samples the gateway asked for: a client's own n > 1 may want them to differ.
                checks.append(SelfConsistencyCheck(self.min_agreement, final_number_or_text, "self_consistency"))
            elif name == "logprob":
                checks.append(LogprobCheck(self.min_confidence))
        if self.min_length is not None:
            checks.append(LengthCheck(min_chars=self.min_length, name="min_length"))
        if self.regex is not None:
            checks.append(RegexCheck(self.regex))
        checks.extend(self.custom)
        return checks


def _majority_choice(choices: list[Any]) -> dict[str, Any]:
    """The first sample whose answer is the one most samples give (the check passed: most agree)."""
    answers = [final_number_or_text(str((c.get("message") or {}).get("content") or "")) for c in choices]
    winner, _ = majority(answers)
    for choice, answer in zip(choices, answers, strict=True):
        if answer == winner and isinstance(choice, dict):
            return choice
    first: dict[str, Any] = choices[0]
    return first


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
        names = (*self.checks.names, *(c.name for c in self.checks.custom))
        reason = "cheapest tier first, escalate on " + "/".join(names)
        return Route(self._targets, "cascade", reason, self.checks)
