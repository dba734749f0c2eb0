"""The toolkit's own file, ``migrations.db``: migration ledger, check-run history, repair log.

``migration_history`` keeps seed 001's columns (one row per migration, its latest status) so the
seed's queries keep working; ``migration_events`` is the append-only record of every action.
Because SQLite does not commit atomically across files in WAL mode, the per-file records written
inside each database are the truth and this ledger is reconciled with them (see ``migrate.state``).

The file's own schema is versioned with ``PRAGMA user_version`` and extended step by step.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from .config import Settings
from .db import connect, is_read_only, split_statements, transaction

__all__ = ["HISTORY_SCHEMA", "HISTORY_TABLES", "open_history", "ensure_history_schema", "history_read_only", "iso"]

#: Each entry upgrades the history file by one version; never edit a released entry, append.
HISTORY_SCHEMA: tuple[str, ...] = (
    # 1: migrations
    """
    CREATE TABLE IF NOT EXISTS migration_history (
        migration_id TEXT PRIMARY KEY,
        migration_name TEXT NOT NULL,
        database_path TEXT NOT NULL,
        applied_at INTEGER NOT NULL,
        applied_date TEXT NOT NULL,
        duration_seconds REAL,
        status TEXT NOT NULL CHECK (status IN ('applied', 'rolled_back', 'failed')),
        error_message TEXT,
        database_name TEXT,
        checksum TEXT
    );
    CREATE TABLE IF NOT EXISTS migration_events (
        event_id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        migration_id TEXT NOT NULL,
        database_name TEXT,
        action TEXT NOT NULL CHECK (action IN ('upgrade', 'downgrade', 'accept', 'reconcile', 'restore')),
        status TEXT NOT NULL,
        detail TEXT,
        duration_seconds REAL
    );
    CREATE INDEX IF NOT EXISTS idx_migration_events_migration ON migration_events (migration_id, at);
    """,
    # 2: integrity check runs
    """
    CREATE TABLE IF NOT EXISTS check_runs (
        run_id TEXT PRIMARY KEY,
        started_at INTEGER NOT NULL,
        duration_seconds REAL NOT NULL,
        data_dir TEXT NOT NULL,
        fail_on TEXT NOT NULL,
        baseline TEXT,
        rules INTEGER NOT NULL,
        violations INTEGER NOT NULL,
        blocking INTEGER NOT NULL,
        exit_code INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS idx_check_runs_started_at ON check_runs (started_at);
    CREATE TABLE IF NOT EXISTS check_results (
        run_id TEXT NOT NULL REFERENCES check_runs (run_id),
        rule_id TEXT NOT NULL,
        severity TEXT NOT NULL,
        status TEXT NOT NULL,
        count INTEGER NOT NULL,
        baselined INTEGER NOT NULL,
        sample TEXT NOT NULL,
        error TEXT,
        duration_seconds REAL,
        PRIMARY KEY (run_id, rule_id)
    );
    """,
    # 3: repair runs and the log of every changed row (copied from each file's journal)
    """
    CREATE TABLE IF NOT EXISTS repair_runs (
        run_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('repair', 'undo')),
        started_at INTEGER NOT NULL,
        data_dir TEXT NOT NULL,
        rules TEXT NOT NULL,
        changes INTEGER NOT NULL,
        status TEXT NOT NULL,
        summary TEXT,
        undone_by TEXT,
        undoes TEXT
    );
    CREATE TABLE IF NOT EXISTS repair_log (
        run_id TEXT NOT NULL,
        database_name TEXT NOT NULL,
        seq INTEGER NOT NULL,
        rule_id TEXT NOT NULL,
        table_name TEXT NOT NULL,
        op TEXT NOT NULL,
        row_key TEXT NOT NULL,
        before TEXT,
        after TEXT,
        at INTEGER NOT NULL,
        PRIMARY KEY (run_id, database_name, seq)
    );
    """,
)


#: The tables a history file holds (every version of the schema above).
HISTORY_TABLES = frozenset({"migration_history", "migration_events", "check_runs", "check_results", "repair_runs",
                            "repair_log"})


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def ensure_history_schema(conn: sqlite3.Connection, steps: Sequence[str] = HISTORY_SCHEMA) -> int:
    """Bring the history file's schema up to date; returns the version it is at."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version >= len(steps):
        return version
    with transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, len(steps)):
            for statement in split_statements(steps[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
    return len(steps)


def open_history(settings: Settings, *, create: bool = False, readonly: bool = False) -> sqlite3.Connection | None:
    """Open ``migrations.db``; ``None`` when it does not exist and ``create`` is false."""
    path: Path = settings.history_path
    if not path.exists() and not create:
        return None
    if create:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    conn = connect(path, readonly=readonly, create=create, busy_timeout=settings.busy_timeout)
    if not readonly:
        try:
            ensure_history_schema(conn)
        except BaseException:
            conn.close()
            raise
    return conn


def history_read_only(settings: Settings) -> Path | None:
    """What keeps ``migrations.db`` from being written, or ``None``: the file marked read-only, or
    its directory (where SQLite creates the file and its ``-wal``/``-shm``) marked read-only."""
    path: Path = settings.history_path
    if path.exists() and is_read_only(path):
        return path
    if settings.data_dir.is_dir() and is_read_only(settings.data_dir):
        return settings.data_dir
    return None
