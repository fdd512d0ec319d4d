"""The only place where config names become objects (the cache stage's in ``cache_assembly``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlparse

from thrifty.cache_assembly import build_cache
from thrifty.errors import ConfigError
from thrifty.guards.budget_book import BudgetBook
from thrifty.guards.budgets import Budget, OnSpent, SpendSince
from thrifty.guards.estimate import CostEstimator
from thrifty.guards.stores import GuardStore
from thrifty.keys import KeyAuthenticator
from thrifty.ledger.migrations import migrate
from thrifty.ledger.writer import SqlLedger
from thrifty.observe.alerts import AlertSink
from thrifty.observe.anomaly import AnomalyDetector, AnomalySettings, seed_from_ledger
from thrifty.observe.metrics import GatewayMetrics
from thrifty.optimizers.none import NoOptimizer
from thrifty.pipeline import Gateway
from thrifty.pricing import CatalogPricer, ModelPrice
from thrifty.protocols import Guard, Optimizer, Provider, Router
from thrifty.providers.http import Timeouts
from thrifty.routers.baselines import baselines, pick
from thrifty.routers.cooldown import Cooldowns
from thrifty.routers.latency import LatencyAwareRouter, LatencyTracker
from thrifty.routers.pool import ALL_CAPABILITIES, EligibleRouter, ModelInfo
from thrifty.routers.static import StaticRouter
from thrifty.settings import CapsSettings, CascadeSettings, OptimizeSettings, ProviderSettings, Settings
from thrifty.tokens import TiktokenCounter
from thrifty.types import Caller, ChatRequest, ChatResponse, LedgerEntry, Principal, Target

log = logging.getLogger("thrifty")


@dataclass
class Runtime:
    """A gateway and the resources behind it, started and stopped together."""

    settings: Settings
    gateway: Gateway
    ledger: SqlLedger
    keys: KeyAuthenticator
    estimator: CostEstimator
    budgets: BudgetBook | None = None
    guard_store: GuardStore | None = None
    alerts: AlertSink | None = None
    anomalies: AnomalyDetector | None = None

    def start(self) -> None:
        try:
            migrate(self.ledger.engine)
        except Exception as exc:
            log.warning("ledger database not ready at start-up: %s", exc)
        else:  # only a database that answered is asked for the past (one that is down would delay the start)
            if self.anomalies is not None:
                seed_from_ledger(self.anomalies, self.ledger.engine)
        self.ledger.start()
        self.keys.start()
        if self.budgets is not None:
            self.budgets.start()

    def ready(self) -> bool:
        """``/readyz``: the ledger database answers, and so does the guards' Redis, without which budgeted and
        rate-limited requests are refused (a blocking check, made off the event loop)."""
        ping = getattr(self.guard_store, "ping", None)
        return self.ledger.ping() and (ping is None or bool(ping()))

    def bind_embedder(self, loop: Any) -> None:
        """A remote embedder calls through this gateway, on its event loop."""
        semantic = getattr(self.gateway.cache, "semantic", None)
        embedder = getattr(getattr(semantic, "embedder", None), "inner", None)
        if embedder is not None and hasattr(embedder, "bind"):
            embedder.bind(self.gateway, loop)

    async def aclose(self) -> None:
        if self.gateway.verifier is not None:
            await self.gateway.verifier.drain()
        for provider in self.gateway.providers.values():
            await provider.aclose()
        summarizer = getattr(self.gateway.optimizer, "summarizer", None)
        for resource in (self.gateway.cache, self.guard_store, summarizer):
            close = getattr(resource, "aclose", None)
            if close is not None:
                await close()
        if self.budgets is not None:
            self.budgets.close()
        self.keys.close()
        self.ledger.close()


def _caught_up(ledger: SqlLedger, spend_since: SpendSince) -> SpendSince:
    """A period's spend once the rows recorded so far are in the database: a count taken while some were still
    queued (a seed after Redis lost the count) would leave them out for good."""

    def read(budget: Budget, since: float) -> Decimal:
        if not ledger.caught_up():
            raise TimeoutError("the ledger is behind: rows recorded are not in the database yet")
        return spend_since(budget, since)

    return read


def build_runtime(settings: Settings) -> Runtime:
    ledger = SqlLedger(
        settings.ledger_url(),
        settings.journal_dir(),
        settings.ledger.flush_interval_ms,
        capture_payloads=settings.ledger.capture_payloads,
    )
    keys = KeyAuthenticator(ledger.engine)
    counter = TiktokenCounter()
    aliases = {alias: settings.alias_targets(alias) for alias in settings.models}
    pricer = build_pricer(settings)
    estimator = CostEstimator(
        pricer,
        counter,
        aliases,
        settings.reserved_output_tokens(),
        settings.cascade_aliases(),
        settings.sampled_aliases(),
    )
    sink = AlertSink(ledger.engine, settings.alerts.webhooks, settings.alerts.slack_webhooks, settings.alerts.dedupe_s)
    metrics = GatewayMetrics()
    latency = LatencyTracker(configured_latency(settings))
    guard, budgets, store = build_guard(settings, ledger, estimator, on_spent(sink, metrics))
    a = settings.alerts
    detector = AnomalyDetector(
        sink, AnomalySettings(a.fast_window_s, a.factor, a.min_usd_per_hour, a.min_tokens_per_hour)
    )
    watch = _structured_watch(settings, counter, pricer, metrics)
    gateway = Gateway(
        aliases=aliases,
        authenticator=keys,
        guard=guard,
        cache=build_cache(settings, aliases),
        optimizer=build_optimizer(settings, aliases, counter),
        router=build_router(settings, aliases, counter, latency),
        providers={name: build_provider(name, p, settings, counter) for name, p in settings.providers.items()},
        pricer=pricer,
        ledger=ledger,
        metrics=metrics,
        counter=counter,
        # The structured-output watch reads each answer from its entry; the ledger stores it only if asked to.
        capture_payloads=settings.ledger.capture_payloads or bool(watch),
        observers=[detector, latency, *_span_observer(settings), *watch],
        baselines=baselines(settings, aliases, pricer),
        cooldowns=Cooldowns(settings.server.cooldown_failures, settings.server.cooldown_s),
    )
    bind_summarizer(gateway)
    if settings.cache.verify_sample:
        from thrifty.caches.verify import SemanticVerifier

        gateway.verifier = SemanticVerifier(gateway, settings.cache.verify_sample)
    return Runtime(settings, gateway, ledger, keys, estimator, budgets, store, sink, detector)


def on_spent(sink: AlertSink, metrics: GatewayMetrics) -> OnSpent:
    """After each settlement: the budget's remaining gauge, and its 50/80/100% alerts."""
    from thrifty.guards.budgets import BudgetAlerts

    alerts = BudgetAlerts(sink)
    gauges: dict[str, Any] = {}

    def spent(budget: Budget, period_key: str, spent_nusd: int) -> None:
        alerts(budget, period_key, spent_nusd)
        gauge = gauges.get(budget.budget_id)
        if gauge is None:
            gauge = gauges[budget.budget_id] = metrics.budget_remaining.labels(budget.budget_id)
        gauge.set(float(budget.limit_usd) - spent_nusd / 1e9)

    return spent


def build_guard(
    settings: Settings, ledger: SqlLedger, estimator: CostEstimator, spent: OnSpent
) -> tuple[Guard, BudgetBook | None, GuardStore | None]:
    """Agent caps, rate limits and budgets as configured (budgets also from the database, so a budget set with
    the CLI applies without a restart); no guard at all costs nothing."""
    from thrifty.guards.budget_book import from_settings
    from thrifty.guards.budgets import BudgetGuard
    from thrifty.guards.chain import GuardChain
    from thrifty.guards.limits import AgentCaps, AgentGuard, RateLimit, RateLimiter
    from thrifty.guards.stores import MemoryGuardStore, RedisGuardStore

    config = settings.guards
    store: GuardStore = (
        RedisGuardStore(config.url or "redis://127.0.0.1:6379/0") if config.store == "redis" else MemoryGuardStore()
    )
    book = BudgetBook(ledger.engine, from_settings(settings.budgets))
    limits = [RateLimit(r.scope, r.id, r.rpm, r.tpm, r.usd_per_minute) for r in settings.rate_limits]
    caps = settings.agent_caps
    chain = GuardChain(
        estimator,
        store,
        budgets=BudgetGuard(book, store, estimator, _caught_up(ledger, book.spend_since), spent),
        limiter=RateLimiter(limits, store) if limits else None,
        agents=AgentGuard(AgentCaps(caps.max_calls, caps.max_tool_calls, caps.window_s, caps.loop_repeats))
        if caps
        else None,
    )
    return chain, book, store


def pool_info(settings: Settings) -> dict[Target, ModelInfo]:
    info = {}
    for model in settings.pool.values():
        capabilities = ALL_CAPABILITIES if model.capabilities is None else frozenset(model.capabilities)
        info[Target.parse(model.target)] = ModelInfo(model.tier, model.context_window, capabilities)
    return info


def build_optimizer(settings: Settings, aliases: dict[str, tuple[Target, ...]], counter: TiktokenCounter) -> Optimizer:
    from thrifty.optimizers.chain import OptimizePlan, OptimizerChain
    from thrifty.optimizers.summarize import (
        HistorySummarizer,
        MemorySummaryStore,
        RedisSummaryStore,
        SummarizePlan,
        SummaryStore,
    )

    def plan(o: OptimizeSettings) -> OptimizePlan:
        s, caps = o.summarize, o.caps or CapsSettings()
        return OptimizePlan(
            hygiene=o.hygiene,
            prune_budget_tokens=o.prune.budget_tokens if o.prune else None,
            compress_ratio=o.compress.ratio if o.compress else None,
            latest_turn_only=bool(o.prune and o.prune.latest_turn_only),
            compress_latest_turn_only=bool(o.compress and o.compress.latest_turn_only),
            default_max_tokens=caps.default_max_tokens,
            max_tokens_limit=caps.max_tokens,
            summarize=SummarizePlan(
                s.after_tokens, s.model, s.keep_last_messages, s.max_summary_tokens, s.max_fold_tokens
            )
            if s
            else None,
            stop=tuple(caps.stop),
        )

    config = settings.optimize
    if config == OptimizeSettings():
        return NoOptimizer()
    plans = [config.summarize, *(f.summarize for f in [*config.features.values(), *config.models.values()])]
    chosen = next((p for p in plans if p is not None), None)
    store: SummaryStore | None = None
    if chosen is not None and chosen.store == "redis":
        store = RedisSummaryStore(chosen.url or "redis://127.0.0.1:6379/0", chosen.ttl_s)
    elif chosen is not None:
        store = MemorySummaryStore(ttl_s=chosen.ttl_s)
    return OptimizerChain(
        plan(config),
        {name: plan(f) for name, f in config.features.items()},
        aliases,
        counter,
        HistorySummarizer(counter, store),
        {alias: plan(m) for alias, m in config.models.items()},
    )


def bind_summarizer(gateway: Gateway) -> None:
    """History summaries are written by a model called through this same gateway, as the request's principal."""
    summarizer = getattr(gateway.optimizer, "summarizer", None)
    if summarizer is None:
        return

    async def complete(request: ChatRequest, principal: Principal) -> ChatResponse:
        response, _ = await gateway.handle(request, Caller(), principal)
        return response

    summarizer.bind(complete)


def configured_latency(settings: Settings) -> dict[Target, float]:
    return {Target.parse(m.target): m.latency_ms for m in settings.pool.values() if m.latency_ms is not None}


def build_router(
    settings: Settings,
    aliases: dict[str, tuple[Target, ...]],
    counter: TiktokenCounter,
    latency: LatencyTracker | None = None,
) -> Router:
    from thrifty.routers.by_alias import AliasRouter
    from thrifty.routers.cascade import CascadeRouter, Checks, load_custom_check
    from thrifty.routers.static import Rule, RulesRouter

    info = pool_info(settings)
    latency = latency or LatencyTracker(configured_latency(settings))
    routers: dict[str, Router] = {}
    for alias, model in settings.models.items():
        targets = aliases[alias]
        if model.router == "rules":
            rules = [
                Rule(
                    pick(settings, r.use),
                    r.feature,
                    r.tenant,
                    tuple(r.keywords),
                    r.max_input_tokens,
                    r.min_input_tokens,
                    tuple(r.task),
                )
                for r in model.rules
            ]
            default = pick(settings, model.default) if model.default else targets[-1]
            routers[alias] = RulesRouter(targets, rules, default, counter)
        elif model.router == "cascade":
            c = model.cascade or CascadeSettings()
            custom = tuple(load_custom_check(path) for path in c.custom)
            checks = Checks(
                tuple(c.checks), c.min_length, c.regex, c.samples, c.min_agreement, c.min_confidence, custom
            )
            routers[alias] = CascadeRouter(targets, checks)
        elif model.router == "learned":
            from thrifty.routers.learned_stage import LearnedRouter

            if not model.router_dir:
                raise ConfigError(f"models.{alias}: router = 'learned' needs router_dir (from `thrifty router train`)")
            try:
                routers[alias] = LearnedRouter.from_dir(
                    settings.path(model.router_dir), targets, model.threshold, latency, model.latency_weight
                )
            except ValueError as exc:
                raise ConfigError(f"models.{alias}: {exc}") from exc
        else:
            routers[alias] = StaticRouter({alias: targets}, info, counter, tiers=bool(model.pool))
        if model.router != "static":  # the static router leaves out unfit targets itself
            routers[alias] = EligibleRouter(routers[alias], info, counter)
        if model.max_latency_ms is not None:
            routers[alias] = LatencyAwareRouter(routers[alias], latency, model.max_latency_ms)
    return AliasRouter(routers)


def _structured_watch(
    settings: Settings, counter: TiktokenCounter, pricer: CatalogPricer, metrics: GatewayMetrics
) -> list[Callable[[LedgerEntry], None]]:
    from thrifty.optimizers.structured import StructuredRule, StructuredWatch
    from thrifty.settings import StructuredSettings

    def rule(s: StructuredSettings | None) -> StructuredRule | None:
        if s is None:
            return None
        return StructuredRule(None if s.read_fields is None else tuple(s.read_fields), s.max_name_tokens)

    o = settings.optimize
    features = {name: rule(f.structured) for name, f in o.features.items()}
    models = {alias: rule(m.structured) for alias, m in o.models.items()}
    if o.structured is None and not any(features.values()) and not any(models.values()):
        return []
    return [StructuredWatch(rule(o.structured), features, counter, pricer, metrics, models)]


def _span_observer(settings: Settings) -> list[Callable[[LedgerEntry], None]]:
    if not settings.otel:
        return []
    from thrifty.observe.otel import SpanObserver

    return [SpanObserver()]


def build_pricer(settings: Settings) -> CatalogPricer:
    overrides = {
        model: ModelPrice(
            p.usd_per_mtok_input,
            p.usd_per_mtok_output,
            p.usd_per_mtok_cache_read,
            p.usd_per_mtok_cache_write,
            p.usd_per_mtok_cache_write_1h,
        )
        for model, p in settings.prices.items()
    }
    return CatalogPricer(overrides, {name: catalog_providers(p) for name, p in settings.providers.items()})


def catalog_providers(provider: ProviderSettings) -> tuple[str | None, ...]:
    """Where to look a provider's models up in the catalog: as configured, else by host, then by name alone,
    then as the vendor whose API it speaks (a gateway or proxy in front of OpenAI serves OpenAI's models)."""
    if provider.catalog_provider is not None:
        return (provider.catalog_provider,)
    host = urlparse(provider.base_url).hostname or ""
    vendor = "anthropic" if provider.kind == "anthropic" else "openai"
    if host.endswith(("openai.com", "anthropic.com")):
        return (vendor,)
    return (None, vendor)


def build_provider(name: str, provider: ProviderSettings, settings: Settings, counter: TiktokenCounter) -> Provider:
    server = settings.server
    timeouts = Timeouts(
        total_s=provider.timeout_s or server.upstream_timeout_s,
        connect_s=server.connect_timeout_s,
        first_byte_s=server.first_byte_timeout_s,
    )
    if provider.kind == "replay":
        from thrifty.providers.replay import ReplayProvider
        from thrifty.workload import demo_workload_path

        workload = settings.path(provider.workload) if provider.workload else demo_workload_path()
        return ReplayProvider(name, workload, counter)
    api_key = _secret(name, provider)
    if provider.kind == "anthropic":
        from thrifty.providers.anthropic import AnthropicProvider

        caching = True if provider.prompt_caching is None else provider.prompt_caching
        return AnthropicProvider(name, provider.base_url, api_key, timeouts, counter if caching else None)
    from thrifty.providers.openai import OpenAIProvider

    official = (urlparse(provider.base_url).hostname or "").endswith("openai.com")
    caching = official if provider.prompt_caching is None else provider.prompt_caching
    return OpenAIProvider(name, provider.base_url, api_key, timeouts, prompt_cache_key=caching)


def _secret(name: str, provider: ProviderSettings) -> str:
    if not provider.api_key_env:
        return ""
    value = os.environ.get(provider.api_key_env)
    if value is None:
        raise ConfigError(
            f"providers.{name}.api_key_env names {provider.api_key_env!r}, which is not set in the environment"
        )
    return value
