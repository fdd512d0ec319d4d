"""Schema migrations: an ordered list of steps, each applied once and remembered in ``thrifty_schema``.

New columns and tables arrive as new steps appended here; a step is never edited once released. Step 1 creates
the tables as ``tables.py`` defines them now, so later steps must check before they alter (a fresh database
already has what they add).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, Table, inspect, select

from thrifty.ledger import tables

Step = Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    tables.metadata.create_all(
        conn, tables=[t for t in tables.metadata.sorted_tables if t is not tables.schema_version], checkfirst=True
    )


def _add_columns(conn: Connection, table: Table, names: tuple[str, ...]) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each named column the table lacks, typed as ``tables.py`` has it."""
    present = {column["name"] for column in inspect(conn).get_columns(table.name)}
    for name in names:
        if name not in present:
            column = table.c[name]
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}")


def _v2_answer_end(conn: Connection) -> None:
    """Why each answer ended and the output cap it had: for the report of answers cut off by their cap."""
    _add_columns(conn, tables.requests, ("finish_reason", "max_output_tokens"))


STEPS: list[Step] = [_v1_initial, _v2_answer_end]


def migrate(engine: Engine) -> int:
    """Bring the database to the newest schema; returns the version it is at. Safe to run concurrently: replicas
    starting together take the database's migration lock, then read the version, so each step is applied once."""
    with _migration_lock(engine) as conn:
        if not inspect(conn).has_table(tables.schema_version.name):
            tables.schema_version.create(conn)
        current = conn.execute(select(tables.schema_version.c.version)).scalars().all()
        version = max(current, default=0)
        for number, step in enumerate(STEPS, start=1):
            if number > version:
                step(conn)
                conn.execute(tables.schema_version.insert().values(version=number, applied_at=time.time()))
                version = number
    return version


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """One transaction that holds the lock from before the version is read until the last step is committed."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7243019)")
            yield conn
        return
    # The sqlite3 driver opens its transactions late (before the first write, after our reads), so a second
    # process could read version 1 while the first was adding the columns. With the driver's own transaction
    # handling off, BEGIN IMMEDIATE takes the write lock first; SQLite's DDL is transactional, so a failed step
    # rolls back whole. Waiting processes wait up to the engine's busy timeout.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")
