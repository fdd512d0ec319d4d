"""What a request may cost before it is sent: counted input tokens, and at most ``max_tokens`` of output.

Budgets reserve the worst case, rate limits count tokens, and ``POST /v1/cost/quote`` / ``thrifty estimate`` show
both the worst and the expected cost on each model. "Expected" output is the mean output of the calls this
gateway has seen for that model (capped by ``max_tokens``), or a quarter of the cap when it has seen none.

On the request path budgets first ask for ``worst_case_bound``: an amount the exact worst case never exceeds,
found without encoding the prompt (see ``messages_token_bound``), and priced once per size class.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

import orjson

from thrifty.ledger.tables import NANO
from thrifty.media import media_tokens
from thrifty.protocols import Pricer
from thrifty.tokens import TiktokenCounter, encoding_name_for, messages_token_bound
from thrifty.types import ChatRequest, Target, Usage

BOUND_PRICES = 4096
"""Priced size classes kept; they are also dropped every minute, since a price can depend on the time of day."""


@dataclass(frozen=True, slots=True)
class Quote:
    target: Target
    input_tokens: int
    max_output_tokens: int
    expected_output_tokens: int
    worst_usd: Decimal | None
    expected_usd: Decimal | None


class CostEstimator:
    def __init__(
        self,
        pricer: Pricer,
        counter: TiktokenCounter,
        aliases: Mapping[str, tuple[Target, ...]],
        default_max_output_tokens: int = 4096,
        cascades: frozenset[str] = frozenset(),
        samples: Mapping[str, int] | None = None,
    ) -> None:
        """``cascades``: aliases whose targets may all be called for one request (each tier escalating to the
        next), so their worst case is the sum of the targets', not the dearest one's. ``samples``: cascades whose
        cheap tiers answer that many choices at once, each up to the output cap."""
        self._pricer, self._counter, self._aliases = pricer, counter, aliases
        self._cascades = cascades
        self._samples = dict(samples or {})
        self._default_max = default_max_output_tokens
        self._outputs: dict[str, tuple[int, int]] = {}
        self._bounds: dict[tuple[str, int, tuple[int, ...], bool, tuple[bool, bool]], int | None] = {}
        self._bounds_minute = 0

    def max_output_tokens(self, request: ChatRequest) -> int:
        body = request.body
        cap = body.get("max_completion_tokens") or body.get("max_tokens") or self._default_max
        return int(cap) * int(body.get("n") or 1)

    def output_caps(self, request: ChatRequest) -> list[int]:
        """Per target of the alias, the most output it may bill: ``max_output_tokens``, times the samples a
        self-consistency cascade asks of each tier but the last (when the client asked for one choice)."""
        cap = self.max_output_tokens(request)
        targets = self._aliases[request.model]
        samples = self._samples.get(request.model, 1)
        if samples == 1 or int(request.body.get("n") or 1) != 1:
            return [cap] * len(targets)
        return [cap * samples] * (len(targets) - 1) + [cap]

    def input_tokens(self, request: ChatRequest, target: Target) -> int:
        return prompt_tokens(self._counter, request, target.model)

    def quotes(self, request: ChatRequest) -> list[Quote]:
        """Per target: expected and worst cost; the worst is what a budget would hold on that target (cache
        writes and audio rates included)."""
        hour, audio = billing_kinds(request)
        quotes = []
        for target, cap in zip(self._aliases[request.model], self.output_caps(request), strict=True):
            tokens_in = self.input_tokens(request, target)
            seen, total = self._outputs.get(target.model, (0, 0))
            expected_out = min(cap, total // seen if seen else cap // 4)
            quotes.append(
                Quote(
                    target,
                    tokens_in,
                    cap,
                    expected_out,
                    self._dearest(target, tokens_in, cap, hour, audio),
                    self._pricer.cost(target, Usage(tokens_in, expected_out)).usd,
                )
            )
        return quotes

    def worst_case(self, request: ChatRequest) -> tuple[Decimal | None, int]:
        """The most any of the alias's targets could charge (a fallback may land on any; a cascade may pay them
        all), and the input tokens.

        Targets that count text with the same encoding share one count (on the request path, counting is the
        cost); media are priced per target, since models of one encoding bill images very differently."""
        hour, audio = billing_kinds(request)
        counts: dict[str, int] = {}
        worst: Decimal | None = None
        most = 0
        for target, cap in zip(self._aliases[request.model], self.output_caps(request), strict=True):
            encoding = encoding_name_for(target.model)[0]
            if encoding not in counts:
                counts[encoding] = text_tokens(self._counter, request, target.model)
            tokens = counts[encoding] + request_media_tokens(request, target.model)
            most = max(most, tokens)
            worst = self._worse(request, worst, self._dearest(target, tokens, cap, hour, audio))
        return worst, most

    def _dearest(
        self, target: Target, tokens: int, cap: int, hour: bool, audio: tuple[bool, bool] = (False, False)
    ) -> Decimal | None:
        """The most ``tokens`` of prompt and ``cap`` of output can cost on ``target``: a provider that caches
        prompts may bill the whole prompt as a cache write (Anthropic: 1.25x the input price, or 2x when the
        request asks for a 1-hour cache), so that is priced too, and the dearer taken. A request with audio in
        (or asking for audio out) is priced as all audio there, which bills at several times the text rate."""
        heard, spoken = tokens if audio[0] else 0, cap if audio[1] else 0
        plain = self._pricer.cost(target, Usage(tokens, cap, input_audio_tokens=heard, output_audio_tokens=spoken)).usd
        written = self._pricer.cost(
            target,
            Usage(
                tokens,
                cap,
                cache_write_tokens=tokens,
                cache_write_1h_tokens=tokens if hour else 0,
                input_audio_tokens=heard,
                output_audio_tokens=spoken,
            ),
        ).usd
        if plain is None or written is None:
            return plain if written is None else written
        return max(plain, written)

    def _worse(self, request: ChatRequest, worst: Decimal | None, usd: Decimal | None) -> Decimal | None:
        if usd is None:
            return worst
        if worst is None:
            return usd
        return worst + usd if request.model in self._cascades else max(worst, usd)

    def worst_case_bound(self, request: ChatRequest) -> int | None:
        """Nano-dollars that ``worst_case`` never exceeds (None: unpriced), without encoding the prompt.

        The input is bounded by its bytes and rounded up to four significant bits, so that requests of about the
        same size and the same ``max_tokens`` share one price computation: a price only grows with tokens."""
        caps = tuple(self.output_caps(request))
        bound_in = messages_token_bound(request.messages) + len(_definitions(request))
        hour, audio = billing_kinds(request)
        key = (request.model, size_class(bound_in), caps, hour, audio)
        minute = int(time.time() // 60)
        if minute != self._bounds_minute or len(self._bounds) >= BOUND_PRICES:
            self._bounds.clear()
            self._bounds_minute = minute
        if key in self._bounds:
            return self._bounds[key]
        worst: Decimal | None = None
        for target, cap in zip(self._aliases[request.model], caps, strict=True):
            worst = self._worse(request, worst, self._dearest(target, key[1], cap, hour, audio))
        bound = self._bounds[key] = None if worst is None else ceil_nusd(worst)
        return bound

    def observe_output(self, model: str, output_tokens: int) -> None:
        seen, total = self._outputs.get(model, (0, 0))
        self._outputs[model] = (seen + 1, total + output_tokens)


def prompt_tokens(counter: TiktokenCounter, request: ChatRequest, model: str) -> int:
    """The prompt's tokens counted offline: its text, and the most its images, audio and files may cost on
    ``model`` (``thrifty.media``)."""
    return text_tokens(counter, request, model) + request_media_tokens(request, model)


def text_tokens(counter: TiktokenCounter, request: ChatRequest, model: str) -> int:
    """The messages' text, and the tool definitions and response schema, which are prompt tokens too (counted as
    their JSON text, which providers render more compactly: this errs high, as a reservation must)."""
    raw = _definitions(request)
    definitions = counter.count_text(model, raw.decode("utf-8")) if raw else 0
    return counter.count_messages(model, request.messages) + definitions


def request_media_tokens(request: ChatRequest, model: str) -> int:
    return sum(media_tokens(message.get("content"), model) for message in request.messages)


def billing_kinds(request: ChatRequest) -> tuple[bool, tuple[bool, bool]]:
    """In one walk over the request: whether a ``cache_control`` breakpoint asks Anthropic to keep the prefix for
    an hour (``"ttl": "1h"``, whose writes bill at twice the input price instead of 1.25 times), and whether the
    prompt carries audio and the answer may be audio (``modalities``), which bill at the audio rates."""
    hour = heard = False
    for item in request.body.get("tools") or []:
        hour = hour or _keeps_an_hour(item)
    for message in request.messages:
        hour = hour or _keeps_an_hour(message)
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            hour = hour or _keeps_an_hour(part)
            heard = heard or (isinstance(part, dict) and part.get("type") == "input_audio")
    modalities = request.body.get("modalities")
    return hour, (heard, isinstance(modalities, list) and "audio" in modalities)


def _keeps_an_hour(item: Any) -> bool:
    control = item.get("cache_control") if isinstance(item, dict) else None
    return isinstance(control, dict) and control.get("ttl") == "1h"


def _definitions(request: ChatRequest) -> bytes:
    """Tool definitions and the response schema as compact UTF-8 JSON (orjson: ~20x ``json.dumps``)."""
    body = request.body
    parts = [body[key] for key in ("tools", "functions", "response_format") if body.get(key)]
    return orjson.dumps(parts) if parts else b""


def size_class(tokens: int) -> int:
    """``tokens`` rounded up to four significant bits: at most an eighth more."""
    shift = max(tokens.bit_length() - 4, 0)
    return -(-tokens >> shift) << shift


def ceil_nusd(usd: Decimal) -> int:
    """Nano-dollars rounded up: a reservation may hold a fraction too much, never too little."""
    return int((usd * NANO).to_integral_value(rounding=ROUND_CEILING))
