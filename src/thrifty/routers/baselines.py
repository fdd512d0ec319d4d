"""What each alias's savings are measured against: the model a team would use without the gateway's routing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from thrifty.pricing import CatalogPricer
from thrifty.settings import Settings
from thrifty.types import Target, Usage


def baselines(
    settings: Settings, aliases: Mapping[str, tuple[Target, ...]], pricer: CatalogPricer
) -> dict[str, Target]:
    """What each alias's savings are measured against: as configured, else the model a team would use without a
    router: a pool's strongest, a cascade's last tier, the dearest target of a rules or learned router (by
    list price; the last one if none is priced), the first target of a plain list (the fallbacks after it are
    not what was asked for)."""
    chosen = {}
    for alias, model in settings.models.items():
        targets = aliases[alias]
        if model.baseline:
            chosen[alias] = pick(settings, model.baseline)
        elif model.pool or model.router == "cascade":
            chosen[alias] = targets[-1]
        elif model.router in ("rules", "learned"):
            chosen[alias] = _dearest(targets, pricer)
        else:
            chosen[alias] = targets[0]
    return chosen


def _dearest(targets: Sequence[Target], pricer: CatalogPricer) -> Target:
    reference = Usage(1_000_000, 1_000_000)
    priced = [(usd, i) for i, t in enumerate(targets) if (usd := pricer.cost(t, reference).usd) is not None]
    return targets[max(priced)[1]] if priced else targets[-1]


def pick(settings: Settings, name: str) -> Target:
    """A pool name or a ``provider::model`` target."""
    return Target.parse(settings.pool[name].target) if name in settings.pool else Target.parse(name)
