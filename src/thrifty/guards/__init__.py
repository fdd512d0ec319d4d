"""Stage 2: budgets, rate limits and agent caps that refuse early."""
