"""Bad input and broken upstreams: a clear error in OpenAI's shape or a recorded row, never a 500 or a lost cost."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from fakes.upstream import FakeUpstream, FakeUsage, Fault
from gateway_harness import ledger_rows, running_gateway
from thrifty.server.run import ServerThread

HI = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream(usage=FakeUsage(input_tokens=100, output_tokens=50)) as upstream:
        yield upstream


@pytest.fixture
def gw(tmp_path: Path, up: FakeUpstream) -> Iterator[ServerThread]:
    with running_gateway(tmp_path, up, extra="") as server:
        yield server


def post(gw: ServerThread, body: bytes, path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(gw.base_url + path, content=body, headers={"content-type": "application/json"}, timeout=10)


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, object] = body["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert "Traceback" not in str(error["message"])
    assert response.headers["x-thrifty-request-id"].startswith("req_")
    return error


@pytest.mark.parametrize(
    ("body", "status", "param", "words"),
    [
        (b"{not json", 400, None, "not valid JSON"),
        (b"[1, 2]", 400, None, "JSON object"),
        (b'{"model": "fast", "messages": []}', 400, "messages", "non-empty"),
        (b'{"model": "fast"}', 400, "messages", "non-empty"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model", "model"),
        (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', 400, "model", "string"),
        (b'{"model": "fast", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role", "role"),
        (b'{"model": "fast", "messages": [{"role": "user", "content": 5}]}', 400, "messages[0].content", "string"),
        (
            b'{"model": "fast", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}',
            400,
            "max_tokens",
            "",
        ),
        (b'{"model": "fast", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "stream", ""),
        (
            b'{"model": "fast", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1000000000000000}',
            400,
            "max_tokens",
            "from 1 to 2147483647",
        ),
        (b'{"model": "fast", "messages": [{"role": "user", "content": "x"}], "n": 500}', 400, "n", "from 1 to 128"),
        (
            b'{"model": "fast", "messages": [{"role": "user", "content": "x"}], "temperature": true}',
            400,
            "temperature",
            "",
        ),
        (b'{"model": "fast", "messages": [{"role": "user", "content": "x"}], "stop": [1]}', 400, "stop", ""),
        (b'{"model": "ghost", "messages": [{"role": "user", "content": "x"}]}', 404, "model", "not configured"),
        (b'{"model": "fast", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None, "UTF-8"),
        (
            b'{"model": "fast", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": 1}}',
            400,
            "response_format.type",
            "string",
        ),
        (
            b'{"model": "fast", "messages": [{"role": "assistant", "content": null, "tool_calls": "abc"}]}',
            400,
            "messages[0].tool_calls",
            "array of objects",
        ),
        (
            b'{"model": "fast", "messages": [{"role": "assistant", "content": "x",'
            b' "tool_calls": [{"function": "f"}]}]}',
            400,
            "messages[0].tool_calls",
            "array of objects",
        ),
        (b'{"model": "fast", "messages": [{"role": "user", "content": "x"}], "tools": ["t"]}', 400, "tools[0]", ""),
        (
            b'{"model": "fast", "messages": [{"role": "user", "content": "x"}], "user": "' + b"u" * 257 + b'"}',
            400,
            "x-thrifty-user",
            "at most 256",
        ),
    ],
)
def test_malformed_requests_get_openai_errors(
    gw: ServerThread, up: FakeUpstream, body: bytes, status: int, param: str | None, words: str
) -> None:
    response = post(gw, body)
    assert response.status_code == status
    error = error_of(response)
    assert error["param"] == param
    assert words in str(error["message"])
    assert up.requests == []


def test_overlong_attribution_headers_are_refused(gw: ServerThread, up: FakeUpstream) -> None:
    body = b'{"model": "fast", "messages": [{"role": "user", "content": "x"}]}'
    for header, limit in (("x-thrifty-feature", 128), ("x-thrifty-session", 256), ("x-thrifty-user", 256)):
        response = httpx.post(gw.base_url + "/v1/chat/completions", content=body, headers={header: "f" * (limit + 1)})
        assert response.status_code == 400 and error_of(response)["param"] == header
        ok = httpx.post(gw.base_url + "/v1/chat/completions", content=body, headers={header: "f" * limit})
        assert ok.status_code == 200
    assert len(up.requests) == 3


def test_body_over_the_limit_is_413(tmp_path: Path, up: FakeUpstream) -> None:
    with running_gateway(tmp_path, up, extra="") as gw:
        gw.runtime.gateway  # noqa: B018 - the server is up
    cfg = tmp_path / "small"
    cfg.mkdir()
    text = (tmp_path / "thrifty.toml").read_text().replace("[server]", "[server]\nmax_body_bytes = 1000")
    (cfg / "thrifty.toml").write_text(text)
    from thrifty.settings import load_settings

    with ServerThread(load_settings(cfg / "thrifty.toml")) as small:
        big = b'{"model": "fast", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}'
        response = post(small, big)
        assert response.status_code == 413
        assert error_of(response)["code"] == "request_too_large"
        # Chunked upload with no content-length is cut off too.
        response = httpx.post(small.base_url + "/v1/chat/completions", content=iter([big[:600], big[600:]]))
        assert response.status_code == 413


def test_unknown_route_and_wrong_method(gw: ServerThread) -> None:
    assert error_of(httpx.get(gw.base_url + "/v1/nothing"))["type"] == "not_found_error"
    response = httpx.get(gw.base_url + "/v1/chat/completions")
    assert response.status_code == 405 and "not allowed" in str(error_of(response)["message"])
    assert error_of(response)["code"] == "method_not_allowed"


def test_the_providers_refusing_the_gateways_key_is_not_the_clients_bad_key(gw: ServerThread, up: FakeUpstream) -> None:
    """An upstream 401 means the gateway's provider key is wrong: an SDK told 401 would say the client's is."""
    up.mode = Fault.status(401)
    response = post(gw, b'{"model": "fast", "messages": [{"role": "user", "content": "x"}]}')
    assert response.status_code == 502
    error = error_of(response)
    assert error["code"] == "upstream_auth_failed" and "gateway's credentials" in str(error["message"])


def test_a_provider_account_out_of_credit_falls_back_to_the_next_target(gw: ServerThread, up: FakeUpstream) -> None:
    """An upstream 402 is the gateway's account out of credit, not the client's: another target may still answer,
    and when none does the client is not told that it must pay."""
    up.script([Fault.status(402)])  # 'resilient': a refused connection, then this 402, then gpt-4o
    response = post(gw, b'{"model": "resilient", "messages": [{"role": "user", "content": "x"}]}')
    assert response.status_code == 200 and response.headers["x-thrifty-model"] == "gpt-4o"
    up.mode = Fault.status(402)
    response = post(gw, b'{"model": "fast", "messages": [{"role": "user", "content": "x"}]}')
    assert response.status_code == 502 and error_of(response)["code"] == "upstream_auth_failed"


def test_upstream_garbage_is_a_502_and_a_row(gw: ServerThread, up: FakeUpstream) -> None:
    up.mode = Fault.garbage()
    response = post(gw, b'{"model": "fast", "messages": [{"role": "user", "content": "x"}]}')
    assert response.status_code == 502 and "not JSON" in str(error_of(response)["message"])
    (row,) = ledger_rows(gw)
    assert row["status"] == "error" and row["error_type"] == "api_error"


def test_upstream_that_hangs_times_out_with_504(gw: ServerThread, up: FakeUpstream) -> None:
    up.mode = Fault.hang()
    started = time.monotonic()
    response = post(gw, b'{"model": "fast", "messages": [{"role": "user", "content": "x"}]}')
    assert response.status_code == 504 and error_of(response)["type"] == "timeout"
    assert time.monotonic() - started < 4
    assert ledger_rows(gw)[0]["error_type"] == "timeout"


def test_stream_dropped_mid_way_records_the_tokens_already_paid(gw: ServerThread, up: FakeUpstream) -> None:
    up.usage = None  # the fake counts words; the dropped stream never sends its usage chunk
    up.mode = Fault.drop_mid_stream(after_chunks=3)
    with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "one two three four five six seven"}], stream=True
        )
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass
    (row,) = ledger_rows(gw)
    assert row["status"] == "error" and row["streamed"]
    assert row["tokens_estimated"] and row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert row["cost_nusd"] > 0


def test_client_abandoning_a_stream_is_recorded_as_cancelled(gw: ServerThread, up: FakeUpstream) -> None:
    up.mode = Fault.slow_first_token(0.2)
    body = b'{"model": "fast", "stream": true, "messages": [{"role": "user", "content": "a b c d e f g h"}]}'
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        sock.sendall(request)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    # The client is gone before the first token arrived.
    deadline = time.monotonic() + 5
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline and not rows:
        time.sleep(0.05)
        rows = ledger_rows(gw)
    (row,) = rows
    assert row["status"] in ("cancelled", "ok")
    assert row["streamed"] and row["input_tokens"] > 0
