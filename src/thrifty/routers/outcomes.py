"""Outcome files: what each model did on each prompt, the data learned routers are trained and judged on.

One JSON object a line::

    {"prompt": "...", "outcomes": {"MODEL": {"quality": 0.9, "cost_usd": 0.0012}, ...}, "group": "q81"}

``quality`` is in [0, 1] (1 = correct or best), ``cost_usd`` what that call cost. Any number of models; a model
may be missing on some prompts (it was not tried there). ``group`` is optional: records that share it (the two
turns of one conversation) are kept in the same fold when a router is cross-validated, so that a router is never
tested on a prompt whose twin it was trained on.

Costs are read as ``Decimal`` so that a user's figures reach reports exactly as written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

MAX_COST_USD = 1_000_000
"""No one call costs more: a larger figure is a unit slip (and 1e400 broke the arithmetic of calibration)."""
_RECORD_KEYS = frozenset({"prompt", "outcomes", "group"})
_OUTCOME_KEYS = frozenset({"quality", "cost_usd"})


class OutcomeFileError(ValueError):
    """A malformed outcome file; ``line`` is 1-based so that editors jump straight to it."""

    def __init__(self, source: str, line: int, message: str) -> None:
        super().__init__(f"{source}:{line}: {message}")
        self.source = source
        self.line = line


@dataclass(frozen=True, slots=True)
class ModelOutcome:
    quality: float
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    prompt: str
    outcomes: Mapping[str, ModelOutcome]
    group: str = ""


@dataclass(frozen=True)
class OutcomeMatrix:
    """Records as arrays for evaluation: NaN where a model has no outcome on a prompt.

    Costs become floats here: they are averaged over thousands of prompts to rank operating points, never charged.
    """

    models: tuple[str, ...]
    prompts: list[str]
    groups: list[str]
    quality: NDArray[np.float64]
    cost_usd: NDArray[np.float64]

    @property
    def available(self) -> NDArray[np.bool_]:
        import numpy

        return ~numpy.isnan(self.quality)


def to_matrix(records: Sequence[OutcomeRecord], models: Sequence[str] | None = None) -> OutcomeMatrix:
    import numpy

    names = tuple(models) if models is not None else model_names(records)
    nan = float("nan")
    quality = [[r.outcomes[m].quality if m in r.outcomes else nan for m in names] for r in records]
    cost = [[float(r.outcomes[m].cost_usd) if m in r.outcomes else nan for m in names] for r in records]
    return OutcomeMatrix(
        names,
        [r.prompt for r in records],
        groups_of(records),
        numpy.array(quality, dtype=numpy.float64).reshape(len(records), len(names)),
        numpy.array(cost, dtype=numpy.float64).reshape(len(records), len(names)),
    )


def read_outcomes(path: str | Path) -> list[OutcomeRecord]:
    with Path(path).open("rb") as raw:
        return parse_outcomes(_decoded(raw, str(path)), source=str(path))


def _decoded(raw: Iterable[bytes], source: str) -> Iterable[str]:
    for number, line in enumerate(raw, start=1):
        try:
            yield line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise OutcomeFileError(source, number, f"not UTF-8 text (byte {exc.start + 1} of the line)") from exc


def parse_outcomes(lines: Iterable[str], source: str = "<outcomes>") -> list[OutcomeRecord]:
    """Every record of an outcome file; blank lines are skipped, anything else malformed is an error."""
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            records.append(_parse_line(line, source, number))
    if not records:
        raise OutcomeFileError(source, 1, "no records: expected one JSON object per line")
    return records


def write_outcomes(path: str | Path, records: Iterable[OutcomeRecord]) -> int:
    """Write records one a line; returns how many were written."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as out:
        for record in records:
            out.write(dump_record(record) + "\n")
            count += 1
    return count


def dump_record(record: OutcomeRecord) -> str:
    outcomes = {
        # A JSON number is decimal text already; float() of a Decimal prints its shortest exact-looking form.
        model: {"quality": outcome.quality, "cost_usd": float(outcome.cost_usd)}
        for model, outcome in record.outcomes.items()
    }
    obj: dict[str, object] = {"prompt": record.prompt, "outcomes": outcomes}
    if record.group:
        obj["group"] = record.group
    return json.dumps(obj, ensure_ascii=False)


def model_names(records: Sequence[OutcomeRecord]) -> tuple[str, ...]:
    """Every model that appears in the records, in order of first appearance."""
    seen: dict[str, None] = {}
    for record in records:
        for model in record.outcomes:
            seen.setdefault(model, None)
    return tuple(seen)


def groups_of(records: Sequence[OutcomeRecord]) -> list[str]:
    """Each record's group; a record without one is grouped with the records of the same prompt (MMLU asks 105
    of its questions twice, under two subjects: cross-validation must not train on one and test on its twin)."""
    return [
        record.group or "#" + hashlib.blake2b(record.prompt.encode(), digest_size=12).hexdigest() for record in records
    ]


def _parse_line(line: str, source: str, number: int) -> OutcomeRecord:
    try:
        obj = json.loads(line, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise OutcomeFileError(source, number, f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(obj, dict):
        raise OutcomeFileError(source, number, "expected a JSON object")
    unknown = sorted(set(obj) - _RECORD_KEYS)
    if unknown:
        raise OutcomeFileError(source, number, f"unknown key(s) {unknown}; allowed: {sorted(_RECORD_KEYS)}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise OutcomeFileError(source, number, "'prompt' must be a non-empty string")
    group = obj.get("group", "")
    if not isinstance(group, str | int) or isinstance(group, bool):
        raise OutcomeFileError(source, number, "'group' must be a string or an integer")
    outcomes = obj.get("outcomes")
    if not isinstance(outcomes, dict) or not outcomes:
        raise OutcomeFileError(source, number, "'outcomes' must be an object with at least one model")
    parsed = {model: _parse_outcome(value, model, source, number) for model, value in outcomes.items()}
    return OutcomeRecord(prompt, parsed, str(group))


def _parse_outcome(value: object, model: str, source: str, number: int) -> ModelOutcome:
    where = f"outcomes[{model!r}]"
    if not model:
        raise OutcomeFileError(source, number, "a model name in 'outcomes' is empty")
    if not isinstance(value, dict):
        raise OutcomeFileError(source, number, f"{where} must be an object with 'quality' and 'cost_usd'")
    missing = sorted(_OUTCOME_KEYS - set(value))
    unknown = sorted(set(value) - _OUTCOME_KEYS)
    if missing or unknown:
        problem = f"missing {missing}" if missing else f"unknown key(s) {unknown}"
        raise OutcomeFileError(source, number, f"{where}: {problem}; expected 'quality' and 'cost_usd'")
    quality = _number(value["quality"])
    if quality is None or not 0 <= quality <= 1:
        raise OutcomeFileError(source, number, f"{where}.quality must be a number in [0, 1], got {value['quality']!r}")
    cost = _number(value["cost_usd"])
    if cost is None or not 0 <= cost <= MAX_COST_USD:
        raise OutcomeFileError(
            source, number, f"{where}.cost_usd must be a number in [0, {MAX_COST_USD}], got {value['cost_usd']!r}"
        )
    return ModelOutcome(float(quality), cost)


def _number(value: object) -> Decimal | None:
    # bool is an int to Python but never a meaningful quality or price in a JSON file.
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return None
    number = Decimal(value)
    return number if number.is_finite() else None
