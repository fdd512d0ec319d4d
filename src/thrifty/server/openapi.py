"""The OpenAPI document of the gateway's endpoints (schemas kept to what the gateway itself checks)."""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
            "required": ["message", "type"],
        }
    },
}
_MESSAGE = {
    "type": "object",
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
        "content": {"oneOf": [{"type": "string"}, {"type": "array"}, {"type": "null"}]},
    },
    "required": ["role"],
}
_CHAT = {
    "type": "object",
    "properties": {
        "model": {"type": "string", "minLength": 1},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "n": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number"},
        "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
        "tools": {"type": "array"},
        "response_format": {"type": "object"},
        "user": {"type": "string"},
        "metadata": {"type": "object"},
        "seed": {"type": "integer"},
    },
    "required": ["model", "messages"],
    "additionalProperties": True,
}
_HEADERS = {
    name: {"schema": {"type": "string"}, "description": text}
    for name, text in {
        "x-thrifty-request-id": "The request's id in the ledger",
        "x-thrifty-cost-usd": "What the request cost, a decimal string, or 'unpriced'",
        "x-thrifty-model": "The provider model that answered",
    }.items()
}
_ATTRIBUTION = [
    {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
    for name in ("x-thrifty-user", "x-thrifty-feature", "x-thrifty-session")
]


def _json_op(summary: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "headers": _HEADERS, "content": {"application/json": {}}},
            "default": {"description": "Error", "content": {"application/json": {"schema": _ERROR}}},
        },
    }
    if schema is not None:
        op["parameters"] = _ATTRIBUTION
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    return op


def document() -> dict[str, Any]:
    embeddings = {
        "type": "object",
        "properties": {"model": {"type": "string"}, "input": {}},
        "required": ["model", "input"],
    }
    messages = {"type": "object", "required": ["model", "messages", "max_tokens"]}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Thrifty gateway", "version": "0.1.0"},
        "paths": {
            "/v1/chat/completions": {"post": _json_op("OpenAI Chat Completions (JSON or SSE stream)", _CHAT)},
            "/v1/messages": {"post": _json_op("Anthropic Messages (JSON or SSE stream)", messages)},
            "/v1/embeddings": {"post": _json_op("OpenAI embeddings", embeddings)},
            "/v1/models": {"get": _json_op("The configured model aliases", None)},
            "/healthz": {"get": _json_op("The process is up", None)},
            "/readyz": {"get": _json_op("The ledger database is reachable (503 otherwise)", None)},
            "/admin/cache/purge": {
                "post": _json_op(
                    "Purge cached answers by tenant, feature, model alias and age (admin key)",
                    {
                        "type": "object",
                        "properties": {
                            "tenant": {"type": "string"},
                            "feature": {"type": "string"},
                            "model": {"type": "string"},
                            "older_than_s": {"type": "number"},
                        },
                        "additionalProperties": False,
                    },
                )
            },
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "OK"}}}},
        },
    }
