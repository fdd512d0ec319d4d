"""A real gateway on loopback in front of fake upstreams, and a way to read the ledger rows it wrote."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select

from fakes.upstream import FakeUpstream
from thrifty.ledger import tables
from thrifty.server.run import ServerThread
from thrifty.settings import Settings, load_settings


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def config_text(
    up: FakeUpstream, ledger_url: str = "sqlite:///ledger.sqlite", extra: str = "", capture_payloads: bool = False
) -> str:
    return f"""
[server]
first_byte_timeout_s = 1.5
upstream_timeout_s = 5

[ledger]
url = "{ledger_url}"
flush_interval_ms = 10
capture_payloads = {str(capture_payloads).lower()}

[providers.up]
kind = "openai"
base_url = "{up.base_url}/v1"

[providers.down]
kind = "openai"
base_url = "http://127.0.0.1:{closed_port()}/v1"

[providers.anth]
kind = "anthropic"
base_url = "{up.base_url}"

[models.fast]
targets = ["up::gpt-4o-mini"]

[models.resilient]
targets = ["down::gpt-4o-mini", "up::gpt-4o-mini", "up::gpt-4o"]

[models.claude]
targets = ["anth::claude-3-5-haiku-latest"]

[models.embed]
targets = ["up::text-embedding-3-small"]

[models.mystery]
targets = ["up::my-private-finetune"]
{extra}
"""


@contextmanager
def running_gateway(tmp_path: Path, up: FakeUpstream, **kwargs: Any) -> Iterator[ServerThread]:
    path = tmp_path / "thrifty.toml"
    path.write_text(config_text(up, **kwargs))
    with ServerThread(load_settings(path)) as server:
        yield server


def chat_raw(client: Any, text: str, model: str = "auto", **kwargs: Any) -> Any:
    """One user turn through an ``openai.OpenAI`` client; the raw response, for its headers."""
    return client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **kwargs
    )


def settings_for(tmp_path: Path, up: FakeUpstream, **kwargs: Any) -> Settings:
    path = tmp_path / "thrifty.toml"
    path.write_text(config_text(up, **kwargs))
    return load_settings(path)


def ledger_rows(server: ServerThread) -> list[dict[str, Any]]:
    assert server.runtime.ledger.flush(10), "ledger did not flush"
    with server.runtime.ledger.engine.connect() as conn:
        rows = conn.execute(select(tables.requests).order_by(tables.requests.c.started_at)).mappings().all()
        return [dict(row) for row in rows]
