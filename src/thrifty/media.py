"""What images, audio and files in a prompt may cost in tokens: enough never to undercount a reservation.

Their text is nothing, but providers bill them as prompt tokens, often more than the text around them. The exact
count needs the image's size (or the audio's length, the document's pages), which the gateway does not decode,
so each part is charged the most it can cost:

- an image: 1,600 tokens (GPT-4o's largest high-detail image is 1,445; GPT-4.1's 1,536 patches; Claude's largest
  about 1,600), except on models that bill images as many more tokens at a lower price (GPT-4o mini counts 2,833
  a base plus 5,667 a tile: 48,169 at most; other mini and nano models up to about 3,800);
- audio: a token for every 100 bytes of it (OpenAI bills about 10 tokens a second; compressed speech runs at
  1,000 bytes a second and more);
- a file (a PDF): a token for every 3 of its bytes plus an image's worth (providers bill each page's text and its
  picture).

Counts that include them are estimates, as offline counts of non-OpenAI models already are.
"""

from __future__ import annotations

IMAGE_TOKENS = 1_600
IMAGE_TOKENS_BY_MODEL = (("4o-mini", 48_169), ("-mini", 3_800), ("-nano", 3_800))
"""Model-name fragments, first match wins, for models that bill an image as more tokens than ``IMAGE_TOKENS``."""
MOST_IMAGE_TOKENS = max(IMAGE_TOKENS, *(tokens for _, tokens in IMAGE_TOKENS_BY_MODEL))
BYTES_PER_AUDIO_TOKEN = 100
BYTES_PER_FILE_TOKEN = 3


def media_tokens(value: object, model: str | None = None) -> int:
    """The most the images, audio and files in a message's ``content`` cost on ``model`` (None: on any)."""
    if not isinstance(value, list):
        return 0
    total = 0
    for part in value:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind in ("image_url", "image"):
            total += image_tokens(model)
        elif kind == "input_audio":
            total += _decoded_bytes(_field(part, "input_audio", "data")) // BYTES_PER_AUDIO_TOKEN + 1
        elif kind in ("file", "document"):
            data = _field(part, "file", "file_data") or _field(part, "source", "data")
            total += _decoded_bytes(data) // BYTES_PER_FILE_TOKEN + image_tokens(model)
    return total


def image_tokens(model: str | None) -> int:
    if model is None:
        return MOST_IMAGE_TOKENS
    name = model.lower()
    return next((tokens for fragment, tokens in IMAGE_TOKENS_BY_MODEL if fragment in name), IMAGE_TOKENS)


def _field(part: dict[str, object], outer: str, inner: str) -> object:
    """``part[outer][inner]``, or None where the client sent something else (the provider will say what)."""
    value = part.get(outer)
    return value.get(inner) if isinstance(value, dict) else None


def _decoded_bytes(data: object) -> int:
    """The size of base64 data (a data URL's prefix included makes no difference worth counting)."""
    return len(data) * 3 // 4 if isinstance(data, str) else 0
