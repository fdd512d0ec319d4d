"""OpenTelemetry spans for each ledger row, following the GenAI semantic conventions (the ``otel`` extra).

Spans are made from the finished row with its real start and end times, so tracing adds nothing to the request
path beyond one span export, and a row that never reaches a provider (refused, cached) still gets its span.
Point any OpenTelemetry SDK exporter at them as usual (``OTEL_EXPORTER_OTLP_ENDPOINT`` ...).
"""

from __future__ import annotations

from typing import Any

from thrifty.types import LedgerEntry


class SpanObserver:
    def __init__(self, tracer_provider: Any | None = None) -> None:
        try:
            from opentelemetry import trace
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError("OpenTelemetry spans need the 'otel' extra: pip install 'thrifty[otel]'") from exc
        provider = tracer_provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer("thrifty")
        self._error = trace.StatusCode.ERROR

    def __call__(self, entry: LedgerEntry) -> None:
        start_ns = int(entry.started_at * 1e9)
        operation = "embeddings" if entry.endpoint == "embeddings" else "chat"
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": entry.provider,
            "gen_ai.request.model": entry.requested_model,
            "gen_ai.response.model": entry.model,
            "gen_ai.usage.input_tokens": entry.usage.input_tokens,
            "gen_ai.usage.output_tokens": entry.usage.output_tokens,
            "thrifty.request_id": entry.request_id,
            "thrifty.tenant": entry.principal.tenant,
            "thrifty.feature": entry.principal.feature,
            "thrifty.cache": entry.cache or "miss",
            "thrifty.cost_usd": "unpriced" if entry.cost_usd is None else format(entry.cost_usd, "f"),
            "thrifty.baseline_cost_usd": ""
            if entry.baseline_cost_usd is None
            else format(entry.baseline_cost_usd, "f"),
        }
        span = self._tracer.start_span(
            f"{operation} {entry.requested_model}", start_time=start_ns, attributes=attributes
        )
        if entry.status != "ok":
            span.set_status(self._error, entry.error_type)
            span.set_attribute("error.type", entry.error_type)
        span.end(end_time=start_ns + int(entry.total_ms * 1e6))
