"""Every `integrity check` is recorded (run id, time, per rule: count and sample): in migrations.db,
or in a run-history file of the caller's choosing (``--history-file``) — the way to keep the history
of a gate run on a read-only snapshot. Reading the history never writes anything."""
from __future__ import annotations

import json
import os
import sqlite3
import stat
from dataclasses import dataclass
from pathlib import Path

from ..config import ALL_FILES, Settings
from ..db import connect, is_read_only, transaction
from ..errors import UnknownNameError, UsageError
from ..history import HISTORY_TABLES, ensure_history_schema, history_read_only, open_history
from .runner import CheckReport

__all__ = ["record_check_run", "RecordOutcome", "check_history_file", "CheckRun", "list_check_runs", "check_run"]

_SQLITE_HEADER = b"SQLite format 3\x00"
_WRITTEN_BY = "name a new file, or one `integrity check --history-file` wrote"


@dataclass(frozen=True)
class RecordOutcome:
    """Where a run was recorded; ``read_only`` names what kept it from being recorded."""

    path: Path
    recorded: bool
    read_only: Path | None = None


def check_history_file(settings: Settings, path: Path, *, reading: bool = False, option: str = "--history-file") -> None:
    """Refuse (UsageError, exit 2, nothing written) a run-history file that cannot be one.

    For writing: one of the data directory's databases (or their -wal/-shm/-journal files), a
    directory, a special file, a read-only file or directory, a file that is not SQLite, or an SQLite
    database with tables a run history does not have. For ``reading``: a missing file too.
    """
    target = Path(path)
    if not reading:
        resolved = target.resolve()
        for name in ALL_FILES:
            database = settings.path(name).resolve()
            if resolved in (database, *(Path(f"{database}{s}") for s in ("-wal", "-shm", "-journal"))):
                raise UsageError(f"{option} {path}: is a database of {settings.data_dir}; refusing to write the run history there",
                                 hint="name a file outside the data directory's databases")
    try:
        info = os.stat(target)
    except FileNotFoundError:
        if reading:
            raise UsageError(f"{option} {path}: does not exist", hint="name the file `integrity check --history-file` wrote") from None
        if not target.parent.is_dir():
            raise UsageError(f"{option} {path}: its directory does not exist", hint="create it, or name a file in an existing directory") from None
        if is_read_only(target.parent):
            raise UsageError(f"{option} {path}: its directory is read-only", hint="name a file in a writable directory") from None
        return
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot be examined ({exc.strerror or exc})", hint="check the path and its permissions") from exc
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{option} {path}: is a directory", hint="name a file")
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{option} {path}: is not a regular file (a FIFO or a device)", hint=_WRITTEN_BY)
    if not reading and (is_read_only(target) or is_read_only(target.parent)):
        where = "is read-only" if is_read_only(target) else "is in a read-only directory"
        raise UsageError(f"{option} {path}: {where}", hint="name a file in a writable directory")
    if info.st_size == 0:
        return  # an empty file is an empty database
    try:
        with open(target, "rb") as handle:
            head = handle.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot be read ({exc.strerror or exc})", hint="check its permissions") from exc
    if head != _SQLITE_HEADER:
        raise UsageError(f"{option} {path}: is not an SQLite database, so not a run history; refusing to use it", hint=_WRITTEN_BY)
    conn = connect(target, readonly=True, busy_timeout=settings.busy_timeout)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"{option} {path}: cannot be read as SQLite ({exc})", hint=_WRITTEN_BY) from exc
    finally:
        conn.close()
    other = sorted(t for t in tables - HISTORY_TABLES if not t.startswith("sqlite_"))
    if other:
        raise UsageError(f"{option} {path}: is an SQLite database but not a run history (it has table {other[0]}); "
                         "refusing to use it", hint=_WRITTEN_BY)


def record_check_run(settings: Settings, report: CheckReport, *, history_file: Path | None = None) -> RecordOutcome:
    """Record the run in migrations.db, or in ``history_file`` (created with the history schema if absent).

    When migrations.db cannot be written (it or the data directory is read-only, a snapshot) the run
    is not recorded and nothing is written: the outcome says so and names what is read-only.
    """
    if history_file is None:
        blocked = history_read_only(settings)
        if blocked is not None:
            return RecordOutcome(settings.history_path, False, blocked)
        history = open_history(settings, create=True)
        assert history is not None
        path = settings.history_path
    else:
        check_history_file(settings, history_file)
        path = Path(history_file)
        history = connect(path, create=True, busy_timeout=settings.busy_timeout)
    try:
        if history_file is not None:
            ensure_history_schema(history)
        with transaction(history):
            history.execute(
                "INSERT INTO check_runs (run_id, started_at, duration_seconds, data_dir, fail_on, baseline, rules, "
                "violations, blocking, exit_code) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (report.run_id, int(report.started_at), report.seconds, report.data_dir, report.fail_on.name,
                 report.baseline, len(report.results), report.violations, len(report.blocking), report.exit_code))
            history.executemany(
                "INSERT INTO check_results (run_id, rule_id, severity, status, count, baselined, sample, error, "
                "duration_seconds) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(report.run_id, r.rule.id, r.rule.severity.name, r.status, r.count, r.baselined,
                  json.dumps([v.to_dict() for v in r.samples], default=str), r.error or r.reason, r.seconds)
                 for r in report.results])
    finally:
        history.close()
    return RecordOutcome(path, True)


@dataclass(frozen=True)
class CheckRun:
    run_id: str
    started_at: int
    seconds: float
    fail_on: str
    baseline: str | None
    rules: int
    violations: int
    blocking: int
    exit_code: int
    results: tuple[dict, ...] = ()


def _open(settings: Settings, history_file: Path | None) -> sqlite3.Connection | None:
    """A read-only connection to the run history, or ``None`` when there is none (yet)."""
    if history_file is not None:
        check_history_file(settings, history_file, reading=True)
        conn = connect(history_file, readonly=True, busy_timeout=settings.busy_timeout)
    else:
        if not settings.history_path.exists():
            return None
        conn = open_history(settings, readonly=True)  # type: ignore[assignment]
        assert conn is not None
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'check_runs'").fetchone():
        conn.close()  # a history older than the check runs (or an empty file): no runs recorded
        return None
    return conn


def list_check_runs(settings: Settings, *, limit: int = 20, history_file: Path | None = None) -> list[CheckRun]:
    history = _open(settings, history_file)
    if history is None:
        return []
    try:
        rows = history.execute(
            "SELECT run_id, started_at, duration_seconds, fail_on, baseline, rules, violations, blocking, exit_code "
            "FROM check_runs ORDER BY started_at DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
    finally:
        history.close()
    return [CheckRun(*row) for row in rows]


def check_run(settings: Settings, run_id: str, *, history_file: Path | None = None) -> CheckRun:
    history = _open(settings, history_file)
    if history is None:
        raise UnknownNameError("check run", run_id, [])
    try:
        row = history.execute(
            "SELECT run_id, started_at, duration_seconds, fail_on, baseline, rules, violations, blocking, exit_code "
            "FROM check_runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            known = [r[0] for r in history.execute("SELECT run_id FROM check_runs ORDER BY started_at DESC LIMIT 50")]
            raise UnknownNameError("check run", run_id, known)
        results = tuple(
            {"rule": r[0], "severity": r[1], "status": r[2], "count": r[3], "baselined": r[4],
             "sample": json.loads(r[5]), "error": r[6], "seconds": r[7]}
            for r in history.execute(
                "SELECT rule_id, severity, status, count, baselined, sample, error, duration_seconds "
                "FROM check_results WHERE run_id = ? ORDER BY rowid", (run_id,)))
    finally:
        history.close()
    return CheckRun(*row, results=results)
