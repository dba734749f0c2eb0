"""Which migrations each file is at, and reconciling ``migrations.db`` with that truth.

Each database carries ``_toolkit_migrations``: one row per applied migration, written in the same
transaction as the migration itself, so a file can never be changed without its record or recorded
without its change. ``migration_history`` in ``migrations.db`` is committed afterwards (SQLite does not
commit atomically across files in WAL mode); a crash in between is repaired by :func:`reconcile`,
which writing commands run under the data-directory lock. Read commands never write the ledger:
:func:`read_ledger` reconciles it in memory and says what a writing command would record.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
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
    "LedgerFix",
    "applied_in_ledger",
    "lost_databases",
    "refuse_lost",
    "refuse_lost_databases",
    "LedgerView",
    "ledger_fixes",
    "reconcile",
    "read_ledger",
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


def lost_databases(states: dict[str, FileState], history: sqlite3.Connection | Mapping[str, list[str]]) -> dict[str, str]:
    """The databases the ledger says were created and migrated that are now missing, empty, or
    another file (no migration records, or none of its own) — by name, with what is wrong. A file
    that still holds some of its migrations is the same database: what it lacks is reconciled as
    before (a downgrade interrupted after the file's commit lacks its newest one)."""
    lost: dict[str, str] = {}
    by_db = history if isinstance(history, Mapping) else applied_in_ledger(history)
    for name, applied in by_db.items():
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


@dataclass(frozen=True)
class LedgerFix:
    """One change reconciling ``migration_history`` with a file's records: ``migration_id`` is to be
    recorded with ``status`` for ``state``'s file (``record`` is the file's record of an applied one)."""

    migration_id: str
    status: MigrationStatus
    state: FileState
    record: AppliedRecord | None
    what: str          # what disagrees, e.g. "... is applied in trading.db but was missing from the ledger"

    def note(self, *, done: bool) -> str:
        status = "applied" if self.status == MigrationStatus.APPLIED else "rolled back"
        return f"{self.what}: recorded as {status}" if done else f"{self.what}; reconciling records it as {status}"


def ledger_fixes(ledger: Mapping[str, tuple[str | None, str | None]], states: dict[str, FileState],
                 migrations: Sequence[Migration], *, lost: Iterable[str] = ()) -> list[LedgerFix]:
    """What reconciling would change, from the ledger's rows (id -> (status, database)); pure.

    A migration applied in its file but not in the ledger (a crash after the file's commit) is to be
    recorded as applied; one the ledger calls applied that its file does not have (a downgrade
    interrupted after the file's commit, a file `migrate restore` put back) as rolled back — except
    in a ``lost`` database (:func:`lost_databases`): the ledger is how the toolkit knows it was lost.
    """
    lost = set(lost)
    by_id = {m.id: m for m in migrations}
    fixes: list[LedgerFix] = []
    for state in states.values():
        for mid, record in state.records.items():
            status = ledger.get(mid, (None, None))[0]
            if status != MigrationStatus.APPLIED:
                was = f"ledger said {status}" if status else "missing from the ledger"
                label = record.name if mid not in by_id else by_id[mid].label
                fixes.append(LedgerFix(mid, MigrationStatus.APPLIED, state, record,
                                       f"{label} is applied in {state.path.name} but was {was}"))
    for mid, (status, database) in ledger.items():
        if status != MigrationStatus.APPLIED or database not in states or database in lost:
            continue
        state = states[database]
        if mid not in state.records:
            reason = "the file does not exist" if not state.exists else "the file has no record of it"
            label = by_id[mid].label if mid in by_id else mid
            fixes.append(LedgerFix(mid, MigrationStatus.ROLLED_BACK, state, None,
                                   f"{label} was recorded as applied to {state.path.name} but {reason}"))
    return fixes


def _ledger(history: sqlite3.Connection) -> dict[str, tuple[str, str | None, str | None]]:
    return {row[0]: (row[1], row[2], row[3]) for row in history.execute(
        "SELECT migration_id, status, database_name, checksum FROM migration_history")}


def reconcile(
    history: sqlite3.Connection,
    states: dict[str, FileState],
    migrations: Sequence[Migration],
    *,
    write: bool = True,
    restored: Iterable[str] = (),
) -> list[str]:
    """Make ``migration_history`` agree with the per-file records (:func:`ledger_fixes`); returns what
    was changed. With ``write=False`` it only says what a writing command would change. A lost file
    is never reconciled away, unless `migrate restore` just replaced it (``restored``).

    Only writing commands, under the data-directory lock, call it with ``write=True``; read commands
    use :func:`read_ledger`, which never writes.
    """
    by_id = {m.id: m for m in migrations}
    lost = set(lost_databases(states, history)) - set(restored)
    fixes = ledger_fixes({mid: row[:2] for mid, row in _ledger(history).items()}, states, migrations, lost=lost)
    if not fixes or not write:
        return [fix.note(done=False) for fix in fixes]
    now = time.time()
    with atomic(history):
        for fix in fixes:
            mid, state, record = fix.migration_id, fix.state, fix.record
            migration = by_id.get(mid)
            record_history(
                history,
                migration,
                migration_id=mid,
                name=record.name if record else (migration.label if migration else mid),
                database=state.name,
                path=state.path,
                status=fix.status,
                at=record.applied_at if record else now,
                checksum=record.checksum if record else None,
            )
            record_event(
                history, migration_id=mid, database=state.name, action="reconcile", status=fix.status,
                detail="ledger reconciled with the per-file record", at=now,
            )
    return [fix.note(done=True) for fix in fixes]


@dataclass
class LedgerView:
    """``migration_history`` as a writing command would leave it after reconciling, read without
    writing: by id, (status, database, checksum); ``to_reconcile`` says what that would change."""

    rows: dict[str, tuple[str, str | None, str | None]]
    to_reconcile: list[str]
    #: Databases the ledger knows that are lost (missing, empty, another file), with what is wrong.
    lost: dict[str, str] = field(default_factory=dict)


def read_ledger(settings: Settings, states: dict[str, FileState], migrations: Sequence[Migration]) -> LedgerView | None:
    """Read the migration ledger through a read-only connection and reconcile it in memory only: what
    read commands (`migrate status`, `migrate verify`) report. ``None`` without a ledger file.

    Nothing is written — not even on a data directory whose files were lost or truncated — so a
    read command never rewrites the ledger's history (a writing command reconciles, under the lock).
    """
    history = backend_for(settings).history(readonly=True)
    if history is None:
        return None
    try:
        has_table = history.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migration_history'").fetchone()
        rows = _ledger(history) if has_table else {}
    except sqlite3.Error as exc:
        raise translate_error(exc, settings.history_path, action="reading the migration ledger") from exc
    finally:
        history.close()
    applied: dict[str, list[str]] = {}
    for mid in sorted(rows):
        status, database, _ = rows[mid]
        if status == MigrationStatus.APPLIED and database is not None:
            applied.setdefault(database, []).append(mid)
    lost = lost_databases(states, applied)
    fixes = ledger_fixes({mid: row[:2] for mid, row in rows.items()}, states, migrations, lost=lost)
    for fix in fixes:
        previous = rows.get(fix.migration_id, (None, None, None))
        checksum = fix.record.checksum if fix.record else previous[2]
        rows[fix.migration_id] = (fix.status, fix.state.name, checksum)
    return LedgerView(rows, [fix.note(done=False) for fix in fixes], lost)
