"""Guardrails for a bot's connection, the rollback-only session, and the adversarial harness.

Imported lazily. The :class:`Guard` value itself is ``toolkit.domain.Guard``.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Guard": "toolkit.domain",
    "GuardedConnection": "toolkit.guard.connection",
    "connect_guarded": "toolkit.guard.connection",
    "rollback_only": "toolkit.guard.connection",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit.guard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
