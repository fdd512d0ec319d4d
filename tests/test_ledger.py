"""The ledger on real SQLite and PostgreSQL: exact money, journal recovery, and outages that lose nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fakes.tcp_proxy import TcpProxy
from thrifty.ledger import tables
from thrifty.ledger.migrations import STEPS, migrate
from thrifty.ledger.writer import SqlLedger, make_engine, row_of
from thrifty.types import LedgerEntry, Payload, Principal, Usage


def entry(n: int, cost: Decimal | None = Decimal("0.000123456789"), **kw: object) -> LedgerEntry:
    fields: dict[str, object] = {
        "request_id": f"req_{n:06d}",
        "started_at": 1_764_000_000.0 + n,
        "endpoint": "chat",
        "principal": Principal("acme", "key_1", "u1", "search", "s1"),
        "requested_model": "fast",
        "provider": "up",
        "model": "gpt-4o-mini",
        "usage": Usage(1000, 200, 400, 0),
        "cost_usd": cost,
        "baseline_cost_usd": cost,
        "total_ms": 12.5,
        "upstream_ms": 12.0,
        "ttft_ms": None,
        "status": "ok",
    }
    fields.update(kw)
    return LedgerEntry(**fields)  # type: ignore[arg-type]


def count(ledger: SqlLedger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(tables.requests)).scalar_one())


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> Iterator[SqlLedger]:
    ledger = SqlLedger(f"sqlite:///{tmp_path / 'l.sqlite'}", tmp_path / "journal", 10)
    ledger.start()
    yield ledger
    ledger.close()


def test_rows_are_exact_in_nano_dollars_and_unpriced_is_null(sqlite_ledger: SqlLedger) -> None:
    sqlite_ledger.record(entry(1))
    sqlite_ledger.record(entry(2, cost=None))
    sqlite_ledger.record(entry(3, savings_usd={"cache": Decimal("0.5")}, payload=Payload({"model": "m"}, "hi")))
    assert sqlite_ledger.flush()
    with sqlite_ledger.engine.connect() as conn:
        rows = {r.request_id: r for r in conn.execute(select(tables.requests))}
        savings = conn.execute(select(tables.savings)).all()
        payloads = conn.execute(select(tables.payloads)).all()
    assert rows["req_000001"].cost_nusd == 123_457 and not rows["req_000001"].unpriced
    assert rows["req_000002"].cost_nusd is None and rows["req_000002"].unpriced
    assert rows["req_000001"].day == "2025-11-24"
    assert [(s.request_id, s.lever, s.savings_nusd) for s in savings] == [("req_000003", "cache", 500_000_000)]
    assert payloads[0].answer_text == "hi"


def test_the_journal_empties_once_rows_are_in_the_database(sqlite_ledger: SqlLedger, tmp_path: Path) -> None:
    for n in range(50):
        sqlite_ledger.record(entry(n))
    assert sqlite_ledger.flush()
    sqlite_ledger._journal.rotate()
    segments = list((tmp_path / "journal").glob("segment-*.jsonl"))
    assert sum(p.stat().st_size for p in segments) == 0


def test_rows_left_in_a_journal_are_recovered_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.sqlite'}"
    engine = make_engine(url)
    migrate(engine)
    first = SqlLedger(url, tmp_path / "journal", 10)  # never started: as if killed before any write
    for n in range(20):
        first._journal.append(row_of(entry(n)))
    first._journal.close()
    with (tmp_path / "journal" / "segment-000000001.jsonl").open("ab") as torn:
        torn.write(b'{"request_id": "req_torn", "cost')  # a write cut short by the crash
    for _ in range(2):  # recovering twice must not duplicate anything
        second = SqlLedger(url, tmp_path / "journal", 10)
        second.start()
        deadline = time.monotonic() + 5
        while count(second) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        second.close()
    assert count(second) == 20
    assert list((tmp_path / "journal").glob("segment-*.jsonl")) == []


def test_two_processes_cannot_share_a_journal(tmp_path: Path) -> None:
    from thrifty.errors import ConfigError

    a = SqlLedger(f"sqlite:///{tmp_path / 'l.sqlite'}", tmp_path / "j", 10)
    with pytest.raises(ConfigError, match="in use"):
        SqlLedger(f"sqlite:///{tmp_path / 'l.sqlite'}", tmp_path / "j", 10)
    a.close()


@pytest.mark.postgres
def test_postgres_ledger_survives_an_outage(pg_url: str, tmp_path: Path) -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    ledger = SqlLedger(url, tmp_path / "journal", 10)
    ledger.start()
    try:
        for n in range(10):
            ledger.record(entry(n))
        assert ledger.flush()
        proxy.cut()
        for n in range(10, 40):
            ledger.record(entry(n))  # the request path never waits for the database
        assert not ledger.flush(0.5)
        assert sum(1 for _ in (tmp_path / "journal").glob("segment-*.jsonl")) >= 1
        proxy.restore()
        assert ledger.flush(20)
        assert count(ledger) == 40
    finally:
        ledger.close()
        proxy.close()


@pytest.mark.postgres
def test_postgres_migrations_are_idempotent(pg_url: str) -> None:
    engine = make_engine(pg_url)
    assert migrate(engine) == len(STEPS)
    assert migrate(engine) == len(STEPS)
    engine.dispose()


@pytest.mark.postgres
def test_postgres_takes_overlong_and_nul_fields_cut_to_their_columns(pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL refuses a string longer than its column (SQLite keeps it): such a row must not stall the
    writer, and the rows behind it must go in."""
    ledger = SqlLedger(pg_url, tmp_path / "journal", 10)
    ledger.start()
    try:
        long_model = "m" * 5000  # an unknown alias of any length is recorded as a failed request
        ledger.record(entry(1, requested_model=long_model, principal=Principal("acme", "k", "u\x00ser", "f", "s")))
        ledger.record(entry(2))
        assert ledger.flush(10)
        with ledger.engine.connect() as conn:
            rows = conn.execute(select(tables.requests.c.requested_model, tables.requests.c.user_id)).all()
        assert sorted(rows) == sorted([("m" * 256, "u\ufffdser"), ("fast", "u1")])
    finally:
        ledger.close()


@pytest.mark.postgres
def test_postgres_sets_aside_a_refused_row_and_writes_the_rest(pg_url: str, tmp_path: Path) -> None:
    url_engine = make_engine(pg_url)
    migrate(url_engine)
    url_engine.dispose()
    first = SqlLedger(pg_url, tmp_path / "journal", 10)  # never started: rows a previous process left behind
    for n in range(6):
        row = row_of(entry(n))
        if n == 3:
            row["input_tokens"] = "not a number"  # what no database column takes
        first._journal.append(row)
    first._journal.close()
    second = SqlLedger(pg_url, tmp_path / "journal", 10)
    second.start()
    try:
        second.record(entry(10))
        assert second.flush(10)
        assert count(second) == 6
        rejected = (tmp_path / "journal" / "rejected.jsonl").read_text().splitlines()
        assert len(rejected) == 1 and '"req_000003"' in rejected[0]
    finally:
        second.close()


@pytest.mark.postgres
def test_a_long_outage_holds_rows_on_disk_not_in_memory(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_QUEUED_ROWS rows waiting, the rest wait in the journal file only (a queue of every row of a long
    outage, each with its prompt and answer, grew the gateway's memory until it went down with its database);
    once the database is back all of them are written, none twice."""
    from thrifty.ledger import writer

    monkeypatch.setattr(writer, "MAX_QUEUED_ROWS", 5)
    monkeypatch.setattr(writer, "BATCH_ROWS", 7)  # the spilled rows are read back over several batches
    proxy = TcpProxy("127.0.0.1", 5432)
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    ledger = SqlLedger(url, tmp_path / "journal", 10)
    ledger.start()
    try:
        ledger.record(entry(0))
        assert ledger.flush()
        proxy.cut()
        for n in range(1, 60):
            ledger.record(entry(n))
        assert not ledger.flush(0.3)
        assert ledger._queued <= 5 and sum(r[3] for r in ledger._spilled) >= 50
        proxy.restore()
        assert ledger.flush(20)
        assert count(ledger) == 60
        assert not ledger._spilled and ledger._queued == 0
        for n in range(60, 70):  # and back to the queue
            ledger.record(entry(n))
        assert ledger.flush(10) and count(ledger) == 70 and not ledger._spilled
    finally:
        ledger.close()
        proxy.close()


def test_journal_leftovers_are_read_a_batch_at_a_time(tmp_path: Path) -> None:
    """After a long outage and a crash the leftovers may not fit in memory: start-up reads them in batches."""
    from thrifty.ledger.journal import Journal

    first = Journal(tmp_path / "journal")
    for n in range(25):
        first.append(row_of(entry(n)))
    first.rotate()  # a closed segment with rows the database never got, then the current one
    for n in range(25, 35):
        first.append(row_of(entry(n)))
    first.close()
    again = Journal(tmp_path / "journal")
    try:
        sizes = [len(batch) for batch in again.leftover_batches(7)]
        assert sizes == [7, 7, 7, 7, 7]
        assert [row["request_id"] for row in again.leftovers()] == [row_of(entry(n))["request_id"] for n in range(35)]
    finally:
        again.close()
