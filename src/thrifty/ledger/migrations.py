"""Schema migrations: an ordered list of steps, each applied once and remembered in ``thrifty_schema``.

New columns and tables arrive as new steps appended here; a step is never edited once released. Step 1 creates
the tables as ``tables.py`` defines them now, so later steps must check before they alter (a fresh database
already has what they add).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, Engine, inspect, select

from thrifty.ledger import tables

Step = Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    tables.metadata.create_all(
        conn, tables=[t for t in tables.metadata.sorted_tables if t is not tables.schema_version], checkfirst=True
    )


STEPS: list[Step] = [_v1_initial]


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
