"""``thrifty eval cache``: run the semantic hit decision over anyone's labelled pairs.

Input, one JSON object a line::

    {"query": "...", "cached": "...", "label": 0 or 1,
     "context_query": [messages before the query's last user turn], "context_cached": [...]}

The contexts are optional (absent means none). Pairs whose contexts differ never hit: the gateway keeps them in
different partitions, so the decision is never even asked. Each output line repeats the pair with ``hit``,
``score`` and the decision's ``reason``; ``summarize`` gives precision, recall and ROC AUC over the labelled ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from thrifty.caches.embedders import Embedder
from thrifty.caches.keys import cacheable_request
from thrifty.caches.similarity import Decision
from thrifty.errors import BadRequest

DecideFn = Callable[[str, str, float], Decision]
BATCH = 64
"""Pairs embedded per call: large enough to batch the model, small enough to stream a large file."""


class PairFileError(BadRequest, ValueError):
    """A pair file that cannot be read, or a line of it that is not a pair: one line, with the line number."""


def read_pairs(path: Path) -> Iterator[dict[str, Any]]:
    """The pairs of a JSONL file (UTF-8, a byte-order mark allowed), checked, with the line number in every
    complaint; a file without any pair is refused."""
    number, found = 0, 0
    try:
        with path.open("rb") as lines:  # decoded a line at a time: a bad byte is reported on its own line
            for number, raw in enumerate(lines, 1):
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                if not line.strip():
                    continue
                try:
                    pair = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise PairFileError(f"{path}:{number}: not JSON ({exc.msg})") from exc
                problem = _problem(pair)
                if problem:
                    raise PairFileError(f"{path}:{number}: {problem}")
                found += 1
                yield pair
    except UnicodeDecodeError as exc:
        raise PairFileError(f"{path}:{number}: not UTF-8 text") from exc
    except OSError as exc:
        raise PairFileError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not found:
        raise PairFileError(f"{path}: no pairs in it (one JSON object a line: query, cached, label)")


def _problem(pair: object) -> str:
    if not isinstance(pair, dict):
        return "each line must be a JSON object"
    for field in ("query", "cached"):
        if not isinstance(pair.get(field), str):
            return f'"{field}" must be a string'
    if "label" in pair and (type(pair["label"]) is not int or pair["label"] not in (0, 1)):
        return '"label" must be 0 or 1'
    for field in ("context_query", "context_cached"):
        context = pair.get(field, [])
        if not isinstance(context, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in context
        ):
            return f'"{field}" must be a list of messages (objects with a "role")'
    return ""


def evaluate_pairs(
    pairs: Iterable[dict[str, Any]], decide_fn: DecideFn | None, embedder: Embedder | None, *, exact: bool = False
) -> Iterator[dict[str, Any]]:
    """Each pair with the decision the gateway would make for it, in input order.

    ``exact``: the exact cache is on, so a query that is the cached request itself hits before any embedding is
    read. ``decide_fn`` (with ``embedder``) is the semantic decision; None when the semantic cache is off. Only
    the pairs that reach it are embedded (a remote embedder is paid per text).
    """
    iterator = iter(pairs)
    while batch := list(islice(iterator, BATCH)):
        settled = [_settled(pair, exact, decide_fn is not None) for pair in batch]
        judged = [pair for pair, decision in zip(batch, settled, strict=True) if decision is None]
        cosines = iter(_cosines(embedder, judged) if judged and embedder is not None else [])
        for pair, early in zip(batch, settled, strict=True):
            if early is not None:
                decision = early
            elif decide_fn is not None:
                decision = decide_fn(pair["query"], pair["cached"], next(cosines))
            else:  # _settled decides every pair when there is no semantic decision
                raise RuntimeError("a pair reached a semantic decision that is off")
            yield {**pair, "hit": decision.hit, "score": round(decision.score, 6), "reason": decision.reason}


def _settled(pair: dict[str, Any], exact: bool, semantic: bool) -> Decision | None:
    """The decisions made before any embedding; None: the semantic decision's to make."""
    if not same_context(pair):
        return Decision(False, 0.0, "contexts differ: a different partition, never compared")
    # Pairs carry no sampling parameters: judged as requests the gateway may cache (temperature 0).
    conversation = [*(pair.get("context_query") or []), {"role": "user", "content": pair["query"]}]
    if not cacheable_request({"messages": conversation, "temperature": 0}, 0.0):
        return Decision(False, 0.0, "never cached: the conversation carries tool results")
    if exact and pair["query"] == pair["cached"]:
        return Decision(True, 1.0, "exact: the same request")
    if not pair["query"].strip():
        return Decision(False, 0.0, "blank: the semantic cache looks nothing up for it")
    if not semantic:
        return Decision(False, 0.0, "not the same request, and the semantic cache is off")
    return None


def same_context(pair: dict[str, Any]) -> bool:
    """The conversations before the two last user turns are the same, key order aside."""
    return _canonical(pair.get("context_query") or []) == _canonical(pair.get("context_cached") or [])


def _canonical(messages: Sequence[Any]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _cosines(embedder: Embedder, batch: Sequence[dict[str, Any]]) -> list[float]:
    vectors = embedder.embed([p["query"] for p in batch] + [p["cached"] for p in batch])
    queries, cached = vectors[: len(batch)], vectors[len(batch) :]
    return [float(c) for c in np.einsum("ij,ij->i", queries, cached)]


def summarize(decisions: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Precision and recall of the hits, and ROC AUC of the scores, over the pairs that carry a label."""
    total, labelled = 0, []
    for d in decisions:
        total += 1
        if "label" in d:
            labelled.append((bool(d["hit"]), float(d["score"]), int(d["label"])))
    hits = sum(hit for hit, _, _ in labelled)
    positives = sum(label for _, _, label in labelled)
    true_hits = sum(hit and label == 1 for hit, _, label in labelled)
    return {
        "pairs": total,
        "labelled": len(labelled),
        "positives": positives,
        "hits": hits,
        "false_hits": hits - true_hits,
        "precision": round(true_hits / hits, 4) if hits else None,
        "recall": round(true_hits / positives, 4) if positives else None,
        "auc": roc_auc([s for _, s, _ in labelled], [lab for _, _, lab in labelled]),
    }


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Probability that a random positive outscores a random negative (ties count half); None with one class."""
    values, truth = np.asarray(scores, dtype=np.float64), np.asarray(labels) == 1
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    _, starts, counts = np.unique(values[order], return_index=True, return_counts=True)
    for start, count in zip(starts, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2
    return round(float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)), 4)
