"""Rules by task type: what ``task_of`` reads a prompt as, and a rule choosing by it."""

from __future__ import annotations

import pytest

from thrifty.routers.static import Rule, RulesRouter
from thrifty.routers.tasks import task_of
from thrifty.tokens import TiktokenCounter
from thrifty.types import ChatRequest, Principal, Target

LABELLED = [
    ("Translate 'good morning' into Japanese.", "translate"),
    ("How do you say thank you in German?", "translate"),
    ("Summarize this article in three bullet points: ...", "summarize"),
    ("tl;dr of the meeting notes below", "summarize"),
    ("Classify the sentiment of this review: the food was cold.", "classify"),
    ("Extract every date mentioned in the email below.", "extract"),
    ("Why does my Python script raise a KeyError?", "code"),
    ("```js\nconst x = [1, 2].map(v => v * 2)\n```\nwhat is x?", "code"),
    ("Write a SQL query returning the ten newest orders", "code"),
    ("What is 17 * 23?", "math"),
    ("Solve for x: 3x + 4 = 19", "math"),
    ("What is the probability of two sixes with two dice?", "math"),
    ("Tell me a joke about penguins", "chat"),
    ("What should I cook tonight?", "chat"),
    ("What is the capital of France?", "chat"),
    ("How many people live in Paris?", "chat"),
]


@pytest.mark.parametrize(("prompt", "task"), LABELLED)
def test_task_of_reads_the_common_kinds_of_prompt(prompt: str, task: str) -> None:
    assert task_of(prompt) == task


def test_a_rule_routes_by_task_and_says_so() -> None:
    cheap, coder, strong = Target("up", "gpt-4o-mini"), Target("up", "gpt-4.1"), Target("up", "gpt-4o")
    rules = [Rule(coder, tasks=("code",)), Rule(cheap, tasks=("translate", "classify", "chat"))]
    router = RulesRouter((cheap, coder, strong), rules, strong, TiktokenCounter())

    def route(text: str) -> tuple[Target, str]:
        chosen = router.route(
            ChatRequest({"model": "auto", "messages": [{"role": "user", "content": text}]}, "r"), Principal()
        )
        return chosen.targets[0], chosen.reason

    assert route("Fix this bug: TypeError in my javascript") == (coder, "rule 1: task=code")
    assert route("Translate 'cat' into French") == (cheap, "rule 2: task=translate|classify|chat")
    assert route("Solve 2x = 10") == (strong, "no rule matched: default")


def test_a_long_turn_is_read_at_its_start_and_end_only() -> None:
    """The instruction is at either end; reading a pasted document in full let one long word (a DNA or hex
    string) hold the event loop for seconds on a backtracking pattern."""
    assert task_of("ACGT" * 50_000 + "\nTranslate the above into French.") == "translate"
    assert task_of("Summarize this:\n" + "word " * 20_000) == "summarize"
    assert task_of("Tell me about it.\n" + "word " * 2_000 + "```python\nx = 1\n```" + " word" * 2_000) == "chat"
