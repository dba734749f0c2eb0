"""`migrate accept` (record a deliberate edit of an applied migration) and `migrate restore`."""
from __future__ import annotations

import difflib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..backend import backend_for
from ..backup import Backup, find_backup, restore_backup
from ..config import DATABASES, Settings
from ..db import transaction
from ..errors import UsageError
from .plan import resolve_migration
from .discovery import Migration
from .runner import Progress, _quiet, _took_over, _waiting
from .state import MigrationStatus, read_states, reconcile, record_event, refuse_lost_databases

__all__ = ["AcceptResult", "RestoreResult", "accept", "restore"]


@dataclass
class AcceptResult:
    migration: str
    database: str
    old_checksum: str
    new_checksum: str
    diff: str
    reconciled: list[str] = field(default_factory=list)


@dataclass
class RestoreResult:
    restored: Backup
    safety: Backup | None
    reconciled: list[str] = field(default_factory=list)


def accept(settings: Settings, spec: str, *, migrations: Sequence[Migration], progress: Progress = _quiet) -> AcceptResult:
    """Record the current text of an edited, applied migration as its new checksum."""
    migration = resolve_migration(spec, migrations)
    with backend_for(settings).lock("migrate accept", on_wait=_waiting(progress), on_takeover=_took_over(progress)):
        refuse_lost_databases(settings)
        states = read_states(settings, DATABASES)
        state = states[migration.database]
        record = state.records.get(migration.id)
        if record is None:
            raise UsageError(f"migration {migration.label} is not applied to {migration.database}; nothing to accept")
        if record.checksum == migration.checksum:
            raise UsageError(f"migration {migration.label} is unchanged since it was applied; nothing to accept")
        conn = backend_for(settings).connect(migration.database)
        try:
            with transaction(conn):
                old_source = conn.execute(
                    "SELECT source FROM _toolkit_migrations WHERE migration_id = ?", (migration.id,)
                ).fetchone()[0]
                conn.execute(
                    "UPDATE _toolkit_migrations SET checksum = ?, source = ? WHERE migration_id = ?",
                    (migration.checksum, migration.source, migration.id),
                )
        finally:
            conn.close()
        diff = "\n".join(difflib.unified_diff(old_source.splitlines(), migration.source.splitlines(),
                                              "applied", "accepted", lineterm="", n=1))
        history = backend_for(settings).history(create=True)
        assert history is not None
        try:
            reconciled = reconcile(history, read_states(settings, DATABASES), migrations)
            with transaction(history):
                history.execute("UPDATE migration_history SET checksum = ? WHERE migration_id = ?",
                                (migration.checksum, migration.id))
                record_event(history, migration_id=migration.id, database=migration.database, action="accept",
                             status=MigrationStatus.ACCEPTED, detail=f"{record.checksum} -> {migration.checksum}\n{diff}", at=time.time())
        finally:
            history.close()
    return AcceptResult(migration.label, migration.database, record.checksum, migration.checksum, diff, reconciled)


def restore(settings: Settings, spec: str | None, database: str | None, *, migrations: Sequence[Migration],
            progress: Progress = _quiet) -> RestoreResult:
    """Put a backup back (the current file is backed up first), then reconcile the ledger."""
    if database is not None and database not in DATABASES + ("migrations",):
        settings.path(database)  # raises with suggestions
    item = find_backup(settings, spec, database)
    with backend_for(settings).lock("migrate restore", on_wait=_waiting(progress), on_takeover=_took_over(progress)):
        safety = restore_backup(settings, item)
        reconciled: list[str] = []
        if item.database != "migrations":
            history = backend_for(settings).history(create=True)
            assert history is not None
            try:
                # The restored file is the truth now: what it lacks was rolled back by the restore.
                reconciled = reconcile(history, read_states(settings, DATABASES), migrations, restored=[item.database])
                with transaction(history):
                    record_event(history, migration_id="-", database=item.database, action="restore",
                                 status=MigrationStatus.RESTORED, detail=f"from {item.path.name}", at=time.time())
            finally:
                history.close()
    return RestoreResult(item, safety, reconciled)
