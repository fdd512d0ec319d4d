"""Schema migrations on real SQLite and PostgreSQL: a database made by an older release upgrades in place."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect, select

from test_ledger import entry as ledger_entry
from thrifty.ledger import tables
from thrifty.ledger.cutoffs import cutoff_report
from thrifty.ledger.migrations import STEPS, migrate
from thrifty.ledger.writer import SqlLedger, make_engine, row_of
from thrifty.types import LedgerEntry

ADDED_BY_STEP_2 = ("finish_reason", "max_output_tokens")


def entry(n: int, **kw: object) -> LedgerEntry:
    return ledger_entry(n, Decimal("0.00027"), **kw)


def old_row(n: int) -> dict[str, object]:
    """A requests row as release 1 wrote it: without the columns later steps added."""
    row = row_of(entry(n))
    for name in (*ADDED_BY_STEP_2, "savings", "payload"):
        del row[name]
    return row


def create_at_step_1(engine: Engine) -> None:
    """A database as release 1 left it: step 1 applied and recorded, its tables as they were then, one row."""
    with engine.begin() as conn:
        tables.schema_version.create(conn)
        STEPS[0](conn)
        conn.execute(tables.schema_version.insert().values(version=1, applied_at=time.time()))
        for name in ADDED_BY_STEP_2:  # step 1 builds today's tables; release 1's had no such columns
            conn.exec_driver_sql(f"ALTER TABLE requests DROP COLUMN {name}")
    with engine.begin() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("requests")}
        assert not columns & set(ADDED_BY_STEP_2)
        conn.execute(tables.requests.insert().values(**old_row(1)))  # names only release 1's columns


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    yield engine
    engine.dispose()


def test_a_release_1_database_upgrades_and_keeps_its_rows(engine: Engine, url: str, tmp_path: Path) -> None:
    create_at_step_1(engine)
    assert migrate(engine) == len(STEPS) >= 2
    assert migrate(engine) == len(STEPS)  # once only
    with engine.connect() as conn:
        columns = {c["name"]: c for c in inspect(conn).get_columns("requests")}
        versions = conn.execute(select(tables.schema_version.c.version)).scalars().all()
        (old,) = conn.execute(select(tables.requests)).mappings().all()
    assert sorted(versions) == list(range(1, len(STEPS) + 1))
    assert all(columns[name]["nullable"] for name in ADDED_BY_STEP_2)
    assert old["request_id"] == "req_000001" and old["cost_nusd"] == 270_000
    assert old["finish_reason"] is None and old["max_output_tokens"] is None

    ledger = SqlLedger(url, tmp_path / "journal", 10)
    ledger.start()
    try:
        ledger.record(entry(2, finish_reason="length", max_output_tokens=200))
        assert ledger.flush()
    finally:
        ledger.close()
    with engine.connect() as conn:
        new = conn.execute(select(tables.requests).where(tables.requests.c.request_id == "req_000002")).one()
    assert (new.finish_reason, new.max_output_tokens) == ("length", 200)
    (row,) = cutoff_report(engine)  # the old row has no finish reason: it is left out, not counted as complete
    assert (row.answers, row.cut_off, row.cap) == (1, 1, 200)


def test_a_fresh_database_takes_every_step(engine: Engine) -> None:
    assert migrate(engine) == len(STEPS)
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("requests")}
    assert set(ADDED_BY_STEP_2) <= columns


def test_rows_journaled_by_an_older_release_are_still_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    migrate(make_engine(url))
    first = SqlLedger(url, tmp_path / "journal", 10)  # never started: killed with rows in its journal
    old = row_of(entry(1))
    for name in ADDED_BY_STEP_2:
        del old[name]
    first._journal.append(old)
    first._journal.append(row_of(entry(2, finish_reason="stop")))
    first._journal.close()
    second = SqlLedger(url, tmp_path / "journal", 10)
    second.start()
    try:
        deadline = time.monotonic() + 10
        rows: list[tuple[str, str | None]] = []
        while len(rows) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
            with second.engine.connect() as conn:
                query = select(tables.requests.c.request_id, tables.requests.c.finish_reason)
                rows = [(r[0], r[1]) for r in conn.execute(query.order_by(tables.requests.c.request_id))]
    finally:
        second.close()
    assert rows == [("req_000001", None), ("req_000002", "stop")]


UPGRADE = """
import sys, time
from pathlib import Path
from thrifty.ledger.migrations import migrate
from thrifty.ledger.writer import make_engine

engine, go = make_engine(sys.argv[1]), Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
print(migrate(engine), flush=True)
"""


def test_replicas_upgrading_one_database_at_once_apply_each_step_once(engine: Engine, url: str, tmp_path: Path) -> None:
    create_at_step_1(engine)
    go = tmp_path / "go"
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADE, url, str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    try:
        for replica in replicas:  # every one imported and connected: then they all start together
            assert replica.stdout is not None and replica.stdout.readline() == "ready\n"
        go.touch()
        results = [replica.communicate(timeout=60) for replica in replicas]
    finally:
        for replica in replicas:
            replica.kill()
    assert [(r.returncode, out) for r, (out, _) in zip(replicas, results, strict=True)] == [
        (0, f"{len(STEPS)}\n")
    ] * len(replicas), [err for _, err in results]
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("requests")}
        versions = conn.execute(select(tables.schema_version.c.version)).scalars().all()
    assert sorted(versions) == list(range(1, len(STEPS) + 1))  # each step recorded once
    assert set(ADDED_BY_STEP_2) <= columns


def test_replicas_creating_a_fresh_database_at_once_all_start(engine: Engine, url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    replicas = [
        subprocess.Popen([sys.executable, "-c", UPGRADE, url, str(go)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        for replica in replicas:
            assert replica.stdout is not None and replica.stdout.readline() == "ready\n"
        go.touch()
        outputs = [replica.communicate(timeout=60)[0] for replica in replicas]
    finally:
        for replica in replicas:
            replica.kill()
    assert [r.returncode for r in replicas] == [0] * 4 and outputs == [f"{len(STEPS)}\n"] * 4
    with engine.connect() as conn:
        versions = conn.execute(select(tables.schema_version.c.version)).scalars().all()
    assert sorted(versions) == list(range(1, len(STEPS) + 1))
