"""History summarization: tokens sent per turn with and without it, and the net saving after the summarizer's cost.

    .venv/bin/python benchmarks/optimize_summarize.py [--sessions 20] [--turns 30]

Two kinds of conversation, each replayed turn by turn through a real gateway (``ServerThread``, SQLite ledger,
the ``openai`` SDK as the client) twice: once as is, once with ``[optimize.summarize]``:

- **MT-Bench two-turn conversations** (``../shared/datasets/routellm/mt_bench``, the 72 questions left after
  decontamination): turn 1, GPT-4-1106-preview's recorded answer to it (from the judge prompts in
  ``judgements.jsonl``), then turn 2. Measured with the default ``keep_last_messages = 4`` (nothing to fold: the
  whole conversation is the "last turns") and with ``keep_last_messages = 1, after_tokens = 256``, which folds
  turn 1 and its answer into a summary.
- **Long sessions built from the demo workload**: ``--sessions`` sessions of ``--turns`` turns each, every turn a
  new question of the bundled workload's math-tutor / chat-assistant features (GSM8K and MT-Bench prompts) and,
  as the assistant's turn, what GPT-4-1106-preview really answered it. ``after_tokens = 1500``,
  ``keep_last_messages = 4``, ``max_summary_tokens = 300``.

The answering model is ``gpt-4-1106-preview`` and the summarizer ``gpt-4o-mini`` (catalog prices). The fake upstream
(a real HTTP server on 127.0.0.1) answers each turn with its recorded answer and reports usage counted with
tiktoken; for a summary request it returns an extractive stand-in (the first sentence of each folded message after
the previous summary) cut at ``max_summary_tokens``: no model writes summaries offline here, so what is measured
is tokens and cost, with the summary at (or near) its length cap, the costly end. Whether answers keep their
quality with a real summarizer is not measured here.

Figures: prompt tokens per turn (mean, and at the last turn), total cost of both runs from their ledgers (the
summarized run's includes the summarizer's own rows), the net saving, and the ledger's own ``summarize`` lever
total, which must agree with the difference of the two runs (a check of the accounting, printed beside it).
Writes benchmarks/results/optimize_summarize.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import statistics
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
from aiohttp import web
from sqlalchemy import func, select

from thrifty.ledger import tables
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings
from thrifty.tokens import TiktokenCounter, load_encoding
from thrifty.workload import demo_workload_path, read_workload

ROOT = Path(__file__).resolve().parent
MT_BENCH = ROOT.parents[1] / "shared" / "datasets" / "routellm" / "mt_bench"
RESULTS = ROOT / "results" / "optimize_summarize.json"
STRONG, CHEAP = "gpt-4-1106-preview", "gpt-4o-mini"
COUNTER = TiktokenCounter()
ENCODING = load_encoding("o200k_base")
_SENTENCE = re.compile(r"(?<=[.!?])\s")


@dataclass
class Conversation:
    system: str
    turns: list[tuple[str, str]]
    """(user message, recorded answer) per turn."""


def mt_bench_conversations() -> list[Conversation]:
    dropped = {json.loads(line)["eval_prompt"].strip() for line in (MT_BENCH / "contaminated_prompts.jsonl").open()}
    questions = {q["question_id"]: q for q in map(json.loads, (MT_BENCH / "question.jsonl").open())}
    answers: dict[int, tuple[str, str]] = {}
    for row in map(json.loads, (MT_BENCH / "judgements.jsonl").open()):
        if row["model"] != STRONG or str(row["turn"]) != "2":
            continue
        parts = re.split(r"### (?:User|Assistant A):\n", row["user_prompt"])
        if len(parts) >= 5:
            end = parts[4].split("<|The End of Assistant A's Conversation with User|>")[0].strip()
            answers[int(row["question_id"])] = (parts[2].strip(), end)
    found = []
    for qid, q in sorted(questions.items()):
        if qid not in answers or q["turns"][0].strip() in dropped:
            continue
        first, second = answers[qid]
        found.append(Conversation("You are a helpful assistant.", [(q["turns"][0], first), (q["turns"][1], second)]))
    return found


def workload_sessions(sessions: int, turns: int) -> list[Conversation]:
    records = [
        r
        for r in read_workload(demo_workload_path())
        if r.feature in ("math-tutor", "chat-assistant") and STRONG in r.answers and len(r.messages) == 2
    ]
    unique = list({r.messages[-1]["content"]: r for r in records}.values())
    out = []
    for s in range(sessions):
        chosen = [unique[(s * turns + t) % len(unique)] for t in range(turns)]
        system = str(chosen[0].messages[0]["content"])
        out.append(Conversation(system, [(str(r.messages[-1]["content"]), r.answers[STRONG].text) for r in chosen]))
    return out


# -- the fake provider ----------------------------------------------------------------------------------------


class Upstream:
    """A real HTTP server on loopback speaking OpenAI's chat completions, with recorded answers."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.base_url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        messages = body["messages"]
        if "running summary" in str(messages[0].get("content", "")):
            text = stand_in_summary(str(messages[1]["content"]), int(body.get("max_tokens") or 300))
        else:
            text = self.answers[str(messages[-1]["content"])]
        usage = {
            "prompt_tokens": COUNTER.count_messages(body["model"], messages),
            "completion_tokens": COUNTER.count_text(body["model"], text),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        return web.json_response(
            {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice], "usage": usage}
        )

    def _run(self) -> None:
        async def main() -> None:
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/v1/chat/completions", self._chat)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.base_url = f"http://127.0.0.1:{port}"
            self._ready.set()
            await asyncio.Event().wait()

        self._loop = asyncio.new_event_loop()
        with suppress(RuntimeError):
            self._loop.run_until_complete(main())

    @contextmanager
    def running(self) -> Iterator[Upstream]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        self._ready.wait(10)
        yield self


def stand_in_summary(ask: str, max_tokens: int) -> str:
    """The previous summary, then the first sentence of each new message, cut at ``max_tokens`` tokens."""
    previous = ""
    if ask.startswith("Summary so far:\n"):
        previous, _, ask = ask[len("Summary so far:\n") :].partition("\n\nNew turns to fold in:\n")
    else:
        ask = ask.removeprefix("Conversation:\n")
    ask = ask.rsplit("\n\nWrite the", 1)[0]
    firsts = [_SENTENCE.split(block.strip(), maxsplit=1)[0][:300] for block in ask.split("\n\n") if block.strip()]
    text = " ".join([previous.strip(), *firsts]).strip()
    tokens = ENCODING.encode(text, disallowed_special=())
    return ENCODING.decode(tokens[-max_tokens:]) if len(tokens) > max_tokens else text


# -- one run ------------------------------------------------------------------------------------------------


CONFIG = """
[ledger]
url = "sqlite:///ledger.sqlite"
flush_interval_ms = 20

[providers.up]
kind = "openai"
base_url = "{base}/v1"

[models.strong]
targets = ["up::{strong}"]

[models.cheap]
targets = ["up::{cheap}"]
{optimize}
"""


def run(conversations: list[Conversation], up: Upstream, optimize: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "thrifty.toml"
        path.write_text(CONFIG.format(base=up.base_url, strong=STRONG, cheap=CHEAP, optimize=optimize))
        per_turn: list[list[int]] = []
        with ServerThread(load_settings(path)) as gw:
            client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
            for n, conversation in enumerate(conversations):
                messages: list[Any] = [{"role": "system", "content": conversation.system}]
                for t, (question, _) in enumerate(conversation.turns):
                    messages.append({"role": "user", "content": question})
                    reply = client.chat.completions.create(
                        model="strong", messages=messages, extra_headers={"x-thrifty-session": f"s{n}"}
                    )
                    assert reply.usage is not None
                    while len(per_turn) <= t:
                        per_turn.append([])
                    per_turn[t].append(reply.usage.prompt_tokens)
                    messages.append({"role": "assistant", "content": reply.choices[0].message.content})
            client.close()
            assert gw.runtime.ledger.flush(30)
            with gw.runtime.ledger.engine.connect() as conn:
                r = tables.requests.c
                rows = conn.execute(
                    select(
                        r.model,
                        func.count(),
                        func.sum(r.input_tokens),
                        func.sum(r.output_tokens),
                        func.sum(r.cost_nusd),
                        func.sum(r.baseline_cost_nusd),
                    ).group_by(r.model)
                ).all()
                levers = dict(
                    conn.execute(
                        select(tables.savings.c.lever, func.sum(tables.savings.c.savings_nusd)).group_by(
                            tables.savings.c.lever
                        )
                    ).all()
                )
    by_model = {
        m: {"calls": c, "input_tokens": i, "output_tokens": o, "cost_usd": usd(cost), "baseline_usd": usd(base)}
        for m, c, i, o, cost, base in rows
    }
    return {
        "prompt_tokens_per_turn_mean": [round(statistics.mean(t), 1) for t in per_turn],
        "prompt_tokens_mean": round(statistics.mean(x for t in per_turn for x in t), 1),
        "by_model": by_model,
        "cost_usd": sum(m["cost_usd"] for m in by_model.values()),
        "lever_savings_usd": {k: usd(v) for k, v in levers.items()},
    }


def usd(nusd: int | None) -> float:
    return float(Decimal(nusd or 0) / Decimal(10**9))


def compare(name: str, conversations: list[Conversation], up: Upstream, optimize: str) -> dict[str, Any]:
    plain = run(conversations, up, "")
    summarized = run(conversations, up, optimize)
    net = plain["cost_usd"] - summarized["cost_usd"]
    summaries = summarized["by_model"].get(CHEAP, {"calls": 0, "cost_usd": 0.0})
    result = {
        "conversations": len(conversations),
        "turns": len(conversations[0].turns),
        "config": optimize.strip(),
        "without": plain,
        "with": summarized,
        "summary_calls": summaries["calls"],
        "summarizer_cost_usd": summaries["cost_usd"],
        "net_saving_usd": net,
        "net_saving_share": net / plain["cost_usd"] if plain["cost_usd"] else 0.0,
        "ledger_summarize_lever_usd": summarized["lever_savings_usd"].get("summarize", 0.0),
    }
    p, s = plain["prompt_tokens_per_turn_mean"], summarized["prompt_tokens_per_turn_mean"]
    print(f"\n{name}: {len(conversations)} conversations x {result['turns']} turns")
    print("  prompt tokens per turn (mean over conversations), without -> with:")
    step = max(1, len(p) // 10)
    for t in sorted({*range(0, len(p), step), len(p) - 1}):
        print(f"    turn {t + 1:>2}: {p[t]:>8,.0f} -> {s[t]:>8,.0f}")
    print(
        f"  mean prompt tokens per turn: {plain['prompt_tokens_mean']:,.0f} -> {summarized['prompt_tokens_mean']:,.0f}"
    )
    print(
        f"  cost: ${plain['cost_usd']:.4f} -> ${summarized['cost_usd']:.4f} incl. {summaries['calls']} summaries "
        f"(${summaries['cost_usd']:.4f}); net saving ${net:.4f} ({result['net_saving_share']:.1%}); "
        f"ledger's summarize lever: ${result['ledger_summarize_lever_usd']:.4f}"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--turns", type=int, default=30)
    args = parser.parse_args()
    mt = mt_bench_conversations()
    long = workload_sessions(args.sessions, args.turns)
    answers = {q: a for c in [*mt, *long] for q, a in c.turns}
    results: dict[str, Any] = {"benchmark": "optimize_summarize", "machine": platform.machine()}
    summarize = '\n[optimize.summarize]\nmodel = "cheap"\nafter_tokens = {after}\nkeep_last_messages = {keep}\n'
    summarize += "max_summary_tokens = {cap}\n"
    with Upstream(answers).running() as up:
        results["mt_bench_default"] = compare(
            "MT-Bench two-turn, default keep_last_messages = 4", mt, up, summarize.format(after=256, keep=4, cap=200)
        )
        results["mt_bench_keep_1"] = compare(
            "MT-Bench two-turn, keep_last_messages = 1", mt, up, summarize.format(after=256, keep=1, cap=200)
        )
        results["long_sessions"] = compare(
            "Long sessions from the demo workload", long, up, summarize.format(after=1500, keep=4, cap=300)
        )
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    main()
