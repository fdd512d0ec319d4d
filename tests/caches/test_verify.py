"""What counts as the model agreeing with a semantic hit it is asked to verify."""

from __future__ import annotations

from pathlib import Path

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


def test_long_answers_are_compared_by_meaning_only() -> None:
    """Two correct paragraphs differ in incidental numbers, names and words like before / after: read as
    contradictions, four of eleven agreeing answers in a review were counted as false hits."""
    cached = (
        "Canberra became the capital of Australia as a compromise between Sydney and Melbourne. The site was chosen "
        "in 1908, and Parliament moved there in 1927, after years in Melbourne. It is a planned city, designed by "
        "Walter Burley Griffin and Marion Mahony Griffin, with a large artificial lake at its centre."
    )
    fresh = (
        "The capital is Canberra. Federation came in 1901; neither Sydney nor Melbourne would accept the other as "
        "capital, so a new city was planned between them, and Parliament sat in Melbourne before it moved. Its "
        "design came from an international competition won by the Griffins."
    )
    assert contradiction(cached, fresh) == ""
    assert answers_agree(cached, fresh, cosine=0.8)


def test_a_numbered_list_against_a_duration_is_no_contradiction() -> None:
    assert contradiction("Step 1: unplug it. Step 2: wait. Step 3: plug it back.", "Unplug it for 30 seconds.") == ""


def test_a_bad_since_is_a_one_line_error_that_leaves_the_output_alone(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    from thrifty.caches.verified import verified_command
    from thrifty.errors import BadRequest

    out = tmp_path / "pairs.jsonl"
    out.write_text("kept\n")
    with pytest.raises(BadRequest, match="--since 2024/01/01"):
        verified_command(create_engine("sqlite://"), out, "2024/01/01", None)
    assert out.read_text() == "kept\n"
