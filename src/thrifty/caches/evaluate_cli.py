"""``thrifty eval cache --pairs FILE.jsonl``: the decision the gateway would make, on anyone's labelled pairs.

The decision is the cache stage's for a request of the default tenant (``--model`` / ``--feature`` apply that
alias's and that feature's ``[cache.models.*]`` / ``[cache.features.*]`` rules): the exact cache answers a
pair whose query is the cached request itself; the semantic cache, if it is on, judges the rest with the
configured embedder, decision and threshold; pairs whose contexts differ never hit, as in the gateway's
partitions. A remote embedder is called through a gateway started for the run, so its calls are paid, priced
and recorded in the configured ledger like the gateway's own (tenant ``thrifty``, feature ``semantic-cache``).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from thrifty.caches.eval_pairs import evaluate_pairs, read_pairs, summarize
from thrifty.errors import BadRequest, ConfigError
from thrifty.settings import Settings

if TYPE_CHECKING:
    from thrifty.caches.embedders import CachedEmbedder, Embedder


@contextmanager
def configured_embedder(settings: Settings) -> Iterator[Embedder]:
    """The embedder of ``[cache] embedder``; a remote one works through a gateway that lives as long as this."""
    from thrifty.cache_assembly import build_embedder

    embedder = build_embedder(settings)
    if settings.cache.embedder != "remote":
        yield embedder
        return
    with _bound(settings, embedder):
        yield embedder


@contextmanager
def _bound(settings: Settings, embedder: CachedEmbedder) -> Iterator[None]:
    """Start the configured gateway (ledger, budgets, providers; its own cache off: nothing here reads it) on an
    event loop of its own and bind the remote embedder to it; close it all, the ledger flushed, afterwards."""
    from thrifty.assembly import build_runtime
    from thrifty.caches.embedders import RemoteEmbedder
    from thrifty.settings import CacheSettings

    if not isinstance(embedder.inner, RemoteEmbedder):
        raise TypeError("only a remote embedder calls through a gateway")
    runtime = build_runtime(settings.model_copy(update={"cache": CacheSettings()}))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="thrifty-eval-gateway", daemon=True)
    thread.start()
    try:
        runtime.start()
        try:
            embedder.inner.bind(runtime.gateway, loop)
            yield
        finally:
            asyncio.run_coroutine_threadsafe(runtime.aclose(), loop).result(timeout=60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def eval_cache_command(
    settings: Settings, pairs: Path, decisions_out: Path | None, alias: str = "", feature: str = ""
) -> str:
    from thrifty.caches.layered import CachePolicy
    from thrifty.caches.pair_model import configured_judges

    if alias and alias not in settings.models:
        raise ConfigError(f"--model {alias!r} is not a configured model alias ({', '.join(sorted(settings.models))})")
    if decisions_out is not None and decisions_out.resolve() == pairs.resolve():
        raise BadRequest("--decisions would overwrite --pairs: write the decisions to another file")
    rule = CachePolicy(settings.cache).rule(alias, feature)
    kept: list[dict[str, Any]] = []  # what the summary needs of each pair: a large file is not held in memory
    with ExitStack() as stack:
        out = stack.enter_context(_opened(decisions_out)) if decisions_out is not None else None
        embedder = stack.enter_context(configured_embedder(settings)) if rule.semantic else None
        judge = configured_judges(settings, embedder)(rule.semantic_threshold) if embedder is not None else None
        decide = None if judge is None else judge.decide
        for decision in evaluate_pairs(read_pairs(pairs), decide, embedder, exact=rule.exact):
            if out is not None:  # written as they come: what a failure later on cost is kept
                out.write(json.dumps(decision) + "\n")
            kept.append({k: decision[k] for k in ("hit", "score", "label") if k in decision})
        spend = spend_line(embedder)
    summary = summarize(kept)
    auc = summary.get("auc")
    if embedder is not None:
        decided_by = settings.cache.pair_model or "the bundled scorer"
        how = f"semantic: embedder {embedder.name}, threshold {rule.semantic_threshold}, decision: {decided_by}"
    else:
        how = "semantic cache off for this request: only the same request hits"
    caches = f"exact cache {'on' if rule.exact else 'off'}; {how}"
    if not (rule.exact or rule.semantic):
        caches = (
            "caching is off for this request: nothing hits (switch it on with [cache] exact / semantic = true, "
            "or in the alias's or feature's rule)"
        )
    lines = [
        f"{summary['pairs']} pairs ({summary['labelled']} labelled, {summary['positives']} duplicates); {caches}",
        f"hits {summary['hits']} (false {summary['false_hits']}): precision {summary['precision']}, "
        f"recall {summary['recall']}, ROC AUC {'n/a' if auc is None else round(float(auc), 4)}",
    ]
    return "\n".join([*lines, spend] if spend else lines)


def _opened(path: Path) -> TextIO:
    """The decisions file, opened before any pair is judged (a remote embedder's calls are paid for)."""
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise BadRequest(f"--decisions {path}: cannot be written ({exc.strerror or exc})") from exc


def spend_line(embedder: Embedder | None) -> str:
    """What a remote embedder's calls cost, for a command's summary; empty for a local one."""
    from thrifty.caches.embedders import RemoteEmbedder

    inner = getattr(embedder, "inner", None)
    if not isinstance(inner, RemoteEmbedder):
        return ""
    unpriced = f" + {inner.unpriced_calls} unpriced calls" if inner.unpriced_calls else ""
    return (
        f"remote embeddings: {inner.calls} call{'' if inner.calls == 1 else 's'}, ${inner.spent_usd:f}{unpriced}, "
        "in the ledger (tenant thrifty, feature semantic-cache)"
    )
