"""Which migrations each file is at, and reconciling ``migrations.db`` with that truth.

Each database carries ``_toolkit_migrations``: one row per applied migration, written in the same
transaction as the migration itself, so a file can never be changed without its record or recorded
without its change. ``migration_history`` in ``migrations.db`` is committed afterwards (SQLite does not
commit atomically across files in WAL mode); a crash in between is repaired by :func:`reconcile`.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ..config import DATABASES, Settings
from ..backend import backend_for
from ..db import atomic, translate_error
from ..errors import DatabaseFileError, LostDatabaseError
from ..history import iso
from .discovery import Migration

__all__ = [
    "MigrationStatus",
    "BOOKKEEPING_DDL",
    "AppliedRecord",
    "FileState",
    "ensure_bookkeeping",
    "read_states",
    "read_file_state",
    "applied_in_ledger",
    "lost_databases",
    "refuse_lost",
    "refuse_lost_databases",
    "reconcile",
    "record_history",
    "record_event",
]

BOOKKEEPING_DDL = (
    """CREATE TABLE IF NOT EXISTS _toolkit_migrations (
        migration_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        checksum TEXT NOT NULL,
        source TEXT NOT NULL,
        applied_at INTEGER NOT NULL,
        duration_seconds REAL
    )""",
    # Every row a repair (or its undo) changes in this file, written in the same transaction as the
    # change itself; migrations.db's repair_log is a copy reconciled from these. An undo's rows name
    # the run they reverse, so a crash before migrations.db records the undo loses nothing.
    """CREATE TABLE IF NOT EXISTS _toolkit_repair_journal (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        rule_id TEXT NOT NULL,
        table_name TEXT NOT NULL,
        op TEXT NOT NULL,
        row_key TEXT NOT NULL,
        before TEXT,
        after TEXT,
        at INTEGER NOT NULL,
        reverses TEXT,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID""",
)


class MigrationStatus(StrEnum):
    """The status of a migration in ``migrations.db``. Members equal their strings, which are what
    the ledger stores (plain TEXT) and what code reading it compares with.

    ``migration_history`` (one row per migration, its latest status) holds the first three;
    ``migration_events`` also records the outcome of ``migrate accept`` and ``migrate restore``.
    """

    APPLIED = "applied"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    ACCEPTED = "accepted"
    RESTORED = "restored"


@dataclass(frozen=True)
class AppliedRecord:
    migration_id: str
    name: str
    checksum: str
    applied_at: int


@dataclass
class FileState:
    name: str
    path: Path
    exists: bool
    records: dict[str, AppliedRecord] = field(default_factory=dict)
    #: The file keeps migration records (a ``_toolkit_migrations`` table), possibly none yet.
    tracked: bool = False


def ensure_bookkeeping(conn: sqlite3.Connection) -> None:
    for ddl in BOOKKEEPING_DDL:
        conn.execute(ddl)


def read_file_state(settings: Settings, name: str, conn: sqlite3.Connection | None = None) -> FileState:
    """Read one database's applied records: through ``conn`` when given (the file attached under its
    logical name, or opened alone), else through a read-only connection of the backend's own."""
    path = settings.path(name)
    backend = backend_for(settings)
    if conn is not None:
        return _state(name, path, backend.migration_records(name, conn))
    if not path.exists():
        if path.is_dir():
            raise DatabaseFileError(path, "is a directory, not a database file")
        return FileState(name, path, False)
    try:
        return _state(name, path, backend.migration_records(name))
    except sqlite3.Error as exc:
        raise translate_error(exc, path, action="reading its migration records") from exc


def _state(name: str, path: Path, records: dict[str, tuple[str, str, str, int]] | None) -> FileState:
    return FileState(name, path, True, {mid: AppliedRecord(*row) for mid, row in (records or {}).items()},
                     tracked=records is not None)


def applied_in_ledger(history: sqlite3.Connection) -> dict[str, list[str]]:
    """Per database, the migration ids the ledger records as applied, oldest first."""
    by_db: dict[str, list[str]] = {}
    for mid, database in history.execute(
            "SELECT migration_id, database_name FROM migration_history WHERE status = ? ORDER BY migration_id",
            (str(MigrationStatus.APPLIED),)):
        by_db.setdefault(database, []).append(mid)
    return by_db


def lost_databases(states: dict[str, FileState], history: sqlite3.Connection) -> dict[str, str]:
    """The databases the ledger says were created and migrated that are now missing, empty, or
    another file (no migration records, or none of its own) — by name, with what is wrong. A file
    that still holds some of its migrations is the same database: what it lacks is reconciled as
    before (a downgrade interrupted after the file's commit lacks its newest one)."""
    lost: dict[str, str] = {}
    for name, applied in applied_in_ledger(history).items():
        state = states.get(name)
        if state is None or not applied:
            continue
        said = f"{state.path}: the ledger records {', '.join(applied)} as applied to {name}, but the file"
        if not state.exists:
            lost[name] = f"{said} is missing"
        elif state.path.stat().st_size == 0:
            lost[name] = f"{said} is empty"
        elif not state.tracked:
            lost[name] = f"{said} holds no migration records (a different database?)"
        elif not any(mid in state.records for mid in applied) and (len(applied) > 1 or state.records):
            # None of its own migrations (a lone one missing is an interrupted downgrade): another file.
            held = f"holds {', '.join(sorted(state.records))} instead" if state.records else "holds none of them"
            lost[name] = f"{said} {held} (a different database?)"
    return lost


def refuse_lost(states: dict[str, FileState], history: sqlite3.Connection) -> None:
    """Raise :class:`LostDatabaseError` when a database the ledger knows is lost (see above)."""
    lost = lost_databases(states, history)
    if lost:
        raise LostDatabaseError(lost)


def refuse_lost_databases(settings: Settings) -> None:
    """:func:`refuse_lost` for a data directory, reading only (nothing when it has no ledger yet)."""
    if not settings.history_path.exists():
        return
    states = read_states(settings, DATABASES)
    history = backend_for(settings).history(readonly=True)
    if history is None:
        return
    try:
        refuse_lost(states, history)
    finally:
        history.close()


def read_states(settings: Settings, names: Iterable[str] = DATABASES) -> dict[str, FileState]:
    return {name: read_file_state(settings, name) for name in names}


def record_history(
    history: sqlite3.Connection,
    migration: Migration | None,
    *,
    migration_id: str,
    name: str,
    database: str,
    path: Path,
    status: MigrationStatus,
    at: float,
    duration: float | None = None,
    error: str | None = None,
    checksum: str | None = None,
) -> None:
    """Upsert the seed-compatible row for one migration (its latest status)."""
    history.execute(
        """INSERT INTO migration_history (migration_id, migration_name, database_path, applied_at, applied_date,
                                          duration_seconds, status, error_message, database_name, checksum)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (migration_id) DO UPDATE SET
               migration_name = excluded.migration_name, database_path = excluded.database_path,
               applied_at = excluded.applied_at, applied_date = excluded.applied_date,
               duration_seconds = excluded.duration_seconds, status = excluded.status,
               error_message = excluded.error_message, database_name = excluded.database_name,
               checksum = COALESCE(excluded.checksum, migration_history.checksum)""",
        (
            migration_id,
            migration.label if migration else name,
            str(path),
            int(at),
            iso(at),
            duration,
            status,
            error,
            database,
            checksum if checksum is not None else (migration.checksum if migration else None),
        ),
    )


def record_event(
    history: sqlite3.Connection,
    *,
    migration_id: str,
    database: str | None,
    action: str,
    status: MigrationStatus,
    detail: str | None = None,
    duration: float | None = None,
    at: float | None = None,
) -> None:
    history.execute(
        "INSERT INTO migration_events (at, migration_id, database_name, action, status, detail, duration_seconds) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (int(at if at is not None else time.time()), migration_id, database, action, status, detail, duration),
    )


def reconcile(
    history: sqlite3.Connection,
    states: dict[str, FileState],
    migrations: Sequence[Migration],
    *,
    write: bool = True,
    restored: Iterable[str] = (),
) -> list[str]:
    """Make ``migration_history`` agree with the per-file records; returns what was changed.

    With ``write=False`` it only says what it would change.

    A migration applied in its file but not in the ledger (a crash after the file's commit) is
    recorded as applied; one the ledger calls applied that its file does not have is recorded as
    rolled back only when that is what happened: a downgrade interrupted after the file's commit (the
    file lacks just its newest migration), or a file deliberately replaced by `migrate restore`
    (``restored``). A lost file (missing, empty, another database: :func:`lost_databases`) never
    rewrites the ledger: the ledger is how the toolkit knows it was lost.
    """
    by_id = {m.id: m for m in migrations}
    ledger = {
        row[0]: (row[1], row[2])
        for row in history.execute("SELECT migration_id, status, database_name FROM migration_history")
    }
    notes: list[str] = []
    writes: list[tuple[MigrationStatus, dict]] = []
    for state in states.values():
        for mid, record in state.records.items():
            status = ledger.get(mid, (None, None))[0]
            if status != MigrationStatus.APPLIED:
                was = f"ledger said {status}" if status else "missing from the ledger"
                notes.append(
                    f"{record.name if mid not in by_id else by_id[mid].label} is applied in {state.path.name} "
                    f"but was {was}: recorded as applied"
                )
                writes.append((MigrationStatus.APPLIED, {"mid": mid, "state": state, "record": record}))
    lost = set(lost_databases(states, history)) - set(restored)
    for mid, (status, database) in ledger.items():
        if status != MigrationStatus.APPLIED or database not in states or database in lost:
            continue
        state = states[database]
        if mid not in state.records:
            reason = "the file does not exist" if not state.exists else "the file has no record of it"
            label = by_id[mid].label if mid in by_id else mid
            notes.append(f"{label} was recorded as applied to {state.path.name} but {reason}: recorded as rolled back")
            writes.append((MigrationStatus.ROLLED_BACK, {"mid": mid, "state": state, "record": None}))
    if not writes or not write:
        return notes
    now = time.time()
    with atomic(history):
        for status, item in writes:
            mid, state, record = item["mid"], item["state"], item["record"]
            migration = by_id.get(mid)
            record_history(
                history,
                migration,
                migration_id=mid,
                name=record.name if record else (migration.label if migration else mid),
                database=state.name,
                path=state.path,
                status=status,
                at=record.applied_at if record else now,
                checksum=record.checksum if record else None,
            )
            record_event(
                history, migration_id=mid, database=state.name, action="reconcile", status=status,
                detail="ledger reconciled with the per-file record", at=now,
            )
    return notes


def reconcile_if_free(settings: Settings, states: dict[str, FileState], migrations: Sequence[Migration],
                      command: str) -> list[str]:
    """Reconcile the migration ledger with the files under the data-directory lock, without waiting
    for it: raises ``LockTimeoutError`` when another process holds it (the caller reads instead)."""
    backend = backend_for(settings)
    with backend.lock(command, timeout=0):
        history = backend.history()
        assert history is not None
        try:
            return reconcile(history, states, migrations)
        finally:
            history.close()
