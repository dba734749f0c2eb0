"""`integrity repair undo RUN_ID`: restore exactly the values a repair run replaced.

The run's journal rows are replayed backwards, newest first, in one transaction over the files,
after checking that every row is still as the repair left it; the undo journals its own rows (naming
the run it reverses) in the same transaction, so a crash before migrations.db records it loses
nothing.
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ..backend import backend_for
from ..backup import Backup
from ..config import DATABASES, Settings
from ..db import quote_ident
from ..errors import UnknownNameError, UsageError
from ..migrate.state import refuse_lost_databases
from ..rules.runner import new_run_id
from .log import reconcile_repair_log, record_undo
from .writer import RepairConflict, journal, row_sql

__all__ = ["UndoResult", "undo_repair"]

#: Journal rows an undo holds in memory at a time.
UNDO_CHUNK = 5_000


@dataclass
class UndoResult:
    run_id: str
    undone: str
    rows: int
    reconciled: list[str] = field(default_factory=list)
    backups: list[Backup] = field(default_factory=list)


def _current(conn: sqlite3.Connection, database: str, table: str, key: dict, columns: Iterable[str]) -> tuple | None:
    return conn.execute(row_sql("select", database, table, tuple(key), tuple(columns)), list(key.values())).fetchone()


def _journal_chunks(conn: sqlite3.Connection, name: str, run_id: str) -> Iterator[list[tuple]]:
    """A run's journal rows in one file, newest first, a chunk at a time (read ahead of the writes:
    the undo appends its own rows to the same table while it goes)."""
    below = 1 << 62
    while True:
        rows = conn.execute(
            f"SELECT seq, rule_id, table_name, op, row_key, before, after FROM {quote_ident(name)}._toolkit_repair_journal "
            "WHERE run_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?", (run_id, below, UNDO_CHUNK)).fetchall()
        if not rows:
            return
        yield rows
        below = rows[-1][0]


def _rows_changed_twice(conn: sqlite3.Connection, name: str, run_id: str) -> set[tuple[str, str]]:
    """(table, key) of the rows the run changed more than once (two rules on one row): few, if any."""
    return {(t, k) for t, k in conn.execute(
        f"SELECT table_name, row_key FROM {quote_ident(name)}._toolkit_repair_journal WHERE run_id = ? "
        "GROUP BY table_name, row_key HAVING count(*) > 1", (run_id,))}


def _undo_conflict(conn: sqlite3.Connection, name: str, table: str, op: str, key: dict, after: str | None,
                   later: set[str] | None) -> str | None:
    """Why a journaled change can no longer be undone (the row is not as the repair left it), or None.

    ``later`` holds the columns of this row that a newer change of the same run set: their value now
    is that change's, already checked, so they are not compared again (a chain is not a conflict).
    """
    if op == "delete":
        if later is None and _current(conn, name, table, key, []) is not None:
            return f"{name}.{table} {key}: a row was inserted where the repair deleted one"
        return None
    wanted = {c: v for c, v in json.loads(after).items() if later is None or c not in later}  # type: ignore[arg-type]
    if not wanted:
        return None
    current = _current(conn, name, table, key, wanted)
    if current is None or list(current) != list(wanted.values()):
        return f"{name}.{table} {key}: changed since the repair ({'missing' if current is None else dict(zip(wanted, current))})"
    return None


def _undo_statement(name: str, table: str, op: str, key: dict, before: str | None, after: str | None) -> tuple[str, list, str]:
    """The statement that reverses one journaled change, its parameters, and the reverse op."""
    if op == "update":
        old = json.loads(before)  # type: ignore[arg-type]
        return row_sql("update", name, table, tuple(key), tuple(old)), [*old.values(), *key.values()], "update"
    if op == "insert":
        return row_sql("delete", name, table, tuple(key), ()), list(key.values()), "delete"
    old = json.loads(before)  # type: ignore[arg-type]
    return row_sql("insert", name, table, (), tuple(old)), list(old.values()), "insert"


def _conflicts(conn: sqlite3.Connection, files: list[str], run_id: str) -> tuple[int, list[str]]:
    """How many journaled rows are no longer as the repair left them, and the first two reasons."""
    found, shown = 0, []
    for name in files:
        twice = _rows_changed_twice(conn, name, run_id)
        later: dict[tuple[str, str], set[str]] = {}  # newer changes' columns, for rows changed twice
        for rows in _journal_chunks(conn, name, run_id):
            for _, _, table, op, row_key, _, after in rows:
                seen = later.get((table, row_key)) if (table, row_key) in twice else None
                problem = _undo_conflict(conn, name, table, op, json.loads(row_key), after, seen)
                if problem is not None:
                    found += 1
                    if len(shown) < 2:
                        shown.append(problem)
                if (table, row_key) in twice:
                    later.setdefault((table, row_key), set()).update(json.loads(after or "{}"))
    return found, shown


def undo_repair(settings: Settings, run_id: str, *, progress: Callable[[str], None] | None = None) -> UndoResult:
    """Restore exactly the values a repair run replaced; refuses, naming rows, if they changed since."""
    say = progress or (lambda _: None)
    refuse_lost_databases(settings)
    backend = backend_for(settings)
    with backend.lock("integrity repair undo"):
        reconciled = reconcile_repair_log(settings)
        history = backend.history(create=True)
        assert history is not None
        try:
            row = history.execute("SELECT kind, status, undone_by FROM repair_runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                known = [r[0] for r in history.execute("SELECT run_id FROM repair_runs WHERE kind = 'repair' ORDER BY started_at DESC LIMIT 50")]
                raise UnknownNameError("repair run", run_id, known)
        finally:
            history.close()
        kind, status, undone_by = row
        if kind != "repair":
            raise UsageError(f"{run_id} is an undo, not a repair run", hint="undo the repair run it undid again with a new repair instead")
        if undone_by:
            raise UsageError(f"repair run {run_id} was already undone (by {undone_by})", hint="nothing to do")
        undo_id = new_run_id("und")
        result = UndoResult(undo_id, run_id, 0, reconciled)
        now = int(time.time())
        conn = backend.open(DATABASES, readonly=False)
        try:
            with backend.atomic(conn, action="starting the undo"):
                files = [name for name in DATABASES
                         if conn.execute(f"SELECT 1 FROM {quote_ident(name)}.sqlite_master WHERE name = '_toolkit_repair_journal'").fetchone()
                         and conn.execute(f"SELECT 1 FROM {quote_ident(name)}._toolkit_repair_journal WHERE run_id = ? LIMIT 1",
                                          (run_id,)).fetchone()]
                say("checking that the repaired rows are as the repair left them")
                found, conflicts = _conflicts(conn, files, run_id)
                if found:
                    raise RepairConflict(
                        f"cannot undo {run_id}: {found} row(s) changed since it ran, e.g. {conflicts[0]}"
                        + (f"; also {conflicts[1]}" if len(conflicts) > 1 else ""),
                        hint="nothing was changed; repair again, or restore a backup with `migrate restore`")
                for name in files:
                    say(f"backing up {name}")
                    item = backend.backup(name, "pre-undo")
                    if item is not None:
                        result.backups.append(item)
                    say(f"restoring {name}")
                    result.rows += _restore_file(conn, name, run_id, undo_id, now)
        finally:
            conn.close()
        record_undo(settings, undo_id, run_id, result.rows, now)
        result.reconciled += reconcile_repair_log(settings)
    return result


def _restore_file(conn: sqlite3.Connection, name: str, run_id: str, undo_id: str, now: int) -> int:
    """Reverse one file's journaled changes, newest first, journaling each reversal; returns the rows."""
    n = 0
    for rows in _journal_chunks(conn, name, run_id):
        statements: list[tuple[str, list]] = []
        entries = []
        for seq, rule_id, table, op, row_key, before, after in rows:
            n += 1
            sql, params, reverse = _undo_statement(name, table, op, json.loads(row_key), before, after)
            if statements and statements[-1][0] == sql:
                statements[-1][1].append(params)
            else:
                statements.append((sql, [params]))
            entries.append((undo_id, n, rule_id, table, reverse, row_key,
                            after if op != "delete" else None, before if op != "insert" else None, now, run_id))
        for sql, batch in statements:
            cursor = conn.executemany(sql, batch)
            if cursor.rowcount != len(batch):  # the conflict check makes this unreachable
                raise RepairConflict(f"cannot undo {run_id}: {name} changed while undoing",
                                     hint="nothing was changed; run the undo again")
        journal(conn, name, entries)
    return n
