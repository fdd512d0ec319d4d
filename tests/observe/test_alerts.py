"""Anomalies, budget thresholds and unpriced traffic alert once, reach webhooks (retried) and are recorded."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select

from fakes.upstream import FakeUpstream, FakeUsage
from gateway_harness import config_text, ledger_rows
from thrifty.ledger import tables
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings
from thrifty.types import LedgerEntry, Principal, Usage


class Receiver:
    """A webhook receiver on loopback that fails its first ``fail_first`` deliveries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, object]] = []
        self.attempts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.attempts += 1
                ok = outer.attempts > fail_first
                if ok:
                    outer.bodies.append(body)
                self.send_response(200 if ok else 500)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    plain, slack = Receiver(fail_first=1), Receiver()
    yield plain, slack
    plain.close()
    slack.close()


def call_row(request_id: str, at: float, feature: str, usd: str) -> LedgerEntry:
    """A gpt-4o call of feature ``feature`` (tenant acme) that cost ``usd``, as the ledger records it."""
    who = Principal("acme", "", "", feature, "")
    cost = Decimal(usd)
    return LedgerEntry(
        request_id, at, "chat", who, "smart", "up", "gpt-4o", Usage(100, 10), cost, cost, 1.0, 1.0, None, "ok"
    )


def history(feature: str, now: float) -> list[LedgerEntry]:
    """Normal traffic: $0.50 an hour, spread over the previous seven days and the last hour."""
    entries = []
    for day in range(8):
        for minute in range(0, 60, 5):
            at = now - day * 86400 - 3600 + minute * 60 if day else now - 3600 + minute * 60 - 400
            entries.append(call_row(f"req_hist_{day}_{minute}", at, feature, "0.0416"))
    return sorted(entries, key=lambda e: e.started_at)


def wait_for(condition: object, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:  # type: ignore[operator]
        time.sleep(0.05)


def test_runaway_feature_alerts_once_and_reaches_webhooks(tmp_path: Path, receivers: tuple[Receiver, Receiver]) -> None:
    plain, slack = receivers
    alerts = f'\n[alerts]\nwebhooks = ["{plain.url}"]\nslack_webhooks = ["{slack.url}"]\n'
    with FakeUpstream(usage=FakeUsage(input_tokens=100_000, output_tokens=10_000)) as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=alerts))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            detector, sink = gw.runtime.anomalies, gw.runtime.alerts
            assert detector is not None and sink is not None
            for entry in history("search", time.time()):
                detector(entry)
            assert sink.sent == [], "normal traffic raised an alert"
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                for _ in range(20):  # $0.35 each on gpt-4o: about $80 an hour
                    client.chat.completions.create(
                        model="fast",
                        messages=[{"role": "user", "content": "again"}],
                        extra_headers={"x-thrifty-feature": "search"},
                    )
            wait_for(lambda: any(b["scope"] == "feature" for b in plain.bodies) and slack.bodies)
            anomalies = [a for a in sink.sent if a.kind == "anomaly" and a.scope == "feature"]

            def stored_alerts() -> list[Any]:
                with gw.runtime.ledger.engine.connect() as conn:
                    return list(conn.execute(select(tables.alerts)).all())

            # The delivery is marked in the table just after the receiver has the body.
            wait_for(lambda: all(row.delivered for row in stored_alerts() if row.scope == "feature"))
            stored = stored_alerts()
    assert len(anomalies) == 1, [a.message for a in sink.sent]
    assert "search" in anomalies[0].message and "fast window" in anomalies[0].message
    assert [b["kind"] for b in plain.bodies if b["scope"] == "feature"] == ["anomaly"]
    assert plain.attempts >= 2, "the first delivery failed and was retried"
    assert any("search" in str(b["text"]) for b in slack.bodies)
    assert {row.kind for row in stored} >= {"anomaly"}
    assert all(row.delivered for row in stored if row.scope == "feature")


def test_budget_thresholds_and_unpriced_traffic_alert_once(tmp_path: Path) -> None:
    budget = '\n[[budgets]]\nscope = "feature"\nid = "chat"\nusd = 0.001\nperiod = "day"\nhard = false\n'
    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200)) as up:  # $0.00027 each
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=budget))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                for _ in range(5):  # a soft budget: nothing is refused past 100%
                    client.chat.completions.create(
                        model="fast",
                        messages=[{"role": "user", "content": "hi"}],
                        extra_headers={"x-thrifty-feature": "chat"},
                    )
                for _ in range(2):
                    client.chat.completions.create(model="mystery", messages=[{"role": "user", "content": "hi"}])
            ledger_rows(gw)
            assert gw.runtime.alerts is not None
            sent = gw.runtime.alerts.sent
    budget_alerts = [a.message for a in sent if a.kind == "budget"]
    assert [m.split("reached ")[1].split("%")[0] for m in budget_alerts] == ["50", "80", "100"]
    assert all("soft budget" in m for m in budget_alerts)
    assert [a.scope_id for a in sent if a.kind == "unpriced"] == ["my-private-finetune"]


def steady(feature: str, start: float, end: float, prefix: str) -> list[LedgerEntry]:
    """$0.10 a minute ($6 an hour, above the $1 floor), one call a minute."""
    return [call_row(f"req_{prefix}_{int(at)}", at, feature, "0.10") for at in range(int(start), int(end), 60)]


def test_a_restarted_gateway_judges_rates_against_the_ledgers_past(tmp_path: Path) -> None:
    """Without its history a restarted detector compares every scope with nothing and calls steady traffic a
    runaway; seeded from the ledger it stays quiet on the same traffic."""
    import asyncio

    from thrifty.assembly import build_runtime
    from thrifty.observe.alerts import AlertSink
    from thrifty.observe.anomaly import AnomalyDetector

    now = time.time()
    past = steady("search", now - 3900, now - 300, "h")
    for day in range(1, 8):
        past += steady("search", now - day * 86400 - 3600, now - day * 86400, f"d{day}")
    recent = steady("search", now - 290, now, "n")
    with FakeUpstream() as up:
        (tmp_path / "thrifty.toml").write_text(config_text(up))
        settings = load_settings(tmp_path / "thrifty.toml")
        first = build_runtime(settings)
        first.start()
        for entry in past:
            first.ledger.record(entry)
        assert first.ledger.flush(10)
        asyncio.run(first.aclose())
        restarted = build_runtime(settings)
        restarted.start()
        try:
            detector, sink = restarted.anomalies, restarted.alerts
            assert detector is not None and sink is not None
            for entry in recent:
                detector(entry)
            assert [a.message for a in sink.sent if a.kind == "anomaly"] == []
            cold = AnomalyDetector(AlertSink(restarted.ledger.engine))
            for entry in recent:
                cold(entry)
            assert any(a.kind == "anomaly" for a in cold._sink.sent)  # what the seed prevents
        finally:
            asyncio.run(restarted.aclose())
