"""Plain-text tables for the CLI (reports, the demo, simulations)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from decimal import Decimal

from thrifty.ledger.cutoffs import CutoffRow
from thrifty.ledger.queries import ReportRow


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def usd(value: Decimal | None) -> str:
    if value is None:
        return "unpriced"
    return f"${value:,.4f}" if abs(value) < 100 else f"${value:,.2f}"


def _cell(value: object) -> str:
    if isinstance(value, Decimal):
        return usd(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def report_table(by: str, rows: Sequence[ReportRow]) -> str:
    headers = [
        by,
        "requests",
        "errors",
        "input tok",
        "output tok",
        "cache read",
        "cost",
        "baseline",
        "unpriced",
    ]
    body = [
        [
            r.group or "(none)",
            r.requests,
            r.errors,
            r.input_tokens,
            r.output_tokens,
            r.cache_read_tokens,
            usd(r.cost_usd),
            usd(r.baseline_cost_usd),
            r.unpriced,
        ]
        for r in rows
    ]
    total = [
        "TOTAL",
        sum(r.requests for r in rows),
        sum(r.errors for r in rows),
        sum(r.input_tokens for r in rows),
        sum(r.output_tokens for r in rows),
        sum(r.cache_read_tokens for r in rows),
        usd(_total(r.cost_usd for r in rows)),
        usd(_total(r.baseline_cost_usd for r in rows)),
        sum(r.unpriced for r in rows),
    ]
    return table(headers, [*body, total])


def _total(values: Iterable[Decimal | None]) -> Decimal | None:
    """The sum of the priced values; None (unpriced) when none is."""
    priced = [v for v in values if v is not None]
    return sum(priced, Decimal(0)) if priced else None


def cutoffs_table(rows: Sequence[CutoffRow]) -> str:
    headers = ["feature", "model", "answers", "cut off", "share", "budget stops", "max_tokens", "p50 out", "p95 out"]
    body = [
        [
            r.feature or "(none)",
            r.model,
            r.answers,
            r.cut_off,
            f"{r.cut_off_share:.1%}",
            r.budget_stops,
            ("none" if r.cap is None else f"{r.cap:,}") + (" (mixed)" if r.mixed_caps else ""),
            r.p50_output_tokens,
            r.p95_output_tokens,
            r.suggestion,
        ]
        for r in rows
    ]
    return table([*headers, "suggestion"], body)


def cutoffs_output(rows: Sequence[CutoffRow], fmt: str) -> str:
    """``thrifty report --cutoffs`` as a table, JSON or CSV."""
    if fmt == "json":
        return json.dumps({"cutoffs": [row.as_json() for row in rows]}, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(list(rows[0].as_json()) if rows else ["feature"])
        writer.writerows(row.as_json().values() for row in rows)
        return out.getvalue()
    return (cutoffs_table(rows) if rows else "no answers with a recorded finish reason yet") + "\n"
