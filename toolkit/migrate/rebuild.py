"""Table rebuilds inside a migration: ``db.transform(table, ...)``.

SQLite's ``ALTER TABLE`` cannot change a column's type, drop a column that anything uses, or add a
constraint; the documented way is to rebuild the table (https://www.sqlite.org/lang_altertable.html,
"Making Other Kinds Of Table Schema Changes"):

1. foreign keys OFF, *before* the transaction (``PRAGMA foreign_keys`` is a no-op inside one) — the
   runner does this for a migration that declares ``REBUILDS_TABLES = True`` (:func:`foreign_keys_off`);
2. in the runner's transaction: create the new table, copy the rows, drop the old table, rename the
   new one, recreate the indexes, triggers and views that depend on it;
3. ``PRAGMA foreign_key_check`` before COMMIT (:func:`refuse_new_violations`), then foreign keys ON.

The statements of step 2 come from sqlite-utils' ``Table.transform_sql()`` and run through the
migration's context, so they are recorded (``--dry-run`` prints them) and roll back with everything
else. sqlite-utils keeps the indexes and (renaming with ``legacy_alter_table``) leaves views alone;
the triggers, which ``DROP TABLE`` takes with it, are recreated here. Because ``transform_sql``
regenerates ``CREATE TABLE`` from introspection, anything it cannot reproduce (a ``COLLATE`` or
``ON CONFLICT`` clause, ``WITHOUT ROWID``, a generated column, a declared type outside its mapping)
would be lost silently; this module refuses those tables instead, and compares the rebuilt table
with the old one, so a rebuild changes exactly what was asked or nothing at all.

sqlite-utils is imported only when a rebuild runs (it costs ~0.1 s to import).
"""
from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, Protocol

from ..db import quote_ident
from ..errors import ToolkitError

class _Executes(Protocol):
    """What a rebuild needs of the migration's context (``discovery.MigrationContext``)."""

    _conn: sqlite3.Connection
    current: str | None
    rebuilds_tables: bool

    def execute(self, sql: str, parameters: Any = ...) -> Any: ...

__all__ = ["REBUILD_ATTRIBUTE", "RebuildError", "foreign_keys_off", "foreign_key_violations",
           "refuse_new_violations", "transform"]

#: The module attribute a migration sets to use ``db.transform()``.
REBUILD_ATTRIBUTE = "REBUILDS_TABLES"

#: The new table is ``<table>_new_<suffix>`` until it is renamed into place.
TMP_SUFFIX = "rebuild"

#: Probe table for SQLite's own schema check (an ALTER TABLE RENAME re-resolves every view and trigger).
_PROBE = "_toolkit_rebuild_probe"

#: Clauses a faithful rebuild must reproduce (counted in the old and the regenerated CREATE TABLE).
_CLAUSES = ("CHECK", "COLLATE", "CONFLICT", "CONSTRAINT", "DEFAULT", "DEFERRABLE", "GENERATED", "PRIMARY",
            "REFERENCES", "UNIQUE", "AUTOINCREMENT", "WITHOUT", "STRICT", "ASC", "DESC")

_TOKEN = re.compile(
    r"""(?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
      |(?P<string>'(?:[^']|'')*')
      |(?P<quoted>"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
      |(?P<word>[A-Za-z_][A-Za-z0-9_$]*)""",
    re.S | re.X,
)

_LITERAL_DEFAULT = re.compile(
    r"""^(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?0[xX][0-9a-fA-F]+
         |'(?:[^']|'')*'|"(?:[^"]|"")*"|[xX]'[0-9a-fA-F]*'
         |[A-Za-z_][A-Za-z0-9_]*)$""",
    re.X,
)


class RebuildError(ToolkitError):
    """A table rebuild was refused or failed its checks; the runner rolls the migration back."""


# -- foreign keys off around the transaction, and the check before COMMIT --------------------------

@contextmanager
def foreign_keys_off(conn: sqlite3.Connection, wanted: bool = True) -> Iterator[None]:
    """``PRAGMA foreign_keys = OFF`` for the duration (when ``wanted``), restored afterwards.

    Must be entered and left outside a transaction: inside one, the pragma silently does nothing.
    """
    if not wanted:
        yield
        return
    if conn.in_transaction:
        raise RuntimeError("foreign keys can only be switched off outside a transaction")
    was_on = bool(conn.execute("PRAGMA foreign_keys").fetchone()[0])
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        yield
    finally:
        if was_on and not conn.in_transaction:
            conn.execute("PRAGMA foreign_keys = ON")


def foreign_key_violations(conn: sqlite3.Connection) -> Counter:
    """``PRAGMA foreign_key_check`` as a multiset of (table, rowid, parent)."""
    try:
        rows = conn.execute("PRAGMA foreign_key_check").fetchall()
    except sqlite3.OperationalError as exc:  # "foreign key mismatch": a key that references nothing usable
        raise RebuildError(f"foreign key check failed: {exc}") from exc
    return Counter((table, rowid, parent) for table, rowid, parent, _ in rows)


def refuse_new_violations(conn: sqlite3.Connection, baseline: Counter) -> None:
    """Raise (one line, naming the tables) if the file has foreign key violations it did not have
    before the migration started. Violations that were already there are not the migration's."""
    new = foreign_key_violations(conn) - baseline
    if not new:
        return
    (table, rowid, parent), *_ = sorted(new, key=lambda k: (str(k[0]), str(k[2]), k[1] if k[1] is not None else -1))
    tables = sorted({f"{t} -> {p}" for t, _, p in new})
    where = f"rowid {rowid}" if rowid is not None else "a row"
    raise RebuildError(
        f"foreign key check failed after the table rebuild: {sum(new.values())} new violation(s) in "
        f"{', '.join(tables)} (first: {table} {where} references a missing row of {parent})"
    )


# -- the rebuild -----------------------------------------------------------------------------------

def _tokens(sql: str | None) -> list[tuple[str, bool]]:
    """(upper-cased word, was quoted) for each identifier or keyword; strings and comments skipped."""
    result = []
    for match in _TOKEN.finditer(sql or ""):
        if match.lastgroup == "word":
            result.append((match.group().upper(), False))
        elif match.lastgroup == "quoted":
            text = match.group()
            inner = text[1:-1].replace(text[0] * 2, text[0]) if text[0] != "[" else text[1:-1]
            result.append((inner.upper(), True))
    return result


def _clause_counts(sql: str) -> Counter:
    return Counter(word for word, quoted in _tokens(sql) if not quoted and word in _CLAUSES)


def _verbatim_default(value: str) -> str:
    """A ``DEFAULT`` clause body that reproduces ``value`` (``PRAGMA table_xinfo``'s dflt_value)."""
    upper = value.upper()
    if upper in ("NULL", "TRUE", "FALSE", "CURRENT_TIME", "CURRENT_DATE", "CURRENT_TIMESTAMP"):
        return value
    if _LITERAL_DEFAULT.match(value.strip()):
        return value
    return f"({value})"  # an expression: SQLite stores it without the parentheses it needs


@cache
def _database_class() -> type:
    import sqlite_utils

    class Verbatim(str):
        """A default that is already SQL (taken from the table), not a value to quote."""

    class Database(sqlite_utils.Database):
        # transform_sql() re-quotes the defaults it reads from PRAGMA table_info as strings, so
        # DEFAULT 0 would come back as DEFAULT '0'; defaults taken from the table are passed through.
        def quote_default_value(self, value: Any) -> str:
            if isinstance(value, Verbatim):
                return str(value)
            return super().quote_default_value(value)

    Database.Verbatim = Verbatim  # type: ignore[attr-defined]
    return Database


def _database(conn: sqlite3.Connection) -> Any:
    # No plugins (they could register functions on our connection) and no recursive_triggers pragma.
    return _database_class()(conn, recursive_triggers=False, execute_plugins=False)


def _fold(name: str) -> str:
    return name.lower()


def _xinfo(conn: sqlite3.Connection, table: str) -> list[tuple]:
    """(name, type, notnull, dflt_value, pk, hidden) per column, in order."""
    return [tuple(r[1:]) for r in conn.execute(f"PRAGMA table_xinfo({quote_ident(table)})")]


def _fk_keys(table: Any) -> set[tuple]:
    return {(tuple(map(_fold, fk.columns)), _fold(fk.other_table), tuple(map(_fold, fk.other_columns)),
             fk.on_update, fk.on_delete) for fk in table.foreign_keys}


def _names(value: Iterable[str] | dict[str, Any] | None) -> set[str]:
    return {_fold(n) for n in (value or ())}


def transform(
    ctx: _Executes,
    table: str,
    *,
    add: dict[str, Any] | None = None,
    types: dict[str, Any] | None = None,
    rename: dict[str, str] | None = None,
    drop: Iterable[str] | None = None,
    pk: Any = None,
    not_null: Iterable[str] | dict[str, bool] | None = None,
    defaults: dict[str, Any] | None = None,
    drop_foreign_keys: Iterable[Any] | None = None,
    add_foreign_keys: Iterable[Any] | None = None,
    foreign_keys: Iterable[Any] | None = None,
    column_order: list[str] | None = None,
    strict: bool | None = None,
) -> list[str]:
    """Rebuild ``table`` with the given changes; returns the statements it ran (all recorded in ``ctx``).

    ``add`` adds columns (``{"fee": float}``; with ``not_null`` and ``defaults`` for a NOT NULL column);
    the other arguments are those of sqlite-utils' ``Table.transform()``.
    """
    conn = ctx._conn
    ctx.current = None
    subject = f"db.transform({table!r})"

    def refuse(reason: str) -> RebuildError:
        ctx.current = None
        return RebuildError(f"{subject} refused: {reason}")

    if not ctx.rebuilds_tables:
        raise refuse(f"the migration must declare {REBUILD_ATTRIBUTE} = True, so foreign keys are switched off "
                     "before its transaction starts")
    if conn.execute("PRAGMA foreign_keys").fetchone()[0]:
        raise refuse("foreign keys are on: dropping the old table would fire ON DELETE actions and fail "
                     f"on references (run it through the migration runner, with {REBUILD_ATTRIBUTE} = True)")
    row = conn.execute("SELECT name, type, sql FROM sqlite_master WHERE lower(name) = lower(?) AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
                       (table,)).fetchone()
    if row is None or row[1] != "table":
        raise refuse(f"there is no table {table!r}" + (f" ({table!r} is a {row[1]})" if row else ""))
    name, _, old_sql = row
    subject = f"db.transform({name!r})"
    words = [w for w, quoted in _tokens(old_sql) if not quoted]
    if words[:2] == ["CREATE", "VIRTUAL"]:
        raise refuse("it is a virtual table")
    if any(a == "WITHOUT" and b == "ROWID" for a, b in zip(words, words[1:])):
        raise refuse("it is a WITHOUT ROWID table, which sqlite-utils cannot rebuild; write the rebuild with db.script()")
    old_columns = _xinfo(conn, name)
    generated = [c[0] for c in old_columns if c[5] in (2, 3)]
    if generated:
        raise refuse(f"column {generated[0]!r} is generated, which sqlite-utils would drop; write the rebuild with db.script()")
    if conn.execute("SELECT 1 FROM sqlite_master WHERE lower(name) = lower(?)", (f"{name}_new_{TMP_SUFFIX}",)).fetchone():
        raise refuse(f"a table named {name}_new_{TMP_SUFFIX} already exists")

    add = dict(add or {})
    rename = dict(rename or {})
    drop = list(drop or ())
    existing = {_fold(c[0]): c[0] for c in old_columns}
    for column in [*rename, *drop]:
        if _fold(column) not in existing:
            raise refuse(f"table {name} has no column {column!r}")
    for column in add:
        if _fold(column) in existing:
            raise refuse(f"table {name} already has a column {column!r}")
    if isinstance(not_null, dict):
        wanted_not_null = {_fold(c) for c, v in not_null.items() if v}
    else:
        wanted_not_null = _names(not_null)
    defaults_given = _names(defaults)
    for column in add:
        if _fold(column) in wanted_not_null and _fold(column) not in defaults_given and \
                conn.execute(f"SELECT 1 FROM {quote_ident(name)} LIMIT 1").fetchone():
            raise refuse(f"new NOT NULL column {column!r} needs a default (defaults={{{column!r}: ...}}): "
                         "the existing rows need a value")

    # What uses a column that is dropped or renamed must be rewritten by the migration itself.
    changed = {_fold(c) for c in [*rename, *drop]}
    if changed:
        for kind, obj, sql in conn.execute(
                "SELECT type, name, sql FROM sqlite_master WHERE type IN ('view', 'trigger') ORDER BY rowid"):
            idents = {w for w, _ in _tokens(sql)}
            used = sorted(c for c in changed if c.upper() in idents)
            if _fold(name).upper() in idents and used:
                column = existing[used[0]]
                how = "drops" if _fold(column) in _names(drop) else "renames"
                raise refuse(f"{kind} {obj} uses column {column!r}, which this transform {how}: drop the {kind} "
                             f"before db.transform() and create its new version after")
    db = _database(conn)
    for other in db.table_names():  # the table's own foreign keys too: a self-reference would dangle
        for fk in db[other].foreign_keys:
            if _fold(fk.other_table) == _fold(name) and {_fold(c) for c in fk.other_columns} & changed:
                raise refuse(f"table {other} has a foreign key to {name}({', '.join(fk.other_columns)}), which this "
                             "transform drops or renames: rebuild that table too")

    # SQLite's own schema check must pass before the rebuild, or it cannot vouch for the result.
    problem = _schema_problem(conn)
    if problem:
        raise refuse(f"the schema already fails SQLite's check ({problem}); fix that first")

    triggers = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND lower(tbl_name) = lower(?) ORDER BY rowid",
        (name,)).fetchall()
    old_fks = _fk_keys(db[name])
    old_rows = conn.execute(f"SELECT count(*) FROM {quote_ident(name)}").fetchone()[0]
    verbatim = _database_class().Verbatim

    # Can sqlite-utils reproduce this table at all? Regenerate it unchanged and compare its clauses.
    from sqlite_utils.db import AlterError, TransformError

    def kept_defaults(columns: list[tuple]) -> dict[str, Any]:
        return {c[0]: verbatim(_verbatim_default(c[3])) for c in columns if c[3] is not None}

    try:
        identity = db[name].transform_sql(tmp_suffix=TMP_SUFFIX, defaults=kept_defaults(old_columns))[0]
    except (TransformError, AlterError, ValueError, KeyError) as exc:
        raise refuse(f"sqlite-utils cannot reproduce the table: {exc}") from exc
    before, after = _clause_counts(old_sql), _clause_counts(identity)
    if before != after:
        clauses = ", ".join(sorted((before - after) + (after - before)))
        raise refuse(f"sqlite-utils would not reproduce its {clauses} clause(s) when recreating the table; "
                     "write the rebuild with db.script()")

    executed: list[str] = []

    def run(sql: str) -> None:
        sql = sql.strip().rstrip(";").strip()
        executed.append(sql)
        ctx.execute(sql)

    additions = []
    for column, kind in add.items():
        if _sql_type(kind) is None:
            raise refuse(f"unknown type {kind!r} for new column {column!r} (use str, int, float, bytes or "
                         "'TEXT', 'INTEGER', 'REAL', 'BLOB')")
        default = (defaults or {}).get(column)
        clause = f" DEFAULT {db.quote_default_value(default)}" if default is not None else ""
        additions.append(f"ALTER TABLE {quote_ident(name)} ADD COLUMN {quote_ident(column)} {_sql_type(kind)}{clause}")

    legacy = conn.execute("PRAGMA legacy_alter_table").fetchone()[0]
    try:
        for sql in additions:
            run(sql)
        kept = kept_defaults(_xinfo(conn, name))
        given = {_fold(c) for c in (defaults or {})}
        merged = {c: v for c, v in kept.items() if _fold(c) not in given and _fold(c) not in _names(drop)}
        merged.update(defaults or {})
        options: dict[str, Any] = {"types": types, "rename": rename or None, "drop": drop or None,
                                   "not_null": not_null, "defaults": merged or None,
                                   "drop_foreign_keys": drop_foreign_keys, "add_foreign_keys": add_foreign_keys,
                                   "foreign_keys": foreign_keys, "column_order": column_order, "strict": strict}
        if pk is not None:
            options["pk"] = pk
        if isinstance(not_null, (list, tuple, frozenset)):
            options["not_null"] = set(not_null)  # sqlite-utils takes a set or a dict
        try:
            statements = db[name].transform_sql(tmp_suffix=TMP_SUFFIX, **{k: v for k, v in options.items() if v is not None})
        except (TransformError, AlterError, ValueError, KeyError) as exc:
            raise refuse(f"sqlite-utils: {exc}") from exc
        for sql in statements:
            run(sql)
        for _, sql in triggers:
            run(sql)
    finally:
        if conn.execute("PRAGMA legacy_alter_table").fetchone()[0] != legacy:
            conn.execute(f"PRAGMA legacy_alter_table = {int(legacy)}")
    ctx.current = None

    problem = _schema_problem(conn)
    if problem:
        raise refuse(f"after the rebuild, {problem}: drop what uses the changed columns before db.transform() "
                     "and create its new version after")
    _compare(refuse, conn, db, name, old_columns, old_fks, old_rows,
             add=add, types=types, rename=rename, drop=drop, pk=pk, not_null=not_null, defaults=defaults,
             fk_changes=foreign_keys is not None or add_foreign_keys is not None or drop_foreign_keys is not None,
             strict=strict, old_strict=_clause_counts(old_sql)["STRICT"] > 0)
    return executed


def _sql_type(kind: Any) -> str | None:
    from sqlite_utils.db import COLUMN_TYPE_MAPPING

    try:
        return COLUMN_TYPE_MAPPING.get(kind)
    except TypeError:  # unhashable
        return None


def _schema_problem(conn: sqlite3.Connection) -> str | None:
    """SQLite's own check of every view and trigger (what ALTER TABLE RENAME runs), or None if clean.

    Renaming a table nothing refers to re-resolves the whole schema and rewrites none of it.
    """
    legacy = conn.execute("PRAGMA legacy_alter_table").fetchone()[0]
    if legacy:
        conn.execute("PRAGMA legacy_alter_table = OFF")
    conn.execute(f"CREATE TABLE {_PROBE} (x)")
    try:
        conn.execute(f"ALTER TABLE {_PROBE} RENAME TO {_PROBE}_2")
    except sqlite3.OperationalError as exc:
        return str(exc)
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {_PROBE}")
        conn.execute(f"DROP TABLE IF EXISTS {_PROBE}_2")
        if legacy:
            conn.execute("PRAGMA legacy_alter_table = ON")
    return None


def _compare(refuse, conn: sqlite3.Connection, db: Any, name: str, old_columns: list[tuple], old_fks: set[tuple],
             old_rows: int, *, add: dict, types: dict | None, rename: dict, drop: list, pk: Any,
             not_null: Any, defaults: dict | None, fk_changes: bool, strict: bool | None, old_strict: bool) -> None:
    """The rebuilt table differs from the old one only where asked (what PRAGMAs can show)."""
    new_columns = {_fold(c[0]): c for c in _xinfo(conn, name)}
    renamed = {_fold(k): v for k, v in rename.items()}
    dropped = _names(drop)
    retyped = _names(types)
    nulls = _names(not_null if not isinstance(not_null, dict) else not_null.keys())
    defaulted = _names(defaults)
    expected = [renamed.get(_fold(c[0]), c[0]) for c in old_columns if _fold(c[0]) not in dropped] + list(add)
    if sorted(map(_fold, expected)) != sorted(new_columns):
        raise refuse(f"the rebuilt table has columns {sorted(new_columns)}, expected {sorted(map(_fold, expected))}")
    for old in old_columns:
        key = _fold(old[0])
        if key in dropped:
            continue
        new = new_columns[_fold(renamed.get(key, old[0]))]
        checks = [("type", 1, key in retyped), ("NOT NULL", 2, key in nulls), ("default", 3, key in defaulted),
                  ("primary key", 4, pk is not None), ("hidden", 5, False)]
        for what, index, asked in checks:
            if not asked and old[index] != new[index]:
                raise refuse(f"sqlite-utils changed the {what} of column {old[0]!r} ({old[index]!r} -> {new[index]!r}) "
                             "without being asked; write the rebuild with db.script()")
    if not fk_changes:
        expected_fks = {(tuple(_fold(renamed.get(c, c)) for c in cols), other, others, upd, dele)
                        for cols, other, others, upd, dele in old_fks if not set(cols) & dropped}
        if _fk_keys(db[name]) != expected_fks:
            raise refuse("sqlite-utils changed the table's foreign keys without being asked; write the rebuild with db.script()")
    new_sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
    if strict is None and (_clause_counts(new_sql)["STRICT"] > 0) != old_strict:
        raise refuse("sqlite-utils changed the table's STRICT mode without being asked")
    rows = conn.execute(f"SELECT count(*) FROM {quote_ident(name)}").fetchone()[0]
    if rows != old_rows:
        raise refuse(f"the rebuilt table has {rows} rows, the old one had {old_rows}")
