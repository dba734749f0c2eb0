"""The repair log in migrations.db: runs (repair and undo) and every changed row, copied from the files'
journals. The journals are the truth — each file records its repair in the same transaction as the
change — and the log is reconciled from them after a crash between a file's commit and the log's.
"""
from __future__ import annotations

import enum
import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from ..config import DATABASES, Settings
from ..backend import backend_for
from ..db import atomic, nobody_writes, translate_error
from ..errors import LockTimeoutError
from .writer import canonical_json

__all__ = ["RunStatus", "RepairRun", "record_run", "record_undo", "reconcile_repair_log", "list_repairs"]


class RunStatus(enum.StrEnum):
    """A logged run's status."""

    APPLIED = "applied"
    NOTHING = "nothing"
    PARTIAL = "partial"
    ROLLED_BACK = "rolled back"
    RECONCILED = "applied (reconciled)"
    UNDONE = "undone"
    #: Recorded before the files commit; what the files then hold decides the final status.
    COMMITTING = "committing"
    NOT_COMMITTED = "not committed"


@dataclass(frozen=True)
class RepairRun:
    run_id: str
    kind: str
    started_at: int
    rules: list[str]
    changes: int
    status: str
    undone_by: str | None
    undoes: str | None


def record_run(settings: Settings, result, *, status: RunStatus | None = None, files: dict[str, int] | None = None) -> None:
    """Log a repair run: as ``committing`` before the files commit (with the journal rows each file
    will hold: ``files``), and with its outcome after. A crash in between is settled from the journals
    by :func:`reconcile_repair_log`."""
    history = backend_for(settings).history(create=True)
    assert history is not None
    try:
        summary = {r.rule.id: {"status": r.status, "changes": dict(r.changes), "untouched": r.untouched,
                               "rolled_back": r.rolled_back} for r in result.rules}
        if files is not None:
            summary["_files"] = dict(files)
        if status is None:
            status = RunStatus.APPLIED if result.applied_changes else RunStatus.NOTHING
            if result.incomplete:
                status = RunStatus.PARTIAL if result.applied_changes else RunStatus.ROLLED_BACK
        with atomic(history):
            history.execute(
                "INSERT OR REPLACE INTO repair_runs (run_id, kind, started_at, data_dir, rules, changes, status, summary) "
                "VALUES (?, 'repair', ?, ?, ?, ?, ?, ?)",
                (result.run_id, int(result.started_at), result.data_dir, canonical_json([r.rule.id for r in result.rules]),
                 result.applied_changes, str(status), canonical_json(summary)))
    finally:
        history.close()


def reconcile_repair_log(settings: Settings) -> list[str]:
    """Copy journal rows that migrations.db lacks (a crash after a file's commit); returns notes."""
    history = backend_for(settings).history(create=True)
    assert history is not None
    notes: list[str] = []
    try:
        for name in DATABASES:
            path = settings.path(name)
            if not path.exists():
                continue
            conn = backend_for(settings).connect(name, readonly=True)
            try:
                _copy_journal(settings, history, conn, name, path, notes)
            except sqlite3.DatabaseError as exc:
                raise translate_error(exc, path, action="reading its repair journal") from exc
            finally:
                conn.close()
        notes += settle_commits(settings, history)
    finally:
        history.close()
    return notes


def _copy_journal(settings: Settings, history: Any, conn: Any, name: str, path: Any, notes: list[str]) -> None:
    """Copy one file's journal rows that the log lacks (see :func:`reconcile_repair_log`)."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_toolkit_repair_journal'").fetchone():
        return
    runs = [r[0] for r in conn.execute("SELECT DISTINCT run_id FROM _toolkit_repair_journal")]
    logged = {r[0]: r[1] for r in history.execute(
        "SELECT run_id, count(*) FROM repair_log WHERE database_name = ? GROUP BY run_id", (name,))}
    for run_id in runs:
        have = conn.execute("SELECT count(*) FROM _toolkit_repair_journal WHERE run_id = ?", (run_id,)).fetchone()[0]
        if logged.get(run_id, 0) == have:
            continue
        rows = conn.execute(
            "SELECT run_id, ?, seq, rule_id, table_name, op, row_key, before, after, at "
            "FROM _toolkit_repair_journal WHERE run_id = ? ORDER BY seq", (name, run_id))
        with atomic(history):
            history.executemany(
                "INSERT OR IGNORE INTO repair_log (run_id, database_name, seq, rule_id, table_name, op, row_key, "
                "before, after, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            reverses = conn.execute("SELECT max(reverses) FROM _toolkit_repair_journal WHERE run_id = ?",
                                    (run_id,)).fetchone()[0]
            if not history.execute("SELECT 1 FROM repair_runs WHERE run_id = ?", (run_id,)).fetchone():
                kind = "undo" if reverses else "repair"
                history.execute(
                    "INSERT INTO repair_runs (run_id, kind, started_at, data_dir, rules, changes, status, undoes) "
                    "VALUES (?, ?, ?, ?, '[]', 0, ?, ?)",
                    (run_id, kind, int(time.time()), str(settings.data_dir), str(RunStatus.RECONCILED), reverses))
                notes.append(f"{kind} run {run_id} was committed to {path.name} but not logged: logged now")
            if reverses:
                history.execute("UPDATE repair_runs SET undone_by = ?, status = 'undone' "
                                "WHERE run_id = ? AND undone_by IS NULL", (run_id, reverses))
            history.execute(
                "UPDATE repair_runs SET changes = (SELECT count(*) FROM repair_log WHERE run_id = ?) WHERE run_id = ?",
                (run_id, run_id))


def journal_rows(settings: Settings, name: str, run_id: str) -> int:
    """How many journal rows of ``run_id`` a database holds (what of the run it committed)."""
    if not settings.path(name).exists():
        return 0
    conn = backend_for(settings).connect(name, readonly=True)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_toolkit_repair_journal'").fetchone():
            return 0
        return conn.execute("SELECT count(*) FROM _toolkit_repair_journal WHERE run_id = ?", (run_id,)).fetchone()[0]
    finally:
        conn.close()


def committed_files(settings: Settings, run_id: str, files: dict[str, int]) -> tuple[list[str], list[str]]:
    """(files that hold all of the run's rows, files that hold none or not all of them)."""
    done = [name for name, rows in files.items() if journal_rows(settings, name, run_id) == rows]
    return done, [name for name in files if name not in done]


def settle_commits(settings: Settings, history: Any) -> list[str]:
    """Give every run logged as ``committing`` (its process ended before it could say how the commit
    went) the status the files' journals prove: applied, partial, or not committed."""
    notes = []
    for run_id, summary in history.execute(
            "SELECT run_id, summary FROM repair_runs WHERE status = ?", (str(RunStatus.COMMITTING),)).fetchall():
        files = json.loads(summary or "{}").get("_files", {})
        done, not_done = committed_files(settings, run_id, files)
        status = RunStatus.APPLIED if not not_done else (RunStatus.PARTIAL if done else RunStatus.NOT_COMMITTED)
        with atomic(history):
            history.execute("UPDATE repair_runs SET status = ?, changes = (SELECT count(*) FROM repair_log WHERE run_id = ?) "
                            "WHERE run_id = ?", (str(status), run_id, run_id))
        where = (f"committed to {', '.join(done) or 'no file'}" + (f", not to {', '.join(not_done)}" if not_done else ""))
        notes.append(f"repair run {run_id} ended while committing: {where}; logged as {status}")
    return notes


def list_repairs(settings: Settings, *, limit: int = 20) -> list[RepairRun]:
    """Repair and undo runs, newest first (after logging any the files committed but the log lacks)."""
    if not settings.history_path.exists():
        return []
    # Completing the log from the files' own journals adds what they prove and rewrites nothing; on
    # a read-only snapshot it is skipped (the runs are shown as logged).
    if not (nobody_writes(settings.data_dir) or nobody_writes(settings.history_path)):
        try:
            with backend_for(settings).lock("integrity repair log", timeout=0):
                reconcile_repair_log(settings)
        except LockTimeoutError:
            pass  # another toolkit process is working; it reconciles when it is done
    history = backend_for(settings).history(readonly=True)
    assert history is not None
    try:
        rows = history.execute(
            "SELECT run_id, kind, started_at, rules, changes, status, undone_by, undoes FROM repair_runs "
            "ORDER BY started_at DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
    finally:
        history.close()
    return [RepairRun(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7]) for r in rows]


def record_undo(settings: Settings, undo_id: str, run_id: str, rows: int, now: int) -> None:
    """Log an undo in migrations.db (after the files committed; a crash before this is reconciled
    from the journal, whose rows name the run they reverse)."""
    history = backend_for(settings).history(create=True)
    assert history is not None
    try:
        with atomic(history):
            history.execute(
                "INSERT OR REPLACE INTO repair_runs (run_id, kind, started_at, data_dir, rules, changes, status, undoes) "
                "VALUES (?, 'undo', ?, ?, '[]', ?, 'applied', ?)", (undo_id, now, str(settings.data_dir), rows, run_id))
            history.execute("UPDATE repair_runs SET undone_by = ?, status = 'undone' WHERE run_id = ?", (undo_id, run_id))
    finally:
        history.close()
