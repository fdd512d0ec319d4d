"""The semantic cache through the running gateway: paraphrases hit; other tenants, system prompts,
conversations and the known false-hit patterns miss; streams are served from it; pgvector shares it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select

from fakes.upstream import FakeUpstream, FakeUsage, Fault
from gateway_harness import config_text, ledger_rows
from thrifty.caches.eval_pairs import read_pairs
from thrifty.caches.verified import verified_command, verified_pairs
from thrifty.cli import main
from thrifty.errors import ConfigError
from thrifty.export import export_workload
from thrifty.keys import create_key
from thrifty.ledger import tables
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings
from thrifty.types import ChatRequest, Principal

SEMANTIC = '\n[cache]\nsemantic = true\nembedder = "{embedder}"\n'
SYSTEM = {"role": "system", "content": "You answer questions about our cloud product."}


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=100, output_tokens=20)) as upstream:
        yield upstream


def gateway(tmp_path: Path, up: FakeUpstream, extra: str, name: str = "gw", capture: bool = False) -> ServerThread:
    (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / name / "thrifty.toml").write_text(config_text(up, extra=extra, capture_payloads=capture))
    return ServerThread(load_settings(tmp_path / name / "thrifty.toml"))


def ask(client: openai.OpenAI, *messages: dict[str, str], **kwargs: Any) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(
        model="fast",
        messages=[*messages],
        temperature=0,
        **kwargs,  # type: ignore[list-item]
    )
    return raw.headers["x-thrifty-cache"], raw.parse().choices[0].message.content or ""


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


@pytest.mark.parametrize("embedder", ["minilm"])
def test_paraphrase_hits_and_lookalikes_miss(tmp_path: Path, up: FakeUpstream, embedder: str) -> None:
    with gateway(tmp_path, up, SEMANTIC.format(embedder=embedder)) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            assert ask(c, SYSTEM, user("How do I reset my account password?"))[0] == "miss"
            kind, answer = ask(c, SYSTEM, user("How can I reset my account password?"))
            assert kind == "semantic" and answer == "echo: How do I reset my account password?"
            assert ask(c, SYSTEM, user("How can I reset my account password"))[0] == "semantic"
            # The known false-hit patterns stay misses.
            assert ask(c, SYSTEM, user("How do I enable two-factor authentication?"))[0] == "miss"
            assert ask(c, SYSTEM, user("How do I disable two-factor authentication?"))[0] == "miss"
            assert ask(c, SYSTEM, user("What was our uptime on 2024-05-01?"))[0] == "miss"
            assert ask(c, SYSTEM, user("What was our uptime on 2024-05-02?"))[0] == "miss"
            assert ask(c, SYSTEM, user("Summarize this: the quarterly revenue grew by 12% in Europe."))[0] == "miss"
            assert ask(c, SYSTEM, user("Summarize this: the quarterly revenue fell by 3% in Asia."))[0] == "miss"
            # Another system prompt is another context.
            other = {"role": "system", "content": "You are a pirate."}
            assert ask(c, other, user("How can I reset my account password?"))[0] == "miss"
        rows = ledger_rows(gw)
    hits = [r for r in rows if r["cache"] == "semantic"]
    assert len(hits) == 2 and all(r["cost_nusd"] == 0 and r["baseline_cost_nusd"] > 0 for r in hits)


def test_follow_ups_only_match_inside_their_own_conversation(tmp_path: Path, up: FakeUpstream) -> None:
    with gateway(tmp_path, up, SEMANTIC.format(embedder="minilm")) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            london = [user("What is the weather like in London?"), {"role": "assistant", "content": "Rainy."}]
            tokyo = [user("Which museums are open in Tokyo?"), {"role": "assistant", "content": "Many."}]
            assert ask(c, *london, user("and in Paris?"))[0] == "miss"
            assert ask(c, *tokyo, user("and in Paris?"))[0] == "miss"
            assert ask(c, *london, user("And in Paris?"))[0] == "semantic"


def test_other_tenants_never_share_answers(tmp_path: Path, up: FakeUpstream) -> None:
    with gateway(tmp_path, up, SEMANTIC.format(embedder="minilm")) as gw:
        engine = gw.runtime.ledger.engine
        acme, globex = create_key(engine, "acme")[1], create_key(engine, "globex")[1]
        gw.runtime.keys.refresh()
        with (
            openai.OpenAI(base_url=gw.base_url + "/v1", api_key=acme, max_retries=0) as a,
            openai.OpenAI(base_url=gw.base_url + "/v1", api_key=globex, max_retries=0) as g,
        ):
            assert ask(a, SYSTEM, user("How do I rotate my API keys?"))[0] == "miss"
            assert ask(g, SYSTEM, user("How can I rotate my API keys?"))[0] == "miss"
            assert ask(a, SYSTEM, user("How can I rotate my API keys?"))[0] == "semantic"


def test_a_stream_is_served_from_the_semantic_cache(tmp_path: Path, up: FakeUpstream) -> None:
    with gateway(tmp_path, up, SEMANTIC.format(embedder="minilm")) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            ask(c, SYSTEM, user("How do I export my billing history?"))
            raw = c.chat.completions.with_raw_response.create(
                model="fast",
                messages=[SYSTEM, user("How can I export my billing history?")],
                temperature=0,
                stream=True,
            )
            text = "".join(ch.choices[0].delta.content or "" for ch in raw.parse() if ch.choices)
    assert raw.headers["x-thrifty-cache"] == "semantic"
    assert text == "echo: How do I export my billing history?"
    assert len(up.requests) == 1


def test_replicas_share_a_pgvector_semantic_cache(
    tmp_path: Path, up: FakeUpstream, pgvector_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = SEMANTIC.format(embedder="minilm") + f'semantic_store = "pgvector"\nsemantic_url = "{pgvector_url}"\n'
    with gateway(tmp_path, up, extra, "a") as a, gateway(tmp_path, up, extra, "b") as b:
        with (
            openai.OpenAI(base_url=a.base_url + "/v1", api_key="x", max_retries=0) as ca,
            openai.OpenAI(base_url=b.base_url + "/v1", api_key="x", max_retries=0) as cb,
        ):
            assert ask(ca, SYSTEM, user("Where can I download my invoices?"))[0] == "miss"
            assert ask(cb, SYSTEM, user("Where can I download my invoices"))[0] == "semantic"
            # The CLI purges the shared table directly (no --gateway, no model loaded): both replicas miss.
            assert (
                main(["cache", "purge", "--config", str(tmp_path / "a" / "thrifty.toml"), "--tenant", "default"]) == 0
            )
            assert "purged 1 entries from the pgvector semantic store" in capsys.readouterr().out
            assert ask(cb, SYSTEM, user("Where can I download my invoices"))[0] == "miss"
    assert len(up.requests) == 2


def test_a_sample_of_semantic_hits_is_verified_against_the_model(tmp_path: Path) -> None:
    import time

    from sqlalchemy import select

    from thrifty.ledger import tables

    answers = {"reset": "Open Settings, choose Security, then Reset password and follow the email link."}

    def reply(body: dict[str, Any]) -> str:
        text = str(body["messages"][-1]["content"])
        if "billing" in text and "can" in text:
            return "Invoices are under Billing, History; export them as PDF or CSV."
        if "billing" in text:
            return "Contact support to receive a copy of past statements by post."
        return answers["reset"]

    extra = SEMANTIC.format(embedder="minilm") + "verify_sample = 1.0\n"
    with FakeUpstream(usage=FakeUsage(input_tokens=100, output_tokens=20), reply=reply) as up:
        with gateway(tmp_path, up, extra, capture=True) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
                headers = {"x-thrifty-feature": "help"}
                ask(c, SYSTEM, user("How do I reset my account password?"), extra_headers=headers)
                assert (
                    ask(c, SYSTEM, user("How can I reset my account password?"), extra_headers=headers)[0] == "semantic"
                )
                ask(c, SYSTEM, user("How do I export my billing history?"), extra_headers=headers)
                streamed = c.chat.completions.with_raw_response.create(  # a hit served as a stream is sampled too
                    model="fast",
                    messages=[SYSTEM, user("How can I export my billing history?")],  # type: ignore[list-item]
                    temperature=0,
                    stream=True,
                    extra_headers=headers,
                )
                assert streamed.headers["x-thrifty-cache"] == "semantic"
                assert "post" in "".join(ch.choices[0].delta.content or "" for ch in streamed.parse() if ch.choices)
            deadline = time.monotonic() + 10
            rows = ledger_rows(gw)
            while sum(r["endpoint"] == "verify" for r in rows) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)  # the verifications run in the background, after the answers were served
                rows = ledger_rows(gw)
            pairs = sorted(verified_pairs(gw.runtime.ledger.engine), key=lambda p: p["label"])
            said = verified_command(gw.runtime.ledger.engine, tmp_path / "verified.jsonl", None, "help")
            exported = export_workload(gw.runtime.ledger.engine, tmp_path / "traffic.jsonl")
            metrics = gw.runtime.gateway.metrics.render().decode()
            with gw.runtime.ledger.engine.connect() as conn:
                savings = [(s.request_id, s.lever, s.savings_nusd) for s in conn.execute(select(tables.savings))]
    verified = sorted(r["cache"] for r in rows if r["endpoint"] == "verify")
    assert verified == ["verify-agree", "verify-disagree"]
    # The verified hits as labelled pairs (`thrifty cache verified`), to tune the threshold on: the stored
    # question each hit answered, its score, and whether the model agreed.
    assert [(p["query"], p["cached"], p["label"], p["feature"]) for p in pairs] == [
        ("How can I export my billing history?", "How do I export my billing history?", 0, "help"),
        ("How can I reset my account password?", "How do I reset my account password?", 1, "help"),
    ]
    assert all(0.8 <= p["score"] <= 1 for p in pairs) and pairs[0]["context_query"] == [SYSTEM]
    assert exported == 4  # the client's requests; the verification calls are the gateway's own
    assert said.startswith("2 verified semantic hits (1 agreed, 1 disagreed: 50.0% false hits)")
    assert len(list(read_pairs(tmp_path / "verified.jsonl"))) == 2  # what eval cache and cache train read
    assert 'thrifty_semantic_verifications_total{feature="help",outcome="disagree"} 1.0' in metrics
    assert 'thrifty_semantic_verifications_total{feature="help",outcome="agree"} 1.0' in metrics
    verify_ids = {r["request_id"] for r in rows if r["endpoint"] == "verify"}
    assert all(amount < 0 for rid, lever, amount in savings if rid in verify_ids and lever == "cache")


def test_remote_embeddings_through_the_gateway_are_paid_and_recorded(tmp_path: Path, up: FakeUpstream) -> None:
    extra = (
        '\n[cache]\nsemantic = true\nembedder = "remote"\nembedding_model = "embed"\nembedding_dimensions = 32\n'
        "semantic_threshold = 0.5\n"
    )
    with gateway(tmp_path, up, extra) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            assert ask(c, SYSTEM, user("where can I download my invoices"))[0] == "miss"
            assert ask(c, SYSTEM, user("where can I download my invoices please"))[0] == "semantic"
        rows = ledger_rows(gw)
        with gw.runtime.ledger.engine.connect() as conn:
            savings = {(s.request_id, s.lever): s.savings_nusd for s in conn.execute(select(tables.savings))}
    embeds = [r for r in rows if r["endpoint"] == "embeddings"]
    assert embeds and all(r["tenant"] == "thrifty" and r["feature"] == "semantic-cache" for r in embeds)
    # The cache's own calls: no baseline (they exist only because of the cache), their cost charged to it.
    assert all(r["baseline_cost_nusd"] == 0 for r in embeds)
    assert all(savings[r["request_id"], "cache"] == -r["cost_nusd"] for r in embeds)
    assert {r["model"] for r in embeds} == {"text-embedding-3-small"}
    assert all(r["cost_nusd"] > 0 for r in embeds)
    assert [r.path for r in up.requests].count("/v1/embeddings") == len(embeds)


def test_eval_cache_with_the_remote_embedder_pays_and_records_its_calls(
    tmp_path: Path, up: FakeUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    """``thrifty eval cache`` with ``embedder = "remote"`` starts the configured gateway for the run: the embedding
    calls go through it, priced, into the configured ledger, and the summary says what they cost."""
    import json
    from decimal import Decimal

    from sqlalchemy import create_engine, select

    from thrifty.ledger import tables

    extra = '\n[cache]\nsemantic = true\nembedder = "remote"\nembedding_model = "embed"\nembedding_dimensions = 32\n'
    (tmp_path / "thrifty.toml").write_text(config_text(up, extra=extra))
    tool_turn = [{"role": "tool", "tool_call_id": "1", "content": "42"}]
    pairs = [
        {"query": "where can I download my invoices", "cached": "where can I download my invoices please", "label": 1},
        {"query": "how do I enable 2FA", "cached": "how do I disable 2FA", "label": 0},
        # Settled before any embedding, so never paid for: different contexts, a conversation with tool results.
        {"query": "and in Paris?", "cached": "and in Paris?", "label": 0, "context_query": [user("Rome?")]},
        {"query": "so?", "cached": "so what?", "label": 0, "context_query": tool_turn, "context_cached": tool_turn},
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = str(tmp_path / "thrifty.toml")
    pairs_file, decisions = str(tmp_path / "pairs.jsonl"), str(tmp_path / "out.jsonl")
    assert main(["eval", "cache", "--config", config, "--pairs", pairs_file, "--decisions", decisions]) == 0
    printed = capsys.readouterr().out
    assert "embedder remote:embed" in printed and "remote embeddings: 1 call, $" in printed
    engine = create_engine(load_settings(tmp_path / "thrifty.toml").ledger_url())
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(tables.requests)).mappings()]
    engine.dispose()
    assert [(r["endpoint"], r["tenant"], r["feature"]) for r in rows] == [("embeddings", "thrifty", "semantic-cache")]
    assert rows[0]["cost_nusd"] > 0
    assert f"1 call, ${Decimal(rows[0]['cost_nusd']) / 10**9:f}, in the ledger" in printed
    assert [r.path for r in up.requests] == ["/v1/embeddings"]
    assert len(up.requests[0].json["input"]) == 4
    decided = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [d["reason"].split(":")[0] for d in decided[2:]] == ["contexts differ", "never cached"]


def test_cache_train_with_the_remote_embedder_sends_its_texts_in_batches(
    tmp_path: Path, up: FakeUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    """Providers cap the inputs of one embeddings request: a training file goes in batches, each paid."""
    import json

    from thrifty.caches.embedders import REMOTE_BATCH

    extra = '\n[cache]\nsemantic = true\nembedder = "remote"\nembedding_model = "embed"\nembedding_dimensions = 32\n'
    (tmp_path / "thrifty.toml").write_text(config_text(up, extra=extra))
    pairs = [
        {"query": f"how do I export report {i} to pdf", "cached": f"exporting report {i} as a pdf", "label": i % 2}
        for i in range(200)
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config, out = str(tmp_path / "thrifty.toml"), str(tmp_path / "model")
    assert main(["cache", "train", "--config", config, "--pairs", str(tmp_path / "pairs.jsonl"), "--out", out]) == 0
    sizes = [len(r.json["input"]) for r in up.requests if r.path == "/v1/embeddings"]
    assert sum(sizes) == 400 and max(sizes) <= REMOTE_BATCH and len(sizes) == 2
    assert "remote embeddings: 2 calls, $" in capsys.readouterr().out


def test_an_image_question_only_matches_the_same_image(tmp_path: Path, up: FakeUpstream) -> None:
    """The same words about another picture are another question: the attachment is part of the partition."""

    def about(url: str, text: str) -> dict[str, Any]:
        return {
            "role": "user",
            "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}],
        }

    cat, dog = "data:image/png;base64,Y2F0", "data:image/png;base64,ZG9n"
    with gateway(tmp_path, up, SEMANTIC.format(embedder="minilm")) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            assert ask(c, SYSTEM, about(cat, "What animal is in this picture?"))[0] == "miss"
            assert ask(c, SYSTEM, about(dog, "What animal is in this picture?"))[0] == "miss"
            assert ask(c, SYSTEM, about(dog, "what animal is in this photo?"))[0] == "semantic"
            assert ask(c, SYSTEM, user("What animal is in this picture?"))[0] == "miss"  # and none at all
    assert len(up.requests) == 3


def test_a_failing_embedder_is_a_miss_and_loses_no_paid_answer(tmp_path: Path, up: FakeUpstream) -> None:
    """The remote embedding model fails at the lookup and again at the store: the request is answered all the same,
    its cost is in the ledger, nothing is cached; a refusal of one text (a 400) is that request's miss only, so the
    next request embeds again."""
    extra = (
        '\n[cache]\nsemantic = true\nembedder = "remote"\nembedding_model = "embed"\nembedding_dimensions = 32\n'
        "semantic_threshold = 0.5\n"
    )
    with gateway(tmp_path, up, extra) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            up.script([Fault.status(400), Fault.ok(), Fault.status(400)])  # embed (lookup), chat, embed (store)
            kind, answer = ask(c, SYSTEM, user("where can I download my invoices"))
            assert (kind, answer) == ("miss", "echo: where can I download my invoices")
            assert ask(c, SYSTEM, user("where can I download my invoices please"))[0] == "miss"  # nothing stored
            assert ask(c, SYSTEM, user("where can I download my invoices, please"))[0] == "semantic"
        rows = ledger_rows(gw)
    chats = [r for r in rows if r["endpoint"] == "chat"]
    assert len(chats) == 3 and all(r["cost_nusd"] > 0 for r in chats[:2]) and chats[2]["cost_nusd"] == 0


def test_an_embeddings_server_that_is_down_is_spared_for_a_cool_down(
    tmp_path: Path, up: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embeddings server answers 503 at the lookup: the request is answered all the same, nothing is cached
    (the embedder is spared while it cools down, so the store does not try it); after the cool-down it works."""
    from thrifty.caches import resilient

    monkeypatch.setattr(resilient, "FIRST_COOLDOWN_S", 1.0)
    extra = (
        '\n[cache]\nsemantic = true\nembedder = "remote"\nembedding_model = "embed"\nembedding_dimensions = 32\n'
        "semantic_threshold = 0.5\n"
    )
    with gateway(tmp_path, up, extra) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            up.script([Fault.status(503)])  # the lookup's embedding
            kind, answer = ask(c, SYSTEM, user("where can I download my invoices"))
            assert (kind, answer) == ("miss", "echo: where can I download my invoices")
            time.sleep(1.1)
            assert ask(c, SYSTEM, user("where can I download my invoices please"))[0] == "miss"  # nothing stored
            assert ask(c, SYSTEM, user("where can I download my invoices, please"))[0] == "semantic"
        rows = ledger_rows(gw)
    chats = [r for r in rows if r["endpoint"] == "chat"]
    assert len(chats) == 3 and all(r["cost_nusd"] > 0 for r in chats[:2]) and chats[2]["cost_nusd"] == 0


def test_a_hanging_embedder_costs_one_timeout_then_is_spared(
    tmp_path: Path, up: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote embeddings model that accepts the call and never answers held each request for the provider's
    whole first-byte timeout (120 s by default), at the lookup and again at the store."""
    from thrifty.caches import semantic

    monkeypatch.setattr(semantic, "EMBED_TIMEOUT_S", 0.3)
    extra = '\n[cache]\nsemantic = true\nembedder = "remote"\nembedding_model = "embed"\nembedding_dimensions = 32\n'
    with gateway(tmp_path, up, extra) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            up.script([Fault.hang()])  # the lookup's embedding
            assert ask(c, SYSTEM, user("where can I download my invoices")) == (
                "miss",
                "echo: where can I download my invoices",
            )
    assert [r.path for r in up.requests] == ["/v1/embeddings", "/v1/chat/completions"]  # the store spared it


def test_a_zero_threshold_is_refused_at_start_up(tmp_path: Path, up: FakeUpstream) -> None:
    (tmp_path / "thrifty.toml").write_text(
        config_text(up, extra="\n[cache]\nsemantic = true\nsemantic_threshold = 0\n")
    )
    with pytest.raises(ConfigError, match="semantic_threshold"):
        load_settings(tmp_path / "thrifty.toml")


def test_a_failed_verification_is_in_the_ledger(tmp_path: Path, up: FakeUpstream) -> None:
    import time

    extra = SEMANTIC.format(embedder="minilm") + "verify_sample = 1.0\n"
    with gateway(tmp_path, up, extra) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            up.script([Fault.ok(), Fault.status(400)])  # the first answer, then the verification's call
            ask(c, SYSTEM, user("How do I reset my account password?"))
            assert ask(c, SYSTEM, user("How can I reset my account password?"))[0] == "semantic"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not [r for r in ledger_rows(gw) if r["endpoint"] == "verify"]:
            time.sleep(0.05)
        rows = ledger_rows(gw)
    (verify,) = [r for r in rows if r["endpoint"] == "verify"]
    assert verify["status"] == "error" and verify["error_type"] == "invalid_request_error"


def test_verification_asks_as_a_miss_would_have_with_the_features_optimizers(tmp_path: Path, up: FakeUpstream) -> None:
    """Without the feature's output cap (or stop sequences) the fresh answer differs from the cached one for that
    reason alone: a spurious disagreement."""
    import time

    extra = SEMANTIC.format(embedder="minilm") + "verify_sample = 1.0\n[optimize.caps]\ndefault_max_tokens = 40\n"
    with gateway(tmp_path, up, extra) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            ask(c, SYSTEM, user("How do I reset my account password?"))
            assert ask(c, SYSTEM, user("How can I reset my account password?"))[0] == "semantic"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(up.requests) < 2:
            time.sleep(0.05)
    assert [r.json.get("max_tokens") for r in up.requests] == [40, 40]


def test_verification_is_paid_from_the_principals_budget(tmp_path: Path, up: FakeUpstream) -> None:
    """The verification's cost counts against the budget like any call, so verifying cannot overshoot it."""
    import time

    extra = SEMANTIC.format(embedder="minilm") + "verify_sample = 1.0\n"
    extra += '\n[[budgets]]\nscope = "tenant"\nid = "default"\nusd = 1\nperiod = "day"\n'
    with gateway(tmp_path, up, extra) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            ask(c, SYSTEM, user("How do I reset my account password?"))
            assert ask(c, SYSTEM, user("How can I reset my account password?"))[0] == "semantic"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not [r for r in ledger_rows(gw) if r["endpoint"] == "verify"]:
            time.sleep(0.05)
        time.sleep(0.2)  # the settlement follows the ledger row's accounting
        rows = ledger_rows(gw)
        metrics = gw.runtime.gateway.metrics.render().decode()
    spent = sum(int(r["cost_nusd"]) for r in rows)
    assert [r["endpoint"] for r in rows].count("verify") == 1 and spent > 0
    (line,) = [m for m in metrics.splitlines() if m.startswith("thrifty_budget_remaining_usd{")]
    assert float(line.split()[-1]) == pytest.approx(1 - spent / 1e9, abs=1e-12)


def test_an_alias_rule_turns_the_semantic_cache_on_for_that_alias_only(tmp_path: Path, up: FakeUpstream) -> None:
    extra = '\n[cache]\nembedder = "minilm"\n[cache.models.fast]\nsemantic = true\nsemantic_threshold = 0.5\n'
    with gateway(tmp_path, up, extra) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            assert ask(c, SYSTEM, user("How do I reset my account password?"))[0] == "miss"
            assert ask(c, SYSTEM, user("How can I reset my account password?"))[0] == "semantic"
            for question in ("How do I reset my account password?", "How can I reset my account password?"):
                raw = c.chat.completions.with_raw_response.create(
                    model="resilient", messages=[SYSTEM, user(question)], temperature=0
                )
                assert raw.headers["x-thrifty-cache"] == "miss"


def test_changing_an_alias_targets_changes_its_semantic_partition() -> None:
    from thrifty.caches.keys import semantic_query
    from thrifty.types import ChatRequest, Principal, Target

    request = ChatRequest({"model": "fast", "messages": [SYSTEM, user("hi")]}, "r1")
    principal = Principal("default")
    mini = semantic_query(request, principal, [Target("up", "gpt-4o-mini")])
    big = semantic_query(request, principal, [Target("up", "gpt-4o")])
    assert mini is not None and big is not None and mini.partition != big.partition and mini.text == big.text


def test_a_feature_ttl_bounds_the_age_of_semantic_hits(tmp_path: Path, up: FakeUpstream) -> None:
    extra = SEMANTIC.format(embedder="minilm") + "[cache.features.news]\nttl_s = 0.3\n"
    news = {"x-thrifty-feature": "news"}
    with gateway(tmp_path, up, extra) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            assert ask(c, SYSTEM, user("How do I reset my account password?"))[0] == "miss"
            time.sleep(0.5)
            assert ask(c, SYSTEM, user("How can I reset my account password?"), extra_headers=news)[0] == "miss"
            assert ask(c, SYSTEM, user("How can I reset my account password?"))[0] == "semantic"


def test_the_partition_holds_unknown_fields_and_the_plan_but_not_the_user() -> None:
    from thrifty.caches.keys import semantic_query

    principal = Principal("acme", "k", "u", "f", "s")
    base = {"model": "fast", "messages": [{"role": "user", "content": "What is the capital of France?"}]}

    def partition(plan_key: str = "", **extra: object) -> str:
        query = semantic_query(ChatRequest({**base, **extra}, "r", plan_key=plan_key), principal, ())
        assert query is not None
        return query.partition

    assert partition() == partition(user="bob", metadata={"a": 1}, stream=True)
    assert partition(verbosity="low") != partition(verbosity="high") != partition()
    assert partition(plan_key="abc") != partition()


def test_a_feature_whose_ttl_an_entry_outlived_stores_its_own_answer(tmp_path: Path, up: FakeUpstream) -> None:
    extra = SEMANTIC.format(embedder="minilm") + "[cache.features.news]\nttl_s = 0.3\n"
    news = {"x-thrifty-feature": "news"}
    question = user("How do I reset my account password?")
    with gateway(tmp_path, up, extra) as gw:
        with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as c:
            assert ask(c, SYSTEM, question)[0] == "miss"
            time.sleep(0.5)
            assert ask(c, SYSTEM, question, extra_headers=news)[0] == "miss"  # too old for news ...
            assert ask(c, SYSTEM, question, extra_headers=news)[0] == "semantic"  # ... so news keeps its own
    assert len(up.requests) == 2


def test_remote_embeddings_come_from_one_model_named_in_every_partition(tmp_path: Path, up: FakeUpstream) -> None:
    """Vectors of two models do not compare: a fallback to another model, or an alias pointed at a new one, must
    never file its vectors beside the old model's."""
    from thrifty.cache_assembly import build_embedder

    remote = '\n[cache]\nsemantic = true\nembedder = "remote"\nembedding_model = "{alias}"\nembedding_dimensions = 32\n'
    (tmp_path / "one.toml").write_text(config_text(up, extra=remote.format(alias="embed")))
    assert build_embedder(load_settings(tmp_path / "one.toml")).name.endswith("remote:embed=text-embedding-3-small")
    spelled = '\n[models.spelled]\ntargets = ["up::text-embedding-3-small", "up::openai/text-embedding-3-small"]\n'
    (tmp_path / "spelled.toml").write_text(config_text(up, extra=spelled + remote.format(alias="spelled")))
    assert build_embedder(load_settings(tmp_path / "spelled.toml")).name.endswith("=text-embedding-3-small")
    from thrifty.caches.pair_model import same_embedder

    assert same_embedder("remote:embed", "remote:embed=text-embedding-3-small")  # pair models trained before
    two = '\n[models.mixed]\ntargets = ["up::text-embedding-3-small", "up::text-embedding-3-large"]\n'
    (tmp_path / "two.toml").write_text(config_text(up, extra=two + remote.format(alias="mixed")))
    with pytest.raises(ConfigError, match="one embedding model"):
        build_embedder(load_settings(tmp_path / "two.toml"))


def test_the_text_parts_of_a_turn_are_read_as_separate_lines() -> None:
    from thrifty.caches.keys import semantic_query

    parts = [{"type": "text", "text": "Translate to French"}, {"type": "text", "text": "good night"}]
    body = {"model": "fast", "messages": [{"role": "user", "content": parts}]}
    query = semantic_query(ChatRequest(body, "r"), Principal("acme"), ())
    assert query is not None and query.text == "Translate to French\ngood night"


async def test_in_process_vectors_at_their_limit_drop_expired_entries_before_live_ones() -> None:
    import asyncio

    import numpy as np

    from thrifty.caches.entries import CacheEntry
    from thrifty.caches.semantic import MemoryVectors
    from thrifty.types import Target, Usage

    def entry(ttl_s: float) -> CacheEntry:
        now = time.time()
        return CacheEntry({"choices": []}, Target("up", "m"), Usage(1, 1), "t", "f", "fast", now, now + ttl_s)

    vectors = MemoryVectors(4, max_entries=4)
    unit = np.array([1, 0, 0, 0], dtype=np.float32)
    await vectors.add("p", "live", unit, "live", entry(86_400))
    for name in ("d1", "d2", "d3"):
        await vectors.add("p", name, unit, name, entry(0.2))
    await asyncio.sleep(0.4)
    await vectors.add("p", "new", unit, "new", entry(86_400))
    assert sorted(text for _, _, text, _ in await vectors.search("p", unit, 10)) == ["live", "new"]
