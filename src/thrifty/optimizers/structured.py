"""Structured output: what a JSON schema makes the model write that the client never uses.

Every property in a ``response_format`` JSON schema is written out by the model on every answer, key and value,
at the output price (the dearest tokens of a call). Two kinds of waste are found from the schema and then
measured on real answers:

- unused fields: properties outside the feature's declared ``read_fields`` (key and value tokens);
- long property names: names of more than ``max_name_tokens`` tokens (the tokens beyond a one-token name, each
  time the key is written).

Nothing in the request is changed: a schema is a contract with the client. ``StructuredWatch`` observes ledger
entries (which carry the request and answer when payloads are captured), logs one warning per feature and schema,
and exports the measured tokens and their cost as metrics; ``thrifty lint --schema`` prints the same per 1,000
calls.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from thrifty.observe.metrics import GatewayMetrics
from thrifty.protocols import Pricer
from thrifty.tokens import TiktokenCounter
from thrifty.types import JsonObject, LedgerEntry, Target, Usage

log = logging.getLogger("thrifty.structured")

DEFAULT_STRING_TOKENS = 8
"""A string value's tokens when the schema gives no ``maxLength`` (estimates only; answers are measured)."""
MAX_DEPTH = 12
MAX_NODES = 10_000
"""Schema nodes and properties visited per schema at most (recursive ``$ref``s could fan out exponentially)."""
MAX_SCHEMAS = 1024

Property = tuple[str, str, JsonObject]
"""A schema property: its dotted path, its name, its own schema."""


@dataclass(frozen=True, slots=True)
class StructuredRule:
    read_fields: tuple[str, ...] | None = None
    max_name_tokens: int = 3


@dataclass(frozen=True, slots=True)
class SchemaFindings:
    fingerprint: str
    unused: tuple[str, ...]
    """Dotted paths (array items are transparent: ``items.sku``), the outermost unread property only."""
    long_names: tuple[tuple[str, int], ...]
    """Each long property name and its tokens."""

    def __bool__(self) -> bool:
        return bool(self.unused or self.long_names)


@dataclass(frozen=True, slots=True)
class FieldCost:
    """Output tokens one answer spent: per unused path (key and value) and per long name (beyond one token)."""

    unused: Mapping[str, int]
    long_names: Mapping[str, int]

    @property
    def unused_tokens(self) -> int:
        return sum(self.unused.values())

    @property
    def long_name_tokens(self) -> int:
        return sum(self.long_names.values())


def response_schema(body: JsonObject) -> JsonObject | None:
    """The JSON schema a request's ``response_format`` asks for, if it asks for one (and it is an object)."""
    spec = body.get("response_format")
    if not isinstance(spec, dict) or spec.get("type") != "json_schema":
        return None
    wrapper = spec.get("json_schema")
    schema = wrapper.get("schema") if isinstance(wrapper, dict) else None
    return schema if isinstance(schema, dict) else None


def fingerprint(schema: JsonObject) -> str:
    return hashlib.sha256(json.dumps(schema, sort_keys=True, default=str).encode()).hexdigest()[:12]


def properties(schema: JsonObject, max_nodes: int = MAX_NODES) -> Iterator[Property]:
    """Every property as (dotted path, name, its schema), through nested objects, array items, local ``$ref``s
    and ``anyOf``/``oneOf``/``allOf``.

    The upstream accepted the schema, not us: any node that is not the shape JSON Schema gives it is skipped. A
    recursive ``$ref`` is followed once per path (a tree node's children, not theirs again), and at most
    ``max_nodes`` schema nodes and properties are visited in all: mutually recursive definitions could otherwise
    fan out exponentially, on the event loop, after the call was paid.
    """
    yield from _walk(schema, schema, "", 0, frozenset(), [max_nodes])


def _walk(
    schema: JsonObject, root: JsonObject, prefix: str, depth: int, refs: frozenset[str], budget: list[int]
) -> Iterator[Property]:
    if depth > MAX_DEPTH or budget[0] <= 0:
        return
    budget[0] -= 1
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref in refs:
            return  # recursive: this definition is already being walked on the way here
        refs = refs | {ref}
    schema = _resolve(schema, root)
    props = schema.get("properties")
    for name, sub in props.items() if isinstance(props, dict) else ():
        if isinstance(sub, dict) and budget[0] > 0:
            budget[0] -= 1
            path = f"{prefix}{name}"
            yield path, str(name), sub
            yield from _walk(sub, root, path + ".", depth + 1, refs, budget)
    items = schema.get("items")
    if isinstance(items, dict):
        yield from _walk(items, root, prefix, depth + 1, refs, budget)
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        for option in options if isinstance(options, list) else ():
            if isinstance(option, dict):
                yield from _walk(option, root, prefix, depth + 1, refs, budget)


def _resolve(schema: JsonObject, root: JsonObject) -> JsonObject:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def is_read(path: str, read_fields: Sequence[str]) -> bool:
    """Read if declared, inside a declared field, or on the way to one (``address`` when ``address.city`` is)."""
    return any(path == f or path.startswith(f + ".") or f.startswith(path + ".") for f in read_fields)


def find(schema: JsonObject, rule: StructuredRule, counter: TiktokenCounter, model: str) -> SchemaFindings:
    unused: dict[str, None] = {}  # ordered, and a set for the ancestor look-up
    long_names: dict[str, int] = {}
    for path, name, _ in properties(schema):
        if rule.read_fields is not None and not is_read(path, rule.read_fields):
            if not _inside(path, unused):
                unused[path] = None
            continue  # the fix for an unread field is to drop it, not to rename it
        tokens = counter.count_text(model, name)
        if tokens > rule.max_name_tokens:
            long_names[name] = tokens
    return SchemaFindings(fingerprint(schema), tuple(unused), tuple(long_names.items()))


def _inside(path: str, paths: Mapping[str, None]) -> bool:
    """Whether an ancestor of ``path`` (``a`` or ``a.b`` of ``a.b.c``) is in ``paths``."""
    parts = path.split(".")
    return any(".".join(parts[:n]) in paths for n in range(1, len(parts)))


def measure(answer: Any, findings: SchemaFindings, counter: TiktokenCounter, model: str) -> FieldCost:
    """The tokens an answer (parsed JSON) spent on the findings; values are re-serialised to be counted."""
    unused: dict[str, int] = {}
    long_names: dict[str, int] = {}
    names = dict(findings.long_names)
    wasted = set(findings.unused)

    def walk(value: Any, prefix: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        if isinstance(value, list):
            for item in value:
                walk(item, prefix, depth + 1)
        elif isinstance(value, dict):
            for key, sub in value.items():
                path = f"{prefix}{key}"
                if path in wasted:
                    text = json.dumps({key: sub}, ensure_ascii=False)[1:-1]
                    unused[path] = unused.get(path, 0) + counter.count_text(model, text)
                    continue
                if key in names:
                    long_names[key] = long_names.get(key, 0) + names[key] - 1
                walk(sub, path + ".", depth + 1)

    walk(answer, "", 0)
    return FieldCost(unused, long_names)


def parse_answer(text: str) -> Any:
    """The answer's JSON, or None when it is not JSON (a refusal, an answer cut off mid-object)."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def typical_tokens(
    schema: JsonObject,
    counter: TiktokenCounter,
    model: str,
    root: JsonObject,
    depth: int = 0,
    refs: frozenset[str] = frozenset(),
    budget: list[int] | None = None,
) -> int:
    """An estimate of the tokens a value of this schema takes, for ``thrifty lint`` without sample answers.

    A recursive ``$ref`` counts as one short value (the answer's own depth is unknown), and so does every node
    past the ``budget`` of nodes (``MAX_NODES`` unless shared by the caller)."""
    budget = budget if budget is not None else [MAX_NODES]
    ref = schema.get("$ref")
    if depth > MAX_DEPTH or (isinstance(ref, str) and ref in refs) or budget[0] <= 0:
        return 1
    budget[0] -= 1
    refs = refs | {ref} if isinstance(ref, str) else refs
    schema = _resolve(schema, root)
    values = schema.get("enum") if isinstance(schema.get("enum"), list) else None
    if values or "const" in schema:
        return max(counter.count_text(model, json.dumps(v, ensure_ascii=False)) for v in values or [schema["const"]])
    kind = schema.get("type")
    kind = next((k for k in kind if k != "null"), "null") if isinstance(kind, list) else kind
    props = schema.get("properties")
    if isinstance(props, dict):
        return 2 + sum(
            counter.count_text(model, f'"{name}": ')
            + typical_tokens(sub, counter, model, root, depth + 1, refs, budget)
            for name, sub in props.items()
            if isinstance(sub, dict)
        )
    if kind == "object":
        return 2
    if kind == "array":
        items = schema.get("items")
        items = items if isinstance(items, dict) else {}
        count = schema.get("minItems")
        count = max(count, 1) if isinstance(count, int) else 1
        return 2 + count * (typical_tokens(items, counter, model, root, depth + 1, refs, budget) + 1)
    if kind == "string":
        length = schema.get("maxLength")
        return 2 + (max(length // 4, 1) if isinstance(length, int) else DEFAULT_STRING_TOKENS)
    return 1 if kind in ("boolean", "null") else 2


def estimate(schema: JsonObject, findings: SchemaFindings, counter: TiktokenCounter, model: str) -> FieldCost:
    """What one answer would spend on the findings, from the schema alone (each property written once)."""
    by_path = {path: (name, sub) for path, name, sub in properties(schema)}
    budget = [MAX_NODES]  # one for all the findings: a schema's estimate is bounded, however many fields it lists
    unused = {
        path: counter.count_text(model, f'"{by_path[path][0]}": ')
        + typical_tokens(by_path[path][1], counter, model, schema, budget=budget)
        for path in findings.unused
    }
    return FieldCost(unused, {name: tokens - 1 for name, tokens in findings.long_names})


class StructuredWatch:
    """A ledger observer: warns once per feature and schema, and counts the tokens each answer wasted."""

    def __init__(
        self,
        default: StructuredRule | None,
        features: Mapping[str, StructuredRule | None],
        counter: TiktokenCounter,
        pricer: Pricer,
        metrics: GatewayMetrics,
        models: Mapping[str, StructuredRule | None] | None = None,
    ) -> None:
        self._default, self._features, self._models = default, dict(features), dict(models or {})
        self._counter, self._pricer, self._metrics = counter, pricer, metrics
        self._findings: dict[tuple[str, str, str], SchemaFindings] = {}
        self._warned: set[tuple[str, str]] = set()
        self._failed = False

    def rule_for(self, feature: str, alias: str = "") -> StructuredRule | None:
        """As the optimize stage picks its plan: the feature's table, else the alias's, else ``[optimize]``."""
        if feature in self._features:
            return self._features[feature]
        return self._models.get(alias, self._default)

    def __call__(self, entry: LedgerEntry) -> None:
        """Never raises: it runs in ``Gateway.record``, after the answer was paid for and recorded, and a failure
        here must not turn that answer into an error for the client (nor stop the observers after it)."""
        try:
            self._watch(entry)
        except Exception:
            if not self._failed:
                self._failed = True
                log.exception(
                    "structured-output watch failed on %s (logged once; later failures are not)", entry.request_id
                )

    def _watch(self, entry: LedgerEntry) -> None:
        payload, feature = entry.payload, entry.principal.feature
        if payload is None or entry.status != "ok" or entry.cache:
            return  # a cache hit wrote no output tokens
        rule = self.rule_for(feature, entry.requested_model)
        schema = response_schema(payload.request) if rule is not None else None
        if rule is None or schema is None:
            return
        findings = self.findings(feature, entry.model, schema, rule)
        answer = parse_answer(payload.answer) if findings else None
        if answer is None:
            return
        cost = measure(answer, findings, self._counter, entry.model)
        target = Target(entry.provider, entry.model)
        for kind, tokens in (("unused_field", cost.unused_tokens), ("long_name", cost.long_name_tokens)):
            if tokens:
                usd = self._pricer.cost(target, Usage(0, tokens)).usd
                self._metrics.structured_waste(feature, entry.model, kind, tokens, usd)

    def findings(self, feature: str, model: str, schema: JsonObject, rule: StructuredRule) -> SchemaFindings:
        key = (feature, model, fingerprint(schema))
        found = self._findings.get(key)
        if found is None:
            if len(self._findings) >= MAX_SCHEMAS:  # schemas made per request: keep memory bounded
                self._findings.clear()
                self._warned.clear()
            found = self._findings[key] = find(schema, rule, self._counter, model)
            if found and (feature, key[2]) not in self._warned:
                self._warned.add((feature, key[2]))
                log.warning("feature %r, response schema %s: %s", feature or "(none)", key[2], describe(found))
        return found


def describe(findings: SchemaFindings) -> str:
    parts = []
    if findings.unused:
        parts.append("fields the client never reads: " + ", ".join(findings.unused))
    if findings.long_names:
        parts.append("long property names: " + ", ".join(f"{n} ({t} tokens)" for n, t in findings.long_names))
    return "; ".join(parts) + " (see thrifty_structured_waste_tokens, or thrifty lint --schema)"
