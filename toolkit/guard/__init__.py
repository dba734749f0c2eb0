"""Guardrails for a bot's connection, the rollback-only session, and the adversarial harness.

Imported lazily. The :class:`Guard` value itself is ``toolkit.domain.Guard``.
"""
from __future__ import annotations

from .._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "Guard": "toolkit.domain",
    "GuardedConnection": "toolkit.guard.connection",
    "connect_guarded": "toolkit.guard.connection",
    "rollback_only": "toolkit.guard.connection",
})
