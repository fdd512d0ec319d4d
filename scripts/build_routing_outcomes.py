"""Convert RouteLLM's evaluation data into Thrifty outcome files (``thrifty.routers.outcomes``).

Writes, under ``--out`` (default ``.bench/routing``, which git ignores; the data is never bundled in the package):

- ``mmlu.jsonl``: 14,037 MMLU questions, quality = correct (1) or not (0);
- ``gsm8k.jsonl``: 1,307 GSM8K problems, quality = correct or not;
- ``mt_bench.jsonl``: 144 MT-Bench turns (72 questions x 2), quality = GPT-4 judge score / 10, ``group`` = the
  question, so that cross-validation keeps both turns of a question in one fold; the second turn's prompt is both
  user turns (what a gateway sees of the conversation before the answer to turn 1 is known);
- ``mt_bench_questions.jsonl``: 72 questions, RouteLLM's own protocol: one decision per question made on turn 1
  only, quality = the mean of both turns' scores / 10, cost = both turns.

Contaminated prompts (``contaminated_prompts.jsonl``, field ``eval_prompt``: benchmark prompts that also occur in
RouteLLM's training data) are dropped exactly as RouteLLM's ``benchmarks.py`` drops them.

Costs: gpt-4-1106-preview $10 / $30 per million input / output tokens, Mixtral-8x7B $0.70 / $0.70, tokens counted
with cl100k_base (exact for GPT-4, an approximation for Mixtral). Where the data lacks what was sent or returned,
a documented estimate stands in:

- MMLU was asked 5-shot with ``max_new_tokens=1``: output = 1 token; input = the question plus a 5-shot preamble
  estimated as 5 x the domain's mean question length + 2 answer tokens each (RouteLLM capped it at 1,536 tokens);
- GSM8K was asked 8-shot (``Question: ...\\nAnswer: ...``): input = the question plus 8 x the mean length of a
  formatted test example with its gold answer (the real shots come from the train split, which is not here);
  output = each model's recorded answer;
- MT-Bench: outputs are the answers quoted in the judge prompts; turn 2's input is turn 1, its answer and turn 2.

Run from the repository root: ``.venv/bin/python scripts/build_routing_outcomes.py [--datasets DIR] [--out DIR]``
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from thrifty.routers.outcomes import ModelOutcome, OutcomeRecord, write_outcomes  # noqa: E402
from thrifty.tokens import TiktokenCounter  # noqa: E402

STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
USD_PER_MTOK = {STRONG: (Decimal(10), Decimal(30)), WEAK: (Decimal("0.7"), Decimal("0.7"))}
MMLU_SHOTS = 5
MMLU_PREAMBLE_CAP = 1536
GSM8K_SHOTS = 8
FILES = ("mmlu", "gsm8k", "mt_bench", "mt_bench_questions")

csv.field_size_limit(sys.maxsize)
_COUNTER = TiktokenCounter()


def tokens(text: str) -> int:
    return _COUNTER.count_text("gpt-4", text)


def cost_usd(model: str, input_tokens: int, output_tokens: int) -> Decimal:
    usd_in, usd_out = USD_PER_MTOK[model]
    return (input_tokens * usd_in + output_tokens * usd_out) / Decimal(1_000_000)


def contaminated(folder: Path) -> set[str]:
    with (folder / "contaminated_prompts.jsonl").open(encoding="utf-8") as lines:
        return {json.loads(line)["eval_prompt"] for line in lines if line.strip()}


def correct(cell: str) -> float:
    if cell not in {"True", "False"}:
        raise ValueError(f"expected True or False, got {cell!r}")
    return 1.0 if cell == "True" else 0.0


def mmlu_records(root: Path) -> Iterator[OutcomeRecord]:
    drop = contaminated(root / "mmlu")
    for path in sorted((root / "mmlu" / "responses").glob("mmlu_*.csv")):
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        lengths = [tokens(row["prompt"]) for row in rows]
        shot_tokens = min(MMLU_PREAMBLE_CAP, round(MMLU_SHOTS * (sum(lengths) / len(lengths) + 2)))
        for row, length in zip(rows, lengths, strict=True):
            if row["prompt"] in drop:
                continue
            outcomes = {
                model: ModelOutcome(correct(row[model]), cost_usd(model, shot_tokens + length, 1))
                for model in (STRONG, WEAK)
            }
            yield OutcomeRecord(row["prompt"], outcomes)


def gsm8k_records(root: Path) -> Iterator[OutcomeRecord]:
    folder = root / "gsm8k"
    drop = contaminated(folder)
    with (folder / "test.jsonl").open(encoding="utf-8") as lines:
        examples = [json.loads(line) for line in lines if line.strip()]
    shot = sum(tokens(f"Question: {e['question']}\nAnswer: {e['answer']}\n\n") for e in examples) / len(examples)
    preamble = round(GSM8K_SHOTS * shot)
    with (folder / "gsm8k_responses.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["prompt"] in drop:
                continue
            asked = preamble + tokens(f"Question: {row['prompt']}\nAnswer:")
            outcomes = {
                model: ModelOutcome(correct(row[model]), cost_usd(model, asked, tokens(row[f"{model}_response"])))
                for model in (STRONG, WEAK)
            }
            yield OutcomeRecord(row["prompt"], outcomes)


_TURN1_ANSWER = re.compile(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", re.S)
_TURN_ANSWERS = re.compile(r"### Assistant A:\n(.*?)(?=\n\n### User:|\n\n<\|The End of Assistant A's Conv)", re.S)


def mt_bench_turns(root: Path) -> list[tuple[int, list[str], dict[str, list[tuple[float, Decimal]]]]]:
    """Per kept question: its id, its two turns, and per model (quality, cost) of each turn."""
    folder = root / "mt_bench"
    drop = contaminated(folder)
    with (folder / "question.jsonl").open(encoding="utf-8") as lines:
        questions = [json.loads(line) for line in lines if line.strip()]
    judged: dict[tuple[int, str, int], tuple[float, str]] = {}
    with (folder / "judgements.jsonl").open(encoding="utf-8") as lines:
        for line in filter(str.strip, lines):
            j = json.loads(line)
            pattern = _TURN1_ANSWER if j["turn"] == 1 else _TURN_ANSWERS
            answers = pattern.findall(j["user_prompt"])
            judged[j["question_id"], j["model"], j["turn"]] = (float(j["score"]) / 10, answers[j["turn"] - 1])
    kept = []
    for q in questions:
        turns = q["turns"]
        if turns[0] in drop or turns[1] in drop:
            continue
        per_model: dict[str, list[tuple[float, Decimal]]] = defaultdict(list)
        for model in (STRONG, WEAK):
            (score1, answer1), (score2, answer2) = (
                judged[q["question_id"], model, 1],
                judged[q["question_id"], model, 2],
            )
            context2 = tokens(turns[0]) + tokens(answer1) + tokens(turns[1])
            per_model[model].append((score1, cost_usd(model, tokens(turns[0]), tokens(answer1))))
            per_model[model].append((score2, cost_usd(model, context2, tokens(answer2))))
        kept.append((q["question_id"], turns, dict(per_model)))
    return kept


def mt_bench_records(root: Path) -> Iterator[OutcomeRecord]:
    for qid, turns, per_model in mt_bench_turns(root):
        prompts = (turns[0], f"{turns[0]}\n\n{turns[1]}")
        for turn, prompt in enumerate(prompts):
            outcomes = {model: ModelOutcome(*per_model[model][turn]) for model in per_model}
            yield OutcomeRecord(prompt, outcomes, group=f"mt_bench/{qid}")


def mt_bench_question_records(root: Path) -> Iterator[OutcomeRecord]:
    for qid, turns, per_model in mt_bench_turns(root):
        outcomes = {
            model: ModelOutcome(sum(q for q, _ in pair) / 2, sum((c for _, c in pair), Decimal(0)))
            for model, pair in per_model.items()
        }
        yield OutcomeRecord(turns[0], outcomes, group=f"mt_bench/{qid}")


BUILDERS: dict[str, Callable[[Path], Iterator[OutcomeRecord]]] = {
    "mmlu": mmlu_records,
    "gsm8k": gsm8k_records,
    "mt_bench": mt_bench_records,
    "mt_bench_questions": mt_bench_question_records,
}


def build(datasets: Path, out: Path) -> dict[str, Path]:
    """Write every outcome file under ``out``; returns their paths by benchmark name."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, builder in BUILDERS.items():
        paths[name] = out / f"{name}.jsonl"
        count = write_outcomes(paths[name], builder(datasets / "routellm"))
        print(f"{paths[name]}: {count} records", file=sys.stderr)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=REPO / ".bench" / "routing")
    args = parser.parse_args()
    build(args.datasets, args.out)


if __name__ == "__main__":
    main()
