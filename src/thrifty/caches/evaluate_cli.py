"""``thrifty eval cache --pairs FILE.jsonl``: the decision the gateway would make, on anyone's labelled pairs.

Uses the configured embedder and semantic threshold (the default tenant's settings); pairs whose contexts
differ never hit, as in the gateway's partitions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from thrifty.caches.eval_pairs import evaluate_pairs, read_pairs, summarize
from thrifty.errors import ConfigError
from thrifty.settings import Settings

if TYPE_CHECKING:
    from thrifty.caches.embedders import Embedder


def configured_embedder(settings: Settings) -> Embedder:
    """The embedder of ``[cache] embedder`` for offline work (a remote one needs a running gateway)."""
    from thrifty.caches.embedders import CachedEmbedder, HashingEmbedder, MiniLMEmbedder

    if settings.cache.embedder == "remote":
        raise ConfigError("offline cache commands need an in-process embedder: set [cache] embedder to minilm")
    inner: Embedder = MiniLMEmbedder(threads=1) if settings.cache.embedder == "minilm" else HashingEmbedder()
    return CachedEmbedder(inner)


def eval_cache_command(settings: Settings, pairs: Path, decisions_out: Path | None) -> str:
    from thrifty.caches.pair_model import configured_judges

    config = settings.cache
    embedder = configured_embedder(settings)
    judge = configured_judges(settings, embedder)(config.semantic_threshold)
    decisions = list(evaluate_pairs(read_pairs(pairs), judge.decide, embedder))
    if decisions_out is not None:
        decisions_out.write_text("".join(json.dumps(d) + "\n" for d in decisions), encoding="utf-8")
    summary = summarize(decisions)
    auc = summary.get("auc")
    return "\n".join(
        [
            f"{summary['pairs']} pairs, {summary['positives']} labelled duplicates; embedder {embedder.name}, "
            f"threshold {config.semantic_threshold}, decision: {config.pair_model or 'the bundled scorer'}",
            f"hits {summary['hits']} (false {summary['false_hits']}): precision {summary['precision']}, "
            f"recall {summary['recall']}, ROC AUC {'n/a' if auc is None else round(float(auc), 4)}",
        ]
    )
