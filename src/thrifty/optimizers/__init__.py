"""Stage 4: cheaper requests with the same meaning."""
