"""Thrifty: an LLM gateway that cuts the bill and shows where every dollar went.

Names are imported on first use so that ``import thrifty`` stays cheap for the CLI and for applications that
embed only part of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Caller",
    "ChatRequest",
    "ChatResponse",
    "Cost",
    "Gateway",
    "LedgerEntry",
    "Principal",
    "Settings",
    "ThriftyError",
    "Usage",
    "build_runtime",
    "load_settings",
]

_WHERE = {
    "Caller": "thrifty.types",
    "ChatRequest": "thrifty.types",
    "ChatResponse": "thrifty.types",
    "Cost": "thrifty.types",
    "Gateway": "thrifty.pipeline",
    "LedgerEntry": "thrifty.types",
    "Principal": "thrifty.types",
    "Settings": "thrifty.settings",
    "ThriftyError": "thrifty.errors",
    "Usage": "thrifty.types",
    "build_runtime": "thrifty.assembly",
    "load_settings": "thrifty.settings",
}

if TYPE_CHECKING:
    from thrifty.assembly import build_runtime
    from thrifty.errors import ThriftyError
    from thrifty.pipeline import Gateway
    from thrifty.settings import Settings, load_settings
    from thrifty.types import Caller, ChatRequest, ChatResponse, Cost, LedgerEntry, Principal, Usage


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'thrifty' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
