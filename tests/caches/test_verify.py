"""What counts as the model agreeing with a semantic hit it is asked to verify."""

from __future__ import annotations

import pytest

from thrifty.caches.verify import answers_agree, contradiction


@pytest.mark.parametrize(
    ("cached", "fresh", "why"),
    [
        ("The capital of France is Paris.", "The capital of Germany is Berlin.", "names"),
        (
            "To enable 2FA, open Settings > Security and switch it on.",
            "To disable 2FA, open Settings > Security and switch it off.",
            "opposites",
        ),
        ("Your order total is 45 dollars.", "Your order total is 120 dollars.", "numbers"),
    ],
)
def test_the_false_hits_the_guards_exist_for_are_disagreements(cached: str, fresh: str, why: str) -> None:
    """Word overlap called all three the same answer: the measured false-hit rate missed exactly these."""
    assert contradiction(cached, fresh) == why
    assert not answers_agree(cached, fresh)
    assert not answers_agree(cached, fresh, cosine=0.95)  # however close the embeddings


def test_a_paraphrase_agrees_by_meaning() -> None:
    cached = "To reset your password, open Settings and choose Forgot password."
    fresh = "Open Settings, pick Forgot password and follow the emailed link to reset it."
    assert not answers_agree(cached, fresh)  # few words in common: word overlap called it a false hit
    assert answers_agree(cached, fresh, cosine=0.86)
    assert not answers_agree(cached, fresh, cosine=0.5)


def test_blank_answers() -> None:
    assert answers_agree("", "  ")
    assert not answers_agree("", "Paris.")
