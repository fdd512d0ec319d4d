"""``PgVectorStore``: the semantic cache's vectors in PostgreSQL with pgvector, shared by every replica.

One row per answer: the partition it may serve, the query text and its embedding, the entry
(``CacheEntry.to_bytes``) and the attribution a purge selects on. A search is one statement: the nearest rows by
cosine distance (``<=>``, an HNSW index) among the unexpired rows of one partition. ``hnsw.iterative_scan``
(pgvector >= 0.8) lets the index scan go on past its first candidates until ``k`` rows pass the partition filter,
so a small partition among large ones still finds its neighbours; when a partition is small enough the planner
takes the partition index and sorts exactly instead.

Calls are blocking (SQLAlchemy Core over psycopg) and run in a worker thread. Each is one round trip: connections
are in autocommit mode, so no BEGIN/COMMIT, and psycopg prepares a statement once it repeats. Vectors travel in
pgvector's binary format, a few microseconds for 384 floats where a text literal costs hundreds. Expired rows are
never returned and are deleted every few hundred adds. A table per dimension count: a new embedding size starts an
empty cache instead of failing every insert.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Connection, Engine, TextClause, create_engine, event, text
from sqlalchemy.exc import DBAPIError

from thrifty.caches.entries import CacheEntry, PurgeScope
from thrifty.errors import ConfigError

try:
    from psycopg.adapt import Dumper
    from psycopg.pq import Format
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("the shared semantic cache needs the 'postgres' extra: pip install 'thrifty[postgres]'") from exc

if TYPE_CHECKING:
    from numpy.typing import NDArray

log = logging.getLogger("thrifty.cache")
SWEEP_EVERY_ADDS = 256
HNSW_MAX_DIMENSIONS = 2000
# Serialises schema creation when several replicas start at once ("thrifty" in ASCII).
SCHEMA_LOCK = 0x74687269667479

COLUMNS = ("partition", "tenant", "feature", "alias", "created_at", "expires_at", "query_text", "embedding", "entry")

Found = tuple[str, float, str, CacheEntry]


class PgVectorStore:
    """``url``: ``postgresql://`` or ``postgresql+psycopg://``. The first replica to start creates the extension,
    table and indexes (a role allowed to ``CREATE EXTENSION vector``, or an administrator beforehand); later ones
    find the table and only read and write rows."""

    def __init__(self, url: str, dimensions: int, max_entries: int | None = None) -> None:
        """``max_entries``: a bound on the table's rows, kept at each sweep (the oldest go first; between sweeps
        it may be exceeded by up to ``SWEEP_EVERY_ADDS`` rows per replica)."""
        self._dimensions = dimensions
        self._max_entries = max_entries
        self._table = f"thrifty_semantic_d{dimensions}"
        self._engine = _engine(url)
        self._insert, self._search, self._sweep = _statements(self._table)
        self._trim = text(
            f"DELETE FROM {self._table} WHERE key IN "
            f"(SELECT key FROM {self._table} ORDER BY created_at DESC OFFSET :keep)"
        )
        self._remove = text(f"DELETE FROM {self._table} WHERE key = :key")
        self._adds = 0
        self._ready = False
        self._schema_lock = threading.Lock()
        try:
            conn = self._engine.connect()
        except DBAPIError as exc:  # down at start-up: the gateway serves without this cache until it is back
            log.warning("the pgvector semantic cache is unreachable (%s): misses until it is back", exc.orig)
            return
        try:
            with conn:
                self._prepare(conn)
        except ConfigError:
            self._engine.dispose()
            raise

    def _prepare(self, conn: Connection) -> None:
        """Creates the schema; refused (a server without pgvector, a role that may not create it) is a
        configuration error, not an outage."""
        with self._schema_lock:
            if self._ready:
                return
            try:
                _create_schema(conn, self._table, self._dimensions)
            except DBAPIError as exc:
                raise ConfigError(f"cannot prepare the pgvector semantic cache: {exc.orig}") from exc
            self._ready = True

    def _connect(self) -> Connection:
        """A connection to a prepared schema (prepared now if the server was down when the store was made)."""
        conn = self._engine.connect()
        if not self._ready:
            try:
                self._prepare(conn)
            except BaseException:
                conn.close()
                raise
        return conn

    async def add(self, partition: str, key: str, vector: NDArray[np.float32], text: str, entry: CacheEntry) -> None:
        row = {
            "key": key,
            "partition": partition,
            "tenant": entry.tenant,
            "feature": entry.feature,
            "alias": entry.alias,
            "created_at": entry.created_at,
            "expires_at": entry.expires_at,
            "query_text": text,
            "embedding": self._checked(vector),
            "entry": entry.to_bytes(),
        }
        self._adds += 1
        sweep = self._adds % SWEEP_EVERY_ADDS == 0
        await asyncio.to_thread(self._write, row, sweep)

    def _write(self, row: dict[str, Any], sweep: bool) -> None:
        with self._connect() as conn:
            conn.execute(self._insert, row)
            if sweep:
                conn.execute(self._sweep, {"now": time.time()})
                if self._max_entries is not None:
                    conn.execute(self._trim, {"keep": self._max_entries})

    async def search(self, partition: str, vector: NDArray[np.float32], k: int) -> list[Found]:
        params = {"partition": partition, "now": time.time(), "query": self._checked(vector), "k": k}
        rows = await asyncio.to_thread(self._fetch, self._search, params)
        found: list[Found] = []
        for key, distance, stored, raw in rows:
            try:
                found.append((key, 1.0 - distance, stored, CacheEntry.from_bytes(raw)))
            except ValueError as exc:
                log.warning("semantic cache: dropped an unreadable entry (%s)", exc)
                await self.remove(key)
        return found

    def _fetch(self, statement: TextClause, params: dict[str, Any]) -> list[Any]:
        with self._connect() as conn:
            return list(conn.execute(statement, params))

    async def remove(self, key: str) -> None:
        await asyncio.to_thread(self._delete, self._remove, {"key": key})

    async def purge(self, scope: PurgeScope) -> int:
        where, params = _where(scope)
        statement = text(f"DELETE FROM {self._table}{where}")
        return await asyncio.to_thread(self._delete, statement, params, True)

    def _delete(self, statement: TextClause, params: dict[str, Any], unhurried: bool = False) -> int:
        with self._connect() as conn:
            if not unhurried:
                return conn.execute(statement, params).rowcount
            conn.execute(text("SET statement_timeout = 0"))  # a purge of many rows may take its time ...
            try:
                return conn.execute(statement, params).rowcount
            finally:
                conn.execute(text("RESET statement_timeout"))  # ... lookups on this connection later may not

    async def aclose(self) -> None:
        await asyncio.to_thread(self._engine.dispose)

    def _checked(self, vector: NDArray[np.float32]) -> NDArray[np.float32]:
        if vector.shape != (self._dimensions,):
            raise ValueError(f"expected a vector of {self._dimensions} dimensions, got shape {vector.shape}")
        return vector


class _VectorDumper(Dumper):
    """pgvector's binary input: dimensions and a reserved word (uint16 each), then big-endian float32s.

    Registered without a type oid: the server takes the type from the statement (a vector column or a cast).
    """

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        floats: bytes = obj.astype(">f4", copy=False).tobytes()
        return struct.pack(">HH", obj.shape[0], 0) + floats


def purge_every_table(url: str, scope: PurgeScope) -> int:
    """Purge the semantic entries of every embedder (one table per vector size) without knowing which embedder is
    configured: ``thrifty cache purge`` must not load a model to delete rows."""
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SET statement_timeout = 0"))  # a purge of many rows may take its time
            tables = conn.execute(
                text(
                    "SELECT tablename FROM pg_tables "
                    "WHERE schemaname = current_schema() AND tablename ~ '^thrifty_semantic_d[0-9]+$'"
                )
            ).scalars()
            where, params = _where(scope)
            return sum(conn.execute(text(f"DELETE FROM {table}{where}"), params).rowcount for table in list(tables))
    except DBAPIError as exc:
        raise ConfigError(f"cannot purge the pgvector semantic cache: {exc.orig}") from exc
    finally:
        engine.dispose()


STATEMENT_TIMEOUT_MS = 5_000
"""A statement the server has not finished by then is cancelled (a lookup gives up sooner: ``caches.resilient``)."""
CONNECT = {
    "connect_timeout": 3,
    "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
    # A server that vanished without closing the connection is noticed in seconds, not at the OS's two hours.
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 10_000,
}


def _engine(url: str) -> Engine:
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    # pool_timeout: with every connection held by a stalled call, the next one gives up quickly (a miss).
    engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args=dict(CONNECT), pool_timeout=2)

    @event.listens_for(engine, "connect")
    def _prepare(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.adapters.register_dumper(np.ndarray, _VectorDumper)
        # A placeholder until the session loads pgvector, which then takes it up; ignored before pgvector 0.8.
        dbapi_conn.execute("SET hnsw.iterative_scan = strict_order")
        dbapi_conn.commit()

    return engine


def _create_schema(conn: Connection, table: str, dimensions: int) -> None:
    conn.execute(text("SELECT pg_advisory_lock(:lock)"), {"lock": SCHEMA_LOCK})
    try:
        if conn.execute(text("SELECT to_regclass(:table)"), {"table": table}).scalar() is not None:
            return
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        conn.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {table} (key text PRIMARY KEY, partition text NOT NULL, "
                "tenant text NOT NULL, feature text NOT NULL, alias text NOT NULL, "
                "created_at double precision NOT NULL, expires_at double precision NOT NULL, "
                f"query_text text NOT NULL, embedding vector({dimensions}) NOT NULL, entry bytea NOT NULL)"
            )
        )
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {table}_partition ON {table} (partition)"))
        if dimensions <= HNSW_MAX_DIMENSIONS:  # pgvector's limit for an HNSW index on vector; beyond it, exact scans
            conn.execute(
                text(
                    f"CREATE INDEX IF NOT EXISTS {table}_embedding ON {table} USING hnsw (embedding vector_cosine_ops)"
                )
            )
    finally:
        conn.execute(text("SELECT pg_advisory_unlock(:lock)"), {"lock": SCHEMA_LOCK})


def _statements(table: str) -> tuple[TextClause, TextClause, TextClause]:
    insert = text(
        f"INSERT INTO {table} (key, {', '.join(COLUMNS)}) VALUES (:key, {', '.join(':' + c for c in COLUMNS)}) "
        f"ON CONFLICT (key) DO UPDATE SET {', '.join(f'{c} = EXCLUDED.{c}' for c in COLUMNS)}"
    )
    search = text(
        f"SELECT key, embedding <=> CAST(:query AS vector) AS distance, query_text, entry FROM {table} "
        "WHERE partition = :partition AND expires_at > :now ORDER BY distance LIMIT :k"
    )
    sweep = text(f"DELETE FROM {table} WHERE expires_at <= :now")
    return insert, search, sweep


def _where(scope: PurgeScope) -> tuple[str, dict[str, Any]]:
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for column, value in (("tenant", scope.tenant), ("feature", scope.feature), ("alias", scope.alias)):
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    if scope.older_than_s is not None:
        clauses.append("created_at <= :before")
        params["before"] = time.time() - scope.older_than_s
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
