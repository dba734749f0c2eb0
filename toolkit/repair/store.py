"""Where a repair plan keeps its changes: a private temporary SQLite database, so a plan of a million
row changes costs disk, not memory, and streams in the order it was planned.

Each change is stored with what the plan saw of its row: ``before`` (the values it replaces, as they
will be when it is applied — after the plan's earlier changes to the same row) and ``base`` (the
part of ``before`` read from the data itself, i.e. the columns no earlier change of the plan
touched). Applying a plan compares ``base`` with the rows as they are then; a row changed twice by
one plan (two rules, one column) is planned as a chain, so neither link looks stale.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from .model import Change
from .writer import canonical_json, same_value

__all__ = ["ChangeStore", "PlannedChange"]

_SCHEMA = (
    """CREATE TABLE changes (
        seq INTEGER PRIMARY KEY, rule_id TEXT NOT NULL, database_name TEXT NOT NULL, table_name TEXT NOT NULL,
        op TEXT NOT NULL, row_key TEXT NOT NULL, before TEXT, after TEXT, base TEXT, first INTEGER NOT NULL,
        repairs TEXT)""",
    "CREATE INDEX changes_row ON changes (database_name, table_name, row_key, seq)",
    "CREATE INDEX changes_rule ON changes (rule_id, seq)",
    "CREATE TABLE untouched (rule_id TEXT NOT NULL, row_key TEXT NOT NULL, PRIMARY KEY (rule_id, row_key)) WITHOUT ROWID",
)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class PlannedChange:
    """A stored change with what the plan saw of its row (see the module doc)."""

    __slots__ = ("change", "base", "first")

    def __init__(self, change: Change, base: dict[str, Any] | None, first: bool) -> None:
        self.change = change
        self.base = base
        self.first = first


class ChangeStore:
    """The changes of one plan, in planning order, with per-row chaining (see the module doc)."""

    def __init__(self) -> None:
        # "" is a private temporary database: in memory while small, on disk beyond the page cache.
        self._db = sqlite3.connect("", isolation_level=None)
        # Nothing here needs to survive the process: no journal, no syncs, so each write is cheap.
        self._db.execute("PRAGMA journal_mode = OFF")
        self._db.execute("PRAGMA synchronous = OFF")
        for ddl in _SCHEMA:
            self._db.execute(ddl)

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return self._db.execute("SELECT count(*) FROM changes").fetchone()[0]

    def _earlier(self, database: str, table: str, key: str) -> list[tuple[str, str | None, str | None]]:
        return self._db.execute(
            "SELECT op, before, after FROM changes WHERE database_name = ? AND table_name = ? AND row_key = ? ORDER BY seq",
            (database, table, key)).fetchall()

    def add(self, change: Change, live: dict[str, Any] | None) -> Change | None:
        """Store ``change`` given ``live``, its row as the data holds it now (the changed columns of an
        update, the whole row of a delete; None for an insert or a missing row). Returns the change as
        stored — ``before`` chained after the plan's earlier changes to the row — or None when it
        would change nothing. Raises LookupError for an update or delete of a row that is not there."""
        key = canonical_json(change.key)
        earlier = self._earlier(change.database, change.table, key)
        planned: dict[str, Any] = {}
        for op, _, after in earlier:
            if op in ("update", "insert"):
                planned.update(_loads(after) or {})
        if change.op == "insert":
            before = base = None
        else:
            if live is None and not earlier:
                raise LookupError(f"{change.database}.{change.table} {change.key}: no such row")
            seen = dict(live or {})
            columns = list(change.after or {}) if change.op == "update" else list(seen) or list(planned)
            before = {c: planned[c] if c in planned else seen.get(c) for c in columns}
            base = {c: seen.get(c) for c in columns if c not in planned}
        if change.op == "update":
            after = {c: v for c, v in (change.after or {}).items() if not same_value(before[c], v)}  # type: ignore[index]
            if not after:
                return None
            before = {c: before[c] for c in after}  # type: ignore[index]
            base = {c: v for c, v in (base or {}).items() if c in after}
            change = replace(change, before=before, after=after)
        elif change.op == "delete":
            change = replace(change, before=before)
        self._db.execute(
            "INSERT INTO changes (rule_id, database_name, table_name, op, row_key, before, after, base, first, repairs) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (change.rule_id, change.database, change.table, change.op, key,
             None if change.before is None else canonical_json(change.before),
             None if change.after is None else canonical_json(change.after),
             None if base is None else canonical_json(base), int(not earlier),
             canonical_json(change.repairs) if change.repairs else None))
        return change

    def discard(self, rule_id: str) -> None:
        """Forget what one rule planned (its planning failed part way)."""
        self._db.execute("DELETE FROM changes WHERE rule_id = ?", (rule_id,))
        self._db.execute("DELETE FROM untouched WHERE rule_id = ?", (rule_id,))

    def add_untouched(self, rule_id: str, key: dict[str, Any]) -> None:
        self._db.execute("INSERT OR IGNORE INTO untouched (rule_id, row_key) VALUES (?, ?)", (rule_id, canonical_json(key)))

    def untouched_keys(self, rule_id: str) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT row_key FROM untouched WHERE rule_id = ?", (rule_id,))}

    def untouched(self) -> Iterator[tuple[str, str]]:
        yield from self._db.execute("SELECT rule_id, row_key FROM untouched ORDER BY rule_id, row_key")

    def planned(self, rule_id: str | None = None, *, chunk: int = 5_000) -> Iterator[PlannedChange]:
        """The stored changes (of one rule, or all) in planning order, read a chunk at a time."""
        last = 0
        where = "AND rule_id = ?" if rule_id is not None else ""
        while True:
            params: tuple = (last, rule_id, chunk) if rule_id is not None else (last, chunk)
            rows = self._db.execute(
                "SELECT seq, rule_id, database_name, table_name, op, row_key, before, after, base, first, repairs "
                f"FROM changes WHERE seq > ? {where} ORDER BY seq LIMIT ?", params).fetchall()
            if not rows:
                return
            for seq, rid, database, table, op, key, before, after, base, first, repairs in rows:
                change = Change(rid, database, table, op, json.loads(key), _loads(before), _loads(after),
                                repairs=_loads(repairs) or {})
                yield PlannedChange(change, _loads(base), bool(first))
            last = rows[-1][0]

    def changes(self, rule_id: str | None = None) -> Iterator[Change]:
        for item in self.planned(rule_id):
            yield item.change

    def load_row(self, rule_id: str, database: str, table: str, op: str, key: dict[str, Any], before: Any, after: Any,
                 base: Any, first: bool, repairs: Any) -> None:
        """Store a change exactly as a saved plan holds it (no chaining: the file carries it)."""
        self._db.execute(
            "INSERT INTO changes (rule_id, database_name, table_name, op, row_key, before, after, base, first, repairs) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rule_id, database, table, op, canonical_json(key), None if before is None else canonical_json(before),
             None if after is None else canonical_json(after), None if base is None else canonical_json(base),
             int(bool(first)), canonical_json(repairs) if repairs else None))
