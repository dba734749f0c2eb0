"""The schema lifecycle: discover, plan, run, inspect and repair migrations across the databases.

Names are imported lazily so `migrate status` loads only what it uses.
"""
from __future__ import annotations

from .._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "Migration": ".discovery", "MigrationContext": ".discovery", "discover": ".discovery",
    "AcceptResult": ".maintenance", "RestoreResult": ".maintenance", "accept": ".maintenance", "restore": ".maintenance",
    "Plan": ".plan", "Step": ".plan", "plan_downgrade": ".plan", "plan_upgrade": ".plan", "resolve_migration": ".plan",
    "RunResult": ".runner", "StepResult": ".runner", "downgrade": ".runner",
    "preview_downgrade": ".runner", "upgrade": ".runner",
    "FileState": ".state", "MigrationStatus": ".state", "read_states": ".state", "reconcile": ".state",
    "DatabaseStatus": ".status", "StatusReport": ".status", "status": ".status",
    "Finding": ".verify", "VerifyReport": ".verify", "expected_schema": ".verify", "verify": ".verify",
})
