"""Replaying a workload through a real gateway: the demo and ``thrifty simulate``.

The gateway runs on loopback with a fresh SQLite ledger; the official ``openai`` SDK sends each record as its
application did (tenant by API key, user / feature / session by header). Costs come from the ledger the run
wrote; quality comes from the workload's labels of whichever model answered.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from thrifty.keys import create_key
from thrifty.ledger import queries
from thrifty.providers.replay import no_answer
from thrifty.server.run import ServerThread
from thrifty.settings import OptimizeSettings, Settings
from thrifty.workload import WorkloadRecord


@dataclass
class Outcome:
    record: WorkloadRecord
    model: str
    cost_usd: Decimal | None
    error: str = ""
    text: str = ""
    cache: str = ""

    def served_quality(self) -> float | None:
        """The label of the answer served; 0 when the cache served another question's answer."""
        answer = self.record.answers.get(self.model)
        if answer is None or answer.quality is None:
            return None
        expected = answer.text if answer.text is not None else no_answer(self.record.group)
        return answer.quality if self.text == expected else 0.0

    def stand_in(self) -> bool:
        """Served the replay provider's placeholder: the workload has no answer of this model to this prompt."""
        answer = self.record.answers.get(self.model)
        return (answer is None or answer.text is None) and self.text == no_answer(self.record.group)

    def wrong_answer(self) -> bool:
        """A cached answer that belongs to another question (only a semantic hit can do this)."""
        answer = self.record.answers.get(self.model)
        expected = answer.text if answer is not None and answer.text is not None else no_answer(self.record.group)
        return bool(self.cache) and self.text != expected


@dataclass
class SimulationResult:
    ledger_url: str
    outcomes: list[Outcome] = field(default_factory=list)
    by_model: list[queries.ReportRow] = field(default_factory=list)
    by_feature: list[queries.ReportRow] = field(default_factory=list)
    savings: dict[str, Decimal] = field(default_factory=dict)

    def quality(self) -> dict[str, tuple[int, float, float]]:
        """Per feature: labelled answers, mean quality served, mean quality of the requested model."""
        served: dict[str, list[float]] = defaultdict(list)
        asked: dict[str, list[float]] = defaultdict(list)
        for outcome in self.outcomes:
            record = outcome.record
            got = outcome.served_quality()
            wanted = record.answers.get(str(record.request.get("model")))
            if got is None or wanted is None or wanted.quality is None:
                continue
            served[record.feature].append(got)
            asked[record.feature].append(wanted.quality)
        return {
            feature: (len(values), sum(values) / len(values), sum(asked[feature]) / len(values))
            for feature, values in served.items()
        }


def simulate(
    settings: Settings, records: list[WorkloadRecord], *, concurrency: int = 8, workdir: Path | None = None
) -> SimulationResult:
    folder = workdir or Path(tempfile.mkdtemp(prefix="thrifty-sim-"))
    settings = sandboxed(settings, folder)
    result = SimulationResult(settings.ledger_url())
    with ServerThread(settings) as server:
        engine = server.runtime.ledger.engine
        keys = {tenant: create_key(engine, tenant, "simulation")[1] for tenant in {r.tenant for r in records}}
        server.runtime.keys.refresh()
        result.outcomes = asyncio.run(_send_all(server.base_url, records, keys, concurrency))
        server.runtime.ledger.flush()
        result.by_model = queries.report(engine, "model")
        result.by_feature = queries.report(engine, "feature")
        result.savings = queries.savings_by_lever(engine)
    return result


def sandboxed(settings: Settings, folder: Path) -> Settings:
    """The policy under test with nothing shared with the gateway it may be copied from: a ledger of its own, and
    caches, guard counters and summaries in this process (a shared Redis or pgvector would let replayed answers
    reach real users, and replayed traffic spend real tenants' rate limits); no alerts leave, no spans."""
    ledger = settings.ledger.model_copy(
        update={"url": f"sqlite:///{folder / 'ledger.sqlite'}", "journal_dir": str(folder / "journal")}
    )
    cache = settings.cache.model_copy(update={"store": "memory", "url": "", "semantic_store": "memory"})
    guards = settings.guards.model_copy(update={"store": "memory", "url": ""})
    alerts = settings.alerts.model_copy(update={"webhooks": [], "slack_webhooks": []})

    def local(optimize: OptimizeSettings) -> OptimizeSettings:
        summarize = optimize.summarize
        if summarize is None:
            return optimize
        return optimize.model_copy(update={"summarize": summarize.model_copy(update={"store": "memory", "url": None})})

    o = settings.optimize
    optimize = local(o).model_copy(
        update={
            "features": {name: local(f) for name, f in o.features.items()},
            "models": {name: local(m) for name, m in o.models.items()},
        }
    )
    update = {"ledger": ledger, "cache": cache, "guards": guards, "alerts": alerts, "optimize": optimize, "otel": False}
    return settings.model_copy(update=update)


async def _send_all(
    base_url: str, records: list[WorkloadRecord], keys: dict[str, str], concurrency: int
) -> list[Outcome]:
    import openai

    clients = {
        tenant: openai.AsyncOpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0)
        for tenant, key in keys.items()
    }
    limit = asyncio.Semaphore(concurrency)

    async def send(record: WorkloadRecord) -> Outcome:
        async with limit:
            return await _send(clients[record.tenant], record)

    try:
        return list(await asyncio.gather(*(send(record) for record in records)))
    finally:
        for client in clients.values():
            await client.close()


async def _send(client: object, record: WorkloadRecord) -> Outcome:
    import openai

    assert isinstance(client, openai.AsyncOpenAI)
    headers = {
        "x-thrifty-user": record.user,
        "x-thrifty-feature": record.feature,
        "x-thrifty-session": record.session,
    }
    try:
        raw = await client.chat.completions.with_raw_response.create(**record.request, extra_headers=headers)
    except openai.APIError as exc:
        return Outcome(record, "", None, error=str(exc))
    cost = raw.headers.get("x-thrifty-cost-usd", "unpriced")
    completion = raw.parse()
    return Outcome(
        record,
        raw.headers.get("x-thrifty-model", ""),
        None if cost == "unpriced" else Decimal(cost),
        text=completion.choices[0].message.content or "",
        cache="" if raw.headers.get("x-thrifty-cache", "miss") == "miss" else raw.headers["x-thrifty-cache"],
    )
