"""What a budget reserves: a bound that never undercounts while there is room, the counted worst case near the
limit (so a bound that holds too much never refuses what fits), and the in-process store's bookkeeping."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal

import pytest

from thrifty.errors import AgentCapReached, BudgetExceeded, RateLimited
from thrifty.guards.budgets import BOUND_HEADROOM, Budget, BudgetAlerts, BudgetGuard
from thrifty.guards.chain import GuardChain
from thrifty.guards.estimate import CostEstimator, ceil_nusd, prompt_tokens, size_class
from thrifty.guards.limits import AgentCaps, AgentGuard, RateLimit, RateLimiter
from thrifty.guards.stores import MemoryGuardStore, Window
from thrifty.ledger.tables import to_nusd
from thrifty.media import media_tokens
from thrifty.observe.alerts import Alert
from thrifty.pricing import CatalogPricer, ModelPrice
from thrifty.tokens import TiktokenCounter, messages_token_bound
from thrifty.types import ChatRequest, Cost, Principal, Target, Usage

MINI = Target("up", "gpt-4o-mini")
CLAUDE = Target("anth", "claude-3-5-haiku-latest")
PRICES = {
    "gpt-4o-mini": ModelPrice(Decimal("0.15"), Decimal("0.60")),
    "claude-3-5-haiku-latest": ModelPrice(Decimal("0.80"), Decimal("4")),
}
ACME = Principal("acme", "key_1", "u1", "search", "s1")
TEXTS = [
    "hello world",
    "Où est ma commande ? Elle devait arriver hier. Ça m'inquiète un peu.",
    "注文番号12345はどこですか？昨日届く予定でした。",
    "🙂🙃 emoji, ZWJ 👩‍👩‍👧 and combining é",
    "    indented\n\tcode = {'a': [1, 2, 3]}  # tokens\r\n",
    "a" * 3000,
]


class CountingCounter(TiktokenCounter):
    """Counts how often the prompt is actually encoded."""

    def __init__(self) -> None:
        self.calls = 0

    def count_messages(self, model: str, messages: Sequence[dict[str, object]]) -> int:
        self.calls += 1
        return super().count_messages(model, messages)


def request(text: str = "Where is my order 12345? It was due yesterday.", max_tokens: int = 256) -> ChatRequest:
    messages = [{"role": "system", "content": "You help an online store."}, {"role": "user", "content": text}]
    return ChatRequest({"model": "fast", "messages": messages, "max_tokens": max_tokens}, "req")


def estimator(counter: TiktokenCounter | None = None, targets: tuple[Target, ...] = (MINI,)) -> CostEstimator:
    return CostEstimator(CatalogPricer(PRICES), counter or TiktokenCounter(), {"fast": targets})


def guard(budgets: Sequence[Budget], counter: TiktokenCounter | None = None) -> tuple[BudgetGuard, MemoryGuardStore]:
    store = MemoryGuardStore()
    return BudgetGuard(lambda: budgets, store, estimator(counter), lambda b, since: Decimal(0)), store


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4", "claude-3-5-haiku"])
def test_the_byte_bound_never_undercounts(model: str) -> None:
    counter = TiktokenCounter()
    for text in TEXTS:
        messages: list[dict[str, object]] = [
            {"role": "user", "content": text, "name": "bob"},
            {"role": "assistant", "content": [{"type": "text", "text": text}]},
            {"role": "assistant", "tool_calls": [{"function": {"name": "lookup", "arguments": text}}]},
            {"role": "user", "content": [{"type": "text", "text": text}, IMAGE, AUDIO]},
        ]
        reserved = prompt_tokens(counter, ChatRequest({"model": "fast", "messages": messages}, "r"), model)
        assert messages_token_bound(messages) >= reserved >= counter.count_messages(model, messages)


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGR" * 4000, "format": "wav"}}


@pytest.mark.parametrize(
    ("model", "per_image"), [("gpt-4o", 1_600), ("gpt-4o-mini", 48_169), ("claude-3-5-haiku", 1_600)]
)
def test_images_and_audio_count_what_they_may_be_billed(model: str, per_image: int) -> None:
    """An image is no text, but a provider bills it as up to ~1,600 prompt tokens (GPT-4o mini: 48,169): a
    reservation that counted it as nothing would let image requests overshoot a budget."""
    counter = TiktokenCounter()
    text_only = [{"role": "user", "content": [{"type": "text", "text": "what is in these?"}]}]
    with_media = [{"role": "user", "content": [{"type": "text", "text": "what is in these?"}, IMAGE, IMAGE, AUDIO]}]

    def reserved(messages: list[dict[str, object]]) -> int:
        return prompt_tokens(counter, ChatRequest({"model": "fast", "messages": messages}, "r"), model)

    extra = reserved(with_media) - reserved(text_only)  # type: ignore[arg-type]
    assert extra == 2 * per_image + 15_000 // 100 + 1  # 20,000 base64 characters: 15,000 bytes of audio
    assert messages_token_bound(with_media) >= reserved(with_media)  # type: ignore[arg-type]
    # Only reservations and estimates take the bound; routing, pruning and savings count the text alone.
    assert counter.count_messages(model, with_media) == counter.count_messages(model, text_only)  # type: ignore[arg-type]


def test_malformed_media_parts_count_as_an_image_or_nothing_and_never_raise() -> None:
    parts = [{"type": "input_audio", "input_audio": "AAAA"}, {"type": "file", "file": "x"}, {"type": "image_url"}, 7]
    assert media_tokens(parts, "gpt-4o") == 1 + 1_600 + 1_600


def test_size_classes_round_up_by_at_most_an_eighth() -> None:
    for tokens in [*range(200), 1000, 12_345, 999_999]:
        assert tokens <= size_class(tokens) <= tokens + tokens // 8 + 1


def test_the_bound_covers_the_dearest_target_and_unpriced_stays_unpriced() -> None:
    both = estimator(targets=(MINI, CLAUDE))
    for text in TEXTS:
        worst, _ = both.worst_case(request(text))
        assert worst is not None
        bound = both.worst_case_bound(request(text))
        assert bound is not None and bound >= ceil_nusd(worst)
    mystery = CostEstimator(CatalogPricer(PRICES), TiktokenCounter(), {"fast": (Target("up", "my-finetune"),)})
    assert mystery.worst_case_bound(request()) is None


def test_a_cascade_reserves_every_tier_it_may_pay_for() -> None:
    """A fallback pays for one target (the dearest is the worst case); a cascade may pay for all of them."""
    pricer, counter = CatalogPricer(PRICES), TiktokenCounter()
    fallback = CostEstimator(pricer, counter, {"fast": (MINI, CLAUDE)})
    cascade = CostEstimator(pricer, counter, {"fast": (MINI, CLAUDE)}, cascades=frozenset({"fast"}))
    alone = [CostEstimator(pricer, counter, {"fast": (t,)}).worst_case(request())[0] for t in (MINI, CLAUDE)]
    assert alone[0] is not None and alone[1] is not None
    assert fallback.worst_case(request())[0] == max(alone[0], alone[1])
    assert cascade.worst_case(request())[0] == alone[0] + alone[1]
    bound = cascade.worst_case_bound(request())
    assert bound is not None and bound >= ceil_nusd(alone[0] + alone[1])


def test_tool_definitions_and_schemas_count_in_the_estimate_and_the_bound() -> None:
    plain = request()
    tool = {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "parameters": {
                "type": "object",
                "properties": {
                    "order_id": {"type": "string", "description": "The order number, as printed on the receipt. " * 20}
                },
            },
        },
    }
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
    tooled = ChatRequest({**plain.body, "tools": [tool], "response_format": schema}, "req")
    est = estimator()
    (worst_plain, tokens_plain), (worst_tooled, tokens_tooled) = est.worst_case(plain), est.worst_case(tooled)
    assert tokens_tooled >= tokens_plain + 180  # the description alone is ~200 tokens
    assert worst_plain is not None and worst_tooled is not None and worst_tooled > worst_plain
    bound = est.worst_case_bound(tooled)
    assert bound is not None and bound >= ceil_nusd(worst_tooled)
    assert est.quotes(tooled)[0].input_tokens == tokens_tooled


async def test_far_from_the_limit_nothing_is_encoded() -> None:
    counter = CountingCounter()
    budget = Budget("b", "tenant", "acme", "month", Decimal(1000))
    budgets, store = guard([budget], counter)
    for _ in range(50):
        admission = await budgets.admit(request(), ACME)
        await admission.settle(to_nusd(Decimal("0.0001")) or 0)
    assert counter.calls == 0
    assert await store.reserved_total() == 0


async def test_near_the_limit_it_admits_what_the_counted_worst_case_admits() -> None:
    counter = CountingCounter()
    counted = ceil_nusd(estimator().worst_case(request())[0] or Decimal(0))
    bound = estimator().worst_case_bound(request()) or 0
    assert bound > counted  # else this test shows nothing
    limit = Decimal(counted * 7 + counted // 2) / Decimal(10**9)  # room for 7 counted, fewer bounds
    budgets, store = guard([Budget("b", "tenant", "acme", "day", limit)], counter)
    held = [await budgets.admit(request(), ACME) for _ in range(7)]  # all in flight at once: none settles
    with pytest.raises(BudgetExceeded):
        await budgets.admit(request(), ACME)
    assert counter.calls > 0
    for admission in held:
        await admission.settle(0)
    assert await store.reserved_total() == 0


async def test_a_bound_refused_on_stale_room_is_retried_with_the_counted_cost() -> None:
    counted = ceil_nusd(estimator().worst_case(request())[0] or Decimal(0))
    limit_nusd = counted * BOUND_HEADROOM * 100
    budget = Budget("b", "tenant", "acme", "day", Decimal(limit_nusd) / Decimal(10**9))
    budgets, store = guard([budget])
    first = await budgets.admit(request(), ACME)  # with this much room it holds the bound
    await first.settle(0)
    key = next(iter(store._accounts))
    await store.settle(key, "elsewhere", limit_nusd - counted - 1)  # another replica spends all but one request
    admitted = await budgets.admit(request(), ACME)  # the bound no longer fits; the counted cost does
    with pytest.raises(BudgetExceeded):
        await budgets.admit(request(), ACME)
    await admitted.settle(0)
    assert await store.reserved_total() == 0


def test_budgets_apply_by_scope_in_configured_order() -> None:
    current = [
        Budget("feature", "feature", "search", "total", Decimal(1)),
        Budget("other-tenant", "tenant", "globex", "total", Decimal(1)),
        Budget("key", "key", "key_1", "total", Decimal(1)),
        Budget("unscoped", "user", "", "total", Decimal(1)),
        Budget("tenant", "tenant", "acme", "total", Decimal(1)),
    ]
    budgets = BudgetGuard(lambda: current, MemoryGuardStore(), estimator(), lambda b, since: Decimal(0))
    assert [b.budget_id for b in budgets._applicable(ACME)] == ["feature", "key", "tenant"]
    assert budgets._applicable(Principal("nobody")) == []
    current = [Budget("session", "session", "s1", "total", Decimal(1)), *current]  # a refresh: a new sequence
    assert [b.budget_id for b in budgets._applicable(ACME)] == ["session", "feature", "key", "tenant"]


class Sink:
    def __init__(self) -> None:
        self.fired: list[Alert] = []

    def fire(self, alert: Alert) -> None:
        self.fired.append(alert)


def test_budget_alerts_fire_each_threshold_once() -> None:
    sink = Sink()
    alerts = BudgetAlerts(sink)  # type: ignore[arg-type]
    budget = Budget("b", "tenant", "acme", "day", Decimal(1))
    for spent_usd in ["0.1", "0.49", "0.5", "0.6", "0.79", "0.95", "0.97", "1.2", "5"]:
        alerts(budget, "budget:b:20260101", to_nusd(Decimal(spent_usd)) or 0)
    assert [a.dedupe_key.rsplit(":", 1)[1] for a in sink.fired] == ["50", "80", "100"]
    alerts(budget, "budget:b:20260102", to_nusd(Decimal(3)) or 0)  # a new period jumps past all three at once
    assert len(sink.fired) == 6


async def test_the_memory_store_keeps_its_running_total_through_expiry_and_settlement() -> None:
    store = MemoryGuardStore()
    assert (await store.reserve("k", "a", 100, 1000, 0.05, 0)).ok
    assert (await store.reserve("k", "b", 200, 1000, 900, 0)).ok
    assert (await store.reserve("k", "b", 300, 1000, 900, 0)).reserved == 400  # the same token replaces its hold
    assert not (await store.reserve("k", "c", 601, 1000, 900, 0)).ok
    await asyncio.sleep(0.06)
    assert await store.reserved_total() == 300  # "a" expired
    assert await store.settle("k", "a", 100) == 100  # spent, though its hold had already gone
    assert await store.settle("k", "b", 250) == 350
    assert await store.reserved_total() == 0
    assert (await store.reserve("k", "d", 650, 1000, 900, 0)).ok


def test_each_target_prices_its_own_image_tokens() -> None:
    """GPT-4o and GPT-4o mini share an encoding but bill an image as 1,600 and 48,169 tokens: the alias's worst
    case is the dearer of the two as each bills it, whatever their order."""
    pricer, counter = CatalogPricer(PRICES), TiktokenCounter()
    four = Target("up", "gpt-4o")
    body = {"model": "fast", "messages": [{"role": "user", "content": [IMAGE] * 4}], "max_tokens": 10}
    alone = [CostEstimator(pricer, counter, {"fast": (t,)}).worst_case(ChatRequest(body, "r"))[0] for t in (four, MINI)]
    for order in ((four, MINI), (MINI, four)):
        both = CostEstimator(pricer, counter, {"fast": order}).worst_case(ChatRequest(body, "r"))[0]
        assert both == max(a for a in alone if a is not None)


async def test_a_count_the_store_lost_is_never_restarted_at_zero() -> None:
    """The store lost a period's count while the ledger was unreachable: refused (503) until the ledger can say
    what was spent, then seeded from it, never from zero."""
    from thrifty.errors import GuardsUnavailable

    ledger_up, spent = [True], Decimal("0.0009")

    def spend_since(budget: Budget, since: float) -> Decimal:
        if not ledger_up[0]:
            raise OSError("ledger database unreachable")
        return spent

    store = MemoryGuardStore()
    limit = Budget("b", "tenant", "acme", "day", Decimal("0.001"))
    budgets = BudgetGuard(lambda: [limit], store, estimator(), spend_since)
    small = request(max_tokens=10)
    await (await budgets.admit(small, ACME)).settle(0)  # seeded: $0.0009 of $0.001 spent
    store._accounts.clear()  # what a Redis restart leaves
    ledger_up[0] = False
    with pytest.raises(GuardsUnavailable):
        await budgets.admit(small, ACME)
    ledger_up[0] = True
    admitted = 0
    for _ in range(20):
        try:
            await (await budgets.admit(small, ACME)).settle(ceil_nusd(Decimal("0.00005")))
            admitted += 1
        except BudgetExceeded:
            break
    assert admitted <= 2  # $0.0001 of room left: two calls of $0.00005, not twenty


async def test_windows_count_all_or_none() -> None:
    store = MemoryGuardStore()
    assert await store.hit_window([Window("a", 1, 5, 60), Window("b", 1, 1, 60)]) is None
    overflow = await store.hit_window([Window("a", 1, 5, 60), Window("b", 1, 1, 60)])
    assert overflow is not None and overflow.index == 1
    assert await store.hit_window([Window("a", 4, 5, 60)]) is None  # "a" was not counted by the refused call
    assert await store.hit_window([Window("a", 1, 5, 60)]) is not None


def test_budget_alerts_follow_a_changed_limit() -> None:
    sink = Sink()
    alerts = BudgetAlerts(sink)  # type: ignore[arg-type]
    alerts(Budget("b", "tenant", "acme", "month", Decimal(100)), "budget:b:202601", to_nusd(Decimal(1)) or 0)
    lowered = Budget("b", "tenant", "acme", "month", Decimal(10))  # `thrifty budget set` lowered it
    alerts(lowered, "budget:b:202601", to_nusd(Decimal(12)) or 0)
    assert [a.dedupe_key.rsplit(":", 1)[1] for a in sink.fired] == ["50", "80", "100"]


async def test_a_clamped_summary_call_stays_the_gateways_own() -> None:
    budget = Budget("b", "tenant", "acme", "month", Decimal("0.001"), clamp=True)
    budgets, _ = guard([budget])
    summary = ChatRequest(
        {"model": "fast", "messages": request().messages, "max_tokens": 100_000}, "r1.summary", charged_to="summarize"
    )
    admission = await budgets.admit(summary, ACME)
    assert admission.request.body["max_tokens"] < 100_000  # clamped to what the budget can pay for
    assert admission.request.charged_to == "summarize" and admission.request.request_id == "r1.summary"
    await admission.settle(0)


async def test_the_gateways_own_calls_skip_rate_limits_and_agent_caps_but_not_budgets() -> None:
    store = MemoryGuardStore()
    limiter = RateLimiter([RateLimit("tenant", "*", rpm=1)], store)
    agents = AgentGuard(AgentCaps(max_calls=1))
    budget = Budget("b", "tenant", "acme", "month", Decimal("0.0001"))
    budgets = BudgetGuard(lambda: [budget], store, estimator(), lambda b, since: Decimal(0))
    chain = GuardChain(estimator(), store, budgets, limiter, agents)
    first = await chain.admit(request(max_tokens=10), ACME)
    await first.settle(Cost(Decimal(0)))
    own = replace(request(max_tokens=10), charged_to="summarize")
    for _ in range(3):  # the client's rpm and call cap are used up; the summaries still go
        admission = await chain.admit(own, ACME)
        await admission.settle(Cost(Decimal(0)))
    with pytest.raises((RateLimited, AgentCapReached)):  # while the client's own next call is refused
        await chain.admit(request(max_tokens=10), ACME)
    with pytest.raises(BudgetExceeded):  # the budget still holds for them
        await chain.admit(replace(request(max_tokens=1_000_000), charged_to="summarize"), ACME)


async def test_a_hold_renewed_outlives_its_first_expiry_and_a_gone_one_is_not_revived() -> None:
    store = MemoryGuardStore()
    assert (await store.reserve("k", "long", 300, 1000, 0.1, 0)).ok
    assert await store.extend("k", "long", 60)
    await asyncio.sleep(0.15)
    assert await store.reserved_total() == 300  # still held past its first expiry
    assert not (await store.reserve("k", "other", 701, 1000, 60, 0)).ok
    await store.settle("k", "long", 250)
    assert not await store.extend("k", "long", 60)  # settled: nothing to keep
    assert not await store.extend("k", "never", 60)
    assert (await store.reserve("k", "short", 100, 1000, 0.05, 0)).ok
    await asyncio.sleep(0.1)
    assert not await store.extend("k", "short", 60)  # already expired: not brought back


def test_a_prompt_that_may_be_written_to_a_provider_cache_reserves_the_write_price() -> None:
    """Anthropic bills a prompt written to its cache at 1.25x the input price, or 2x when a breakpoint asks for
    an hour: the worst case must cover the dearer of reading and writing the whole prompt."""
    written = ModelPrice(Decimal("0.80"), Decimal("4"), Decimal("0.08"), Decimal("1.00"), Decimal("1.60"))
    pricer, counter = CatalogPricer({"claude-3-5-haiku-latest": written}), TiktokenCounter()
    est = CostEstimator(pricer, counter, {"fast": (CLAUDE,)})
    plain = request("a" * 3000, max_tokens=1)
    worst, tokens = est.worst_case(plain)
    assert worst == (Decimal(tokens) * Decimal("1.00") + 4) / 1_000_000
    hourly_part = {"type": "text", "text": "a" * 3000, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    hourly = ChatRequest({**plain.body, "messages": [{"role": "user", "content": [hourly_part]}]}, "req")
    worst_hour, tokens_hour = est.worst_case(hourly)
    assert worst_hour == (Decimal(tokens_hour) * Decimal("1.60") + 4) / 1_000_000
    for req, exact in ((plain, worst), (hourly, worst_hour)):
        bound = est.worst_case_bound(req)
        assert exact is not None and bound is not None and bound >= ceil_nusd(exact)
    # Where writes cost nothing extra (OpenAI), nothing changes.
    assert estimator().worst_case(plain)[0] == CatalogPricer(PRICES).cost(MINI, Usage(est.worst_case(plain)[1], 1)).usd


def test_a_raised_limit_alerts_again_when_it_is_reached() -> None:
    """Reached at $10, raised to $100: reaching $100 is news again (a hard budget starts refusing there)."""
    sink = Sink()
    alerts = BudgetAlerts(sink)  # type: ignore[arg-type]
    period = "budget:b:202601"
    alerts(Budget("b", "tenant", "acme", "month", Decimal(10)), period, to_nusd(Decimal(11)) or 0)
    raised = Budget("b", "tenant", "acme", "month", Decimal(100))
    alerts(raised, period, to_nusd(Decimal(60)) or 0)
    alerts(raised, period, to_nusd(Decimal(100)) or 0)
    alerts(raised, period, to_nusd(Decimal(101)) or 0)
    assert [a.dedupe_key.rsplit(":", 1)[1] for a in sink.fired] == ["50", "80", "100", "50", "80", "100"]
    assert len({a.dedupe_key for a in sink.fired}) == 6


def test_a_request_with_audio_reserves_the_audio_rates() -> None:
    """gpt-audio bills audio in at $32 and out at $64 per million against $2.50 / $10 for text: a request sending
    audio and asking for it back must reserve at those rates."""
    pricer = CatalogPricer(catalog_providers={"up": ["openai"]})
    audio = Target("up", "gpt-audio")
    est = CostEstimator(pricer, TiktokenCounter(), {"fast": (audio,)})
    spoken = [{"role": "user", "content": [{"type": "text", "text": "Answer this."}, AUDIO]}]
    body = {"model": "fast", "messages": spoken, "max_tokens": 100, "modalities": ["text", "audio"]}
    worst, tokens = est.worst_case(ChatRequest(body, "r"))
    as_text = pricer.cost(audio, Usage(tokens, 100)).usd
    assert worst is not None and as_text is not None and worst > 10 * as_text / 2
    assert worst == pricer.cost(audio, Usage(tokens, 100, input_audio_tokens=tokens, output_audio_tokens=100)).usd
    bound = est.worst_case_bound(ChatRequest(body, "r"))
    assert bound is not None and bound >= ceil_nusd(worst)


def test_a_quote_shows_the_worst_case_a_budget_would_hold() -> None:
    """The worst case quoted must be the one reserved: with a prompt a provider may write to its cache, and for
    a cascade, the sum of its tiers."""
    from thrifty.quotes import quote_body

    written = ModelPrice(Decimal("0.80"), Decimal("4"), Decimal("0.08"), Decimal("1.00"))
    pricer = CatalogPricer({**PRICES, "claude-3-5-haiku-latest": written})
    cascade = CostEstimator(pricer, TiktokenCounter(), {"fast": (MINI, CLAUDE)}, cascades=frozenset({"fast"}))
    held, _ = cascade.worst_case(request())
    quoted = quote_body(cascade, request())
    assert held is not None and Decimal(quoted["worst_case_usd"]) == held
    per_target = {q["target"]: Decimal(q["worst_case_usd"]) for q in quoted["quotes"]}
    assert sum(per_target.values()) == held
    claude = cascade.quotes(request())[1]
    assert claude.worst_usd == (Decimal(claude.input_tokens) * Decimal("1.00") + 256 * 4) / 1_000_000
