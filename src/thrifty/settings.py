"""The config file, validated once at start-up.

One TOML file (``--config FILE``, else ``$THRIFTY_CONFIG``, else ``./thrifty.toml``). Unknown keys are refused
with their name; secrets are never in the file, only the names of the environment variables that hold them.
Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from thrifty.errors import ConfigError
from thrifty.types import Target

DEFAULT_CONFIG = "thrifty.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8787
    max_body_bytes: Annotated[int, Field(gt=0)] = 8 * 1024 * 1024
    upstream_timeout_s: Annotated[float, Field(gt=0)] = 600.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    first_byte_timeout_s: Annotated[float, Field(gt=0)] = 120.0
    cooldown_failures: Annotated[int, Field(gt=0)] = 3
    """Retryable failures in a row after which a target is tried last (a dead provider stops costing every request
    a timeout) ..."""
    cooldown_s: Annotated[float, Field(gt=0)] = 30.0
    """... for this long; one success ends it."""
    public_metrics: bool = False
    """``GET /metrics`` without a key once keys exist (it shows spend per tenant and feature); default: an admin
    key (``Authorization: Bearer``, which Prometheus sends with ``authorization: {credentials: ...}``)."""


class LedgerSettings(_Strict):
    url: str = "sqlite:///thrifty.sqlite"
    journal_dir: str = ""
    """Where rows wait until the database has them; default: ``<config folder>/.thrifty-journal``."""
    flush_interval_ms: Annotated[int, Field(gt=0)] = 50
    capture_payloads: bool = False
    """Keep each prompt and answer beside its row, so traffic can be exported as a workload. Off: prompts
    are the users' data."""


class ProviderSettings(_Strict):
    kind: Literal["openai", "anthropic", "replay"]
    base_url: str = ""
    api_key_env: str = ""
    workload: str = ""
    """Replay providers: the recorded workload file (default: the bundled demo workload)."""
    catalog_provider: str | None = None
    """The genai-prices provider id for pricing; default from ``kind`` and ``base_url``."""
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    prompt_caching: bool | None = None
    """Anthropic: mark the stable prefix with ``cache_control``; OpenAI: send ``prompt_cache_key``. Default: on
    for Anthropic, and for OpenAI only at api.openai.com (other servers may refuse the unknown field)."""

    @model_validator(mode="after")
    def _needs_url(self) -> ProviderSettings:
        if self.kind == "openai" and not self.base_url:
            return self.model_copy(update={"base_url": "https://api.openai.com/v1"})
        if self.kind == "anthropic" and not self.base_url:
            return self.model_copy(update={"base_url": "https://api.anthropic.com"})
        return self


Capability = Literal["tools", "vision", "json"]


class PoolModelSettings(_Strict):
    """One model of the routing pool (``[pool.NAME]``): what it costs is in the catalog, what it can do here."""

    target: str
    tier: int = 1
    """Higher is stronger (and dearer); cascades and fallbacks climb tiers."""
    context_window: Annotated[int, Field(gt=0)] | None = None
    capabilities: list[Capability] | None = None
    """None: assume it can do everything a request asks."""
    latency_ms: Annotated[float, Field(gt=0)] | None = None
    """Expected upstream latency until the gateway has measured it (then an EWMA of what it observed)."""

    @field_validator("target")
    @classmethod
    def _target_parses(cls, target: str) -> str:
        Target.parse(target)
        return target


class RuleSettings(_Strict):
    """Rules router: the first rule whose every condition holds picks ``use`` (a pool name or a target)."""

    use: str
    feature: str | None = None
    tenant: str | None = None
    keywords: list[str] = []
    max_input_tokens: Annotated[int, Field(gt=0)] | None = None
    min_input_tokens: Annotated[int, Field(ge=0)] | None = None
    task: list[Literal["translate", "summarize", "classify", "extract", "code", "math", "chat"]] = []
    """The task the last user turn asks for (``routers.tasks``: a heuristic); any of these."""


class CascadeSettings(_Strict):
    """Checks a cheap answer must pass before it is served; a failure escalates to the next tier."""

    checks: list[
        Literal["refusal", "nonempty", "json", "final_number", "arithmetic", "self_consistency", "logprob"]
    ] = ["refusal", "nonempty"]
    min_length: Annotated[int, Field(gt=0)] | None = None
    regex: str | None = None
    samples: Annotated[int, Field(ge=2, le=8)] = 3
    """``self_consistency``: choices asked of a cheap tier that can give several (OpenAI's ``n``)."""
    min_agreement: Annotated[float, Field(gt=0, le=1)] = 0.6
    """``self_consistency``: the share of samples that must agree (on the final number, else the whole text)."""
    min_confidence: Annotated[float, Field(gt=0, lt=1)] = 0.8
    """``logprob``: the least geometric-mean token probability of a cheap answer (where the provider gives them)."""
    custom: list[str] = []
    """Your own checks, ``"package.module:function"``: ``function(answer: thrifty.routers.checks.Answer) -> bool``."""

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, regex: str | None) -> str | None:
        """A pattern that does not compile would switch the check off at every request: refused at start-up."""
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as exc:
                raise ValueError(f"the regex {regex!r} does not compile: {exc}") from exc
        return regex


class ModelSettings(_Strict):
    targets: list[str] = []
    pool: list[str] = []
    """Pool names, instead of ``targets``: tried cheapest tier first, never where a capability is missing."""
    router: Literal["static", "rules", "learned", "cascade"] = "static"
    baseline: str | None = None
    """The model savings are measured against; default: the first target of a static list, a pool's strongest, a
    cascade's last tier, the dearest target of a rules or learned router."""
    rules: list[RuleSettings] = []
    default: str | None = None
    cascade: CascadeSettings | None = None
    router_dir: str = ""
    """Learned router: the folder ``thrifty router train`` wrote."""
    threshold: float | None = None
    """Learned router: the operating point (``thrifty router calibrate`` prints it)."""
    max_latency_ms: Annotated[float, Field(gt=0)] | None = None
    """Any router: targets expected to take longer (observed EWMA, else the pool's ``latency_ms``) are tried
    only after the others."""
    latency_weight: Annotated[float, Field(ge=0)] = 0.0
    """Learned router: predicted quality (0..1) given up per second of expected latency."""

    @field_validator("targets")
    @classmethod
    def _targets_parse(cls, targets: list[str]) -> list[str]:
        for text in targets:
            Target.parse(text)
        return targets

    @model_validator(mode="after")
    def _has_targets(self) -> ModelSettings:
        if bool(self.targets) == bool(self.pool):
            raise ValueError("give either 'targets' or 'pool' (not both, not neither)")
        return self


class PriceSettings(_Strict):
    usd_per_mtok_input: Annotated[Decimal, Field(ge=0)]
    usd_per_mtok_output: Annotated[Decimal, Field(ge=0)]
    usd_per_mtok_cache_read: Annotated[Decimal, Field(ge=0)] | None = None
    usd_per_mtok_cache_write: Annotated[Decimal, Field(ge=0)] | None = None
    usd_per_mtok_cache_write_1h: Annotated[Decimal, Field(ge=0)] | None = None


class CacheRule(_Strict):
    """Per alias (``[cache.models.ALIAS]``) or per feature (``[cache.features.NAME]``); unset keys inherit."""

    exact: bool | None = None
    semantic: bool | None = None
    semantic_threshold: Annotated[float, Field(gt=0, le=1)] | None = None
    ttl_s: Annotated[float, Field(gt=0)] | None = None


class CacheSettings(_Strict):
    exact: bool = False
    semantic: bool = False
    semantic_threshold: Annotated[float, Field(gt=0, le=1)] = 0.8
    store: Literal["memory", "sqlite", "redis"] = "memory"
    """Where exact entries live: this process, a SQLite file (``url`` is its path), or Redis (``url``)."""
    url: str = ""
    ttl_s: Annotated[float, Field(gt=0)] = 86_400.0
    max_entries: Annotated[int, Field(gt=0)] = 100_000
    max_temperature: Annotated[float, Field(ge=0)] = 1.0
    """Requests sampled hotter than this are never cached (an unset temperature counts as OpenAI's 1.0)."""
    cache_tool_calls: bool = False
    embedder: Literal["minilm", "hashing", "remote"] = "minilm"
    """Semantic cache embeddings: all-MiniLM-L6-v2 on the CPU (the ``semantic`` extra), a light hashing embedder
    (numpy only; fewer paraphrases found), or ``remote``: the ``embedding_model`` alias through the gateway's own
    providers, its cost in the ledger."""
    embedding_model: str = ""
    embedding_dimensions: Annotated[int, Field(gt=0)] = 1536
    semantic_store: Literal["memory", "pgvector"] = "memory"
    """Where semantic vectors live: this process, or PostgreSQL with pgvector shared by replicas."""
    semantic_url: str = ""
    verify_sample: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Share of semantic hits also sent to the model in the background, to measure the false-hit rate."""
    pair_model: str = ""
    """A folder written by ``thrifty cache train`` (relative to this file): the semantic hit decision is then that
    model's, trained on your labelled pairs, behind the same guards. Empty: the bundled scorer."""
    models: dict[str, CacheRule] = {}
    features: dict[str, CacheRule] = {}


class GuardSettings(_Strict):
    store: Literal["memory", "redis"] = "memory"
    """Counters for budgets, rate limits and agent caps: this process, or Redis shared by replicas."""
    url: str = ""
    default_max_output_tokens: Annotated[int, Field(gt=0)] = 4096
    """The output a request without ``max_tokens`` may produce, for reservations and quotes."""


class BudgetSettings(_Strict):
    scope: Literal["tenant", "key", "user", "feature", "session"]
    id: Annotated[str, Field(min_length=1)]
    usd: Annotated[Decimal, Field(gt=0)]
    period: Literal["day", "week", "month", "total"] = "month"
    hard: bool = True
    clamp: bool = False
    """Lower ``max_tokens`` to what the budget can still pay for, instead of refusing."""


class RateLimitSettings(_Strict):
    scope: Literal["key", "tenant"]
    id: str = "*"
    rpm: Annotated[int, Field(gt=0)] | None = None
    tpm: Annotated[int, Field(gt=0)] | None = None
    usd_per_minute: Annotated[Decimal, Field(gt=0)] | None = None


class AgentCapSettings(_Strict):
    max_calls: Annotated[int, Field(gt=0)] | None = None
    max_tool_calls: Annotated[int, Field(gt=0)] | None = None
    window_s: Annotated[int, Field(gt=0)] = 3600
    loop_repeats: Annotated[int, Field(ge=2)] | None = None


class AlertSettings(_Strict):
    webhooks: list[str] = []
    """Generic receivers: each alert is POSTed as a JSON object."""
    slack_webhooks: list[str] = []
    """Slack-compatible incoming webhooks: ``{"text": ...}``."""
    dedupe_s: Annotated[float, Field(gt=0)] = 3600.0
    fast_window_s: Annotated[int, Field(ge=60)] = 300
    factor: Annotated[float, Field(gt=1)] = 5.0
    min_usd_per_hour: Annotated[float, Field(ge=0)] = 1.0
    min_tokens_per_hour: Annotated[float, Field(ge=0)] = 200_000.0


class SummarizeSettings(_Strict):
    """``[optimize.summarize]``: fold older turns into a running summary written by a cheap alias."""

    after_tokens: Annotated[int, Field(gt=0)]
    """Fold the older history (not the system prompt, the last turns or pinned turns) once it passes this."""
    model: str
    """The alias (in ``[models]``) of the cheap model that writes the summary, called through this gateway."""
    keep_last_messages: Annotated[int, Field(ge=1)] = 4
    max_summary_tokens: Annotated[int, Field(gt=0)] = 400
    max_fold_tokens: Annotated[int, Field(gt=0)] = 8000
    """At most this much history per summarizer call; a longer backlog is folded over several turns."""
    store: Literal["memory", "redis"] = "memory"
    """Where summaries live between turns: this process, or Redis shared by replicas."""
    url: str | None = None
    """Redis URL for ``store = "redis"`` (default ``redis://127.0.0.1:6379/0``)."""
    ttl_s: Annotated[float, Field(gt=0)] = 86_400.0


class StructuredSettings(_Strict):
    """``[optimize.structured]``: for JSON-schema answers, warn about fields the client never reads and long
    property names, and count the output tokens they cost (nothing in the request is changed)."""

    read_fields: list[str] | None = None
    """Dotted paths of the answer fields the client reads (``items.price``); None: no unused-field check."""
    max_name_tokens: Annotated[int, Field(gt=0)] = 3
    """Property names longer than this many tokens are reported as long."""


class PruneSettings(_Strict):
    """``[optimize.prune]``: keep the retrieved context most relevant to the latest question."""

    budget_tokens: Annotated[int, Field(gt=0)]
    """The prompt is cut to fit this many tokens (BM25 relevance, passages in their original order)."""
    latest_turn_only: bool = False
    """Rewrite only the latest turn's context, so the earlier prefix stays cacheable by the provider."""


class CompressSettings(_Strict):
    """``[optimize.compress]``: query-aware extractive compression of long context."""

    ratio: Annotated[float, Field(ge=1)]
    """The target: 3.0 keeps about a third of the compressible text."""
    latest_turn_only: bool = False


class CapsSettings(_Strict):
    """``[optimize.caps]``: output caps (see ``thrifty report --cutoffs`` to tune them from the ledger)."""

    max_tokens: Annotated[int, Field(gt=0)] | None = None
    """The ceiling: a larger ``max_tokens`` (or ``max_completion_tokens``) in a request is lowered to this."""
    default_max_tokens: Annotated[int, Field(gt=0)] | None = None
    """Set where the client sent no cap (at most ``max_tokens``)."""
    stop: list[str] = []
    """Stop sequences added where the client sent none (at most 4, OpenAI's limit)."""

    @model_validator(mode="after")
    def _four_stops(self) -> CapsSettings:
        if len(self.stop) > 4:
            raise ValueError("stop: at most 4 sequences")
        return self


class OptimizeSettings(_Strict):
    """``[optimize]``: every lever off unless set. ``[optimize.features.NAME]`` and ``[optimize.models.ALIAS]``
    replace the whole table for a feature or an alias (a feature's wins over an alias's)."""

    hygiene: bool = False
    """Collapse whitespace and drop instructions repeated verbatim (never the system prompt's own text)."""
    prune: PruneSettings | None = None
    compress: CompressSettings | None = None
    caps: CapsSettings | None = None
    summarize: SummarizeSettings | None = None
    structured: StructuredSettings | None = None
    features: dict[str, OptimizeSettings] = {}
    models: dict[str, OptimizeSettings] = {}


class Settings(_Strict):
    server: ServerSettings = ServerSettings()
    ledger: LedgerSettings = LedgerSettings()
    providers: dict[str, ProviderSettings] = {}
    models: dict[str, ModelSettings] = {}
    pool: dict[str, PoolModelSettings] = {}
    prices: dict[str, PriceSettings] = {}
    cache: CacheSettings = CacheSettings()
    guards: GuardSettings = GuardSettings()
    budgets: list[BudgetSettings] = []
    rate_limits: list[RateLimitSettings] = []
    agent_caps: AgentCapSettings | None = None
    alerts: AlertSettings = AlertSettings()
    optimize: OptimizeSettings = OptimizeSettings()
    otel: bool = False
    """Emit an OpenTelemetry span per request (GenAI semantic conventions; needs the ``otel`` extra)."""
    base_dir: Path = Path(".")
    """The config file's folder (set by ``load_settings``, not by the file)."""

    @model_validator(mode="after")
    def _targets_exist(self) -> Settings:
        for alias, model in self.models.items():
            for name in model.pool:
                if name not in self.pool:
                    raise ValueError(f"models.{alias}: pool model {name!r} is not in [pool]")
            targets = self.alias_targets(alias)
            for target in targets:
                if target.provider not in self.providers:
                    known = ", ".join(sorted(self.providers)) or "none"
                    raise ValueError(
                        f"models.{alias}: target {target} names provider {target.provider!r}, "
                        f"which is not configured (providers: {known})"
                    )
            if model.baseline and self._named_target(model.baseline) is None:
                raise ValueError(
                    f"models.{alias}.baseline: {model.baseline!r} is neither a pool name nor a 'provider::model'"
                )
            # A rule's choice must be one of the alias's targets: budgets, quotes and fallbacks know only those.
            named = [(f"rules[{i}].use", r.use) for i, r in enumerate(model.rules)]
            named += [("default", model.default)] if model.default else []
            for where, name in named:
                chosen = self._named_target(name)
                if chosen not in targets:
                    listed = ", ".join(str(t) for t in targets)
                    raise ValueError(
                        f"models.{alias}.{where}: {name!r} is not one of the alias's targets ({listed}); "
                        "list it in targets (or pool) as well"
                    )
        for alias in self.optimize.models:
            if alias not in self.models:
                raise ValueError(f"optimize.models.{alias}: not an alias in [models]")
        for alias in self.cache.models:  # a mistyped alias's TTL or switch would silently do nothing
            if alias not in self.models:
                raise ValueError(f"cache.models.{alias}: not an alias in [models]")
        for where, optimize in [
            ("optimize", self.optimize),
            *((f"optimize.features.{name}", f) for name, f in self.optimize.features.items()),
            *((f"optimize.models.{name}", f) for name, f in self.optimize.models.items()),
        ]:
            if optimize.summarize is not None and optimize.summarize.model not in self.models:
                raise ValueError(f"{where}.summarize.model: {optimize.summarize.model!r} is not an alias in [models]")
        return self

    def reserved_output_tokens(self) -> int:
        """What a guard reserves for the answer of a request that sets no cap: the guards' default, or the
        largest ``[optimize.caps] default_max_tokens`` if that is larger (the optimize stage runs after the guard
        and may set it), so a reservation never falls below what the call may be allowed to write."""
        o = self.optimize
        plans = [o, *o.features.values(), *o.models.values()]
        caps = [p.caps.default_max_tokens for p in plans if p.caps is not None and p.caps.default_max_tokens]
        return max([self.guards.default_max_output_tokens, *caps])

    def cascade_aliases(self) -> frozenset[str]:
        """Aliases that may call all their targets for one request (a worst case is then their sum)."""
        return frozenset(alias for alias, model in self.models.items() if model.router == "cascade")

    def sampled_aliases(self) -> dict[str, int]:
        """Cascades whose cheap tiers are asked for several choices (self-consistency): a worst case pays each
        target's output that many times over."""
        return {
            alias: model.cascade.samples
            for alias, model in self.models.items()
            if model.router == "cascade" and model.cascade is not None and "self_consistency" in model.cascade.checks
        }

    def _named_target(self, name: str) -> Target | None:
        """A pool name or a ``provider::model`` target; None if it is neither."""
        if name in self.pool:
            return Target.parse(self.pool[name].target)
        try:
            return Target.parse(name)
        except ValueError:
            return None

    def alias_targets(self, alias: str) -> tuple[Target, ...]:
        """The alias's targets in the order they are tried: as listed, or the pool's by tier, cheapest first."""
        model = self.models[alias]
        if model.targets:
            return tuple(Target.parse(text) for text in model.targets)
        members = sorted((self.pool[name] for name in model.pool), key=lambda p: p.tier)
        return tuple(Target.parse(p.target) for p in members)

    def path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def ledger_url(self) -> str:
        url = self.ledger.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(self.path(url[len(prefix) :]))
        return url

    def journal_dir(self) -> Path:
        return self.path(self.ledger.journal_dir or ".thrifty-journal")


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("THRIFTY_CONFIG") or DEFAULT_CONFIG)


def load_settings(path: Path) -> Settings:
    """Read and validate a config file; every problem becomes one ConfigError naming the key."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return settings_from_dict(raw, base_dir=path.resolve().parent, source=str(path))


def settings_from_dict(raw: dict[str, object], *, base_dir: Path, source: str = "config") -> Settings:
    if "base_dir" in raw:
        raise ConfigError(f"{source}: unknown key 'base_dir'")
    try:
        return Settings.model_validate({**raw, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + _describe(exc)) from exc


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(f"unknown key '{where}'")
        else:
            lines.append(f"{where}: {error['msg']}")
    return "; ".join(lines)
