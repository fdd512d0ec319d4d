"""Load generation for the overhead benchmark: a sequential keep-alive client, and wrk for throughput.

The sequential client is a blocking socket with httptools parsing the response: no HTTP library, so that
what it measures is the server, and so that direct and through-gateway requests cost the client the same.
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httptools

CHAT_PATH = "/v1/chat/completions"
FIRST_TOKEN_MARKER = b"Hello"
MESSAGES = [
    {"role": "system", "content": "You are a concise assistant for a customer-support team."},
    {"role": "user", "content": "In one sentence: what does a token-bucket rate limiter do?"},
]


def chat_body(model: str, stream: bool) -> bytes:
    """The small realistic chat body sent to every server: a model alias and two messages."""
    body: dict[str, object] = {"model": model, "messages": MESSAGES, "max_tokens": 64}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Endpoint:
    """Where to send chat requests, and with which bearer token."""

    host: str
    port: int
    api_key: str

    def request_bytes(self, body: bytes) -> bytes:
        head = (
            f"POST {CHAT_PATH} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer {self.api_key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body


class _Response:
    """httptools callbacks for one response; notes when the first token's bytes arrive."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.done = False
        self.first_token_at: float | None = None

    def on_body(self, data: bytes) -> None:
        tail = len(self.body) - len(FIRST_TOKEN_MARKER)
        self.body += data
        if self.first_token_at is None and FIRST_TOKEN_MARKER in self.body[max(tail, 0) :]:
            self.first_token_at = time.perf_counter()

    def on_message_complete(self) -> None:
        self.done = True


class KeepAliveClient:
    """One persistent HTTP/1.1 connection, used for one request at a time."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.sock = socket.create_connection((endpoint.host, endpoint.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, request: bytes) -> tuple[float, float]:
        """Send one request; returns (seconds to the whole response, seconds to the first token)."""
        response = _Response()
        parser = httptools.HttpResponseParser(response)
        start = time.perf_counter()
        self.sock.sendall(request)
        while not response.done:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"{self.endpoint.port}: connection closed mid-response")
            parser.feed_data(data)
        end = time.perf_counter()
        status = parser.get_status_code()
        if status != 200:
            raise RuntimeError(f"{self.endpoint.port}: HTTP {status}: {bytes(response.body[:300])!r}")
        first = response.first_token_at if response.first_token_at is not None else end
        return end - start, first - start

    def close(self) -> None:
        self.sock.close()


def percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_s)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return {
        "p50_ms": round(pick(0.50), 3),
        "p99_ms": round(pick(0.99), 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
        "n": len(ordered),
    }


def interleaved(endpoints: dict[str, Endpoint], body: bytes, count: int, warmup: int) -> dict[str, list]:
    """One request to each endpoint per round, rotating the order so none is always first or last.

    Returns per endpoint a list of (total_s, first_token_s) for the measured (post-warm-up) rounds.
    """
    clients = {name: KeepAliveClient(ep) for name, ep in endpoints.items()}
    requests = {name: ep.request_bytes(body) for name, ep in endpoints.items()}
    samples: dict[str, list] = {name: [] for name in endpoints}
    names = list(endpoints)
    try:
        for i in range(warmup + count):
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                timing = clients[name].send(requests[name])
                if i >= warmup:
                    samples[name].append(timing)
    finally:
        for client in clients.values():
            client.close()
    return samples


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {api_key}"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"status_errors\\": %d, \\"socket_errors\\": %d, "
    .. "\\"p50_ms\\": %.3f, \\"p99_ms\\": %.3f}}\\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def write_wrk_script(path: Path, endpoint: Endpoint, body: bytes) -> Path:
    lua_body = "[==[" + body.decode() + "]==]"
    path.write_text(_WRK_SCRIPT.format(body=lua_body, api_key=endpoint.api_key))
    return path


def run_wrk(endpoint: Endpoint, script: Path, connections: int, duration_s: float, cpu: int) -> dict:
    """Run wrk (one thread, pinned to ``cpu``) for a fixed duration; returns its summary."""
    url = f"http://{endpoint.host}:{endpoint.port}{CHAT_PATH}"
    cmd = [
        "taskset",
        "-c",
        str(cpu),
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "10s",
    ]
    out = subprocess.run([*cmd, "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("WRKJSON "))
    result = json.loads(line.removeprefix("WRKJSON "))
    result["req_per_s"] = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    return result


async def _async_worker(endpoint: Endpoint, request: bytes, deadline: float, latencies: list[float]) -> int:
    import asyncio

    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    errors = 0
    try:
        while time.perf_counter() < deadline:
            response = _Response()
            parser = httptools.HttpResponseParser(response)
            start = time.perf_counter()
            writer.write(request)
            while not response.done:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError(f"{endpoint.port}: connection closed mid-response")
                parser.feed_data(data)
            latencies.append(time.perf_counter() - start)
            errors += parser.get_status_code() != 200
    finally:
        writer.close()
    return errors


def run_asyncio_load(endpoint: Endpoint, body: bytes, connections: int, duration_s: float) -> dict:
    """Fallback closed-loop load generator for when wrk is not installed (slower per request than wrk)."""
    import asyncio

    async def main() -> tuple[list[float], int, float]:
        latencies: list[float] = []
        start = time.perf_counter()
        deadline = start + duration_s
        request = endpoint.request_bytes(body)
        jobs = [_async_worker(endpoint, request, deadline, latencies) for _ in range(connections)]
        errors = sum(await asyncio.gather(*jobs))
        return latencies, errors, time.perf_counter() - start

    latencies, errors, elapsed_s = asyncio.run(main())
    stats = percentiles_ms(latencies)
    return {
        "requests": len(latencies),
        "duration_us": round(elapsed_s * 1e6),
        "status_errors": errors,
        "socket_errors": 0,
        "p50_ms": stats["p50_ms"],
        "p99_ms": stats["p99_ms"],
        "req_per_s": round(len(latencies) / elapsed_s, 1),
    }
