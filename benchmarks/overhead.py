"""What a gateway adds on top of its upstream: latency, time to first token, CPU, throughput, memory.

    .venv/bin/python benchmarks/overhead.py [--gateways thrifty,litellm] [--quick]

A fast fake OpenAI upstream runs on loopback. Every gateway runs pinned to core 0 (all of them started at
once, each idle while another is measured); the upstream, this client and wrk share core 1. The machine is
shared, so no gateway is measured in one stretch after another: sequential requests alternate one by one
between a gateway and the upstream directly, in blocks of 100 that rotate over the gateways, and throughput
runs alternate gateways in short rounds. "Added" is a gateway's percentile minus that of the direct requests
in the same blocks. CPU time comes from /proc, so it is what the gateway process itself spent, whatever else
ran on its core. Prints a table and writes benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import gateway_procs as procs
import loadgen
import overhead_report
from gateway_procs import GatewaySpec, ServerProcess
from loadgen import Endpoint

GATEWAY_CPU = 0
LOAD_CPU = 1
STREAM_GAP_MS = 5.0
SEQ_BLOCK = 100
SEQ_BLOCK_WARMUP = 3
RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"
BUILDERS: dict[str, Callable[[Path, int, int], GatewaySpec | str]] = {
    "thrifty": procs.thrifty_spec,
    "thrifty-guards": procs.thrifty_guards_spec,
    "litellm": procs.litellm_spec,
    "litellm-quiet": procs.litellm_quiet_spec,
}


@dataclass(frozen=True)
class Plan:
    """How much to measure: the full run takes a few minutes, --quick under one."""

    warmup: int = 100
    requests: int = 2000
    stream_requests: int = 1000
    load_s: int = 4
    load_rounds: int = 3
    load_warmup_s: int = 2
    concurrencies: tuple[int, ...] = (16, 64)
    import_repeats: int = 5
    idle_s: float = 2.0
    server_imports: bool = True

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            20, 300, 150, load_s=2, load_rounds=1, load_warmup_s=1, import_repeats=1, idle_s=1.0, server_imports=False
        )


@dataclass
class Target:
    """A server requests can be sent to: the upstream itself ("direct") or a gateway in front of it."""

    name: str
    endpoint: Endpoint
    proc: ServerProcess
    spec: GatewaySpec | None = None


class CoreClock:
    """Busy time of both cores and of this process, to tell how much else ran beside the benchmark."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> dict[str, float]:
        clock: dict[str, float] = {"self": sum(resource.getrusage(resource.RUSAGE_SELF)[:2])}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *values = line.split()
            if name in (f"cpu{GATEWAY_CPU}", f"cpu{LOAD_CPU}"):
                ticks = [int(value) for value in values[:8]]
                clock[name + "_busy"] = (sum(ticks) - ticks[3] - ticks[4]) / procs.CLK_TCK
                clock[name + "_all"] = sum(ticks) / procs.CLK_TCK
        return clock

    def utilization(self) -> dict[str, float]:
        end = self._read()
        spent = {key: end[key] - self.start[key] for key in end}
        wall = spent[f"cpu{GATEWAY_CPU}_all"] or 1.0
        return {
            "core0_busy": round(spent[f"cpu{GATEWAY_CPU}_busy"] / wall, 3),
            "core1_busy": round(spent[f"cpu{LOAD_CPU}_busy"] / (spent[f"cpu{LOAD_CPU}_all"] or 1.0), 3),
            "client_cpu": round(spent["self"] / wall, 3),
            "wall_s": round(wall, 3),
        }


def busy_before_start(seconds: float = 1.0) -> dict[str, float]:
    """How busy the cores were before anything started: the noise floor this run was measured on."""
    clock = CoreClock()
    time.sleep(seconds)
    busy = clock.utilization()
    return {"core0_busy": busy["core0_busy"], "core1_busy": busy["core1_busy"]}


def start_gateways(names: list[str], upstream_port: int, workdir: Path, results: dict) -> list[Target]:
    """Start each gateway in turn (so start-up times do not overlap) and leave them all running."""
    targets = []
    for name in names:
        port = procs.free_port()
        spec = BUILDERS[name](workdir, upstream_port, port)
        if isinstance(spec, str):
            print(f"skipping {name}: {spec}", flush=True)
            results["skipped"][name] = spec
            continue
        print(f"starting {name} {spec.version}", flush=True)
        proc = ServerProcess(spec.name, spec.command, spec.env, GATEWAY_CPU, workdir)
        targets.append(Target(name, Endpoint("127.0.0.1", port, spec.api_key), proc, spec))
        startup_s = proc.wait_healthy(port, spec.health_path)
        results["targets"][name] = {"version": spec.version, "command": [_relative(part) for part in spec.command]}
        results["targets"][name]["startup_s"] = round(startup_s, 2)
    return targets


def warm_up(targets: list[Target], count: int) -> None:
    for stream in (False, True):
        body = loadgen.chat_body(procs.MODEL_ALIAS, stream)
        loadgen.interleaved({t.name: t.endpoint for t in targets}, body, count=0, warmup=count)


def idle_state(targets: list[Target], idle_s: float) -> dict[str, dict]:
    """Resident memory after start-up and warm-up, and the CPU each server burns while nobody calls it."""
    before = {t.name: t.proc.cpu_s() for t in targets}
    time.sleep(idle_s)
    return {
        t.name: {
            "idle_rss_mb": t.proc.memory_mb("VmRSS"),
            "idle_cpu_pct": round((t.proc.cpu_s() - before[t.name]) / idle_s * 100, 1),
        }
        for t in targets
    }


def paired_blocks(targets: list[Target], body: bytes, count: int) -> dict[str, dict[str, list]]:
    """Per gateway, its samples and the direct samples taken in the same blocks.

    Each block alternates one gateway with the upstream request by request; blocks rotate over the gateways.
    Blocks rather than a three-way rotation because gateways share core 0: a request that runs right after
    another gateway's has cold caches, which would charge each gateway for its neighbour.
    """
    direct, gateways = targets[0], targets[1:] or targets[:1]
    paired: dict[str, dict[str, list]] = {t.name: {"self": [], "direct": []} for t in gateways}
    for block_index in range(-(-count // SEQ_BLOCK)):
        size = min(SEQ_BLOCK, count - block_index * SEQ_BLOCK)
        shift = block_index % len(gateways)
        for t in gateways[shift:] + gateways[:shift]:
            endpoints = {"direct": direct.endpoint, t.name: t.endpoint}
            samples = loadgen.interleaved(endpoints, body, size, warmup=SEQ_BLOCK_WARMUP)
            paired[t.name]["self"] += samples[t.name]
            paired[t.name]["direct"] += samples["direct"]
    return paired


def _latency_entry(mine: list, direct: list, index: int) -> dict:
    ours = loadgen.percentiles_ms([sample[index] for sample in mine])
    base = loadgen.percentiles_ms([sample[index] for sample in direct])
    added = {"added_p50_ms": ours["p50_ms"] - base["p50_ms"], "added_p99_ms": ours["p99_ms"] - base["p99_ms"]}
    return ours | {key: round(value, 3) for key, value in added.items()}


def sequential(targets: list[Target], count: int, stream: bool) -> dict:
    """One client, one request at a time; "added" compares each gateway with the direct requests beside it."""
    body = loadgen.chat_body(procs.MODEL_ALIAS, stream)
    cpu_before = {t.name: t.proc.cpu_s() for t in targets}
    clock = CoreClock()
    paired = paired_blocks(targets, body, count)
    cores = clock.utilization()
    gateways_cpu_s = sum(t.proc.cpu_s() - cpu_before[t.name] for t in targets[1:])
    phase: dict = {"cores": cores | {"servers_cpu": round(gateways_cpu_s / cores["wall_s"], 3)}}
    kinds = ("total", "first_token") if stream else ("total",)
    all_direct = [sample for pair in paired.values() for sample in pair["direct"]]
    phase["direct"] = {kind: _latency_entry(all_direct, all_direct, i) for i, kind in enumerate(kinds)}
    for t in targets[1:]:
        entry: dict = {"cpu_ms_per_req": round((t.proc.cpu_s() - cpu_before[t.name]) / count * 1000, 3)}
        for index, kind in enumerate(kinds):
            entry[kind] = _latency_entry(paired[t.name]["self"], paired[t.name]["direct"], index)
        phase[t.name] = entry
    return phase


def load_once(target: Target, connections: int, duration_s: int, script: Path | None) -> dict:
    """One closed-loop load run, with the server's own CPU and how busy each core was."""
    cpu_before, clock = target.proc.cpu_s(), CoreClock()
    if script is not None:
        run = loadgen.run_wrk(target.endpoint, script, connections, duration_s, LOAD_CPU)
    else:
        body = loadgen.chat_body(procs.MODEL_ALIAS, stream=False)
        run = loadgen.run_asyncio_load(target.endpoint, body, connections, duration_s)
    run["server_cpu_s"] = round(target.proc.cpu_s() - cpu_before, 3)
    run["server_cpu_util"] = round(run["server_cpu_s"] / (run["duration_us"] / 1e6), 3)
    run |= clock.utilization()
    return run


def aggregate(runs: list[dict]) -> dict:
    """Rounds of one target at one concurrency: medians of rates, CPU as total seconds over total requests."""
    requests, cpu_s = sum(run["requests"] for run in runs), sum(run["server_cpu_s"] for run in runs)
    return {
        "req_per_s": statistics.median(run["req_per_s"] for run in runs),
        "p50_ms": statistics.median(run["p50_ms"] for run in runs),
        "p99_ms": statistics.median(run["p99_ms"] for run in runs),
        "server_cpu_ms_per_req": round(cpu_s / max(requests, 1) * 1000, 3),
        "req_per_cpu_s": round(requests / cpu_s, 1) if cpu_s else None,
        "status_errors": sum(run["status_errors"] for run in runs),
        "socket_errors": sum(run["socket_errors"] for run in runs),
        "core0_busy": statistics.median(run["core0_busy"] for run in runs),
        "core1_busy": statistics.median(run["core1_busy"] for run in runs),
        "server_cpu_util": statistics.median(run["server_cpu_util"] for run in runs),
        "rounds": runs,
    }


def throughput(targets: list[Target], plan: Plan, workdir: Path) -> dict:
    """Fixed-duration load at each concurrency, alternating targets in rounds so drift hits all alike."""
    body = loadgen.chat_body(procs.MODEL_ALIAS, stream=False)
    scripts: dict[str, Path | None] = {t.name: None for t in targets}
    if loadgen.wrk_available():
        scripts = {t.name: loadgen.write_wrk_script(workdir / f"{t.name}.lua", t.endpoint, body) for t in targets}
    for t in targets:
        load_once(t, max(plan.concurrencies), plan.load_warmup_s, scripts[t.name])
    runs: dict[str, dict[str, list]] = {t.name: {f"c{c}": [] for c in plan.concurrencies} for t in targets}
    for round_index in range(plan.load_rounds):
        for conc in plan.concurrencies:
            shift = round_index % len(targets)
            for t in targets[shift:] + targets[:shift]:
                runs[t.name][f"c{conc}"].append(load_once(t, conc, plan.load_s, scripts[t.name]))
    return {name: {conc: aggregate(rounds) for conc, rounds in by_conc.items()} for name, by_conc in runs.items()}


def measure(targets: list[Target], plan: Plan, workdir: Path, results: dict) -> None:
    """All phases, every target side by side; fills ``results["targets"]``."""
    per_target = results["targets"]
    warm_up(targets, plan.warmup)
    for name, idle in idle_state(targets, plan.idle_s).items():
        per_target[name]["memory"] = idle
    print("sequential: non-streaming, then streaming", flush=True)
    for phase_name, count, stream in (("sequential", plan.requests, False), ("streaming", plan.stream_requests, True)):
        phase = sequential(targets, count, stream)
        results["cores"][phase_name] = phase.pop("cores")
        for name, entry in phase.items():
            per_target[name][phase_name] = entry
    print(f"throughput: {plan.load_rounds} round(s) x {plan.concurrencies} x {plan.load_s}s", flush=True)
    for name, by_conc in throughput(targets, plan, workdir).items():
        per_target[name]["throughput"] = by_conc
    for t in targets:
        per_target[t.name]["memory"]["after_load_rss_mb"] = t.proc.memory_mb("VmRSS")
        per_target[t.name]["memory"]["peak_rss_mb"] = t.proc.memory_mb("VmHWM")


def after_stop(targets: list[Target], plan: Plan, results: dict) -> None:
    """Ledger contents (flushed on shutdown) and import times, measured with every server stopped."""
    for t in targets:
        if t.spec is None:
            continue
        entry = results["targets"][t.name]
        entry["ledger_rows"] = overhead_report.ledger_rows(t.spec.ledger_path)
        imports = {k: v for k, v in t.spec.imports.items() if plan.server_imports or k == "import_s"}
        if t.spec.python is not None and imports:
            print(f"import time: {t.name}", flush=True)
            env, repeats = t.spec.import_env, plan.import_repeats
            entry["import"] = procs.import_times(t.spec.python, imports, env, GATEWAY_CPU, repeats)


def raise_priority(nice: int) -> str:
    """Run this process and everything it starts at ``nice``; returns where that took effect.

    With the kernel's autogroups, nice only orders processes within one session, so this starts a new
    session and sets that autogroup's nice too (root only): other sessions' work then yields to the benchmark.
    """
    with contextlib.suppress(OSError):
        os.setsid()
    os.setpriority(os.PRIO_PROCESS, 0, nice)  # inherited by the upstream, the gateways and wrk
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError:
        return f"nice {nice} (process only)"
    return f"nice {nice} (process and autogroup)"


def _relative(part: str) -> str:
    """Paths inside the checkout as relative ones, so results carry no machine's layout."""
    root = str(Path(__file__).resolve().parent.parent) + "/"
    return part.replace(root, "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", default="thrifty,litellm", help=f"comma-separated: {', '.join(BUILDERS)}")
    parser.add_argument(
        "--nice", type=int, default=0, help="run servers and load at this niceness (e.g. -10 on a busy machine)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter load: under a minute")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.gateways = [name.strip() for name in args.gateways.split(",") if name.strip()]
    unknown = set(args.gateways) - set(BUILDERS)
    if unknown:
        parser.error(f"unknown gateways: {', '.join(sorted(unknown))}")
    return args


def run(args: argparse.Namespace, workdir: Path) -> dict:
    plan = Plan.quick() if args.quick else Plan()
    results: dict = {"machine": overhead_report.machine_info(), "plan": asdict(plan)}
    results["machine"]["cores_busy_before"] = busy_before_start()
    results["stream_gap_ms"] = STREAM_GAP_MS
    results |= {"targets": {"direct": {"version": "fake upstream"}}, "skipped": {}, "cores": {}}
    upstream_port = procs.free_port()
    upstream = procs.start_upstream(upstream_port, LOAD_CPU, workdir, STREAM_GAP_MS)
    targets = [Target("direct", Endpoint("127.0.0.1", upstream_port, "sk-direct"), upstream)]
    try:
        targets += start_gateways(args.gateways, upstream_port, workdir, results)
        measure(targets, plan, workdir, results)
    finally:
        for t in reversed(targets):
            t.proc.stop()
    after_stop(targets, plan, results)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs at least 2 cores: the gateways on one, the upstream and load generator on another")
    os.sched_setaffinity(0, {LOAD_CPU})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the servers
    priority = raise_priority(args.nice) if args.nice else "default"
    procs.SCRATCH.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="overhead-", dir=procs.SCRATCH))
    started = time.perf_counter()
    results = run(args, workdir)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["priority"] = priority
    results["summary"] = overhead_report.summarize(results)
    results["published"] = overhead_report.PUBLISHED
    print()
    overhead_report.print_table(results["summary"] | overhead_report.PUBLISHED)
    for note in overhead_report.noise_notes(results):
        print("note:", note)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.output} in {results['elapsed_s']} s (server logs in {workdir})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
