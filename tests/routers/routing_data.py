"""Small synthetic outcome data: the learned router's tests never need the shared datasets."""

from __future__ import annotations

import random
from decimal import Decimal

from thrifty.routers.outcomes import ModelOutcome, OutcomeRecord

WEAK = "small-model"
STRONG = "large-model"
MATH_WORDS = ("solve", "integral", "compute", "derivative", "equation", "probability")
CHAT_WORDS = ("poem", "email", "story", "greeting", "summary", "slogan")


def synthetic_records(n: int = 240, seed: int = 7) -> list[OutcomeRecord]:
    """Math prompts the small model usually fails and the large one solves; chat prompts both handle.

    Costs grow with prompt length, and the large model costs about 30 times more.
    """
    rng = random.Random(seed)
    records = []
    for i in range(n):
        math = i % 2 == 0
        words = MATH_WORDS if math else CHAT_WORDS
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        if math:
            prompt += f" {rng.randint(10, 999)} + {rng.randint(10, 999)}"
        weak_q = float(rng.random() < (0.3 if math else 0.9))
        strong_q = float(rng.random() < (0.9 if math else 0.92))
        tokens = len(prompt.split())
        records.append(
            OutcomeRecord(
                f"{prompt} #{i}",
                {
                    WEAK: ModelOutcome(weak_q, Decimal(tokens) * Decimal("0.00001")),
                    STRONG: ModelOutcome(strong_q, Decimal(tokens) * Decimal("0.0003")),
                },
            )
        )
    return records
