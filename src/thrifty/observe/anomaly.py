"""Spend and token rates per feature and per tenant, against their own recent past.

Two windows, both compared with a baseline of the same scope:

- fast (default 5 minutes): a runaway loop. Its hourly rate against the larger of the hour before it and the
  same hour on the previous seven days;
- slow (the last hour): against the same hour on the previous seven days.

An anomaly alerts when a rate is ``factor`` times its baseline and above an absolute floor (so a feature going
from 1 cent to 6 cents an hour stays quiet), once per incident: it re-arms only after the rate falls back.
Unpriced traffic alerts once per model. Buckets are per minute and kept for eight days; at start-up they are
filled from the ledger (``seed``), so a restart does not make every scope's own rate look new.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from thrifty.observe.alerts import Alert, AlertSink
from thrifty.types import LedgerEntry

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

log = logging.getLogger("thrifty.anomaly")

BUCKET_S = 60
KEEP_S = 8 * 86400
DAY_S = 86400
CHECK_EVERY_S = 2.0
HITS = ("exact", "semantic")


@dataclass(frozen=True, slots=True)
class AnomalySettings:
    fast_window_s: int = 300
    factor: float = 5.0
    min_usd_per_hour: float = 1.0
    min_tokens_per_hour: float = 200_000.0


class AnomalyDetector:
    def __init__(self, sink: AlertSink, settings: AnomalySettings | None = None) -> None:
        self._sink, self._settings = sink, settings or AnomalySettings()
        self._usd: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
        self._tokens: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
        self._active: set[tuple[str, str, str]] = set()
        self._unpriced: set[tuple[str, str]] = set()
        self._checked: dict[tuple[str, str], float] = {}

    def __call__(self, entry: LedgerEntry) -> None:
        if entry.unpriced and (entry.provider, entry.model) not in self._unpriced:
            self._unpriced.add((entry.provider, entry.model))
            self._sink.fire(
                Alert(
                    "unpriced",
                    "warning",
                    "model",
                    entry.model,
                    f"unpriced:{entry.provider}:{entry.model}",
                    f"calls to {entry.provider}::{entry.model} have no price and are recorded as unpriced; "
                    f'set [prices."{entry.model}"] in the config',
                )
            )
        bucket = int(entry.started_at // BUCKET_S)
        usd = float(entry.cost_usd or 0)
        # A cache hit's row keeps the stored call's tokens, which no model read again.
        tokens = 0 if entry.cache in HITS else entry.usage.input_tokens + entry.usage.output_tokens
        for scope, scope_id in (("feature", entry.principal.feature), ("tenant", entry.principal.tenant)):
            if not scope_id:
                continue
            key = (scope, scope_id)
            self._usd[key][bucket] = self._usd[key].get(bucket, 0.0) + usd
            self._tokens[key][bucket] = self._tokens[key].get(bucket, 0.0) + tokens
            # Rates move slowly against a five-minute window: judging each scope every few seconds is enough,
            # and keeps this off the per-request cost.
            if entry.started_at - self._checked.get(key, 0.0) >= CHECK_EVERY_S:
                self._checked[key] = entry.started_at
                self._check(key, entry.started_at)
            if len(self._usd[key]) > KEEP_S // BUCKET_S + 120:
                self._prune(key, entry.started_at)

    def seed(self, history: Iterable[tuple[str, str, int, int, int]]) -> None:
        """The past per-minute rates (``ledger.dashboard_queries.rate_history``), so that a restarted gateway judges
        each scope against its own past instead of against nothing: without it, every scope above the floor
        would alert as a runaway after each restart."""
        for scope, scope_id, bucket, nusd, tokens in history:
            key = (scope, scope_id)
            self._usd[key][bucket] = self._usd[key].get(bucket, 0.0) + nusd / 1e9
            self._tokens[key][bucket] = self._tokens[key].get(bucket, 0.0) + tokens

    def _check(self, key: tuple[str, str], now: float) -> None:
        s = self._settings
        for series, floor, unit in (
            (self._usd, s.min_usd_per_hour, "USD"),
            (self._tokens, s.min_tokens_per_hour, "tokens"),
        ):
            buckets = series[key]
            fast = _rate(buckets, now - s.fast_window_s, now)
            hour_before = _rate(buckets, now - s.fast_window_s - 3600, now - s.fast_window_s)
            self._judge(
                key, f"fast-{unit}", fast, max(hour_before, _weekly(buckets, now, s.fast_window_s)), floor, unit
            )
            last_hour = _rate(buckets, now - 3600, now)
            weekly = _weekly(buckets, now, 3600)
            if weekly > 0:
                self._judge(key, f"hour-{unit}", last_hour, weekly, floor, unit)

    def _judge(self, key: tuple[str, str], window: str, rate: float, baseline: float, floor: float, unit: str) -> None:
        incident = (*key, window)
        if rate > floor and rate > self._settings.factor * baseline:
            if incident not in self._active:
                self._active.add(incident)
                scope, scope_id = key
                self._sink.fire(
                    Alert(
                        "anomaly",
                        "critical",
                        scope,
                        scope_id,
                        f"anomaly:{scope}:{scope_id}:{window}",
                        f"{scope} {scope_id}: {rate:,.2f} {unit}/hour over the {window.split('-', 1)[0]} window, "
                        f"against a baseline of {baseline:,.2f} {unit}/hour",
                    )
                )
        elif rate <= self._settings.factor * baseline or rate <= floor:
            self._active.discard(incident)

    def _prune(self, key: tuple[str, str], now: float) -> None:
        oldest = int((now - KEEP_S) // BUCKET_S)
        for series in (self._usd, self._tokens):
            for bucket in [b for b in series[key] if b < oldest]:
                del series[key][bucket]


def _rate(buckets: dict[int, float], start: float, end: float) -> float:
    """Per hour, over [start, end)."""
    total = sum(buckets.get(bucket, 0.0) for bucket in range(int(start // BUCKET_S), int(end // BUCKET_S) + 1))
    return total * 3600 / max(end - start, BUCKET_S)


def _weekly(buckets: dict[int, float], now: float, width_s: float) -> float:
    """The mean rate of the same window on each of the previous seven days that had any traffic."""
    rates = [_rate(buckets, now - d * DAY_S - width_s, now - d * DAY_S) for d in range(1, 8)]
    seen = [r for r in rates if r > 0]
    return sum(seen) / len(seen) if seen else 0.0


def seed_from_ledger(detector: AnomalyDetector, engine: Engine) -> None:
    """The detector's past rates from the ledger; a database that cannot answer leaves it to learn them anew
    (the gateway starts all the same)."""
    from sqlalchemy.exc import SQLAlchemyError

    from thrifty.ledger.dashboard_queries import rate_history

    try:
        detector.seed(rate_history(engine, time.time() - KEEP_S, BUCKET_S))
    except SQLAlchemyError as exc:
        log.warning("anomaly detection starts without its history (%s)", exc.__class__.__name__)
