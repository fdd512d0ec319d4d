"""The demo shows routing: the chat feature goes to the weak model, the ledger credits routing, quality is shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from thrifty.demo import STRONG, WEAK, demo_settings
from thrifty.simulate import simulate
from thrifty.workload import demo_workload_path, read_workload


def test_the_demo_routes_the_chat_feature_to_the_weak_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    records = read_workload(demo_workload_path())
    sample = [r for r in records if r.feature == "chat-assistant"][:12]
    sample += [r for r in records if r.feature == "math-tutor"][:12]
    result = simulate(demo_settings(), sorted(sample, key=lambda r: r.t_s), concurrency=2)
    assert not any(o.error for o in result.outcomes)
    models = {row.group: row.requests for row in result.by_model}
    assert models == {STRONG: 12, WEAK: 12}
    assert result.savings["routing"] > 0
    quality = result.quality()
    labelled, served, asked = quality["chat-assistant"]
    assert labelled == 12 and served < asked  # on these twelve, Mixtral's judge scores are lower
    assert quality["math-tutor"][1] == quality["math-tutor"][2]  # not routed: the quality asked for
