"""The servers under test: how each is configured and started, and what its process costs.

Each gateway runs as its own process pinned to one core with ``taskset``. CPU time and memory are read from
``/proc`` for the process and any children it starts, so a server that forks workers is charged for them.
"""

from __future__ import annotations

import os
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
THRIFTY_BIN = REPO / ".venv" / "bin" / "thrifty"
LITELLM_VENV = Path(os.environ.get("LITELLM_VENV", REPO / ".bench" / "litellm-venv"))
SCRATCH = REPO / ".bench"
LITELLM_CONFIG = Path(__file__).resolve().parent / "litellm_config.yaml"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODEL_ALIAS = "fast"
UPSTREAM_KEY = "sk-upstream-bench"


@dataclass
class GatewaySpec:
    """How to start one server under test and how to ask it whether it is ready."""

    name: str
    version: str
    command: list[str]
    health_path: str
    api_key: str
    env: dict[str, str] = field(default_factory=dict)
    python: Path | None = None
    imports: dict[str, str] = field(default_factory=dict)
    import_env: dict[str, str] = field(default_factory=dict)
    ledger_path: Path | None = None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _package_version(python: Path, package: str) -> str:
    code = f"from importlib.metadata import version; print(version({package!r}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def _thrifty_key(config: Path) -> str:
    """Issue a virtual key, so Thrifty authenticates every request as LiteLLM checks its master key."""
    cmd = [str(THRIFTY_BIN), "keys", "create", "--config", str(config), "--tenant", "bench"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return next(line.split()[-1] for line in out.splitlines() if line.startswith("secret:"))


# Guards that apply to every request and never refuse: a hard budget, a rate limit, agent caps.
GUARDS = (
    '\n[[budgets]]\nscope = "tenant"\nid = "bench"\nusd = 1000000\nperiod = "month"\n'
    '\n[[rate_limits]]\nscope = "key"\nrpm = 100000000\ntpm = 100000000000\n'
    "\n[agent_caps]\nmax_calls = 100000000\nloop_repeats = 5\n"
)


def thrifty_spec(workdir: Path, upstream_port: int, port: int, *, guards: bool = False) -> GatewaySpec | str:
    """Thrifty with its SQLite ledger on and one virtual key; a string says why it cannot run."""
    if not THRIFTY_BIN.exists():
        return f"{THRIFTY_BIN} not found (pip install -e . first)"
    name = "thrifty-guards" if guards else "thrifty"
    ledger = workdir / f"{name}-ledger.sqlite"
    config = workdir / f"{name}.toml"
    config.write_text(
        f'[providers.up]\nkind = "openai"\nbase_url = "http://127.0.0.1:{upstream_port}/v1"\n'
        f'api_key_env = "UP_API_KEY"\n\n[models.{MODEL_ALIAS}]\ntargets = ["up::gpt-4o-mini"]\n\n'
        f'[ledger]\nurl = "sqlite:///{ledger}"\njournal_dir = "{workdir / (name + "-journal")}"\n'
        + (GUARDS if guards else "")
    )
    python = THRIFTY_BIN.parent / "python"
    serve = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    return GatewaySpec(
        name=name,
        version=_package_version(python, "thrifty"),
        command=[str(THRIFTY_BIN), *serve],
        health_path="/healthz",
        api_key=_thrifty_key(config),
        env={"UP_API_KEY": UPSTREAM_KEY},
        python=python,
        imports={"import_s": "import thrifty", "server_import_s": "import thrifty.server.run"},
        ledger_path=ledger,
    )


def thrifty_guards_spec(workdir: Path, upstream_port: int, port: int) -> GatewaySpec | str:
    """Thrifty with budgets, rate limits and agent caps applying to every request (in-process counters)."""
    return thrifty_spec(workdir, upstream_port, port, guards=True)


def litellm_spec(workdir: Path, upstream_port: int, port: int) -> GatewaySpec | str:
    """LiteLLM's proxy from its own venv, no database, price map read offline; a string says why not."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        return f"{binary} not found (run: bash benchmarks/setup_litellm.sh)"
    master_key = "sk-" + secrets.token_hex(32)
    offline = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return GatewaySpec(
        name="litellm",
        version=_package_version(LITELLM_VENV / "bin" / "python", "litellm"),
        command=[str(binary), "--config", str(LITELLM_CONFIG), "--host", "127.0.0.1", "--port", str(port)],
        health_path="/health/liveliness",
        api_key=master_key,
        env={
            **offline,
            "LITELLM_MASTER_KEY": master_key,
            "UPSTREAM_API_BASE": f"http://127.0.0.1:{upstream_port}/v1",
            "UP_API_KEY": UPSTREAM_KEY,
        },
        python=LITELLM_VENV / "bin" / "python",
        imports={"import_s": "import litellm", "server_import_s": "import litellm.proxy.proxy_server"},
        import_env=offline,
    )


def litellm_quiet_spec(workdir: Path, upstream_port: int, port: int) -> GatewaySpec | str:
    """LiteLLM with LITELLM_LOG=ERROR, which also turns off uvicorn's per-request access log."""
    spec = litellm_spec(workdir, upstream_port, port)
    if isinstance(spec, GatewaySpec):
        spec.name = "litellm-quiet"
        spec.env["LITELLM_LOG"] = "ERROR"
        spec.imports = {}
    return spec


class ServerProcess:
    """A server started pinned to one core, with its log in ``workdir``."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], cpu: int, workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.started_at = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                ["taskset", "-c", str(cpu), *command],
                env={**os.environ, **env},
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_healthy(self, port: int, path: str, timeout_s: float = 120.0) -> float:
        """Poll ``path`` until it answers 200; returns seconds since start."""
        url = f"http://127.0.0.1:{port}{path}"
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see {self.log_path}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started_at
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not healthy after {timeout_s}s; see {self.log_path}")

    def pids(self) -> list[int]:
        """The process and all its descendants."""
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo.extend(int(child) for child in task.read_text().split())
                except OSError:
                    continue
        return found

    def cpu_s(self) -> float:
        """utime + stime of the whole process tree, in seconds."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def memory_mb(self, key: str = "VmRSS") -> float:
        """Sum of ``key`` (VmRSS or VmHWM) over the process tree, in MiB."""
        total_kb = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            line = next((line for line in status.splitlines() if line.startswith(key + ":")), None)
            total_kb += int(line.split()[1]) if line else 0
        return round(total_kb / 1024, 1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def import_times(python: Path, imports: dict[str, str], env: dict[str, str], cpu: int, repeats: int) -> dict:
    """Median wall and CPU time of ``python -c CODE`` for each import, minus a bare interpreter start.

    CPU time (the child's user + system) barely moves when other work shares the core; wall time does.
    """

    def median_run(code: str) -> tuple[float, float]:
        walls, cpus = [], []
        for _ in range(repeats):
            cpu_before, start = _children_cpu_s(), time.perf_counter()
            cmd = ["taskset", "-c", str(cpu), str(python), "-c", code]
            subprocess.run(cmd, env={**os.environ, **env}, check=True)
            walls.append(time.perf_counter() - start)
            cpus.append(_children_cpu_s() - cpu_before)
        return statistics.median(walls), statistics.median(cpus)

    bare_wall, bare_cpu = median_run("pass")
    result: dict = {"interpreter_s": round(bare_wall, 3), "interpreter_cpu_s": round(bare_cpu, 3)}
    for label, code in imports.items():
        wall, cpu_s = median_run(code)
        result[label] = round(wall - bare_wall, 3)
        result[label.replace("_s", "_cpu_s")] = round(cpu_s - bare_cpu, 3)
    return result | {"code": imports}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_upstream(port: int, cpu: int, workdir: Path, stream_gap_ms: float) -> ServerProcess:
    script = Path(__file__).resolve().parent / "fake_openai_upstream.py"
    command = [sys.executable, str(script), "--port", str(port), "--stream-gap-ms", str(stream_gap_ms)]
    upstream = ServerProcess("upstream", command, {}, cpu, workdir)
    upstream.wait_healthy(port, "/healthz", timeout_s=20)
    return upstream
