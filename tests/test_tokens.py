from __future__ import annotations

import hashlib

import pytest

from thrifty.tokens import TiktokenCounter, encoding_name_for, encoding_ranks_file

# The sha256 tiktoken checks after downloading each file from OpenAI.
OPENAI_HASHES = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}


@pytest.mark.parametrize("name", sorted(OPENAI_HASHES))
def test_bundled_ranks_are_byte_identical_to_openais(name: str) -> None:
    assert hashlib.sha256(encoding_ranks_file(name)).hexdigest() == OPENAI_HASHES[name]


def test_model_families_map_to_their_encodings() -> None:
    assert encoding_name_for("gpt-4o-mini") == ("o200k_base", True)
    assert encoding_name_for("openai/gpt-5") == ("o200k_base", True)
    assert encoding_name_for("gpt-4-1106-preview") == ("cl100k_base", True)
    assert encoding_name_for("claude-3-5-haiku") == ("cl100k_base", False)


def test_known_token_counts() -> None:
    counter = TiktokenCounter()
    # Reference values from OpenAI's tokenizer.
    assert counter.count_text("gpt-4", "hello world") == 2
    assert counter.count_text("gpt-4o", "hello world") == 2
    assert counter.count_text("gpt-4", "tiktoken is great!") == 6
    assert counter.count_text("gpt-4", "<|endoftext|>") > 1  # special tokens in user text are plain text


def test_chat_framing_follows_openais_cookbook() -> None:
    counter = TiktokenCounter()
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello world"}]
    text_tokens = sum(counter.count_text("gpt-4", str(v)) for m in messages for v in m.values())
    assert counter.count_messages("gpt-4", messages) == text_tokens + 3 * 2 + 3
