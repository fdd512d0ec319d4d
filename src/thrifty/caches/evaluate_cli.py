"""``thrifty eval cache --pairs FILE.jsonl``: the decision the gateway would make, on anyone's labelled pairs.

Uses the configured embedder and semantic threshold (the default tenant's settings); pairs whose contexts
differ never hit, as in the gateway's partitions.
"""

from __future__ import annotations

import json
from pathlib import Path

from thrifty.caches.eval_pairs import evaluate_pairs, read_pairs, summarize
from thrifty.caches.similarity import GuardedJudge
from thrifty.settings import Settings


def eval_cache_command(settings: Settings, pairs: Path, decisions_out: Path | None) -> str:
    from thrifty.caches.embedders import CachedEmbedder, Embedder, HashingEmbedder, MiniLMEmbedder

    config = settings.cache
    inner: Embedder = MiniLMEmbedder(threads=1) if config.embedder == "minilm" else HashingEmbedder()
    judge = GuardedJudge(config.semantic_threshold)
    decisions = list(evaluate_pairs(read_pairs(pairs), judge.decide, CachedEmbedder(inner)))
    if decisions_out is not None:
        decisions_out.write_text("".join(json.dumps(d) + "\n" for d in decisions), encoding="utf-8")
    summary = summarize(decisions)
    auc = summary.get("auc")
    return "\n".join(
        [
            f"{summary['pairs']} pairs, {summary['positives']} labelled duplicates; embedder {inner.name}, "
            f"threshold {config.semantic_threshold}",
            f"hits {summary['hits']} (false {summary['false_hits']}): precision {summary['precision']}, "
            f"recall {summary['recall']}, ROC AUC {'n/a' if auc is None else round(float(auc), 4)}",
        ]
    )
