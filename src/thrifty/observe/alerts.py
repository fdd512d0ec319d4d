"""Alerts: to the log, to the ``alerts`` table, and to webhooks (generic JSON and Slack-compatible).

Each alert has a dedupe key (what it is about); the same key alerts again only after ``dedupe_s``. Webhook
deliveries are retried with back-off in the background and their outcome is recorded, so an alert is never
lost because a receiver was briefly down, and never blocks a request.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import orjson
from sqlalchemy import Engine, update
from sqlalchemy.exc import SQLAlchemyError

from thrifty.ledger import tables

log = logging.getLogger("thrifty.alerts")

RETRIES = 5


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    """``anomaly``, ``budget`` or ``unpriced``."""
    severity: str
    scope: str
    scope_id: str
    dedupe_key: str
    message: str
    alert_id: str = ""
    created_at: float = 0.0

    def json(self) -> dict[str, object]:
        return {
            "id": self.alert_id,
            "kind": self.kind,
            "severity": self.severity,
            "scope": self.scope,
            "scope_id": self.scope_id,
            "message": self.message,
            "created_at": self.created_at,
        }


class AlertSink:
    def __init__(
        self,
        engine: Engine | None,
        webhooks: Sequence[str] = (),
        slack_webhooks: Sequence[str] = (),
        dedupe_s: float = 3600.0,
    ) -> None:
        self._engine, self._dedupe_s = engine, dedupe_s
        self._targets = [(url, False) for url in webhooks] + [(url, True) for url in slack_webhooks]
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent: list[Alert] = []

    def fire(self, alert: Alert) -> bool:
        """Raise an alert unless the same one was raised within the dedupe window; True when raised."""
        now = time.time()
        with self._lock:
            last = self._last.get(alert.dedupe_key)
            if last is not None and now - last < self._dedupe_s:
                return False
            self._last[alert.dedupe_key] = now
        alert = replace(alert, alert_id="alr_" + secrets.token_hex(8), created_at=now)
        log.warning("ALERT [%s/%s] %s", alert.kind, alert.severity, alert.message)
        self.sent.append(alert)
        self._store(alert)
        if self._targets:
            try:
                task = asyncio.get_running_loop().create_task(self._deliver(alert))
            except RuntimeError:
                threading.Thread(target=asyncio.run, args=(self._deliver(alert),), daemon=True).start()
            else:
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return True

    def _store(self, alert: Alert) -> None:
        if self._engine is None:
            return
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    tables.alerts.insert().values(
                        alert_id=alert.alert_id,
                        created_at=alert.created_at,
                        kind=alert.kind,
                        severity=alert.severity,
                        scope=alert.scope,
                        scope_id=alert.scope_id,
                        dedupe_key=alert.dedupe_key,
                        message=alert.message,
                    )
                )
        except SQLAlchemyError as exc:
            log.warning("could not record alert %s: %s", alert.alert_id, exc.__class__.__name__)

    async def _deliver(self, alert: Alert) -> None:
        import aiohttp

        delivered, attempts = not self._targets, 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for url, slack in self._targets:
                body = {"text": f":rotating_light: *{alert.kind}* {alert.message}"} if slack else alert.json()
                for attempt in range(RETRIES):
                    attempts += 1
                    try:
                        async with session.post(
                            url, data=orjson.dumps(body), headers={"content-type": "application/json"}
                        ) as r:
                            if r.status < 300:
                                delivered = True
                                break
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                    await asyncio.sleep(min(0.2 * 2**attempt, 5))
        self._mark(alert, delivered, attempts)

    def _mark(self, alert: Alert, delivered: bool, attempts: int) -> None:
        if self._engine is None:
            return
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    update(tables.alerts)
                    .where(tables.alerts.c.alert_id == alert.alert_id)
                    .values(delivered=delivered, attempts=attempts)
                )
        except SQLAlchemyError as exc:
            log.warning("could not update alert %s: %s", alert.alert_id, exc.__class__.__name__)
