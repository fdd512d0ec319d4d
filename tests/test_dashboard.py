"""The dashboard: its JSON against the ledger rows, the page in headless Chromium, who may see it, and the
Grafana dashboard against the metrics the gateway really exposes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from fakes.browser import Browser, Png, chromium_or_skip, read_png
from fakes.upstream import FakeUpstream, FakeUsage, Fault
from gateway_harness import ledger_rows, running_gateway
from thrifty.guards.budget_book import save_budget
from thrifty.guards.budgets import Budget, window
from thrifty.keys import create_key, revoke_key
from thrifty.ledger import tables
from thrifty.ledger.dashboard_queries import Window, parse_window, spend_series
from thrifty.ledger.writer import SqlLedger
from thrifty.observe.metrics import GatewayMetrics
from thrifty.server.run import ServerThread
from thrifty.types import LedgerEntry, Principal, Usage

REPO = Path(__file__).resolve().parents[1]
NANO = Decimal("1e9")
SPEND_BLUE, BASELINE_GREY, ALARM_PINK = (37, 99, 235), (203, 213, 225), (254, 242, 242)
LEVERS = ("cache", "routing", "compression", "prompt_cache")
HI = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=1000, output_tokens=200, cache_read_tokens=400)) as upstream:
        yield upstream


@pytest.fixture
def chromium() -> str:
    """Listed before ``gw``, so a missing browser skips (or fails) before a gateway starts."""
    return chromium_or_skip()


@pytest.fixture
def gw(tmp_path: Path, up: FakeUpstream) -> Iterator[ServerThread]:
    with running_gateway(tmp_path, up) as server:
        yield server


def entry(n: int, at: float, cost: Decimal, who: Principal, model: str, saved: dict[str, Decimal]) -> LedgerEntry:
    return LedgerEntry(
        request_id=f"hist-{n}",
        started_at=at,
        endpoint="chat",
        principal=who,
        requested_model=model,
        provider="up",
        model=model,
        usage=Usage(800, 150),
        cost_usd=cost,
        baseline_cost_usd=cost + sum(saved.values()),
        total_ms=900.0,
        upstream_ms=880.0,
        ttft_ms=None,
        status="ok",
        savings_usd=saved,
        cache=("exact", "verify-agree", "", "", "")[n % 5],
    )


def history(now: float) -> Iterator[LedgerEntry]:
    """A day of earlier traffic, recorded through the ledger writer, so the charts have a shape to draw.

    Whole cents, so the totals never end on a rounding tie and the page's text can be predicted exactly.
    """
    tenants, features = ("acme", "globex", "initech"), ("search", "agent", "summarize", "chat")
    models = ("gpt-4o-mini", "gpt-4o", "claude-3-5-haiku-latest")
    n = 0
    for hours_ago in range(1, 23):  # under 23 h: the rows stay in the 24 h window when an hour turns mid-test
        for _ in range(1 + (hours_ago * 5) % 4):
            n += 1
            saved = {LEVERS[n % 4]: Decimal(3 + (n * 11) % 30) / 100}
            if n % 3 == 0:
                saved[LEVERS[(n + 1) % 4]] = Decimal(2 + n % 9) / 100
            who = Principal(tenants[n % 3], "", f"user-{n % 5}", features[n % 4], f"sess-{n % 6}")
            cost = Decimal(10 + (hours_ago * 17 + n * 29) % 60) / 100
            yield entry(n, now - hours_ago * 3600 + (n * 97) % 1800, cost, who, models[n % 3], saved)


def fill_ledger(gw: ServerThread, up: FakeUpstream, api_key: str = "unused") -> float:
    """Real traffic through the gateway, a day of history, budgets and alerts; returns when it was written."""
    with openai.OpenAI(base_url=gw.base_url + "/v1", api_key=api_key, max_retries=0) as client:
        for feature, session in [("search", "s-1")] * 3 + [("chat", "s-2")] * 2:
            client.chat.completions.create(
                model="fast", messages=HI, extra_headers={"x-thrifty-feature": feature, "x-thrifty-session": session}
            )
        client.chat.completions.create(model="mystery", messages=HI, extra_headers={"x-thrifty-feature": "chat"})
        up.fail_next(Fault.status(500))
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="fast", messages=HI)
    now = time.time()
    for entry in history(now):
        gw.runtime.ledger.record(entry)
    engine = gw.runtime.ledger.engine
    for scope, scope_id, usd, period, hard in [
        ("tenant", "acme", "25", "month", True),
        ("feature", "agent", "6", "day", False),
        ("tenant", "default", "0.001", "total", True),
    ]:
        save_budget(engine, Budget("", scope, scope_id, period, Decimal(usd), hard))
    assert gw.runtime.budgets is not None
    gw.runtime.budgets.refresh()  # the gateway reloads stored budgets every few seconds; don't wait for it
    alerts = [
        (now - 600, "budget", "warning", "feature", "agent", "budget for feature agent passed 80% of $6 per day"),
        (now - 300, "anomaly", "critical", "feature", "agent", "feature agent spends 14x its usual rate"),
        (now - 5 * 86400, "unpriced", "info", "model", "old", "an alert from last week, outside the window"),
    ]
    with engine.begin() as conn:
        for n, (at, kind, severity, scope, scope_id, message) in enumerate(alerts):
            conn.execute(
                tables.alerts.insert().values(
                    alert_id=f"al-{n}", created_at=at, kind=kind, severity=severity, scope=scope,
                    scope_id=scope_id, dedupe_key=f"{kind}-{n}", message=message,
                )
            )  # fmt: skip
    assert gw.runtime.ledger.flush()
    return now


def data_json(gw: ServerThread, **params: str) -> dict[str, Any]:
    response = httpx.get(gw.base_url + "/dashboard/data.json", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


def sums(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    rows = list(rows)
    return {
        "requests": len(rows),
        "errors": sum(r["status"] != "ok" for r in rows),
        "cost": sum(r["cost_nusd"] or 0 for r in rows),
        "baseline": sum(r["baseline_cost_nusd"] or 0 for r in rows),
        "unpriced": sum(bool(r["unpriced"]) for r in rows),
        "cache_hits": sum(r["cache"] in ("exact", "semantic") for r in rows),  # a verification is no hit
    }


def shown(spend: dict[str, Any]) -> dict[str, int]:
    return {
        "requests": spend["requests"],
        "errors": spend["errors"],
        "cost": int(Decimal(spend["cost_usd"]) * NANO),
        "baseline": int(Decimal(spend["baseline_cost_usd"]) * NANO),
        "unpriced": spend["unpriced_requests"],
        "cache_hits": spend["cache_hits"],
    }


def usd_text(usd: Decimal) -> str:
    """The page's money format: cents from $1 up, three significant digits below."""
    if usd == 0:
        return "$0"
    if abs(usd) >= 1:
        return f"${usd.quantize(Decimal('0.01'), ROUND_HALF_EVEN):,}"
    rounded = usd.quantize(Decimal(1).scaleb(usd.adjusted() - 2), ROUND_HALF_EVEN)
    return "$" + format(rounded.normalize(), "f")


def test_data_json_is_sums_of_the_ledger_rows(gw: ServerThread, up: FakeUpstream) -> None:
    now = fill_ledger(gw, up)
    data = data_json(gw)
    rows = [r for r in ledger_rows(gw) if r["started_at"] >= data["since"]]
    assert len(rows) == len(ledger_rows(gw)) == 7 + sum(1 for _ in history(now))
    assert shown(data["totals"]) == sums(rows)
    assert data["totals"]["unpriced_requests"] == 1 and data["totals"]["errors"] == 1

    assert data["bucket_s"] == 3600 and len(data["series"]) == 24
    assert data["series"][-1]["start"] <= time.time() < data["series"][-1]["start"] + 3600
    for bucket in data["series"]:
        inside = (r for r in rows if bucket["start"] <= r["started_at"] < bucket["start"] + 3600)
        assert shown(bucket) == sums(inside)

    with gw.runtime.ledger.engine.connect() as conn:
        saved = conn.execute(select(tables.savings.c.lever, tables.savings.c.savings_nusd)).all()
    by_lever: dict[str, int] = {}
    for lever, nusd in saved:
        by_lever[lever] = by_lever.get(lever, 0) + nusd
    assert {s["lever"]: int(Decimal(s["savings_usd"]) * NANO) for s in data["savings_by_lever"]} == by_lever
    assert Decimal(data["totals"]["savings_usd"]) * NANO == sum(by_lever.values())

    for by, column in [("feature", "feature"), ("tenant", "tenant"), ("model", "model"), ("session", "session_id")]:
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(row[column], []).append(row)
        ranked = sorted(groups, key=lambda g: (-sums(groups[g])["cost"], -len(groups[g]), g))[:8]
        assert [g["group"] for g in data["top"][by]] == ranked, by
        assert [shown(g) for g in data["top"][by]] == [sums(groups[g]) for g in ranked], by


def test_budgets_show_this_periods_spend_and_alerts_stay_in_the_window(gw: ServerThread, up: FakeUpstream) -> None:
    fill_ledger(gw, up)
    data = data_json(gw)
    rows = ledger_rows(gw)
    scope_column = {"tenant": "tenant", "feature": "feature"}
    assert len(data["budgets"]) == 3
    for budget in data["budgets"]:
        start, resets = window(budget["period"], datetime.fromtimestamp(data["generated_at"], UTC))
        spent = sum(
            r["cost_nusd"] or 0
            for r in rows
            if r[scope_column[budget["scope"]]] == budget["scope_id"] and r["started_at"] >= start.timestamp()
        )
        assert Decimal(budget["spent_usd"]) * NANO == spent, budget
        assert budget["used_pct"] == int(Decimal(spent) / NANO * 100 // Decimal(budget["limit_usd"]))
        assert budget["resets_at"] == (None if resets is None else resets.timestamp())
    assert [b["used_pct"] for b in data["budgets"]] == sorted((b["used_pct"] for b in data["budgets"]), reverse=True)
    default = next(b for b in data["budgets"] if b["scope_id"] == "default")
    assert (default["state"], default["used_pct"], default["spent_usd"]) == ("exhausted", 120, "0.0012")
    a = tables.alerts.c
    with gw.runtime.ledger.engine.connect() as conn:
        query = select(a.kind, a.message).where(a.created_at >= data["since"]).order_by(a.created_at.desc())
        stored = [tuple(row) for row in conn.execute(query)]
    assert [(alert["kind"], alert["message"]) for alert in data["alerts"]] == stored  # newest first
    assert {"anomaly", "budget"} <= {kind for kind, _ in stored}
    assert all("last week" not in alert["message"] for alert in data["alerts"])


def test_since_picks_daily_buckets_and_refuses_nonsense(gw: ServerThread, up: FakeUpstream) -> None:
    fill_ledger(gw, up)
    week = data_json(gw, since="7d")
    assert week["bucket_s"] == 86400 and len(week["series"]) == 7
    assert shown(week["totals"]) == sums(ledger_rows(gw))
    assert sum(b["requests"] for b in week["series"]) == len(ledger_rows(gw))
    for bad in ("yesterday", "0h", "2999-01-01"):
        response = httpx.get(gw.base_url + "/dashboard/data.json", params={"since": bad})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "since"


@pytest.mark.parametrize(
    ("since", "bucket_s", "buckets"),
    [(None, 3600, 24), ("24h", 3600, 24), ("36h", 3600, 36), ("2d", 3600, 48), ("3d", 86400, 3), ("30d", 86400, 30)],
)
def test_windows_end_with_the_current_bucket(since: str | None, bucket_s: int, buckets: int) -> None:
    now = 1_750_000_000.5
    found = parse_window(since, now)
    assert (found.bucket_s, len(found.buckets)) == (bucket_s, buckets)
    assert found.until - bucket_s <= now < found.until and found.since % bucket_s == 0


def test_a_date_window_starts_at_utc_midnight() -> None:
    now = datetime(2025, 3, 10, 15, 30, tzinfo=UTC).timestamp()
    assert parse_window("2025-03-01", now) == Window(datetime(2025, 3, 1, tzinfo=UTC).timestamp(), now + 30600, 86400)
    assert parse_window("2025-03-09", now).bucket_s == 3600


def bucket_edges(url: str, journal: Path) -> None:
    hour = 1_750_000_000 // 3600 * 3600
    ledger = SqlLedger(url, journal, 10)
    ledger.start()
    try:
        for n, (at, nusd) in enumerate([(hour - 0.001, 1), (hour, 10), (hour + 3599.999, 100), (hour + 3600, 1000)]):
            ledger.record(entry(n, at, Decimal(nusd) / NANO, Principal(), "m", {}))
        assert ledger.flush()
        series = spend_series(ledger.engine, Window(hour - 3600, hour + 7200, 3600))
    finally:
        ledger.close()
    assert [(start - hour, spend.cost_nusd) for start, spend in series] == [(-3600, 1), (0, 110), (3600, 1000)]


def test_buckets_split_exactly_at_the_hour_on_sqlite(tmp_path: Path) -> None:
    bucket_edges(f"sqlite:///{tmp_path / 'edges.sqlite'}", tmp_path / "journal")


@pytest.mark.postgres
def test_buckets_split_exactly_at_the_hour_on_postgres(pg_url: str, tmp_path: Path) -> None:
    bucket_edges(pg_url, tmp_path / "journal")


def pixels(png: Png, box: dict[str, float], step: int = 2) -> list[tuple[int, ...]]:
    xs = range(int(box["x"]), int(box["x"] + box["width"]), step)
    return [png.pixel(x, y) for y in range(int(box["y"]), int(box["y"] + box["height"]), step) for x in xs]


def box_of(browser: Browser, selector: str) -> dict[str, float]:
    found: dict[str, float] = browser.evaluate(f"document.querySelector({selector!r}).getBoundingClientRect().toJSON()")
    return found


def test_the_page_draws_the_ledger_in_chromium(
    chromium: str, gw: ServerThread, up: FakeUpstream, tmp_path: Path
) -> None:
    fill_ledger(gw, up)
    data = data_json(gw)
    with Browser(1280, 1600) as browser:
        browser.open(gw.base_url + "/dashboard")
        browser.wait_for("document.body.dataset.state === 'ready'")
        shot = browser.screenshot()
        html = browser.dom()
        chart, unpriced = box_of(browser, "#chart-spend svg"), box_of(browser, "#kpi-unpriced-card")
        assert browser.exceptions() == []
        assert {url.split("/dashboard")[0] for url in browser.requested_urls()} == {gw.base_url}  # nothing else
    (tmp_path / "dashboard.png").write_bytes(shot)
    totals = data["totals"]
    for element, text in [
        ("kpi-spend", usd_text(Decimal(totals["cost_usd"]))),
        ("kpi-baseline", usd_text(Decimal(totals["baseline_cost_usd"]))),
        ("kpi-saved", usd_text(Decimal(totals["savings_usd"]))),
        ("kpi-requests", str(totals["requests"])),
        ("kpi-unpriced", "1"),
    ]:
        assert f'id="{element}">{text}<' in html, (element, text)
    for name in ("summarize", "initech", "claude-3-5-haiku-latest", "sess-4", "Compression", "14x its usual rate"):
        assert name in html, name
    assert ">120% used · exhausted<" in html and "an alert from last week" not in html
    assert "1 unpriced, not in spend</title>" in html, "the chart's tooltip hides the unpriced request"

    png = read_png(shot)
    assert (png.width, png.height) == (1280, 1600)
    page = pixels(png, {"x": 0, "y": 0, "width": 1280, "height": 1600}, step=4)
    assert len(set(page)) > 200, "the page is flat: no text or charts were drawn"
    in_chart = pixels(png, chart)
    assert sum(p == SPEND_BLUE for p in in_chart) > 500, "no spend bars in the chart"
    assert sum(p == BASELINE_GREY for p in in_chart) > 200, "no baseline bars in the chart"
    assert sum(p == ALARM_PINK for p in pixels(png, unpriced)) > 1000, "unpriced requests are not flagged"


def test_the_data_needs_an_admin_key_once_keys_exist(gw: ServerThread) -> None:
    engine = gw.runtime.ledger.engine
    admin_record, admin = create_key(engine, "ops", admin=True)
    _, plain_key = create_key(engine, "acme")
    gw.runtime.keys.refresh()
    url = gw.base_url + "/dashboard/data.json"

    page = httpx.get(gw.base_url + "/dashboard")  # the page is a static shell; the numbers are behind the key
    assert page.status_code == 200 and "Admin API key" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, params={"key": admin}).status_code == 401  # keys never travel in URLs
    assert httpx.get(url, headers={"authorization": f"Bearer {plain_key}"}).status_code == 403
    assert httpx.get(url, headers={"authorization": f"Bearer {admin}"}).status_code == 200

    with httpx.Client(base_url=gw.base_url) as browser:
        refused = browser.post("/dashboard", json={"key": plain_key})
        assert refused.status_code == 403 and "set-cookie" not in refused.headers
        assert browser.post("/dashboard", json={"key": "sk-thr-nope"}).status_code == 401
        cross_site = browser.post("/dashboard", json={"key": admin}, headers={"origin": "https://evil.example"})
        assert cross_site.status_code == 403 and "set-cookie" not in cross_site.headers
        signed_in = browser.post("/dashboard", json={"key": admin}, headers={"origin": gw.base_url})
        assert signed_in.status_code == 200
        cookie = signed_in.headers["set-cookie"]
        for attribute in ("HttpOnly", "SameSite=Strict", "Path=/dashboard", "Max-Age=43200"):
            assert attribute in cookie
        assert browser.get("/dashboard/data.json").json()["viewer"]["key_id"] == admin_record.key_id
        revoke_key(engine, admin_record.key_id)
        gw.runtime.keys.refresh()
        assert browser.get("/dashboard/data.json").status_code == 401  # revoking the key signs browsers out
        signed_out = browser.post("/dashboard", json={"sign_out": True})
        assert "Max-Age=0" in signed_out.headers["set-cookie"]


def test_a_browser_signs_in_with_a_cookie_it_cannot_read(chromium: str, gw: ServerThread, up: FakeUpstream) -> None:
    fill_ledger(gw, up)
    _, admin = create_key(gw.runtime.ledger.engine, "ops", admin=True)
    _, plain_key = create_key(gw.runtime.ledger.engine, "acme")
    gw.runtime.keys.refresh()
    submit = "document.getElementById('signin-key').value = {!r}; document.forms[0].requestSubmit()"
    with Browser(1280, 900) as browser:
        browser.open(gw.base_url + "/dashboard")
        browser.wait_for("document.body.dataset.state === 'signin'")
        browser.evaluate(submit.format(plain_key))
        browser.wait_for("document.getElementById('signin-error').textContent.includes('admin key')")
        browser.evaluate(submit.format(admin))
        browser.wait_for("document.body.dataset.state === 'ready'")
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: page scripts never see the key
        assert browser.evaluate("document.getElementById('kpi-unpriced').textContent") == "1"
        assert all(admin not in url for url in browser.requested_urls())
        browser.evaluate("document.getElementById('sign-out').click()")
        browser.wait_for("document.body.dataset.state === 'signin'")


def test_the_page_downloads_nothing() -> None:
    html = (REPO / "src/thrifty/server/dashboard.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!\?|data:|#)""", html), "the page loads a resource"
    assert "@import" not in html and "url(" not in html
    assert set(re.findall(r"https?://[^\s\"'<>]+", html)) == {"http://www.w3.org/2000/svg"}  # a namespace name


def test_grafana_dashboard_reads_only_metrics_the_gateway_exposes() -> None:
    dashboard = json.loads((REPO / "dashboards/grafana-thrifty.json").read_text())
    metrics = GatewayMetrics()
    metrics.observe(next(history(time.time())))
    text = metrics.render().decode()
    exposed = set()
    for name, kind in re.findall(r"^# TYPE (thrifty_\w+) (\w+)$", text, re.M):
        exposed |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    labels: dict[str, set[str]] = {}
    for name, pairs in re.findall(r"^(thrifty_\w+)\{(.*)\} ", text, re.M):
        labels.setdefault(name, set()).update(re.findall(r'(\w+)="', pairs))
    panels = dashboard["panels"]
    expressions = [target["expr"] for panel in panels for target in panel["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\bthrifty_\w+", expr)}
    assert used and used <= exposed, used - exposed
    for expr in expressions:
        for name, selector in re.findall(r"\b(thrifty_\w+)\{([^}]*)\}", expr):
            wanted = set(re.findall(r"(\w+)\s*[=!]~?", selector))
            assert name not in labels or wanted <= labels[name], (expr, wanted - labels[name])
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in panels)
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert names == {"datasource", "tenant", "feature", "provider", "model"}


def rate_buckets(url: str, journal: Path) -> None:
    from thrifty.ledger.dashboard_queries import rate_history

    minute = 1_750_000_000 // 60 * 60
    ledger = SqlLedger(url, journal, 10)
    ledger.start()
    try:
        who = Principal("acme", "", "", "search", "")
        for n, at in enumerate([minute + 1, minute + 59.9, minute + 60]):
            ledger.record(replace(entry(n, at, Decimal(n + 1) / NANO, who, "m", {}), cache=""))
        hit = replace(entry(9, minute + 2, Decimal(0), who, "m", {}), request_id="hist-hit", cache="exact")
        ledger.record(hit)
        assert ledger.flush()
        found = sorted(rate_history(ledger.engine, minute - 60, 60))
    finally:
        ledger.close()
    b = minute // 60
    assert found == [
        ("feature", "search", b, 3, 1900),  # 1 + 2 nano-dollars; the hit's 950 tokens are not counted again
        ("feature", "search", b + 1, 3, 950),
        ("tenant", "acme", b, 3, 1900),
        ("tenant", "acme", b + 1, 3, 950),
    ]


def test_rate_history_for_the_anomaly_detector_on_sqlite(tmp_path: Path) -> None:
    rate_buckets(f"sqlite:///{tmp_path / 'rates.sqlite'}", tmp_path / "journal")


@pytest.mark.postgres
def test_rate_history_for_the_anomaly_detector_on_postgres(pg_url: str, tmp_path: Path) -> None:
    rate_buckets(pg_url, tmp_path / "journal")
