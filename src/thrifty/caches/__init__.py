"""Stage 3: answers already paid for."""
