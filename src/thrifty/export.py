"""``thrifty export``: captured ledger traffic written in the workload format, for ``thrifty simulate``.

Only requests recorded with ``[ledger] capture_payloads = true`` carry their prompt and answer; the answer is
filed under the model that gave it, with no quality label (the ledger cannot know it).
"""

from __future__ import annotations

from pathlib import Path

import orjson
from sqlalchemy import Engine, select

from thrifty.ledger import queries, tables
from thrifty.workload import ModelAnswer, WorkloadRecord, write_workload


def export_workload(engine: Engine, out: Path, since_day: str | None = None) -> int:
    r, p = tables.requests.c, tables.payloads.c
    query = (
        select(r.request_id, r.started_at, r.tenant, r.user_id, r.feature, r.session_id, r.model, r.output_tokens)
        .add_columns(p.request_json, p.answer_text)
        .join(tables.payloads, p.request_id == r.request_id)
        .where(r.status == "ok", r.endpoint != "verify")  # the gateway's own checks are not its clients' traffic
        .order_by(r.started_at)
    )
    since = queries.since_timestamp(since_day)
    if since is not None:
        query = query.where(r.started_at >= since)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    start = rows[0].started_at if rows else 0.0
    records = [
        WorkloadRecord(
            id=row.request_id,
            t_s=round(row.started_at - start, 3),
            tenant=row.tenant,
            user=row.user_id,
            feature=row.feature,
            session=row.session_id,
            request=orjson.loads(row.request_json),
            group=row.request_id,
            source="ledger",
            answers={row.model: ModelAnswer(row.answer_text, row.output_tokens, None)},
        )
        for row in rows
    ]
    write_workload(out, records)
    return len(records)
