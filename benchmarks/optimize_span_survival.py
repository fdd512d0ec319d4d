"""Does the answer survive? Context pruning and compression at 2x, 3x and 5x on long GSM8K contexts.

    .venv/bin/python benchmarks/optimize_span_survival.py [--examples 300] [--seed 0] [--split test] [--problems 30]
                                                         [--settings in-context,held-out,flat] [--minilm]

Construction (no public extractive-QA set is available offline here, so one is built from public text): each
example concatenates 30 (``--problems``) distinct GSM8K test problems (../shared/datasets/routellm/gsm8k/test.jsonl,
openai/grade-school-math, MIT), drawn at random with a fixed seed, and asks the question of ONE of them (the
target, at a random position). The gold span is every number the target states ("$80,000", "150%", "three",
"twice"): it survives only if each of those exact occurrences is kept, so an equal number elsewhere does not
count. A stricter column asks that every target sentence holding a number is kept whole.

Settings: ``in-context`` (problems separated by blank lines, each with its own question sentence; the user asks
the target's question), ``held-out`` (every problem's question sentence is removed from the context and only
asked by the user, so the target must be found from the question's words alone), ``flat`` (in-context without
paragraph breaks). The budget at ratio r is tokens/r (o200k_base, gpt-4o) for every method.

Methods: ``prune`` (BM25 passages), ``compress`` (sentence + phrase level), ``position`` (first and last
sentences, alternately) and ``random`` (random sentences, fixed seed); with ``--minilm`` also ``prune+minilm``
(BM25 fused with all-MiniLM-L6-v2 by reciprocal rank, weights from the semantic-cache extra, CPU; slow).
Parameters were set on contexts built from problems 0-659 (``--split dev``); the reported numbers use problems
660-1318 (``--split test``). There is no published anchor for this construction; LLMLingua-2 (the model-based
reference) needs weights not present here.
Prints a table and writes benchmarks/results/optimize_span_survival.json (options other than the defaults add
a suffix: ``_dev``, ``_100p``, ``_held-out``, ``_minilm``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from thrifty.optimizers.compress import compress_text
from thrifty.optimizers.prune import prune_text
from thrifty.optimizers.text import Span, covered, join_spans, merge_spans, number_spans, split_sentences
from thrifty.tokens import TiktokenCounter

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "routellm" / "gsm8k" / "test.jsonl"
RESULTS = Path(__file__).resolve().parent / "results" / "optimize_span_survival.json"
MODEL = "gpt-4o"
PROBLEMS_PER_CONTEXT = 30
RATIOS = (2.0, 3.0, 5.0)
SETTINGS = ("in-context", "held-out", "flat")
SPLITS = {"dev": (0, 660), "test": (660, 1319)}
COUNTER = TiktokenCounter()


@dataclass(frozen=True)
class Example:
    context: str
    query: str
    numbers: tuple[Span, ...]
    key_sentences: tuple[Span, ...]


def load_problems(split: str) -> list[str]:
    start, end = SPLITS[split]
    lines = DATA.read_text(encoding="utf-8").splitlines()[start:end]
    return [" ".join(json.loads(line)["question"].split()) for line in lines]


def build(problems: Sequence[str], target: int, setting: str) -> Example:
    """One context; ``target`` indexes ``problems``, whose question is the one asked."""
    pieces: list[str] = []
    for problem in problems:
        sentences = split_sentences(problem)
        last = sentences[-1][0] if setting == "held-out" and len(sentences) > 1 else len(problem)
        pieces.append(problem[:last].rstrip())
    separator = " " if setting == "flat" else "\n\n"
    context = separator.join(pieces)
    offset = sum(len(piece) + len(separator) for piece in pieces[:target])
    span = (offset, offset + len(pieces[target]))
    question = problems[target][split_sentences(problems[target])[-1][0] :]
    numbers = tuple(number_spans(context, span))
    keys = tuple(s for s in split_sentences(context, span) if any(s[0] <= n[0] < s[1] for n in numbers))
    return Example(context, question, numbers, keys)


def sample(problems: Sequence[str], examples: int, seed: int, size: int) -> list[tuple[list[str], int]]:
    rng = random.Random(seed)
    drawn: list[tuple[list[str], int]] = []
    while len(drawn) < examples:
        chosen = rng.sample(list(problems), size)
        target = rng.randrange(size)
        if number_spans(chosen[target]):
            drawn.append((chosen, target))
    return drawn


Method = Callable[[Example, int, random.Random], tuple[Span, ...]]


def by_prune(example: Example, budget: int, rng: random.Random) -> tuple[Span, ...]:
    return prune_text(example.context, example.query, budget, COUNTER, MODEL).kept


def by_compress(example: Example, budget: int, rng: random.Random) -> tuple[Span, ...]:
    before = COUNTER.count_text(MODEL, example.context)
    return compress_text(example.context, example.query, before / budget, COUNTER, MODEL).kept


def by_position(example: Example, budget: int, rng: random.Random) -> tuple[Span, ...]:
    sentences = split_sentences(example.context)
    order = [i for pair in zip(range(len(sentences)), reversed(range(len(sentences))), strict=True) for i in pair]
    return _fill(example.context, sentences, list(dict.fromkeys(order)), budget)


def by_random(example: Example, budget: int, rng: random.Random) -> tuple[Span, ...]:
    sentences = split_sentences(example.context)
    order = list(range(len(sentences)))
    rng.shuffle(order)
    return _fill(example.context, sentences, order, budget)


def _fill(text: str, sentences: Sequence[Span], order: Sequence[int], budget: int) -> tuple[Span, ...]:
    """Sentences in ``order`` while they fit, as every method fills its budget; then kept in text order."""
    chosen: list[int] = []
    used = 0
    for index in order:
        cost = COUNTER.count_text(MODEL, text[sentences[index][0] : sentences[index][1]])
        if used + cost <= budget:
            chosen.append(index)
            used += cost
    while chosen and COUNTER.count_text(MODEL, join_spans(text, [sentences[i] for i in sorted(chosen)])) > budget:
        chosen.pop()
    return tuple(sentences[i] for i in sorted(chosen))


METHODS: dict[str, Method] = {"prune": by_prune, "compress": by_compress, "position": by_position, "random": by_random}


class MemoEmbedder:
    """all-MiniLM-L6-v2 from the semantic-cache extra, remembering rows: each context is ranked at three ratios."""

    def __init__(self) -> None:
        from thrifty.caches.embedders import MiniLMEmbedder

        self.model = MiniLMEmbedder()
        self.rows: dict[str, list[float]] = {}

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        missing = [text for text in dict.fromkeys(texts) if text not in self.rows]
        if missing:
            self.rows.update(zip(missing, self.model.embed(missing).tolist(), strict=True))
        return [self.rows[text] for text in texts]


def add_embedding_method() -> None:
    embedder = MemoEmbedder()

    def by_prune_minilm(example: Example, budget: int, rng: random.Random) -> tuple[Span, ...]:
        return prune_text(example.context, example.query, budget, COUNTER, MODEL, embedder=embedder).kept

    METHODS["prune+minilm"] = by_prune_minilm


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    if not total:
        return 0.0, 0.0
    share = successes / total
    centre = (share + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(share * (1 - share) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def measure(examples: Sequence[Example], method: str, ratio: float, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    survived = whole = 0
    saved: list[float] = []
    started = time.perf_counter()
    for example in examples:
        before = COUNTER.count_text(MODEL, example.context)
        kept = METHODS[method](example, int(before / ratio), rng)
        after = COUNTER.count_text(MODEL, join_spans(example.context, kept))
        merged = merge_spans(kept)
        survived += all(covered(n, kept) for n in example.numbers)
        whole += all(covered(s, merged) for s in example.key_sentences)
        saved.append(1 - after / before)
    low, high = wilson(survived, len(examples))
    return {
        "examples": len(examples),
        "tokens_saved_share": round(sum(saved) / len(saved), 4),
        "span_survival": round(survived / len(examples), 4),
        "span_survival_ci95": [round(low, 4), round(high, 4)],
        "key_sentences_whole": round(whole / len(examples), 4),
        "seconds": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=sorted(SPLITS), default="test")
    parser.add_argument("--problems", type=int, default=PROBLEMS_PER_CONTEXT, help="problems per context")
    parser.add_argument("--minilm", action="store_true", help="also rank with BM25 fused with all-MiniLM-L6-v2")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated subset of settings")
    args = parser.parse_args()
    settings = [name for name in args.settings.split(",") if name in SETTINGS]
    if args.minilm:
        add_embedding_method()
    drawn = sample(load_problems(args.split), args.examples, args.seed, args.problems)
    results: list[dict[str, object]] = []
    for setting in settings:
        examples = [build(problems, target, setting) for problems, target in drawn]
        mean_tokens = sum(COUNTER.count_text(MODEL, e.context) for e in examples) / len(examples)
        print(f"\n{setting}: {len(examples)} contexts, mean {mean_tokens:.0f} tokens ({args.split} split)")
        print(f"{'method':<10}" + "".join(f"{f'{r:g}x saved / survived / whole':>34}" for r in RATIOS))
        for method in METHODS:
            row = [measure(examples, method, ratio, args.seed) for ratio in RATIOS]
            cells = "".join(
                f"{c['tokens_saved_share']:>14.1%} / {c['span_survival']:>7.1%} / {c['key_sentences_whole']:>6.1%}"
                for c in row
            )
            print(f"{method:<10}{cells}")
            for ratio, cell in zip(RATIOS, row, strict=True):
                results.append({"setting": setting, "method": method, "ratio": ratio, **cell})
    suffix = "".join(
        [
            f"_{args.split}" if args.split != "test" else "",
            f"_{args.problems}p" if args.problems != PROBLEMS_PER_CONTEXT else "",
            "_" + "-".join(settings) if len(settings) < len(SETTINGS) else "",
            "_minilm" if args.minilm else "",
        ]
    )
    out = RESULTS.with_stem(RESULTS.stem + suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "construction": __doc__,
        "source": "openai/grade-school-math test set via lm-sys/RouteLLM @ 0b64fdaf (MIT)",
        "split": args.split,
        "problem_rows": SPLITS[args.split],
        "seed": args.seed,
        "problems_per_context": args.problems,
        "token_model": MODEL,
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
