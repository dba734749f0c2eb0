"""The schema lifecycle: discover, plan, run, inspect and repair migrations across the databases.

Names are imported lazily so `migrate status` loads only what it uses.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Migration": "discovery", "MigrationContext": "discovery", "discover": "discovery",
    "AcceptResult": "maintenance", "RestoreResult": "maintenance", "accept": "maintenance", "restore": "maintenance",
    "Plan": "plan", "Step": "plan", "plan_downgrade": "plan", "plan_upgrade": "plan", "resolve_migration": "plan",
    "RunResult": "runner", "StepResult": "runner", "downgrade": "runner",
    "preview_downgrade": "runner", "upgrade": "runner",
    "FileState": "state", "MigrationStatus": "state", "read_states": "state", "reconcile": "state",
    "DatabaseStatus": "status", "StatusReport": "status", "status": "status",
    "Finding": "verify", "VerifyReport": "verify", "expected_schema": "verify", "verify": "verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit.migrate' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
