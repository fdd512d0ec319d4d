"""``SqlLedger``: rows journaled on the request path, written to the database in batches by one thread.

If the database is down the thread keeps the batch and retries with back-off while the gateway goes on serving;
the journal holds the rows across a crash. Past ``MAX_QUEUED_ROWS`` waiting in memory (a long outage under
traffic: each row may carry a prompt and an answer), new rows wait in the journal only, located by their byte
range, and are read back from it once the queue has drained: the gateway's memory does not grow with the outage.
Inserts ignore request ids the database already has, so replaying a journal after a crash never counts a request
twice. A row the database refuses for its content (not for being
unreachable) must not hold up the rows behind it forever: strings are cut to their columns' lengths, and a row
still refused is set aside, whole, in the journal folder's ``rejected.jsonl`` with an error in the log.
"""

from __future__ import annotations

import collections
import functools
import logging
import queue
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, String, create_engine, text
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from thrifty.ledger import tables
from thrifty.ledger.journal import Journal
from thrifty.ledger.migrations import migrate
from thrifty.types import LedgerEntry

log = logging.getLogger("thrifty.ledger")

Row = dict[str, Any]
BATCH_ROWS = 512
ROTATE_EVERY_S = 5.0
MAX_QUEUED_ROWS = 20_000
"""Rows held in memory for the writer; beyond them, rows wait in the journal file only."""


def make_engine(url: str) -> Engine:
    """One engine per URL; SQLite gets WAL so readers (reports, the dashboard) never block the writer."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        from sqlalchemy import event

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            _set_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 5})


def _set_wal(cursor: Any, attempts: int = 200) -> None:
    """Switch to WAL. Processes opening a fresh file at once can get "database is locked" here without SQLite's
    busy timeout applying (the switch needs an exclusive lock): retry for up to ~10 s."""
    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


@functools.lru_cache(maxsize=64)
def _day_of(days_since_epoch: int) -> str:
    return datetime.fromtimestamp(days_since_epoch * 86400, UTC).strftime("%Y-%m-%d")


def utc_day(timestamp: float) -> str:
    return _day_of(int(timestamp // 86400))


def row_of(entry: LedgerEntry, keep_payload: bool = True) -> Row:
    usage, who = entry.usage, entry.principal
    return {
        "request_id": entry.request_id,
        "started_at": entry.started_at,
        "day": utc_day(entry.started_at),
        "endpoint": entry.endpoint,
        "tenant": who.tenant,
        "key_id": who.key_id,
        "user_id": who.user,
        "feature": who.feature,
        "session_id": who.session,
        "requested_model": entry.requested_model,
        "provider": entry.provider,
        "model": entry.model,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "tokens_estimated": usage.estimated,
        "cost_nusd": tables.to_nusd(entry.cost_usd),
        "baseline_cost_nusd": tables.to_nusd(entry.baseline_cost_usd),
        "unpriced": entry.unpriced,
        "total_ms": round(entry.total_ms, 3),
        "upstream_ms": round(entry.upstream_ms, 3),
        "ttft_ms": None if entry.ttft_ms is None else round(entry.ttft_ms, 3),
        "status": entry.status,
        "error_type": entry.error_type,
        "streamed": entry.streamed,
        "cache": entry.cache,
        "finish_reason": entry.finish_reason,
        "max_output_tokens": entry.max_output_tokens,
        "savings": {lever: tables.to_nusd(usd) for lever, usd in entry.savings_usd.items()},
        "payload": None
        if entry.payload is None or not keep_payload
        else {
            "request_json": orjson.dumps(entry.payload.request).decode(),
            "answer_text": entry.payload.answer,
        },
    }


class SqlLedger:
    def __init__(self, url: str, journal_dir: Path, flush_interval_ms: int = 50, capture_payloads: bool = True) -> None:
        """``capture_payloads=False`` drops the prompts and answers entries carry for in-process observers
        (the structured-output watch) instead of storing them."""
        self.url = url
        self.capture_payloads = capture_payloads
        self.engine = make_engine(url)
        self._journal = Journal(journal_dir)
        self._queue: queue.SimpleQueue[tuple[Row, int] | None] = queue.SimpleQueue()
        self._interval_s = flush_interval_ms / 1000
        self._thread = threading.Thread(target=self._run, name="thrifty-ledger", daemon=True)
        self._outstanding = 0
        self._settled = threading.Condition()
        self._migrated = False
        self.written = 0
        self._recorded = 0
        self._queued = 0
        self._spilled: collections.deque[list[int]] = collections.deque()
        """Byte ranges ``[segment, start, end, rows]`` of rows that wait in the journal only, oldest first."""

    def start(self) -> None:
        self._thread.start()

    def record(self, entry: LedgerEntry) -> None:
        row = row_of(entry, self.capture_payloads)
        segment, start, end = self._journal.append(row)
        with self._settled:
            self._outstanding += 1
            self._recorded += 1
            if self._spilled or self._queued >= MAX_QUEUED_ROWS:  # in order: once one row waits on disk, all do
                last = self._spilled[-1] if self._spilled else None
                if last is not None and last[0] == segment and last[2] == start:
                    last[2], last[3] = end, last[3] + 1
                else:
                    self._spilled.append([segment, start, end, 1])
                return
            self._queued += 1
        self._queue.put((row, segment))

    def caught_up(self, timeout_s: float = 5.0) -> bool:
        """Wait until every row recorded before this call is in the database (rows recorded meanwhile need not
        be: under steady traffic ``flush`` might never see the queue empty). Budgets call it before reading a
        period's spend, so that the count they take includes the calls just made."""
        with self._settled:
            target = self._recorded
            return self._settled.wait_for(lambda: self.written >= target, timeout_s)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every recorded row is in the database (tests, shutdown, CLI)."""
        with self._settled:
            return self._settled.wait_for(lambda: self._outstanding == 0, timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        if self._thread.is_alive():
            self.flush(timeout_s)
            self._queue.put(None)
            self._thread.join(timeout_s)
        self._journal.close()
        self.engine.dispose()

    def ping(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return False
        return True

    def _run(self) -> None:
        backoff = 0.05
        while not self._prepare():
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
        last_rotation = time.monotonic()
        while True:
            batch, stop = self._take_batch()
            if not batch and not stop:
                batch = self._take_spilled()
            while batch and not self._insert([row for row, _ in batch]):
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            backoff = 0.05
            if batch:
                counts: dict[int, int] = {}
                for _, segment in batch:
                    counts[segment] = counts.get(segment, 0) + 1
                self._journal.acknowledge(counts)
                with self._settled:
                    self._outstanding -= len(batch)
                    self.written += len(batch)
                    self._settled.notify_all()
            if time.monotonic() - last_rotation > ROTATE_EVERY_S:
                self._journal.rotate()
                last_rotation = time.monotonic()
            if stop:
                return

    def _prepare(self) -> bool:
        """Migrate, then insert what a previous process left in the journal, a batch at a time (after a long outage
        it may be more than memory holds; inserts are idempotent, so a retry starts again from the first)."""
        recovered = 0
        try:
            if not self._migrated:
                migrate(self.engine)
                self._migrated = True
            for batch in self._journal.leftover_batches(BATCH_ROWS):
                if not self._insert(batch):
                    return False
                recovered += len(batch)
        except SQLAlchemyError as exc:
            log.warning("ledger database unavailable (%s); rows wait in the journal", exc.__class__.__name__)
            return False
        if recovered:
            log.info("recovered %d ledger rows from the journal", recovered)
        self._journal.drop_leftovers()
        return True

    def _take_spilled(self) -> list[tuple[Row, int]]:
        """Rows that waited in the journal only, read back once the queue is empty, a batch at a time."""
        with self._settled:
            if not self._spilled:
                return []
            segment, start, end, count = self._spilled[0]
        rows, read_to = self._journal.read(segment, start, end, BATCH_ROWS)
        with self._settled:
            if read_to >= end:
                self._spilled.popleft()
            else:  # the rest of the range waits for the next batch
                self._spilled[0][1], self._spilled[0][3] = read_to, count - len(rows)
        return [(row, segment) for row in rows]

    def _take_batch(self) -> tuple[list[tuple[Row, int]], bool]:
        try:
            first = self._queue.get(timeout=self._interval_s)
        except queue.Empty:
            return [], False
        if first is None:
            return [], True
        # Gather for one interval: one transaction per interval, not per request, when traffic trickles in.
        batch = [first]
        deadline = time.monotonic() + self._interval_s
        while len(batch) < BATCH_ROWS:
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if item is None:
                return self._taken(batch), True
            batch.append(item)
        return self._taken(batch), False

    def _taken(self, batch: list[tuple[Row, int]]) -> list[tuple[Row, int]]:
        with self._settled:
            self._queued -= len(batch)
        return batch

    def _insert(self, rows: list[Row]) -> bool:
        """Whether the rows are settled: written (or set aside as refused); False to retry later."""
        try:
            self._write(rows)
        except (DataError, IntegrityError) as exc:
            if len(rows) == 1:
                self._reject(rows[0], exc)
                return True
            middle = len(rows) // 2  # find the refused rows by halves; the rest go in
            return self._insert(rows[:middle]) and self._insert(rows[middle:])
        except SQLAlchemyError as exc:
            log.warning("ledger write failed (%s); will retry", exc.__class__.__name__)
            return False
        return True

    def _write(self, rows: list[Row]) -> None:
        with self.engine.begin() as conn:
            insert = _insert_ignoring_duplicates(conn.dialect.name)
            conn.execute(insert(tables.requests), [_request_columns(row) for row in rows])
            savings = [
                {"request_id": _clamped("request_id", row["request_id"]), "lever": lever, "savings_nusd": nusd}
                for row in rows
                for lever, nusd in (row.get("savings") or {}).items()
            ]
            if savings:
                conn.execute(insert(tables.savings), savings)
            payloads = [
                {
                    **{k: _no_nul(v) for k, v in row["payload"].items()},
                    "request_id": _clamped("request_id", row["request_id"]),
                }
                for row in rows
                if row.get("payload")
            ]
            if payloads:
                conn.execute(insert(tables.payloads), payloads)

    def _reject(self, row: Row, exc: Exception) -> None:
        path = self._journal.folder / "rejected.jsonl"
        try:
            with path.open("ab") as file:
                file.write(orjson.dumps(row) + b"\n")
        except OSError:  # the row must not stop the writer: it goes to the log whole instead
            log.error("the ledger database refused this row and %s cannot be written: %s", path, orjson.dumps(row))
            return
        log.error(
            "the ledger database refused request %s (%s); the row is kept in %s",
            row.get("request_id"),
            exc.__class__.__name__,
            path,
        )


# Columns added after the first release: rows journaled by an older version lack them.
LATER_COLUMNS: Row = {"finish_reason": None, "max_output_tokens": None}


LENGTHS: dict[str, int] = {
    column.name: column.type.length
    for column in tables.requests.columns
    if isinstance(column.type, String) and column.type.length
}


def _request_columns(row: Row) -> Row:
    columns = {key: _clamped(key, value) for key, value in row.items() if key not in ("savings", "payload")}
    return {**LATER_COLUMNS, **columns}


def _clamped(column: str, value: Any) -> Any:
    """A string cut to its column's length (PostgreSQL refuses a longer one; SQLite would keep it) and without NUL
    characters, which PostgreSQL's text types cannot hold."""
    if not isinstance(value, str):
        return value
    limit = LENGTHS.get(column)
    return _no_nul(value if limit is None else value[:limit])


def _no_nul(value: Any) -> Any:
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


def _insert_ignoring_duplicates(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return lambda table: pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return lambda table: sqlite_insert(table).on_conflict_do_nothing()
