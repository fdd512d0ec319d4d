"""The learned router inside the gateway: rank the alias's targets by predicted value for this prompt.

The router (``thrifty router train``) predicts each model's quality for a prompt; its operating point (set by
``thrifty router calibrate``, or ``threshold`` in config as the cost weight) trades quality for cost. The chosen
model goes first and the others follow as fallbacks, best value first. With a ``LatencyTracker`` and a
``latency_weight``, each second a model is expected to take costs that much predicted quality.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thrifty.errors import ConfigError
from thrifty.routers.features import require_numpy
from thrifty.routers.latency import LatencyTracker
from thrifty.routers.learned import LearnedRouter as Model
from thrifty.routers.learned import OperatingPoint, load
from thrifty.tokens import text_of
from thrifty.types import ChatRequest, Principal, Route, Target


class LearnedRouter:
    def __init__(
        self,
        model: Model,
        targets: Sequence[Target],
        point: OperatingPoint | None = None,
        latency: LatencyTracker | None = None,
        latency_weight: float = 0.0,
    ) -> None:
        self._model, self._point = model, point
        self._latency, self._latency_weight = latency, latency_weight
        by_name = {t.model: t for t in targets} | {str(t): t for t in targets}
        missing = [name for name in model.models if name not in by_name]
        if missing:
            raise ConfigError(f"the router was trained on models the alias does not list: {', '.join(missing)}")
        self._targets = {name: by_name[name] for name in model.models}
        self._rest = [t for t in targets if t not in self._targets.values()]

    @classmethod
    def from_dir(
        cls,
        directory: Path,
        targets: Sequence[Target],
        cost_weight: float | None,
        latency: LatencyTracker | None = None,
        latency_weight: float = 0.0,
    ) -> LearnedRouter:
        point = None if cost_weight is None else OperatingPoint(cost_weight=cost_weight)
        return cls(load(directory), targets, point, latency, latency_weight)

    def route(self, request: ChatRequest, principal: Principal) -> Route:
        # The router was trained on the users' turns of a conversation, joined as here.
        prompt = "\n\n".join(text_of(m.get("content")) for m in request.messages if m.get("role") == "user")
        ranked = self._model.rank(prompt, self._point, self._latency_penalty())
        order = (*(self._targets[name] for name in ranked), *self._rest)
        return Route(order, "learned", f"predicted best value: {ranked[0]}")

    def _latency_penalty(self) -> Any:
        if self._latency is None or not self._latency_weight:
            return None
        np = require_numpy()
        seconds = [(self._latency.expected_ms(self._targets[m]) or 0.0) / 1000 for m in self._model.models]
        return self._latency_weight * np.array(seconds)
