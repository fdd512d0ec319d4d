"""``thrifty eval cache``'s logic: decisions per pair, contexts that differ never hit, the summary, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from thrifty.caches.embedders import HashingEmbedder
from thrifty.caches.eval_pairs import evaluate_pairs, read_pairs, roc_auc, same_context, summarize
from thrifty.caches.similarity import CosineJudge, GuardedJudge

CONTEXT = [{"role": "system", "content": "You answer about travel."}, {"role": "user", "content": "Paris?"}]


def test_each_pair_comes_back_with_its_decision() -> None:
    pairs = [
        {"query": "How do I reset my password?", "cached": "how do i reset my password", "label": 1, "id": "x"},
        {"query": "How do I enable 2FA?", "cached": "How do I disable 2FA?", "label": 0},
    ]
    out = list(evaluate_pairs(pairs, GuardedJudge().decide, HashingEmbedder()))
    assert [o["hit"] for o in out] == [True, False]
    assert out[0]["id"] == "x" and out[0]["query"] == pairs[0]["query"] and out[0]["score"] == 1.0
    assert "opposite words" in out[1]["reason"]
    assert out[1]["score"] == 0.0


def test_pairs_whose_contexts_differ_never_hit() -> None:
    same = "What should I see there?"
    pairs = [
        {"query": same, "cached": same, "label": 0, "context_query": CONTEXT, "context_cached": CONTEXT[:1]},
        {"query": same, "cached": same, "label": 1, "context_query": CONTEXT, "context_cached": list(CONTEXT)},
        {"query": same, "cached": same, "label": 0, "context_query": CONTEXT},
    ]
    out = list(evaluate_pairs(pairs, CosineJudge(0.5).decide, HashingEmbedder()))
    assert [o["hit"] for o in out] == [False, True, False]
    assert "contexts differ" in out[0]["reason"]


def test_context_comparison_ignores_key_order_only() -> None:
    reordered = [{"content": m["content"], "role": m["role"]} for m in CONTEXT]
    assert same_context({"context_query": CONTEXT, "context_cached": reordered})
    assert same_context({})
    assert same_context({"context_query": [], "context_cached": None})
    assert not same_context({"context_query": CONTEXT, "context_cached": CONTEXT[::-1]})


def test_batches_preserve_order_across_many_pairs() -> None:
    pairs = [{"query": f"question number {i}", "cached": f"question number {i}", "label": 1} for i in range(150)]
    out = list(evaluate_pairs(iter(pairs), CosineJudge(0.99).decide, HashingEmbedder()))
    assert [o["query"] for o in out] == [p["query"] for p in pairs]
    assert all(o["hit"] for o in out)


def test_summary_counts_precision_recall_and_auc() -> None:
    decisions = [
        {"hit": True, "score": 0.9, "label": 1},
        {"hit": True, "score": 0.8, "label": 0},
        {"hit": False, "score": 0.3, "label": 1},
        {"hit": False, "score": 0.1, "label": 0},
        {"hit": True, "score": 0.95},  # unlabelled: decided, not scored
    ]
    summary = summarize(decisions)
    assert summary == {
        "pairs": 5,
        "labelled": 4,
        "positives": 2,
        "hits": 2,
        "false_hits": 1,
        "precision": 0.5,
        "recall": 0.5,
        "auc": 0.75,
    }


def test_summary_without_hits_or_labels() -> None:
    assert summarize([{"hit": False, "score": 0.1, "label": 0}]) == {
        "pairs": 1,
        "labelled": 1,
        "positives": 0,
        "hits": 0,
        "false_hits": 0,
        "precision": None,
        "recall": None,
        "auc": None,
    }


@pytest.mark.parametrize(
    ("scores", "labels", "auc"),
    [
        ([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], 1.0),
        ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
        ([0.5] * 4, [0, 1, 0, 1], 0.5),
    ],
)
def test_roc_auc(scores: list[float], labels: list[int], auc: float) -> None:
    assert roc_auc(scores, labels) == auc


def test_read_pairs_checks_every_line(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"query": "a", "cached": "b", "label": 1}\n\n{"query": "c", "cached": "d"}\n', encoding="utf-8")
    assert [p["query"] for p in read_pairs(good)] == ["a", "c"]
    for body, problem in [
        ('{"query": "a"}', '"cached" must be a string'),
        ('{"query": "a", "cached": "b", "label": 2}', '"label" must be 0 or 1'),
        ('{"query": "a", "cached": "b", "context_query": "x"}', '"context_query" must be a list'),
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "not JSON"),
        ('{"query": "a", "cached": "b", "label": true}', '"label" must be 0 or 1'),
        ('{"query": "a", "cached": "b", "label": 1.0}', '"label" must be 0 or 1'),
        ('{"query": "a", "cached": "b", "context_query": [1]}', '"context_query" must be a list of messages'),
        ('{"query": "a", "cached": "b", "context_cached": ["hi"]}', '"context_cached" must be a list of messages'),
    ]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"query": "a", "cached": "b"}\n' + body + "\n", encoding="utf-8")
        with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{problem}"):
            list(read_pairs(bad))
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "latin1.jsonl").write_bytes('{"query": "caf\xe9", "cached": "b"}\n'.encode("latin-1"))
    (tmp_path / "bom.jsonl").write_text('\ufeff{"query": "a", "cached": "b"}\n', encoding="utf-8")
    (tmp_path / "late.jsonl").write_bytes(
        b'{"query": "a", "cached": "b"}\n' * 299 + b'{"query": "caf\xe9", "cached": "b"}\n'
    )
    cases = [("empty", "no pairs"), ("latin1", "1: not UTF-8"), ("missing", "cannot be read"), ("late", "300: not UTF")]
    for name, problem in cases:
        with pytest.raises(ValueError, match=rf"{name}.jsonl:? ?.*{problem}"):
            list(read_pairs(tmp_path / f"{name}.jsonl"))
    assert [p["query"] for p in read_pairs(tmp_path / "bom.jsonl")] == ["a"]


def test_eval_cache_errors_are_one_line(tmp_path: Path) -> None:
    """Every bad input ended in a 38-line traceback: the command caught only the gateway's own errors."""
    (tmp_path / "thrifty.toml").write_text('[providers.up]\nkind = "replay"\n[models.fast]\ntargets = ["up::m"]\n')
    (tmp_path / "pairs.jsonl").write_text('{"query": "a", "cached": "b", "label": 1}\n{bad\n')
    for extra, problem in [
        ([], "pairs.jsonl:2: not JSON"),
        (["--decisions", "no/such/dir/d.jsonl"], "cannot be written"),
        (["--decisions", "pairs.jsonl"], "would overwrite --pairs"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "thrifty.cli", "eval", "cache", "--pairs", "pairs.jsonl", *extra],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1 and problem in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert (tmp_path / "pairs.jsonl").read_text().startswith('{"query": "a"')  # never emptied


def test_eval_cache_cli_on_a_pair_file(tmp_path: Path) -> None:
    pairs = [
        {"query": "How do I reset my password?", "cached": "How can I reset my password?", "label": 1},
        {"query": "How do I enable 2FA?", "cached": "How do I disable 2FA?", "label": 0},
        {
            "query": "And in Paris?",
            "cached": "And in Paris?",
            "label": 0,
            "context_query": [{"role": "user", "content": "Weather in London?"}],
            "context_cached": [{"role": "user", "content": "Museums in Tokyo?"}],
        },
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    done = _eval_cli(tmp_path, '[cache]\nsemantic = true\nembedder = "minilm"\n')
    assert done.returncode == 0, done.stderr
    assert "3 pairs (3 labelled, 1 duplicates)" in done.stdout
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [d["hit"] for d in out] == [True, False, False]


def test_the_exact_cache_answers_only_the_same_request_when_the_semantic_cache_is_off() -> None:
    pairs = [
        {"query": "How do I reset my password?", "cached": "How do I reset my password?", "label": 1},
        {"query": "How do I reset my password?", "cached": "How can I reset my password?", "label": 1},
        {"query": "Paris?", "cached": "Paris?", "label": 0, "context_query": CONTEXT},
    ]
    out = list(evaluate_pairs(pairs, None, None, exact=True))
    assert [o["hit"] for o in out] == [True, False, False]
    assert out[0]["reason"] == "exact: the same request" and "semantic cache is off" in out[1]["reason"]
    # Neither cache on: nothing hits, not even the same request.
    assert not any(o["hit"] for o in evaluate_pairs(pairs, None, None, exact=False))


def _eval_cli(tmp_path: Path, config: str, *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "thrifty.toml").write_text(config)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "thrifty.cli",
            "eval",
            "cache",
            "--config",
            str(tmp_path / "thrifty.toml"),
            "--pairs",
            str(tmp_path / "pairs.jsonl"),
            "--decisions",
            str(tmp_path / "out.jsonl"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_eval_cache_follows_the_alias_and_feature_rules(tmp_path: Path) -> None:
    """The gateway decides per alias and feature: so does the evaluation, given ``--model`` / ``--feature``."""
    pairs = [
        {"query": "How do I reset my password?", "cached": "How do I reset my password?", "label": 1},
        {"query": "How do I reset my password?", "cached": "How can I reset my password?", "label": 1},
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = (
        '[providers.up]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        '[models.fast]\ntargets = ["up::gpt-4o-mini"]\n'
        '[cache]\nexact = true\nembedder = "hashing"\n'
        "[cache.models.fast]\nsemantic = true\nsemantic_threshold = 0.1\n"
        "[cache.features.news]\nexact = false\n"
    )

    def hits(*extra: str) -> tuple[list[bool], str]:
        done = _eval_cli(tmp_path, config, *extra)
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["hit"] for line in (tmp_path / "out.jsonl").read_text().splitlines()], done.stdout

    found, printed = hits()
    assert found == [True, False] and "semantic cache off" in printed
    found, printed = hits("--model", "fast")
    assert found == [True, True] and "threshold 0.1" in printed and "embedder hashing" in printed
    found, printed = hits("--feature", "news")
    assert found == [False, False] and "caching is off" in printed
    done = _eval_cli(tmp_path, config, "--model", "slow")
    assert done.returncode != 0 and "'slow' is not a configured model alias" in done.stderr


def test_a_blank_query_is_decided_as_the_gateway_does() -> None:
    """The gateway looks nothing up for a blank last turn; the evaluation called two blanks identical, a hit."""
    (decided,) = evaluate_pairs(
        [{"query": "   ", "cached": "   ", "label": 0}], GuardedJudge(0.8).decide, HashingEmbedder(32)
    )
    assert decided["hit"] is False and decided["reason"].startswith("blank")
