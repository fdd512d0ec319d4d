"""The cache stage's part of ``assembly``: where ``[cache]`` names become stores, purge logs, embedders and judges
(``thrifty cache purge`` and ``thrifty eval cache`` build theirs here too)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import orjson

from thrifty.caches.entries import EntryStore
from thrifty.caches.keys import BY_FEATURE
from thrifty.caches.layered import SemanticLayer
from thrifty.caches.none import NoCache
from thrifty.errors import ConfigError
from thrifty.protocols import ResponseCache
from thrifty.settings import Settings
from thrifty.types import Target

if TYPE_CHECKING:
    from thrifty.caches.embedders import CachedEmbedder
    from thrifty.caches.purge_log import PurgeLog


def cache_identities(settings: Settings, aliases: dict[str, tuple[Target, ...]]) -> dict[str, tuple[Target, ...]]:
    """What the cache keys each alias by: its targets and, for a router that chooses among them (rules, a cascade's
    checks, a learned model and its operating point), that router's configuration. Changing which target answers
    what then starts new entries, as re-pointing the alias does: a rule moved off a model stopped serving that
    model's answers only when their TTL ran out."""
    identities = dict(aliases)
    for alias, model in settings.models.items():
        if model.router == "static" or alias not in identities:
            continue
        config = model.model_dump(mode="json", include={"router", "rules", "default", "cascade", "threshold"})
        if model.router == "learned" and model.router_dir:
            saved = settings.path(model.router_dir) / "router.json"
            config["router.json"] = hashlib.sha256(saved.read_bytes()).hexdigest() if saved.is_file() else ""
        digest = hashlib.sha256(orjson.dumps(config, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
        identities[alias] = (*identities[alias], Target("router", f"{model.router}:{digest}"))
        if model.router == "rules" and any(rule.feature for rule in model.rules):
            # The same request goes to another model for another feature: features must not share answers.
            identities[alias] = (*identities[alias], BY_FEATURE)
    return identities


def build_cache(settings: Settings, aliases: dict[str, tuple[Target, ...]]) -> ResponseCache:
    aliases = cache_identities(settings, aliases)
    config = settings.cache
    rules = [*config.models.values(), *config.features.values()]
    if not (config.exact or config.semantic or any(r.exact or r.semantic for r in rules)):
        return NoCache()
    from thrifty.caches.layered import CachePolicy, LayeredCache

    semantic = build_semantic(settings, aliases) if config.semantic or any(r.semantic for r in rules) else None
    return LayeredCache(CachePolicy(config), build_entry_store(settings), aliases, semantic, build_purge_log(settings))


def build_purge_log(settings: Settings) -> PurgeLog:
    """Where purges are recorded for every replica (and ``thrifty cache purge``) to honour: beside the cache's
    shared state, kept as long as any entry may live."""
    from thrifty.caches.purge_log import MemoryPurgeLog, PostgresPurgeLog, RedisPurgeLog, SqlitePurgeLog

    config = settings.cache
    rules = [*config.models.values(), *config.features.values()]
    kept_s = max([config.ttl_s, *(r.ttl_s for r in rules if r.ttl_s is not None)])
    # The most widely shared of the cache's stores: a SQLite exact cache beside a pgvector semantic one still
    # needs every host to hear of a purge.
    if config.store == "redis":
        return RedisPurgeLog(config.url or "redis://127.0.0.1:6379/0", kept_s)
    if config.semantic_store == "pgvector":
        return PostgresPurgeLog(config.semantic_url or settings.ledger_url(), kept_s)
    if config.store == "sqlite":
        return SqlitePurgeLog(settings.path(config.url or "cache.sqlite"), kept_s)
    return MemoryPurgeLog(kept_s)


def build_entry_store(settings: Settings) -> EntryStore:
    """Where the exact cache's entries live, as configured (also what ``thrifty cache purge`` opens)."""
    from thrifty.caches.entries import MemoryStore

    config = settings.cache
    if config.store == "sqlite":
        from thrifty.caches.shared_stores import SqliteStore

        return SqliteStore(settings.path(config.url or "cache.sqlite"), config.max_entries)
    if config.store == "redis":
        from thrifty.caches.shared_stores import RedisStore

        return RedisStore(config.url or "redis://127.0.0.1:6379/0", config.max_entries)
    return MemoryStore(config.max_entries)


def build_embedder(settings: Settings) -> CachedEmbedder:
    """The semantic cache's embedder as configured, behind its LRU; a remote one still needs ``bind``."""
    from thrifty.caches.embedders import CachedEmbedder, Embedder, HashingEmbedder, MiniLMEmbedder, RemoteEmbedder

    config = settings.cache
    inner: Embedder
    if config.embedder == "remote":
        if config.embedding_model not in settings.models:
            raise ConfigError("cache.embedding_model must name a configured model alias for embedder = 'remote'")
        # One model, however each provider spells it ("openai/text-embedding-3-small" on OpenRouter).
        models = sorted({t.model.rsplit("/", 1)[-1] for t in settings.alias_targets(config.embedding_model)})
        if len(models) != 1:
            # Vectors of two models do not compare: a fallback to another model would file its vectors beside
            # the first one's, where every lookup between them is noise.
            raise ConfigError(
                f"cache.embedding_model {config.embedding_model!r} must name one embedding model (on any number of "
                f"providers), not {', '.join(models)}"
            )
        inner = RemoteEmbedder(config.embedding_model, config.embedding_dimensions, models[0])
    else:
        inner = MiniLMEmbedder(threads=1) if config.embedder == "minilm" else HashingEmbedder()
    return CachedEmbedder(inner)


def build_semantic(settings: Settings, aliases: dict[str, tuple[Target, ...]]) -> SemanticLayer:
    from thrifty.caches.semantic import MemoryVectors, SemanticCache, VectorStore

    config = settings.cache
    embedder = build_embedder(settings)
    vectors: VectorStore
    if config.semantic_store == "pgvector":
        from thrifty.caches.pgvector_store import PgVectorStore

        vectors = PgVectorStore(config.semantic_url or settings.ledger_url(), embedder.dimensions, config.max_entries)
    else:
        vectors = MemoryVectors(embedder.dimensions, config.max_entries)
    from thrifty.caches.pair_model import configured_judges

    return SemanticCache(embedder, None, vectors, aliases, configured_judges(settings, embedder))
