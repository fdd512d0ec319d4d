"""Fake OpenAI and Anthropic upstreams: a real HTTP server on 127.0.0.1 speaking both wire formats.

::

    with FakeUpstream() as up:
        client = openai.OpenAI(base_url=up.base_url + "/v1", api_key="x", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert up.requests[0].json["model"] == "gpt-4o-mini"

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/embeddings``, ``GET /v1/models`` (OpenAI) and
``POST /v1/messages`` (Anthropic), streaming when the body says ``"stream": true``. Any other path is a 404.

Answers are a function of the request, so tests can assert exact values:

- text: ``"echo: "`` + the text of the last message, or ``reply(body)`` when ``reply`` is set; with
  ``up.cut_short = True`` it says it stopped at the output cap (``finish_reason: "length"``, ``max_tokens``).
- a tool call to the first tool instead, when the request has ``tools`` and the last message is a user
  message whose text contains "call tool"; its arguments fill the tool's required parameters with
  placeholders (``"test"``, ``1``, ``true``, ``[]``, ``{}``).
- ``n`` > 1 (OpenAI, not streamed): that many choices, choice i answering ``reply({**body, "choice_index": i})``
  (every output billed: ``up.usage``'s output tokens n times, or all the choices' words); ``logprobs: true``:
  each answer token (word) at log-probability ``up.token_logprob``.
- usage: exactly ``up.usage`` (a ``FakeUsage``) when set; otherwise input tokens are the words in the
  request's text and output tokens the words in the answer (or in the tool call's JSON arguments).
  ``FakeUsage.input_tokens`` is the whole prompt, cached part included, like OpenAI's ``prompt_tokens``;
  Anthropic's wire ``input_tokens`` leaves out cache reads and writes, as Anthropic does.
- embeddings: a hashed bag of words, L2-normalised, ``dimensions`` long (default 32), so texts sharing words
  are close; ``encoding_format="base64"`` (the OpenAI SDK's default) is honoured.

Faults. Each request on a known endpoint takes the next scripted fault, else ``up.mode``::

    up.script([Fault.status(429), Fault.status(500), Fault.ok()])   # one per request, in arrival order
    up.fail_next(Fault.hang())                                      # the same as up.script([Fault.hang()])
    up.mode = Fault.status(503)                                     # every request once the script is spent

    Fault.ok()                          the normal answer (the default mode)
    Fault.status(code, retry_after_s=None)  the provider's error JSON with that status (and Retry-After)
    Fault.garbage()                     200 whose body is not JSON; streaming: an SSE event of non-JSON data
    Fault.hang()                        no answer; the connection drops when the server closes
    Fault.delay(seconds)                nothing for ``seconds``, then the normal answer
    Fault.slow_first_token(seconds)     headers at once, the first event (or the body) after ``seconds``
    Fault.drop_mid_stream(after_chunks=4)  that many SSE events, never all, then the connection closes;
                                        non-streaming: half the declared body, then the connection closes

Observing: ``up.requests`` is a snapshot list of ``RecordedRequest`` (method, path, headers with lower-case
names, parsed JSON body or None, the fault applied); ``up.answered`` counts responses written in full,
error responses included, so a dropped, hung or abandoned response never counts.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import math
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

__all__ = ["FakeUpstream", "FakeUsage", "Fault", "RecordedRequest"]

# Fixed so that two runs of a test see byte-identical answers.
_CREATED = 1_700_000_000
_HANG_S = 3600.0

FaultKind = Literal["ok", "status", "garbage", "hang", "drop_mid_stream", "slow_first_token", "delay"]


@dataclass(frozen=True)
class Fault:
    kind: FaultKind = "ok"
    status_code: int = 200
    seconds: float = 0.0
    after_chunks: int = 0
    retry_after_s: float | None = None

    @classmethod
    def ok(cls) -> Fault:
        return cls("ok")

    @classmethod
    def status(cls, status_code: int, retry_after_s: float | None = None) -> Fault:
        return cls("status", status_code=status_code, retry_after_s=retry_after_s)

    @classmethod
    def garbage(cls) -> Fault:
        return cls("garbage")

    @classmethod
    def hang(cls) -> Fault:
        return cls("hang", seconds=_HANG_S)

    @classmethod
    def drop_mid_stream(cls, after_chunks: int = 4) -> Fault:
        return cls("drop_mid_stream", after_chunks=after_chunks)

    @classmethod
    def slow_first_token(cls, seconds: float) -> Fault:
        return cls("slow_first_token", seconds=seconds)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls("delay", seconds=seconds)


_OK = Fault()


@dataclass(frozen=True)
class FakeUsage:
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    """The part of ``cache_write_tokens`` kept for an hour (Anthropic's ``cache_creation``)."""

    def __post_init__(self) -> None:
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError("input_tokens counts the whole prompt, so it cannot be below the cached part")
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError("cache_write_1h_tokens is a part of cache_write_tokens")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    fault: Fault


@dataclass(frozen=True)
class _Answer:
    seq: int
    model: str
    text: str
    usage: FakeUsage
    tool_name: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    cut: bool = False
    """The text stopped at the output cap: ``finish_reason: "length"`` (Anthropic: ``max_tokens``)."""


class FakeUpstream:
    """One server per test; the answers it gives are the module docstring's rules."""

    def __init__(
        self,
        *,
        usage: FakeUsage | None = None,
        reply: Callable[[dict[str, Any]], str] | None = None,
        models: Iterable[str] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small"),
    ) -> None:
        self.usage = usage
        self.chat_usage = True
        """False: OpenAI-format chat answers carry no usage, whole or streamed (as some servers send them)."""
        self.embedding_usage = True
        """False: embeddings answers carry no usage (as some OpenAI-compatible servers send them)."""
        self.reply = reply
        self.cut_short = False
        """True: text answers say they stopped at the output cap (``finish_reason: "length"``)."""
        self.token_logprob = -0.01
        """The log-probability of every answer token, for requests asking ``logprobs``."""
        self.models = list(models)
        self.mode = Fault.ok()
        self.base_url = ""
        self._lock = threading.Lock()
        self._script: collections.deque[Fault] = collections.deque()
        self._requests: list[RecordedRequest] = []
        self._answered = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None

    # -- life cycle ----------------------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        # Its own loop in its own thread, so sync SDK clients and async tests alike can call it.
        self._thread = threading.Thread(target=self._run, args=(sock,), name="fake-upstream", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            raise RuntimeError("fake upstream failed to start") from self._start_error
        return self

    def close(self) -> None:
        thread, loop, closing = self._thread, self._loop, self._closing
        if thread is None or loop is None or closing is None:
            return
        self._thread = None
        if thread.is_alive():
            loop.call_soon_threadsafe(closing.set)
        thread.join(timeout=10)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._serve(sock))
        except Exception as exc:
            self._start_error = exc
        finally:
            sock.close()  # already closed by a server that started; not so by one that failed to
            self._ready.set()

    async def _serve(self, sock: socket.socket) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
            self._ready.set()
            await self._closing.wait()
        finally:
            await runner.cleanup()

    # -- scripting and observing ---------------------------------------------------------------------------

    def script(self, faults: Iterable[Fault]) -> None:
        with self._lock:
            self._script.extend(faults)

    def fail_next(self, fault: Fault) -> None:
        self.script([fault])

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def answered(self) -> int:
        with self._lock:
            return self._answered

    def _count_answered(self, delta: int) -> None:
        with self._lock:
            self._answered += delta

    def _record(self, request: web.Request, body: Any, known: bool) -> tuple[int, Fault]:
        headers = {name.lower(): value for name, value in request.headers.items()}
        with self._lock:
            fault = (self._script.popleft() if self._script else self.mode) if known else _OK
            self._requests.append(RecordedRequest(request.method, request.path, headers, body, fault))
            return len(self._requests), fault

    # -- serving -------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        route = _ROUTES.get((request.method, request.path))
        seq, fault = self._record(request, body, known=route is not None)
        try:
            return await self._respond(request, route, body, seq, fault)
        except ConnectionError:
            # The client went away; aiohttp quietly gives up on a response it cannot write.
            return web.Response()

    async def _respond(
        self, request: web.Request, route: _Route | None, body: Any, seq: int, fault: Fault
    ) -> web.StreamResponse:
        vendor = "anthropic" if request.path == "/v1/messages" else "openai"
        if route is None:
            return await self._send(request, [_error_body(vendor, 404, f"no route {request.path}")], status=404)
        if fault.kind in ("hang", "delay") and await self._sleep(fault.seconds):
            return _drop(request)
        if fault.kind == "status":
            body_bytes = _error_body(vendor, fault.status_code, f"fake upstream error {fault.status_code}")
            headers = {} if fault.retry_after_s is None else {"retry-after": f"{fault.retry_after_s:g}"}
            return await self._send(request, [body_bytes], status=fault.status_code, headers=headers)
        if request.method == "POST" and not isinstance(body, dict):
            return await self._send(request, [_error_body(vendor, 400, "the body is not a JSON object")], status=400)
        stream = isinstance(body, dict) and body.get("stream") is True
        if fault.kind == "garbage":
            return await self._send(request, [_garbage(vendor, stream)], sse=stream)
        payload = route(self, body or {}, seq, stream)
        if isinstance(payload, list):
            return await self._send(request, payload, fault, sse=True)
        # Two halves, so that dropping "mid-stream" also means something for a plain JSON body.
        whole = _dumps(payload)
        return await self._send(request, [whole[: len(whole) // 2], whole[len(whole) // 2 :]], fault)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, cut short when the server closes; True when it was, so the caller drops the connection."""
        assert self._closing is not None
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _send(
        self,
        request: web.Request,
        frames: list[bytes],
        fault: Fault = _OK,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        sse: bool = False,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers=headers)
        if sse:
            response.content_type = "text/event-stream"
            response.headers["cache-control"] = "no-cache"
        else:
            response.content_type = "application/json"
            response.content_length = sum(len(frame) for frame in frames)
        await response.prepare(request)
        if fault.kind == "slow_first_token" and await self._sleep(fault.seconds):
            return _drop(request)
        if fault.kind == "drop_mid_stream":
            for frame in frames[: min(fault.after_chunks, len(frames) - 1)]:
                await response.write(frame)
            return _drop(request)
        for frame in frames[:-1]:
            await response.write(frame)
        # Counted before the last write so that a client which has read the answer always sees it counted.
        self._count_answered(1)
        try:
            await response.write(frames[-1])
        except ConnectionError:
            self._count_answered(-1)
            raise
        await response.write_eof()
        return response

    # -- answers -------------------------------------------------------------------------------------------

    def _answer(self, body: dict[str, Any], seq: int, vendor: str) -> _Answer:
        messages = body.get("messages") or [{}]
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        tools = body.get("tools") or []
        model = str(body.get("model", "fake-model"))
        texts = [_text(m.get("content")) for m in messages if isinstance(m, dict)]
        prompt = " ".join([_text(body.get("system")), *texts])
        if tools and last.get("role") == "user" and "call tool" in _text(last.get("content"), tool_results=False):
            tool = tools[0].get("function", tools[0]) if vendor == "openai" else tools[0]
            schema = tool.get("parameters" if vendor == "openai" else "input_schema") or {}
            arguments = _placeholder_arguments(schema)
            usage = self.usage or FakeUsage(len(prompt.split()), len(json.dumps(arguments).split()))
            return _Answer(seq, model, "", usage, tool_name=str(tool.get("name")), arguments=arguments)
        text = self.reply(body) if self.reply is not None else "echo: " + _text(last.get("content"))
        usage = self.usage or FakeUsage(len(prompt.split()), len(text.split()))
        return _Answer(seq, model, text, usage, cut=self.cut_short)

    def _chat(self, body: dict[str, Any], seq: int, stream: bool) -> dict[str, Any] | list[bytes]:
        answer = self._answer(body, seq, "openai")
        if not stream:
            completion = _openai_completion(answer)
            self._more_choices(completion, body, seq)
            if not self.chat_usage:
                del completion["usage"]
            return completion
        asked = (body.get("stream_options") or {}).get("include_usage") is True
        return _openai_chunks(answer, include_usage=asked and self.chat_usage)

    def _more_choices(self, completion: dict[str, Any], body: dict[str, Any], seq: int) -> None:
        """``n`` choices, all billed, and token log-probabilities when asked."""
        for index in range(1, int(body.get("n") or 1)):
            other = _openai_completion(self._answer({**body, "choice_index": index}, seq, "openai"))
            completion["choices"].append({**other["choices"][0], "index": index})
            completion["usage"]["completion_tokens"] += other["usage"]["completion_tokens"]
            completion["usage"]["total_tokens"] += other["usage"]["completion_tokens"]
        if body.get("logprobs"):
            for choice in completion["choices"]:
                words = str(choice["message"].get("content") or "").split()
                tokens = [{"token": w, "logprob": self.token_logprob, "bytes": None, "top_logprobs": []} for w in words]
                choice["logprobs"] = {"content": tokens, "refusal": None}

    def _messages(self, body: dict[str, Any], seq: int, stream: bool) -> dict[str, Any] | list[bytes]:
        answer = self._answer(body, seq, "anthropic")
        return _anthropic_events(answer) if stream else _anthropic_message(answer)

    def _embeddings(self, body: dict[str, Any], seq: int, stream: bool) -> dict[str, Any]:
        given = body.get("input")
        items = given if isinstance(given, list) and given and not isinstance(given[0], int) else [given]
        texts = [item if isinstance(item, str) else " ".join(map(str, item or [])) for item in items]
        dims = int(body.get("dimensions") or 32)
        data = []
        for index, text in enumerate(texts):
            vector = _embed(text, dims)
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = self.usage.input_tokens if self.usage else sum(len(text.split()) for text in texts)
        answer = {"object": "list", "data": data, "model": body.get("model", "fake-embedding")}
        return (
            {**answer, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}} if self.embedding_usage else answer
        )

    def _models(self, body: dict[str, Any], seq: int, stream: bool) -> dict[str, Any]:
        data = [{"id": m, "object": "model", "created": _CREATED, "owned_by": "fake"} for m in self.models]
        return {"object": "list", "data": data}


_Route = Callable[[FakeUpstream, dict[str, Any], int, bool], "dict[str, Any] | list[bytes]"]
_ROUTES: dict[tuple[str, str], _Route] = {
    ("POST", "/v1/chat/completions"): FakeUpstream._chat,
    ("POST", "/v1/messages"): FakeUpstream._messages,
    ("POST", "/v1/embeddings"): FakeUpstream._embeddings,
    ("GET", "/v1/models"): FakeUpstream._models,
}


def _drop(request: web.Request) -> web.StreamResponse:
    """Close the connection under aiohttp, which then ignores the response it can no longer write."""
    if request.transport is not None:
        request.transport.close()
    response = web.Response()
    response.force_close()
    return response


# -- wire formats --------------------------------------------------------------------------------------------

_OPENAI_ERRORS = {401: ("invalid_request_error", "invalid_api_key"), 429: ("requests", "rate_limit_exceeded")}
_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _garbage(vendor: str, stream: bool) -> bytes:
    if not stream:
        return b"<html><body>502 Bad Gateway</body></html>"
    # Anthropic clients skip events without a name, so the garbage must carry one to be seen.
    return (b"event: message_start\n" if vendor == "anthropic" else b"") + b"data: <html>not json</html>\n\n"


def _error_body(vendor: str, status: int, message: str) -> bytes:
    if vendor == "anthropic":
        kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return _dumps({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"})
    kind, code = _OPENAI_ERRORS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return _dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def _openai_usage(usage: FakeUsage) -> dict[str, Any]:
    prompt_details = {"cached_tokens": usage.cache_read_tokens, "audio_tokens": 0}
    if usage.cache_write_tokens:
        # OpenAI mentions cache writes only where it has some to report.
        prompt_details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _openai_envelope(answer: _Answer, obj: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake{answer.seq}",
        "object": obj,
        "created": _CREATED,
        "model": answer.model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def _openai_finish(answer: _Answer) -> str:
    return "tool_calls" if answer.tool_name is not None else "length" if answer.cut else "stop"


def _openai_completion(answer: _Answer) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": answer.text,
        "refusal": None,
        "annotations": [],
    }
    if answer.tool_name is not None:
        function = {"name": answer.tool_name, "arguments": json.dumps(answer.arguments)}
        message.update(
            content=None,
            tool_calls=[{"id": f"call_fake{answer.seq}", "type": "function", "function": function}],
        )
    finish = _openai_finish(answer)
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
    return {
        **_openai_envelope(answer, "chat.completion"),
        "choices": [choice],
        "usage": _openai_usage(answer.usage),
    }


def _openai_chunks(answer: _Answer, include_usage: bool) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        # OpenAI sends "usage": null on every chunk but the last, and only when usage was asked for.
        extra = {"usage": None} if include_usage else {}
        return {**_openai_envelope(answer, "chat.completion.chunk"), "choices": [choice], **extra}

    if answer.tool_name is None:
        deltas = [{"role": "assistant", "content": "", "refusal": None}]
        deltas += [{"content": piece} for piece in _pieces(answer.text)]
    else:
        function = {"name": answer.tool_name, "arguments": ""}
        call = {"index": 0, "id": f"call_fake{answer.seq}", "type": "function", "function": function}
        deltas = [{"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}]
        pieces = _pieces(json.dumps(answer.arguments))
        deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces]
    chunks = [chunk(delta) for delta in deltas]
    chunks.append(chunk({}, _openai_finish(answer)))
    if include_usage:
        chunks.append(
            {
                **_openai_envelope(answer, "chat.completion.chunk"),
                "choices": [],
                "usage": _openai_usage(answer.usage),
            }
        )
    return [b"data: " + _dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


def _anthropic_usage(usage: FakeUsage, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write_tokens - usage.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
        },
        "cache_read_input_tokens": usage.cache_read_tokens,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _anthropic_block(answer: _Answer, empty: bool = False) -> dict[str, Any]:
    if answer.tool_name is None:
        return {"type": "text", "text": "" if empty else answer.text}
    arguments = {} if empty else answer.arguments
    return {"type": "tool_use", "id": f"toolu_fake{answer.seq}", "name": answer.tool_name, "input": arguments}


def _anthropic_message(answer: _Answer) -> dict[str, Any]:
    return {
        "id": f"msg_fake{answer.seq}",
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": [_anthropic_block(answer)],
        "stop_reason": "tool_use" if answer.tool_name is not None else "max_tokens" if answer.cut else "end_turn",
        "stop_sequence": None,
        "usage": _anthropic_usage(answer.usage, answer.usage.output_tokens),
    }


def _anthropic_events(answer: _Answer) -> list[bytes]:
    final = _anthropic_message(answer)
    # Anthropic reports one output token at the start and the real count in message_delta.
    start = {**final, "content": [], "stop_reason": None, "usage": _anthropic_usage(answer.usage, 1)}
    if answer.tool_name is None:
        deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(answer.text)]
    else:
        deltas = [{"type": "input_json_delta", "partial_json": p} for p in _pieces(json.dumps(answer.arguments))]
    events = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": _anthropic_block(answer, empty=True)},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": delta} for delta in deltas),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": final["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": answer.usage.output_tokens},
        },
        {"type": "message_stop"},
    ]
    return [f"event: {e['type']}\ndata: ".encode() + _dumps(e) + b"\n\n" for e in events]


# -- request reading -----------------------------------------------------------------------------------------

_PLACEHOLDERS: dict[str, Any] = {
    "string": "test",
    "integer": 1,
    "number": 1,
    "boolean": True,
    "array": [],
    "object": {},
}


def _placeholder_arguments(schema: dict[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    return {
        name: _PLACEHOLDERS.get((properties.get(name) or {}).get("type"), "test")
        for name in schema.get("required") or []
    }


def _text(content: Any, tool_results: bool = True) -> str:
    """The text of a message content in either format: a string, or a list of parts or blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "tool_result":
            texts.append(_text(part.get("content")) if tool_results else "")
        elif isinstance(part.get("text"), str):
            texts.append(part["text"])
    return " ".join(text for text in texts if text)


def _pieces(text: str) -> list[str]:
    """Word-sized pieces that join back into ``text``, like a model's token stream."""
    return re.findall(r"\s*\S+\s*$|\s*\S+", text) or ([text] if text else [])


def _embed(text: str, dims: int) -> list[float]:
    vector = [0.0] * dims
    for word in text.lower().split():
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        vector[int.from_bytes(digest[:4], "little") % dims] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
