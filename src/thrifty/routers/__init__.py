"""Stage 5: which targets a request goes to, in order."""
