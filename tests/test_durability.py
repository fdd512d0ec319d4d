"""kill -9 of a real `thrifty serve` mid-load loses no ledger row of a request whose response was sent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from fakes.upstream import FakeUpstream, FakeUsage
from gateway_harness import config_text
from thrifty.ledger import tables
from thrifty.ledger.writer import SqlLedger
from thrifty.server.run import free_port


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=10, output_tokens=5)) as upstream:
        yield upstream


def start_server(config: Path, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "thrifty.cli", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("thrifty serve did not start")


def load(port: int, received: list[str], stop: threading.Event) -> None:
    body = {"model": "fast", "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        while not stop.is_set():
            try:
                response = client.post("/v1/chat/completions", json=body)
            except httpx.HTTPError:
                return  # the server is gone
            if response.status_code == 200:
                received.append(response.headers["x-thrifty-request-id"])


def test_kill_9_mid_load_loses_no_row_of_an_answered_request(tmp_path: Path, up: FakeUpstream) -> None:
    # A slow flush interval keeps many rows in the journal only, when the kill comes.
    config = tmp_path / "thrifty.toml"
    config.write_text(config_text(up).replace("flush_interval_ms = 10", "flush_interval_ms = 2000"))
    port = free_port()
    server = start_server(config, port)
    received: list[str] = []
    stop = threading.Event()
    workers = [threading.Thread(target=load, args=(port, received, stop)) for _ in range(8)]
    for worker in workers:
        worker.start()
    while len(received) < 300:
        time.sleep(0.01)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    stop.set()
    for worker in workers:
        worker.join()
    answered_by_upstream = up.answered

    # The next start (here: its ledger alone) writes what the journal kept.
    ledger = SqlLedger(f"sqlite:///{tmp_path / 'ledger.sqlite'}", tmp_path / ".thrifty-journal", 10)
    ledger.start()
    deadline = time.monotonic() + 20
    ids: set[str] = set()
    while time.monotonic() < deadline:
        with ledger.engine.connect() as conn:
            ids = set(conn.execute(select(tables.requests.c.request_id)).scalars())
        if set(received) <= ids:
            break
        time.sleep(0.1)
    ledger.close()
    assert set(received) <= ids, f"{len(set(received) - ids)} answered requests have no ledger row"
    assert len(received) <= len(ids) <= answered_by_upstream
