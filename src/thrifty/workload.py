"""Recorded workloads: chat requests as an application sent them, with what real models answered.

A workload is JSON Lines (optionally gzipped), one request per line; ``workloads/README.md`` documents the
format and the sources of the bundled demo. It serves two purposes: ``thrifty demo`` replays it through the
gateway, and the levers (cache, routing, token optimization) are measured on it. For the second, every record
carries the answers of more than one model with a quality score, so a lever that changes the model or the
prompt can be charged with the quality it gave up, not only credited with the dollars it saved.

The replay provider finds a request's record with ``ReplayIndex``. An optimizer may have rewritten the history
(summarized or pruned turns, compressed the system prompt) before the request reaches the provider, so the
index falls back from the whole conversation to its user turns; it never guesses between different questions.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from thrifty.types import JsonObject

__all__ = [
    "ModelAnswer",
    "ReplayIndex",
    "WorkloadRecord",
    "demo_workload_path",
    "message_text",
    "read_workload",
    "write_workload",
]


@dataclass(frozen=True, slots=True)
class ModelAnswer:
    """What one model answered to a record's request, as far as the source recorded it.

    ``quality`` is in [0, 1]: 1/0 for a correct/incorrect answer, a judge's 1-10 score divided by 10 for open
    questions. Any field may be unknown (None): some benchmarks publish correctness without the text.
    """

    text: str | None = None
    output_tokens: int | None = None
    quality: float | None = None

    def to_json(self) -> JsonObject:
        return {"text": self.text, "output_tokens": self.output_tokens, "quality": self.quality}

    @classmethod
    def from_json(cls, obj: Any) -> ModelAnswer:
        if not isinstance(obj, dict):
            raise TypeError("an answer must be an object")
        text = _optional(obj, "text", str)
        tokens = _optional(obj, "output_tokens", int)
        quality = _optional(obj, "quality", (int, float))
        return cls(text, tokens, None if quality is None else float(quality))


@dataclass(frozen=True, slots=True)
class WorkloadRecord:
    """One request of a workload: who sent it when, what they sent, and what each model answered.

    ``group`` names the underlying question: exact repeats and paraphrases share it, which is what a cache hit
    is judged against. ``request`` is the OpenAI Chat Completions body the application sent.
    """

    id: str
    t_s: float
    """Arrival offset from the start of the workload, in seconds."""
    tenant: str
    user: str
    feature: str
    session: str
    request: JsonObject
    group: str
    source: str
    answers: Mapping[str, ModelAnswer]

    @property
    def messages(self) -> list[JsonObject]:
        messages: list[JsonObject] = self.request["messages"]
        return messages

    def to_json(self) -> JsonObject:
        return {
            "id": self.id,
            "t_s": self.t_s,
            "tenant": self.tenant,
            "user": self.user,
            "feature": self.feature,
            "session": self.session,
            "request": self.request,
            "group": self.group,
            "source": self.source,
            "answers": {model: answer.to_json() for model, answer in self.answers.items()},
        }

    @classmethod
    def from_json(cls, obj: Any) -> WorkloadRecord:
        if not isinstance(obj, dict):
            raise TypeError("a record must be a JSON object")
        request = _required(obj, "request", dict)
        messages = request.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise TypeError("'request.messages' must be a list of objects")
        answers = _required(obj, "answers", dict)
        t_s = _required(obj, "t_s", (int, float))
        return cls(
            id=_required(obj, "id", str),
            t_s=float(t_s),
            tenant=_required(obj, "tenant", str),
            user=_required(obj, "user", str),
            feature=_required(obj, "feature", str),
            session=_required(obj, "session", str),
            request=request,
            group=_required(obj, "group", str),
            source=_required(obj, "source", str),
            answers={str(model): ModelAnswer.from_json(answer) for model, answer in answers.items()},
        )


def _required(obj: JsonObject, key: str, kind: type[Any] | tuple[type[Any], ...]) -> Any:
    if key not in obj:
        raise KeyError(f"missing field {key!r}")
    return _checked(obj[key], key, kind)


def _optional(obj: JsonObject, key: str, kind: type[Any] | tuple[type[Any], ...]) -> Any:
    value = obj.get(key)
    return None if value is None else _checked(value, key, kind)


def _checked(value: Any, key: str, kind: type[Any] | tuple[type[Any], ...]) -> Any:
    # bool is an int to isinstance, but a boolean token count or timestamp is always a producer's mistake.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _open_text(path: Path, mode: str) -> IO[str]:
    if path.name.endswith(".gz"):
        # mtime=0 makes the bytes a function of the records alone: a rebuilt file only differs when data does.
        raw = gzip.GzipFile(path, mode[0] + "b", mtime=0)
        return io.TextIOWrapper(raw, encoding="utf-8", newline="\n")
    return open(path, mode, encoding="utf-8", newline="\n")


def read_workload(path: Path) -> list[WorkloadRecord]:
    """All records of a ``.jsonl`` or ``.jsonl.gz`` file, in file order; blank lines are skipped."""
    records = []
    with _open_text(path, "rt") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(WorkloadRecord.from_json(json.loads(line)))
            except (ValueError, TypeError, KeyError) as exc:
                detail = exc.args[0] if isinstance(exc, KeyError) else exc
                raise ValueError(f"{path}: line {number}: {detail}") from exc
    return records


def write_workload(path: Path, records: Iterable[WorkloadRecord]) -> None:
    """Write records as JSON Lines, gzipped when the name ends in ``.gz``."""
    with _open_text(path, "wt") as out:
        for record in records:
            out.write(json.dumps(record.to_json(), ensure_ascii=False, separators=(",", ":")))
            out.write("\n")


def demo_workload_path() -> Path:
    """The workload bundled with the package, the one ``thrifty demo`` replays."""
    return Path(__file__).parent / "workloads" / "demo.jsonl.gz"


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message: its string content, or its text parts joined (images and audio carry none)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _conversation_key(messages: list[JsonObject]) -> str:
    pairs = [[str(m.get("role", "")), message_text(m).strip()] for m in messages]
    return hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode()).hexdigest()


def _user_texts(messages: list[JsonObject]) -> list[str]:
    return [message_text(m).strip() for m in messages if m.get("role") == "user"]


class ReplayIndex:
    """Finds the record a chat request replays.

    Tried in order: the whole conversation (role and text of every message); then its first and last user
    messages; then its last user message alone. Each fallback answers only when every record it matches is the
    same conversation (exact repeats are fine, two different conversations are not), because returning the
    answer to a different question would make a replay look better or worse than the real model would be.
    The fallbacks exist for requests an optimizer rewrote: a summarized or pruned history keeps the user's
    question, and usually the first user turn, but nothing else verbatim.
    """

    def __init__(self, records: Iterable[WorkloadRecord]) -> None:
        self._exact: dict[str, WorkloadRecord] = {}
        self._by_ends: dict[tuple[str, str], dict[str, WorkloadRecord]] = {}
        self._by_last: dict[str, dict[str, WorkloadRecord]] = {}
        for record in records:
            key = _conversation_key(record.messages)
            self._exact.setdefault(key, record)
            users = _user_texts(record.messages)
            if users:
                self._by_ends.setdefault((users[0], users[-1]), {}).setdefault(key, record)
                self._by_last.setdefault(users[-1], {}).setdefault(key, record)

    def __len__(self) -> int:
        """The number of distinct conversations indexed."""
        return len(self._exact)

    def lookup(self, messages: list[JsonObject]) -> WorkloadRecord | None:
        exact = self._exact.get(_conversation_key(messages))
        if exact is not None:
            return exact
        users = _user_texts(messages)
        if not users:
            return None
        for candidates in (self._by_ends.get((users[0], users[-1])), self._by_last.get(users[-1])):
            if candidates is not None and len(candidates) == 1:
                return next(iter(candidates.values()))
        return None
