"""The ledger's tables (SQLAlchemy Core, one code path for SQLite and PostgreSQL).

Money is stored as integer nano-dollars (``*_nusd``, 1e-9 USD): exact in every database, and fine enough that a
single token of the cheapest model is still counted. ``NULL`` cost means unpriced, never zero.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
)

metadata = MetaData()

NANO = Decimal("1e9")

requests = Table(
    "requests",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("day", String(10), nullable=False),
    Column("endpoint", String(32), nullable=False),
    Column("tenant", String(128), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("feature", String(128), nullable=False),
    Column("session_id", String(256), nullable=False),
    Column("requested_model", String(256), nullable=False),
    Column("provider", String(128), nullable=False),
    Column("model", String(256), nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("cache_read_tokens", Integer, nullable=False),
    Column("cache_write_tokens", Integer, nullable=False),
    Column("tokens_estimated", Boolean, nullable=False),
    Column("cost_nusd", BigInteger, nullable=True),
    Column("baseline_cost_nusd", BigInteger, nullable=True),
    Column("unpriced", Boolean, nullable=False),
    Column("total_ms", Float, nullable=False),
    Column("upstream_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("status", String(16), nullable=False),
    Column("error_type", String(64), nullable=False),
    Column("streamed", Boolean, nullable=False),
    Column("cache", String(16), nullable=False, server_default=""),
    # Added by migration step 2 (NULL on older rows): why the answer ended, and the client's output cap.
    Column("finish_reason", String(32), nullable=True),
    Column("max_output_tokens", Integer, nullable=True),
    Index("ix_requests_day", "day"),
    Index("ix_requests_tenant_day", "tenant", "day"),
)

savings = Table(
    "request_savings",
    metadata,
    Column("request_id", String(64), ForeignKey("requests.request_id"), primary_key=True),
    Column("lever", String(32), primary_key=True),
    Column("savings_nusd", BigInteger, nullable=False),
)

payloads = Table(
    "request_payloads",
    metadata,
    Column("request_id", String(64), ForeignKey("requests.request_id"), primary_key=True),
    Column("request_json", Text, nullable=False),
    Column("answer_text", Text, nullable=False),
)

keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("tenant", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Column("admin", Boolean, nullable=False, server_default=false()),
)

budgets = Table(
    "budgets",
    metadata,
    Column("budget_id", String(64), primary_key=True),
    Column("scope", String(16), nullable=False),
    Column("scope_id", String(256), nullable=False),
    Column("period", String(16), nullable=False),
    Column("limit_nusd", BigInteger, nullable=False),
    Column("hard", Boolean, nullable=False),
    Column("clamp", Boolean, nullable=False, server_default=false()),
    Column("created_at", Float, nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("alert_id", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("scope", String(16), nullable=False),
    Column("scope_id", String(256), nullable=False),
    Column("dedupe_key", String(256), nullable=False),
    Column("message", Text, nullable=False),
    Column("delivered", Boolean, nullable=False, server_default=false()),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Index("ix_alerts_created", "created_at"),
)

schema_version = Table(
    "thrifty_schema",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)


def to_nusd(usd: Decimal | None) -> int | None:
    if usd is None:
        return None
    return int((usd * NANO).to_integral_value(rounding=ROUND_HALF_EVEN))


def from_nusd(nusd: int | None) -> Decimal | None:
    if nusd is None:
        return None
    return Decimal(nusd) / NANO
