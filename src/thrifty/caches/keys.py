"""What makes two requests "the same": the exact key, the semantic partition, and what may be cached at all.

The exact key covers everything that may change the answer: the model alias and its targets, the messages, and
every other field of the body (tools, ``response_format``, sampling parameters, and fields the gateway does not
know, such as ``verbosity``, ``web_search_options`` or a server's ``guided_json``, which reach the provider as
sent), except the few that cannot (``stream``, ``user``, metadata: ``NOT_ANSWER_SHAPING``). The semantic
partition is the context a paraphrase must share before its answer may be reused: tenant, alias, system prompt,
the same fields (the temperature as a bucket) and the whole conversation before the last user turn, so "and in
Paris?" can only match inside the same conversation. Both include the optimizer plan that applies to the
request (``ChatRequest.plan_key``): a feature whose plan adds stop sequences or rewrites the prompt gets other
answers than one without.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from thrifty.tokens import text_of
from thrifty.types import ChatRequest, JsonObject, Principal, Target

NOT_ANSWER_SHAPING = frozenset(
    {
        "model",  # keyed as the alias and its targets
        "messages",  # keyed on their own
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
    }
)
"""Body fields that cannot change the answer; every other field is part of the key."""
DEFAULT_TEMPERATURE = 1.0
_DEFAULTS: dict[str, object] = {"temperature": DEFAULT_TEMPERATURE, "n": 1.0, "tools": []}
"""Values that mean the same as leaving the field out."""


def shaping(body: JsonObject, leave_out: frozenset[str] = frozenset()) -> JsonObject:
    """The fields that shape the answer, normalised so that requests meaning the same share a key: numbers as
    floats (``0`` and ``0.0``, as SDKs send them), no ``null`` or default values (``n: 1``, ``tools: []``, an
    explicit ``temperature: 1``), and ``max_completion_tokens`` read as ``max_tokens`` when alone."""
    shaped: JsonObject = {}
    for name, sent in body.items():
        if name in NOT_ANSWER_SHAPING or name in leave_out or sent is None:
            continue
        value = float(sent) if isinstance(sent, int | float) and not isinstance(sent, bool) else sent
        if name in _DEFAULTS and value == _DEFAULTS[name]:
            continue
        shaped[name] = value
    if "max_completion_tokens" in shaped and "max_tokens" not in shaped:
        shaped["max_tokens"] = shaped.pop("max_completion_tokens")
    return shaped


def _digest(value: object) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


BY_FEATURE = Target("router", "by-feature")
"""In an alias's cache identity (``cache_assembly.cache_identities``): its router picks a model by feature, so the
asking feature is part of every key (features otherwise share entries)."""


def exact_key(request: ChatRequest, principal: Principal, targets: Sequence[Target]) -> str:
    """Same tenant, same alias with the same targets, same messages and parameters: same key.

    The alias's targets are part of the key, so re-pointing an alias invalidates its entries by itself.
    """
    body = request.body
    parts = [principal.tenant, request.model, [str(t) for t in targets], body["messages"], shaping(body)]
    if BY_FEATURE in targets:
        parts.append(principal.feature)
    if request.plan_key:  # only then: requests without a plan keep the keys they had before plans counted
        parts.append(request.plan_key)
    return _digest(parts)


@dataclass(frozen=True, slots=True)
class SemanticQuery:
    partition: str
    text: str
    """The last user turn: the part a paraphrase may differ in."""


def semantic_query(request: ChatRequest, principal: Principal, targets: Sequence[Target]) -> SemanticQuery | None:
    """The partition and the text to embed, or None when the request has no user turn last.

    Only the turn's text is embedded; what else it carries (images, audio, files) joins the partition, so "describe
    this image" matches only a request about the same image."""
    messages = request.messages
    last = messages[-1]
    if last.get("role") != "user":
        return None
    body = request.body
    content = last.get("content")
    context = {
        "tenant": principal.tenant,
        "alias": request.model,
        "targets": [str(t) for t in targets],
        "before": messages[:-1],
        "shaping": shaping(body, frozenset({"temperature", "seed"})),
        "temperature": temperature_bucket(body),
    }
    if request.plan_key:
        context["plan"] = request.plan_key
    if BY_FEATURE in targets:
        context["feature"] = principal.feature
    attachments = [
        part
        for part in (content if isinstance(content, list) else [])
        if not (isinstance(part, dict) and part.get("type", "text") == "text")
    ]
    if attachments:  # only then: text-only requests keep the partitions they had before attachments counted
        context["attachments"] = attachments
    return SemanticQuery(_digest(context), turn_text(content))


def turn_text(content: object) -> str:
    """A user turn's text as the semantic cache embeds it: text parts as separate lines (["Translate to French",
    "good night"] is not "Frenchgood night")."""
    return "\n".join(text_of(p) for p in content) if isinstance(content, list) else text_of(content)


def temperature_bucket(body: JsonObject) -> str:
    temperature = body.get("temperature")
    value = DEFAULT_TEMPERATURE if temperature is None else float(temperature)
    if value == 0:
        return "zero"
    return "low" if value <= 0.5 else "high"


def cacheable_request(body: JsonObject, max_temperature: float) -> bool:
    """Requests whose answer may be reused: not too random, and not carrying tool results (the world moved)."""
    temperature = body.get("temperature")
    if (DEFAULT_TEMPERATURE if temperature is None else float(temperature)) > max_temperature:
        return False
    return not any(m.get("role") in ("tool", "function") for m in body["messages"])


FINISHED = frozenset({"stop", "tool_calls", "function_call"})
"""The finish reasons of a whole answer: not ``length`` (the cap that cut it may be the gateway's, not in the key),
``content_filter``, ``error`` (OpenRouter's HTTP 200 for a failure mid-answer) or none at all."""


def cacheable_response(body: JsonObject, cache_tool_calls: bool) -> bool:
    """Never an error, never an answer cut short or filtered, never a refusal (a false one would be replayed for
    the TTL, free), never a tool call unless allowed (calling the tool again may be the point)."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or body.get("error"):
        return False
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("error") or choice.get("finish_reason") not in FINISHED:
            return False
        message = choice.get("message") or {}
        if message.get("refusal"):
            return False
        if (message.get("tool_calls") or message.get("function_call")) and not cache_tool_calls:
            return False
    return True
