"""An append-only file of ledger rows the database does not have yet.

Each row is written here (one ``os.write`` of one JSON line, a few microseconds) before its response leaves the
gateway. Once ``write`` returns the bytes belong to the kernel, so a ``kill -9`` of the gateway loses nothing;
the next start inserts whatever the database is missing (inserts are idempotent by request id). The database
write itself happens later, in batches, off the request path.

The journal is a sequence of segment files. The writer rotates to a new segment regularly and deletes a closed
segment once every row in it is in the database, so the journal stays small while the database is up and grows
only while it is down. The folder is locked: one gateway process per journal folder.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import orjson

from thrifty.errors import ConfigError


class Journal:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._lock_file: IO[bytes] = (folder / "LOCK").open("ab")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._lock_file.close()
            raise ConfigError(
                f"ledger journal {folder} is in use by another gateway process; "
                "give each replica its own [ledger] journal_dir"
            ) from exc
        self._lock = threading.Lock()
        self._leftovers = sorted(self._segments())
        self._segment = (self._leftovers[-1][0] + 1) if self._leftovers else 1
        self._fd = self._open(self._segment)
        self._pending: dict[int, int] = {self._segment: 0}
        self._size = 0
        """Bytes in the current segment (rows are located by offset when they wait here only)."""

    def _segments(self) -> Iterator[tuple[int, Path]]:
        for path in self.folder.glob("segment-*.jsonl"):
            try:
                yield int(path.stem.split("-", 1)[1]), path
            except ValueError:
                continue

    def _open(self, segment: int) -> int:
        path = self.folder / f"segment-{segment:09d}.jsonl"
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def append(self, row: dict[str, object]) -> tuple[int, int, int]:
        """Write one row; returns the segment it is in (to acknowledge it later) and its byte range there."""
        line = orjson.dumps(row) + b"\n"
        with self._lock:
            os.write(self._fd, line)
            self._pending[self._segment] += 1
            start = self._size
            self._size += len(line)
            return self._segment, start, self._size

    def read(self, segment: int, start: int, end: int, most: int) -> tuple[list[dict[str, object]], int]:
        """Up to ``most`` rows written to ``segment`` from offset ``start`` (before ``end``), and the offset after
        the last one read: rows that waited in the journal only, read back a batch at a time."""
        rows: list[dict[str, object]] = []
        with (self.folder / f"segment-{segment:09d}.jsonl").open("rb") as file:
            file.seek(start)
            offset = start
            while offset < end and len(rows) < most:
                line = file.readline()
                if not line:
                    break
                offset += len(line)
                row = orjson.loads(line)
                if isinstance(row, dict):
                    rows.append(row)
        return rows, offset

    def acknowledge(self, segment_counts: dict[int, int]) -> None:
        """These rows are in the database now; delete segments that are closed and fully acknowledged."""
        with self._lock:
            for segment, count in segment_counts.items():
                self._pending[segment] -= count
            done = [s for s, n in self._pending.items() if n <= 0 and s != self._segment]
            for segment in done:
                del self._pending[segment]
                (self.folder / f"segment-{segment:09d}.jsonl").unlink(missing_ok=True)

    def rotate(self) -> None:
        """Start a new segment, so the current one can be deleted once it is acknowledged."""
        with self._lock:
            if self._pending[self._segment] == 0:
                # Everything in it is in the database already: empty it in place.
                os.ftruncate(self._fd, 0)
                self._size = 0
                return
            os.close(self._fd)
            self._segment += 1
            self._fd = self._open(self._segment)
            self._pending[self._segment] = 0
            self._size = 0

    def leftovers(self) -> list[dict[str, object]]:
        """Rows a previous process journaled; lines torn by a crash mid-write are skipped."""
        return [row for batch in self.leftover_batches(1 << 30) for row in batch]

    def leftover_batches(self, size: int) -> Iterator[list[dict[str, object]]]:
        """The same rows, ``size`` at a time, read as they are needed."""
        batch: list[dict[str, object]] = []
        for _, path in self._leftovers:
            with path.open("rb") as file:
                for line in file:
                    try:
                        row = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(row, dict):
                        batch.append(row)
                    if len(batch) >= size:
                        yield batch
                        batch = []
        if batch:
            yield batch

    def drop_leftovers(self) -> None:
        for _, path in self._leftovers:
            path.unlink(missing_ok=True)
        self._leftovers = []

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)
            if self._pending.get(self._segment, 0) <= 0:
                (self.folder / f"segment-{self._segment:09d}.jsonl").unlink(missing_ok=True)
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
