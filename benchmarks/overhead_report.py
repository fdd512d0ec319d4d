"""The overhead benchmark's report: the headline table, the published anchor, and warnings about noise."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import time
from pathlib import Path

import loadgen

PUBLISHED = {
    "litellm 1.108 (published)": {
        "version": "1.108",
        "added_p50_ms": 8.8,
        "added_p99_ms": 10.2,
        "cpu_ms_per_req": 8.7,
        "published_req_per_s": 113,
        "idle_rss_mb": 326,
        "note": "measured earlier on a 2-core machine of this kind; the req/s figure's concurrency is not stated",
    }
}

ROWS = [
    ("version", "version"),
    ("seq p50 ms (raw)", "seq_p50_ms"),
    ("seq p99 ms (raw)", "seq_p99_ms"),
    ("added p50 ms", "added_p50_ms"),
    ("added p99 ms", "added_p99_ms"),
    ("stream TTFT p50 ms (raw)", "ttft_p50_ms"),
    ("added TTFT p50 ms", "added_ttft_p50_ms"),
    ("added TTFT p99 ms", "added_ttft_p99_ms"),
    ("added stream total p50 ms", "added_stream_total_p50_ms"),
    ("CPU ms/req (sequential)", "cpu_ms_per_req"),
    ("CPU ms/req (streaming)", "stream_cpu_ms_per_req"),
    ("req/s at c16", "c16_req_per_s"),
    ("req/s at c64", "c64_req_per_s"),
    ("req/s (published, conc. ?)", "published_req_per_s"),
    ("p99 ms at c16", "c16_p99_ms"),
    ("p99 ms at c64", "c64_p99_ms"),
    ("CPU ms/req at c16", "c16_cpu_ms_per_req"),
    ("CPU ms/req at c64", "c64_cpu_ms_per_req"),
    ("req per CPU-second at c16", "c16_req_per_cpu_s"),
    ("req per CPU-second at c64", "c64_req_per_cpu_s"),
    ("server / core0 / core1 busy c64", "c64_busy"),
    ("non-2xx/socket errors c16, c64", "errors"),
    ("startup s", "startup_s"),
    ("import s (package): wall / CPU", "import_s"),
    ("import s (server module): wall / CPU", "server_import_s"),
    ("idle RSS MiB", "idle_rss_mb"),
    ("idle CPU %", "idle_cpu_pct"),
    ("peak RSS MiB", "peak_rss_mb"),
    ("ledger rows written", "ledger_rows"),
]


def _get(result: object, *keys: str) -> object:
    for key in keys:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def _wall_cpu(timings: dict | None, label: str) -> str | None:
    """Wall and CPU seconds; a median difference of noisy timings can dip below zero, which reads as 0."""
    if not timings or f"{label}_s" not in timings:
        return None
    return f"{max(timings[f'{label}_s'], 0.0):.2f} / {max(timings[f'{label}_cpu_s'], 0.0):.2f}"


def _load_columns(by_conc: dict) -> dict:
    flat: dict = {}
    for conc, agg in by_conc.items():
        flat[f"{conc}_req_per_s"] = agg["req_per_s"]
        flat[f"{conc}_p99_ms"] = agg["p99_ms"]
        flat[f"{conc}_cpu_ms_per_req"] = agg["server_cpu_ms_per_req"]
        flat[f"{conc}_req_per_cpu_s"] = agg["req_per_cpu_s"]
        flat[f"{conc}_busy"] = f"{agg['server_cpu_util']:.2f} / {agg['core0_busy']:.2f} / {agg['core1_busy']:.2f}"
    flat["errors"] = ", ".join(f"{agg['status_errors']}/{agg['socket_errors']}" for agg in by_conc.values())
    return flat


def summarize_target(name: str, result: dict) -> dict:
    """The headline numbers of one target, flat, under the keys the table uses."""
    seq, stream = result.get("sequential", {}), result.get("streaming", {})
    flat = {
        "version": result.get("version"),
        "seq_p50_ms": _get(seq, "total", "p50_ms"),
        "seq_p99_ms": _get(seq, "total", "p99_ms"),
        "ttft_p50_ms": _get(stream, "first_token", "p50_ms"),
        **_load_columns(result.get("throughput", {})),
        **result.get("memory", {}),
    }
    if name == "direct":
        return flat
    rows = result.get("ledger_rows")
    return flat | {
        "added_p50_ms": _get(seq, "total", "added_p50_ms"),
        "added_p99_ms": _get(seq, "total", "added_p99_ms"),
        "added_ttft_p50_ms": _get(stream, "first_token", "added_p50_ms"),
        "added_ttft_p99_ms": _get(stream, "first_token", "added_p99_ms"),
        "added_stream_total_p50_ms": _get(stream, "total", "added_p50_ms"),
        "cpu_ms_per_req": seq.get("cpu_ms_per_req"),
        "stream_cpu_ms_per_req": stream.get("cpu_ms_per_req"),
        "startup_s": result.get("startup_s"),
        "import_s": _wall_cpu(result.get("import"), "import"),
        "server_import_s": _wall_cpu(result.get("import"), "server_import"),
        "ledger_rows": "no ledger" if rows is None else ", ".join(f"{t}={n}" for t, n in rows.items()),
    }


def summarize(results: dict) -> dict[str, dict]:
    return {name: summarize_target(name, result) for name, result in results["targets"].items()}


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def print_table(columns: dict[str, dict]) -> None:
    lines = [["metric", *columns]]
    lines += [[label, *(_cell(column.get(key)) for column in columns.values())] for label, key in ROWS]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for index, line in enumerate(lines):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))


def noise_notes(results: dict) -> list[str]:
    """Plain warnings when something else competed for the cores or a load run was not gateway-bound."""
    notes = []
    before = results["machine"]["cores_busy_before"]
    if max(before.values()) > 0.1:
        notes.append(f"before the run the cores were already busy ({before}): expect noisy numbers")
    for phase, cores in results["cores"].items():
        foreign = cores["core0_busy"] - cores["servers_cpu"]
        if foreign > 0.1:
            notes.append(f"{phase}: core 0 was {foreign:.0%} busy with processes outside this benchmark")
    for name, result in results["targets"].items():
        for conc, agg in result.get("throughput", {}).items():
            if agg["status_errors"] or agg["socket_errors"]:
                notes.append(f"{name} {conc}: {agg['status_errors']} non-2xx, {agg['socket_errors']} socket errors")
            if name == "direct":
                continue
            foreign = agg["core0_busy"] - agg["server_cpu_util"]
            if foreign > 0.1:
                notes.append(
                    f"{name} {conc}: core 0 was {foreign:.0%} busy with other processes: req/s understated, "
                    "CPU ms/req and req per CPU-second less affected"
                )
            if agg["core0_busy"] < 0.9 and agg["core1_busy"] > 0.95:
                notes.append(
                    f"{name} {conc}: core 1 (upstream, wrk) was saturated while core 0 "
                    f"was {agg['core0_busy']:.0%} busy: this result may be bound by the client side"
                )
    return notes


def ledger_rows(path: Path | None) -> dict[str, int] | None:
    """Rows per table in a gateway's SQLite ledger: evidence that the ledger really was written."""
    if path is None or not path.exists():
        return None
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {table: db.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0] for table in tables}


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "unknown")
    load_generator = "asyncio fallback (wrk not installed)"
    if loadgen.wrk_available():
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
        load_generator = (done.stdout or done.stderr).splitlines()[0]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_generator": load_generator,
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
