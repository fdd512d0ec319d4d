"""Building the ASGI app from settings and running it with uvicorn, in the foreground or in a thread."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time
from typing import Any

from thrifty.assembly import Runtime, build_runtime
from thrifty.server.app import ThriftyApp
from thrifty.settings import Settings


def make_app(runtime: Runtime) -> ThriftyApp:
    async def startup() -> None:
        await asyncio.to_thread(runtime.start)
        runtime.bind_embedder(asyncio.get_running_loop())
        # Everything alive now lives as long as the process: keep the collector from rescanning it, which
        # would otherwise show up as millisecond pauses in the latency tail.
        gc.freeze()

    return ThriftyApp(
        runtime.gateway,
        max_body_bytes=runtime.settings.server.max_body_bytes,
        ready=runtime.ready,
        estimator=runtime.estimator,
        budgets=runtime.budgets,
        on_startup=startup,
        on_shutdown=runtime.aclose,
        public_metrics=runtime.settings.server.public_metrics,
    )


def uvicorn_config(app: ThriftyApp, host: str, port: int) -> Any:
    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=loop,
        http="httptools",
        lifespan="on",
        access_log=False,
        # The gateway reads the TCP peer itself: trusting X-Forwarded-For (uvicorn's default from
        # FORWARDED_ALLOW_IPS) would let a remote client claim to be 127.0.0.1.
        proxy_headers=False,
        log_level="warning",
        timeout_keep_alive=75,
    )


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    runtime = build_runtime(settings)
    config = uvicorn_config(make_app(runtime), host or settings.server.host, port or settings.server.port)
    uvicorn.Server(config).run()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerThread:
    """A real gateway on loopback in a background thread (the demo, simulations and tests use it)."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        import uvicorn

        self.runtime = build_runtime(settings)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn_config(make_app(self.runtime), "127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._server.run, name="thrifty-server", daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(30)
