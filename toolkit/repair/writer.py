"""Writing a plan's changes: row statements, batches, and the per-file journal.

Every changed row is journaled in ``_toolkit_repair_journal`` of its own file, in the same
transaction as the change, so a file holds all of a repair and its record, or neither. The writer
writes exactly the changes it is given: it never computes a value (``repair.apply`` has checked them
against the rows first).
"""
from __future__ import annotations

import functools
import itertools
import json
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

from ..db import quote_ident
from ..errors import EXIT_FINDINGS, ToolkitError
from .model import Change

__all__ = ["RepairConflict", "StalePlanError", "Writer", "row_sql", "read_row", "journal", "canonical_json", "same_value"]

#: Rows per ``executemany``.
BATCH = 2_000

#: One canonical JSON form, for keys and values alike (the journal and saved plans use it).
canonical_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


class RepairConflict(ToolkitError):
    """A row a repair (or an undo) expected to find was not there, or had changed."""


class StalePlanError(ToolkitError):
    """The rows a plan would change no longer hold the values the plan saw; nothing was changed."""

    exit_code = EXIT_FINDINGS


def same_value(a: Any, b: Any) -> bool:
    """Stored values are equal when both are NULL, or of one type and equal (1 and 1.0 differ)."""
    return a is None and b is None or (type(a) is type(b) and a == b)


@functools.lru_cache(maxsize=256)
def row_sql(op: str, database: str, table: str, keys: tuple[str, ...], columns: tuple[str, ...]) -> str:
    """The statement reading (``select``), updating, deleting or inserting one row by its key."""
    target = f"{quote_ident(database)}.{quote_ident(table)}"
    where = " AND ".join(f"{quote_ident(k)} = ?" for k in keys)
    if op == "select":
        return f"SELECT {', '.join(quote_ident(c) for c in columns) or '*'} FROM {target} WHERE {where}"
    if op == "update":
        return f"UPDATE {target} SET {', '.join(f'{quote_ident(c)} = ?' for c in columns)} WHERE {where}"
    if op == "delete":
        return f"DELETE FROM {target} WHERE {where}"
    return f"INSERT INTO {target} ({', '.join(quote_ident(c) for c in columns)}) VALUES ({', '.join('?' * len(columns))})"


def read_row(conn: sqlite3.Connection, database: str, table: str, key: dict[str, Any],
             columns: Iterable[str] = ()) -> dict[str, Any] | None:
    """The row ``key`` names (only ``columns``, or all), or None when there is none."""
    cursor = conn.execute(row_sql("select", database, table, tuple(key), tuple(columns)), list(key.values()))
    row = cursor.fetchone()
    return None if row is None else dict(zip([d[0] for d in cursor.description], row))


def journal(conn: sqlite3.Connection, database: str, rows: list[tuple]) -> None:
    """Append (run_id, seq, rule_id, table, op, key, before, after, at, reverses) rows to a file's journal."""
    conn.executemany(
        f"INSERT INTO {quote_ident(database)}._toolkit_repair_journal (run_id, seq, rule_id, table_name, op, row_key, "
        "before, after, at, reverses) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)


def _signature(change: Change) -> tuple:
    return (change.database, change.table, change.op, tuple(change.key), tuple(change.after or ()))


class Writer:
    """Writes changes in batches and journals every row in its own file, same transaction.

    The scope a change touched (its ticker) is read from the row, not taken from the planner, so
    verification covers what was really written. ``before_first_write(database)`` runs once per
    file before its first change (the backup of its committed state).
    """

    def __init__(self, conn: sqlite3.Connection, run_id: str, now: int,
                 before_first_write: Callable[[str], None], *, seq: dict[str, int] | None = None) -> None:
        self.conn = conn
        self.run_id = run_id
        self.now = now
        self.before_first_write = before_first_write
        self.seq = seq if seq is not None else {}
        self.pending: list[Change] = []
        self.scopes: set[Any] = set()
        self.touched: set[tuple[str, str]] = set()
        self.written = 0
        self._tickers: dict[Any, str | None] = {}

    def add(self, change: Change) -> None:
        self.pending.append(change)
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the pending changes: per table in the order planned, runs of the same statement as
        one ``executemany`` (changes to different tables are independent rows, so a planner that
        alternates tables, e.g. a close's link then its matches, still writes in large batches)."""
        by_table: dict[tuple[str, str], list[Change]] = {}
        for change in self.pending:
            by_table.setdefault((change.database, change.table), []).append(change)
        self.pending = []
        self._tickers.clear()  # trade -> ticker, for this batch's scopes
        for changes in by_table.values():
            for _, run in itertools.groupby(changes, key=_signature):
                self._execute(list(run))

    def _scope(self, change: Change) -> str | None:
        """The ticker a changed row belongs to, read from the ledger."""
        if change.database == "trading" and change.table in ("trades", "lot_matches"):
            trade_id = change.key.get("trade_id", change.key.get("close_trade_id"))
            if trade_id not in self._tickers:
                row = self.conn.execute("SELECT ticker FROM trading.trades WHERE trade_id = ?", (trade_id,)).fetchone()
                self._tickers[trade_id] = row[0] if row else None
            return self._tickers[trade_id]
        if change.database == "positions":
            return change.key.get("ticker") or (change.after or change.before or {}).get("ticker")
        return None

    def _execute(self, batch: list[Change]) -> None:
        first = batch[0]
        database = first.database
        keys = tuple(first.key)
        if database not in self.seq:
            self.before_first_write(database)
            self.seq[database] = 0
        columns = tuple(first.after or {})
        if first.op == "update":
            sql = row_sql("update", database, first.table, keys, columns)
            params = [[c.after[col] for col in columns] + [c.key[k] for k in keys] for c in batch]  # type: ignore[index]
        elif first.op == "insert":
            sql = row_sql("insert", database, first.table, (), columns)
            params = [[c.after[col] for col in columns] for c in batch]  # type: ignore[index]
        else:
            sql = row_sql("delete", database, first.table, keys, ())
            params = [[c.key[k] for k in keys] for c in batch]
        cursor = self.conn.executemany(sql, params)
        if cursor.rowcount != len(batch):
            raise RepairConflict(
                f"{first.rule_id}: {first.op} of {len(batch)} row(s) in {database}.{first.table} changed {cursor.rowcount}",
                hint="the rows changed while the repair ran; run `integrity repair` again")
        seq = self.seq[database]
        rows = []
        for change in batch:
            seq += 1
            rows.append((self.run_id, seq, change.rule_id, change.table, change.op, canonical_json(change.key),
                         None if change.before is None else canonical_json(change.before),
                         None if change.after is None else canonical_json(change.after), self.now, None))
            scope = self._scope(change)
            if scope is not None:
                self.scopes.add(scope)
        self.touched.add((database, first.table))
        self.seq[database] = seq
        journal(self.conn, database, rows)
        self.written += len(batch)
