"""Guardrails for a bot's connection, the rollback-only session, and the adversarial harness."""
from __future__ import annotations

from .connection import GuardedConnection, connect_guarded, rollback_only

__all__ = ["GuardedConnection", "connect_guarded", "rollback_only"]
