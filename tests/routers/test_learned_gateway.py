"""The learned router end to end: train, calibrate and evaluate with the CLI, then route in the gateway."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import openai
from routing_data import STRONG, WEAK, synthetic_records

from fakes.upstream import FakeUpstream, FakeUsage
from gateway_harness import config_text, ledger_rows
from thrifty.routers.outcomes import write_outcomes
from thrifty.server.run import ServerThread
from thrifty.settings import load_settings


def thrifty(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "thrifty.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_train_calibrate_evaluate_and_route(tmp_path: Path) -> None:
    write_outcomes(tmp_path / "train.jsonl", synthetic_records(240, seed=1))
    write_outcomes(tmp_path / "test.jsonl", synthetic_records(120, seed=2))
    trained = thrifty("router", "train", "--data", "train.jsonl", "--out", "router", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    calibrated = thrifty(
        "router", "calibrate", "--router", "router", "--data", "train.jsonl", "--keep", "0.95", cwd=tmp_path
    )
    assert calibrated.returncode == 0, calibrated.stderr
    evaluated = thrifty(
        "eval", "router", "--data", "test.jsonl", "--router", "router", "--decisions", "decisions.jsonl", cwd=tmp_path
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "APGR" in evaluated.stdout and "oracle" in evaluated.stdout and "random" in evaluated.stdout
    decisions = [json.loads(line) for line in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert len(decisions) == 120 and {d["model"] for d in decisions} == {WEAK, STRONG}

    with FakeUpstream(usage=FakeUsage(input_tokens=100, output_tokens=20), models=(WEAK, STRONG)) as up:
        extra = (
            f'\n[models.auto]\ntargets = ["up::{WEAK}", "up::{STRONG}"]\nrouter = "learned"\n'
            f'router_dir = "router"\nbaseline = "up::{STRONG}"\nthreshold = 0.05\n'  # a cost weight: mostly quality
        )
        (tmp_path / "thrifty.toml").write_text(config_text(up, extra=extra))
        with ServerThread(load_settings(tmp_path / "thrifty.toml")) as gw:
            with openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0) as client:
                chat = client.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": "poem email story greeting slogan"}]
                )
                math = client.chat.completions.with_raw_response.create(
                    model="auto", messages=[{"role": "user", "content": "solve integral derivative 412 + 77"}]
                )
            rows = ledger_rows(gw)
    assert chat.headers["x-thrifty-model"] == WEAK
    assert math.headers["x-thrifty-model"] == STRONG
    assert chat.headers["x-thrifty-route"] == f"learned; predicted best value: {WEAK}"
    assert [r["model"] for r in rows] == [WEAK, STRONG]
