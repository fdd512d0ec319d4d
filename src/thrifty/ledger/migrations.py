"""Schema migrations: an ordered list of steps, each applied once and remembered in ``thrifty_schema``.

New columns and tables arrive as new steps appended here; a step is never edited once released. Step 1 creates
the tables as ``tables.py`` defines them now, so later steps must check before they alter (a fresh database
already has what they add).
"""

from __future__ import annotations

import time
from collections.abc import Callable

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
    """Bring the database to the newest schema; returns the version it is at. Safe to run concurrently."""
    with engine.begin() as conn:
        if not inspect(conn).has_table(tables.schema_version.name):
            tables.schema_version.create(conn, checkfirst=True)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together must not apply the same step twice.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7243019)")
        current = conn.execute(select(tables.schema_version.c.version)).scalars().all()
        version = max(current, default=0)
        for number, step in enumerate(STEPS, start=1):
            if number > version:
                step(conn)
                conn.execute(tables.schema_version.insert().values(version=number, applied_at=time.time()))
                version = number
    return version
