from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path

import pytest

from thrifty.routers.outcomes import (
    ModelOutcome,
    OutcomeFileError,
    OutcomeRecord,
    groups_of,
    model_names,
    parse_outcomes,
    read_outcomes,
    to_matrix,
    write_outcomes,
)

GOOD = '{"prompt": "hi", "outcomes": {"a": {"quality": 1, "cost_usd": 0.0012}}}'
DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def test_round_trip_keeps_costs_exact(tmp_path: Path) -> None:
    records = [
        OutcomeRecord("q1", {"a": ModelOutcome(1.0, Decimal("0.0012")), "b": ModelOutcome(0.25, Decimal("3E-7"))}),
        OutcomeRecord("q2", {"b": ModelOutcome(0.0, Decimal(0))}, group="conv-1"),
    ]
    path = tmp_path / "o.jsonl"
    assert write_outcomes(path, records) == 2
    back = read_outcomes(path)
    assert back == records
    assert back[0].outcomes["a"].cost_usd == Decimal("0.0012")


def test_missing_models_become_nan_in_the_matrix() -> None:
    records = parse_outcomes(
        [GOOD, '{"prompt": "x", "outcomes": {"b": {"quality": 0.5, "cost_usd": 1}}}'],
    )
    matrix = to_matrix(records)
    assert matrix.models == ("a", "b")
    assert matrix.quality[0, 0] == 1.0 and math.isnan(matrix.quality[0, 1])
    assert matrix.cost_usd[1, 1] == 1.0
    assert matrix.available.tolist() == [[True, False], [False, True]]
    assert model_names(records) == ("a", "b")


def test_records_without_a_group_are_grouped_by_prompt() -> None:
    """MMLU asks 105 questions twice (under two subjects): twins split across folds were memorised, not predicted."""
    other = GOOD.replace('"prompt": "', '"prompt": "another ')
    records = parse_outcomes([GOOD, GOOD.replace("}}}", '}}, "group": "g"}'), GOOD.replace("}}}", '}}, "group": 7}')])
    records += parse_outcomes([GOOD, other])
    groups = groups_of(records)
    assert groups[1:3] == ["g", "7"]
    assert groups[0] == groups[3] != groups[4]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"prompt": "", "outcomes": {}}', "'prompt' must be a non-empty string"),
        ('{"prompt": "p", "outcomes": {}}', "at least one model"),
        ('{"prompt": "p", "outcomes": {"a": {"quality": 1.5, "cost_usd": 0}}}', "quality must be a number in [0, 1]"),
        ('{"prompt": "p", "outcomes": {"a": {"quality": true, "cost_usd": 0}}}', "quality must be a number"),
        ('{"prompt": "p", "outcomes": {"a": {"quality": 1, "cost_usd": -1}}}', "cost_usd must be a number in [0, "),
        ('{"prompt": "p", "outcomes": {"a": {"quality": 1, "cost_usd": 1e400}}}', "cost_usd must be a number in [0, "),
        ('{"prompt": "p", "outcomes": {"a": {"quality": 1, "cost_usd": "1"}}}', "cost_usd must be a number"),
        ('{"prompt": "p", "outcomes": {"a": {"quality": 1}}}', "missing ['cost_usd']"),
        ('{"prompt": "p", "outcomes": {"a": {"quality": 1, "cost_usd": 0, "x": 1}}}', "unknown key(s) ['x']"),
        ('{"prompt": "p", "outcome": {}}', "unknown key(s) ['outcome']"),
        ('{"prompt": "p", "outcomes": {"a": 1}}', "must be an object"),
        ('{"prompt": "p", "outcomes": {"a": {"quality": NaN, "cost_usd": 0}}}', "quality must be a number"),
    ],
)
def test_errors_name_the_line(line: str, message: str) -> None:
    with pytest.raises(OutcomeFileError) as info:
        parse_outcomes([GOOD, "", line, GOOD], source="logs.jsonl")
    assert info.value.line == 3
    assert str(info.value).startswith("logs.jsonl:3: ")
    assert message in str(info.value)


def test_a_file_that_is_not_utf8_names_the_line_and_a_bom_is_read(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + '{"prompt": "caf\u00e9"}'.encode("latin-1") + b"\n")
    with pytest.raises(OutcomeFileError, match=r"latin1.jsonl:2: not UTF-8"):
        read_outcomes(path)
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n")
    assert len(read_outcomes(path)) == 1


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(OutcomeFileError, match="no records"):
        read_outcomes(path)


@pytest.mark.skipif(not (DATASETS / "routellm").is_dir(), reason="../shared/datasets is not here")
def test_routellm_conversion_matches_the_published_accuracies(tmp_path: Path) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "scripts" / "build_routing_outcomes.py"
    spec = importlib.util.spec_from_file_location("build_routing_outcomes", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paths = module.build(DATASETS, tmp_path)
    expected = {"mmlu": (14037, 0.806, 0.681), "gsm8k": (1307, 0.858, 0.637), "mt_bench_questions": (72, 0.921, 0.828)}
    for name, (count, strong, weak) in expected.items():
        matrix = to_matrix(read_outcomes(paths[name]), (module.STRONG, module.WEAK))
        assert len(matrix.prompts) == count
        assert matrix.quality.mean(axis=0) == pytest.approx([strong, weak], abs=0.001)
    turns = read_outcomes(paths["mt_bench"])
    assert len(turns) == 144 and len(set(groups_of(turns))) == 72
    first = json.loads(paths["gsm8k"].read_text(encoding="utf-8").splitlines()[0])
    assert set(first["outcomes"]) == {module.STRONG, module.WEAK}
