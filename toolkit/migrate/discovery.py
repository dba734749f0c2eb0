"""Finding migration files and validating them before anything runs.

A migration is a file ``NNN_name.py`` with a module docstring, ``DATABASE = "<logical name>"`` and
two functions, ``upgrade(db)`` and ``downgrade(db)``; ``db`` is a :class:`MigrationContext`. A migration
that rebuilds tables (``db.transform()``) also declares ``REBUILDS_TABLES = True``: the runner then
switches foreign keys off before its transaction and checks them before COMMIT.

The runner owns each migration's transaction. While a migration's code runs, SQLite's authorizer on
its connection (:func:`refusal`) refuses whatever would end, escape or outlive that transaction —
BEGIN, COMMIT/END, ROLLBACK, SAVEPOINT, RELEASE, ATTACH, DETACH and PRAGMA writes other than
:data:`MIGRATION_PRAGMA_WRITES` — however the statement is spelled; VACUUM, which SQLite never shows
the authorizer, is refused from the parsed statement. A migration that goes around the authorizer
anyway is caught afterwards by :class:`TransactionWatch`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ..config import DATABASES
from ..db import PRAGMA_READS_WITH_ARGUMENT, atomic, split_statements, table_hashes
from ..errors import MigrationDefinitionError, ToolkitError

__all__ = ["Migration", "MigrationContext", "discover", "FORBIDDEN_IN_MIGRATIONS", "MIGRATION_PRAGMA_WRITES",
           "RefusedStatement", "TransactionEscaped", "MigrationInterrupted", "TransactionWatch", "refusal"]

FILENAME = re.compile(r"^(?P<id>\d{3,})_(?P<name>[a-z0-9][a-z0-9_]*)\.py$")

#: Statements that would end or escape the runner's transaction (and so break atomicity). SQLite's
#: authorizer refuses them whatever their spelling; VACUUM, which it never shows, is refused by parsing.
FORBIDDEN_IN_MIGRATIONS = ("BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "VACUUM", "ATTACH", "DETACH")
#: Settings of the connection a migration may change: the runner puts them back after its code
#: (``db.transform`` needs legacy_alter_table).
_RESTORED_PRAGMAS = ("legacy_alter_table", "max_page_count")
#: The PRAGMAs a migration may set. Every other PRAGMA write is a setting of the connection or the file
#: that would outlive or escape the transaction (journal_mode, foreign_keys, synchronous, locking_mode,
#: wal_checkpoint, writable_schema...). These roll back with it (user_version, application_id), end with
#: it (defer_foreign_keys) or are put back by the runner afterwards (:data:`_RESTORED_PRAGMAS`).
MIGRATION_PRAGMA_WRITES = frozenset({"defer_foreign_keys", "user_version", "application_id", *_RESTORED_PRAGMAS})
#: PRAGMAs that act even without an argument (a checkpoint, an incremental vacuum).
_ACTING_PRAGMAS = frozenset({"wal_checkpoint", "incremental_vacuum"})
_OWNED = "the runner owns the transaction (it commits each migration together with its record, or rolls it back)"
_VACUUM = ("VACUUM is refused in a migration: it cannot run inside the runner's transaction (it rewrites the "
           "whole file); run it on its own, outside `migrate`")
_MARKER = "_toolkit_transaction_marker"


class RefusedStatement(ToolkitError):
    """A statement a migration may not run: it would end, escape or outlive the runner's transaction."""


class TransactionEscaped(ToolkitError):
    """A migration's code ended the runner's transaction (going around the authorizer)."""


class MigrationInterrupted(KeyboardInterrupt):
    """A KeyboardInterrupt inside a migration, once the migration is rolled back; ``message`` names it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def refusal(action: int, arg1: str | None, arg2: str | None, database: str | None, source: str | None) -> str | None:
    """The authorizer's decision while a migration's code runs: None to allow, else why not."""
    if action == sqlite3.SQLITE_TRANSACTION:
        verb = (arg1 or "").upper()
        return f"{'COMMIT/END' if verb == 'COMMIT' else verb} is refused in a migration: {_OWNED}"
    if action == sqlite3.SQLITE_SAVEPOINT:
        verb = {"BEGIN": "SAVEPOINT", "ROLLBACK": "ROLLBACK TO"}.get((arg1 or "").upper(), (arg1 or "").upper())
        return f"{verb} {arg2} is refused in a migration: {_OWNED}"
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return ("ATTACH/DETACH is refused in a migration: a migration changes its own database, inside the "
                "runner's transaction")
    if action == sqlite3.SQLITE_PRAGMA:
        name = (arg1 or "").lower()
        if name in _ACTING_PRAGMAS or (arg2 is not None and name not in PRAGMA_READS_WITH_ARGUMENT
                                       and name not in MIGRATION_PRAGMA_WRITES):
            shown = f"PRAGMA {name}" + (f" = {arg2}" if arg2 is not None else "")
            extra = ("; declare REBUILDS_TABLES = True and the runner switches foreign keys off around the "
                     "migration's transaction") if name == "foreign_keys" else ""
            return (f"{shown} is refused in a migration: it would outlive or escape the runner's transaction (a "
                    f"migration may set only {', '.join(sorted(MIGRATION_PRAGMA_WRITES))}){extra}")
    return None


@dataclass(frozen=True)
class Migration:
    id: str
    name: str
    database: str
    path: Path
    description: str
    checksum: str
    source: str
    upgrade: Callable[["MigrationContext"], object] = field(repr=False, compare=False)
    downgrade: Callable[["MigrationContext"], object] = field(repr=False, compare=False)
    #: ``REBUILDS_TABLES = True`` in the module: foreign keys off around its transaction (see rebuild.py).
    rebuilds_tables: bool = False

    @property
    def label(self) -> str:
        return f"{self.id}_{self.name}"

    @property
    def number(self) -> int:
        return int(self.id)


def checksum_of(text: str) -> str:
    """SHA-256 of a migration's text with line endings normalised (a CRLF checkout is not drift)."""
    return hashlib.sha256(text.replace("\r\n", "\n").encode("utf-8")).hexdigest()


_SKIPPED = " \ufeff;\t\n\r\f\v"


def _past_comments(sql: str) -> str:
    """The text from a statement's first word on, past what SQLite skips before it: whitespace, a
    byte-order mark, comments and empty statements (``;``)."""
    text = sql.lstrip(_SKIPPED)
    while text.startswith("--") or text.startswith("/*"):
        if text.startswith("--"):
            text = text.split("\n", 1)[1] if "\n" in text else ""
        else:
            text = text.split("*/", 1)[1] if "*/" in text else ""
        text = text.lstrip(_SKIPPED)
    return text


def _first_keyword(sql: str) -> str:
    match = re.match(r"[A-Za-z]+", _past_comments(sql))
    return match.group(0).upper() if match else ""


def _screen(sql: str) -> None:
    """What the authorizer cannot refuse: VACUUM (SQLite never shows it the statement), and statements
    after the first in one call (sqlite3 compiles only the first, so a COMMIT there is never authorized)."""
    statements = [s for s in split_statements(sql) if _past_comments(s)]
    if any(_first_keyword(s) == "VACUUM" for s in statements):
        raise RefusedStatement(_VACUUM)
    if len(statements) > 1:
        shown = ", ".join(f"`{' '.join(s.split())[:60]}`" for s in statements[:3])
        raise RefusedStatement(f"db.execute runs one statement, this call holds {len(statements)} ({shown}); "
                               "use db.script() for several")


def refused_reason(ctx: "MigrationContext", exc: BaseException) -> str | None:
    """Why SQLite refused a statement of a migration, when it was the runner's rule: the authorizer's
    reason, or VACUUM (which SQLite refuses inside any transaction)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return None
    if ctx.denial and "not authorized" in str(exc):
        return ctx.denial
    if "cannot vacuum" in str(exc).lower():
        return _VACUUM
    return None


class MigrationContext:
    """What a migration's ``upgrade``/``downgrade`` receives: statements run inside the runner's
    transaction, and each statement is recorded (for ``--dry-run`` and for error messages)."""

    def __init__(self, conn: sqlite3.Connection, database: str, *, rebuilds_tables: bool = False) -> None:
        self._conn = conn
        self.database = database
        self.rebuilds_tables = rebuilds_tables
        self.statements: list[str] = []
        self.current: str | None = None
        #: The authorizer's last refusal (also of a statement run on the connection directly).
        self.denial: str | None = None

    def authorize(self, action: int, arg1: str | None, arg2: str | None, database: str | None, source: str | None) -> int:
        reason = refusal(action, arg1, arg2, database, source)
        if reason is None:
            return sqlite3.SQLITE_OK
        self.denial = reason
        return sqlite3.SQLITE_DENY

    def execute(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> sqlite3.Cursor:
        """Run one statement in the migration's transaction."""
        self.current = sql
        self.statements.append(sql)
        _screen(sql)
        self.denial = None
        try:
            return self._conn.execute(sql, params)
        except sqlite3.DatabaseError as exc:
            refused = refused_reason(self, exc)
            if refused:
                raise RefusedStatement(refused) from exc
            raise

    def script(self, sql: str) -> None:
        """Run several statements (split safely; never ``executescript``, which would commit)."""
        for statement in split_statements(sql):
            self.execute(statement)

    def query(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> list[tuple]:
        """Read rows (for data migrations)."""
        return self.execute(sql, params).fetchall()

    def executescript(self, *_: object, **__: object) -> None:
        raise sqlite3.OperationalError("executescript commits the open transaction; use db.script()")

    def transform(self, table: str, **changes: Any) -> list[str]:
        """Rebuild ``table`` with ``changes`` (SQLite's table-rebuild procedure, statements from
        sqlite-utils' ``Table.transform_sql()``): ``add={"fee": float}``, ``types={"qty": int}``,
        ``rename={"old": "new"}``, ``drop=["col"]``, ``not_null={"fee"}``, ``defaults={"fee": 0}``,
        ``pk``, ``column_order``, ``add_foreign_keys``, ``drop_foreign_keys``, ``foreign_keys``,
        ``strict``. Indexes and triggers are recreated, views keep working, and anything the rebuild
        would change beyond what was asked is refused. Needs ``REBUILDS_TABLES = True`` in the module.
        Returns the statements it ran (they are also recorded like every other statement).
        """
        from .rebuild import transform

        return transform(self, table, **changes)


class TransactionWatch:
    """Runs a migration's code under the authorizer, then proves its transaction is still the runner's.

    Created inside the runner's transaction, before the migration's code runs, it

    - rewrites ``user_version`` with its own value, so the transaction has changed page 1 and any
      COMMIT, however early, changes the file;
    - writes a marker row (a random token) into a TEMP table: a ROLLBACK takes it away;
    - when the database is a file, reads ``PRAGMA data_version`` on a second, read-only connection,
      which changes when any other connection commits to the file, and (WAL) holds a third one on
      the committed state, to name what an escape committed.

    After the code: the transaction must be open, the marker there and the file's data_version unchanged.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path | None) -> None:
        self.conn = conn
        import secrets  # only when a migration runs: `migrate status` starts without it

        self.token = secrets.token_hex(16)
        self.verdict: str | None = None
        self.committed = False
        self._readers = ExitStack()
        self._observer: sqlite3.Connection | None = None
        self._before: sqlite3.Connection | None = None
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_MARKER} (token TEXT NOT NULL)")
        conn.execute(f"INSERT INTO temp.{_MARKER} (token) VALUES (?)", (self.token,))
        self.settings = {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in _RESTORED_PRAGMAS}
        if path is None or not path.is_file():
            return
        try:
            self._observer = self._reader(path)
            self._version = self._observer.execute("PRAGMA data_version").fetchone()[0]
            if str(self._observer.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                self._before = self._reader(path)  # a reader in rollback-journal mode would block COMMIT
                self._readers.enter_context(atomic(self._before, mode="DEFERRED"))
                self._before.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except BaseException:
            self.close()
            raise

    def _reader(self, path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
        self._readers.callback(conn.close)
        return conn

    def run(self, body: Callable[["MigrationContext"], object], ctx: "MigrationContext") -> None:
        """``body(ctx)`` with the authorizer installed; afterwards the authorizer is removed, the
        connection's settings put back, and :attr:`verdict` says whether the transaction survived.
        Raises :class:`TransactionEscaped` if it did not (and ``body`` raised nothing)."""
        self.conn.set_authorizer(ctx.authorize)
        try:
            body(ctx)
        finally:
            self._restore()
        if self.verdict:
            raise TransactionEscaped(self.verdict)

    def _restore(self) -> None:
        try:
            self.conn.set_authorizer(None)
            for name, value in self.settings.items():
                if self.conn.execute(f"PRAGMA {name}").fetchone()[0] != value:
                    self.conn.execute(f"PRAGMA {name} = {int(value)}")
        except sqlite3.ProgrammingError:
            pass  # the migration closed the connection: the check says so
        self.verdict = self._check()

    def _check(self) -> str | None:
        try:
            self.committed = self._observer is not None and \
                self._observer.execute("PRAGMA data_version").fetchone()[0] != self._version
        except sqlite3.Error:
            self.committed = True  # cannot tell: never claim otherwise
        try:
            if not self.conn.in_transaction:
                return "the runner's transaction ended while its code ran"
            marked = self.conn.execute(f"SELECT count(*) FROM temp.{_MARKER} WHERE token = ?", (self.token,)).fetchone()[0]
        except sqlite3.ProgrammingError:
            return "its code closed the runner's connection"
        except sqlite3.Error:
            marked = 0
        if not marked:
            return "its code rolled the runner's transaction back (or removed the runner's marker) and went on in another"
        if self.committed:
            return "its code committed the runner's transaction and went on in another"
        self.conn.execute(f"DELETE FROM temp.{_MARKER} WHERE token = ?", (self.token,))
        return None

    def changes(self) -> str:
        """What the escape committed, by comparing the file's committed state before the migration
        with now (tables and schema objects named). Call once the runner has rolled back."""
        if not self.committed:
            return "nothing was committed"
        if self._before is None or self._observer is None:
            return "changes were committed to the file outside the runner's transaction"
        listed = _objects(self._before), _objects(self._observer)
        rows = table_hashes(self._before), table_hashes(self._observer)
        found = [f"{kind} {name} created" for kind, name in sorted(listed[1].keys() - listed[0].keys())]
        found += [f"{kind} {name} dropped" for kind, name in sorted(listed[0].keys() - listed[1].keys())]
        found += [f"{kind} {name} redefined" for kind, name in sorted(listed[0].keys() & listed[1].keys())
                  if listed[0][kind, name] != listed[1][kind, name]]
        found += [f"rows of {name} changed" for name in sorted(rows[0].keys() & rows[1].keys() - {"<schema>"})
                  if rows[0][name] != rows[1][name]]
        if not found:
            return "a commit happened, but no table or schema content of the file changed"
        more = f" and {len(found) - 6} more" if len(found) > 6 else ""
        return f"committed outside the runner's transaction, and not undone: {', '.join(found[:6])}{more}"

    def close(self) -> None:
        self._readers.close()


def _objects(conn: sqlite3.Connection) -> dict[tuple[str, str], str | None]:
    return {(kind, name): sql for kind, name, sql in conn.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
        "AND tbl_name NOT LIKE '\\_toolkit\\_%' ESCAPE '\\'")}


def _load(path: Path, mid: str) -> ModuleType:
    module_name = f"_toolkit_migration_{mid}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - only for unreadable paths
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(module_name, None)
    return module


def _docstring(module: ModuleType) -> str:
    return (module.__doc__ or "").strip()


def _takes_one_argument(func: Callable) -> bool:
    code = getattr(func, "__code__", None)
    if code is None:
        return True  # a callable object: trust it
    positional = code.co_argcount
    required = positional - len(getattr(func, "__defaults__", None) or ())
    return required <= 1 <= positional or bool(code.co_flags & 0x04)  # 0x04: *args


def _problems_of(path: Path, module: ModuleType) -> list[str]:
    problems = []
    doc = _docstring(module)
    if not doc:
        problems.append("has no module docstring (its first line is the migration's description)")
    database = getattr(module, "DATABASE", None)
    if database not in DATABASES:
        problems.append(f"DATABASE must be one of {', '.join(DATABASES)}, got {database!r}")
    for fn in ("upgrade", "downgrade"):
        func = getattr(module, fn, None)
        if not callable(func):
            problems.append(f"has no {fn}(db) function")
            continue
        if not _takes_one_argument(func):
            problems.append(f"{fn} must take exactly one argument (db)")
    rebuilds = getattr(module, "REBUILDS_TABLES", False)
    if not isinstance(rebuilds, bool):
        problems.append(f"REBUILDS_TABLES must be True or False, got {rebuilds!r}")
    return problems


def discover(directories: Iterable[Path]) -> list[Migration]:
    """All migrations in ``directories``, sorted by id; refuses malformed files and duplicate ids.

    Every problem is collected first, then one error names them all, so nothing has run.
    """
    found: list[Migration] = []
    problems: list[str] = []
    seen: dict[str, Path] = {}
    for directory in directories:
        if not directory.is_dir():
            problems.append(f"{directory}: migrations directory does not exist")
            continue
        for path in sorted(directory.glob("*.py")):
            if path.name == "__init__.py" or path.name.startswith("_"):
                continue
            match = FILENAME.match(path.name)
            if not match:
                problems.append(f"{path}: malformed migration file name (expected NNN_name.py, e.g. 006_add_index.py)")
                continue
            mid = match["id"]
            if mid in seen:
                problems.append(f"{path}: duplicate migration id {mid} (also {seen[mid]})")
                continue
            seen[mid] = path
            try:
                source = path.read_text(encoding="utf-8")
                module = _load(path, mid)
            except SyntaxError as exc:
                problems.append(f"{path}:{exc.lineno}: Python syntax error: {exc.msg}")
                continue
            except Exception as exc:  # a migration that fails on import is malformed
                problems.append(f"{path}: fails to load: {type(exc).__name__}: {exc}")
                continue
            bad = _problems_of(path, module)
            if bad:
                problems.extend(f"{path}: {p}" for p in bad)
                continue
            found.append(
                Migration(
                    id=mid,
                    name=match["name"],
                    database=module.DATABASE,
                    path=path,
                    description=_docstring(module).splitlines()[0],
                    checksum=checksum_of(source),
                    source=source,
                    upgrade=module.upgrade,
                    downgrade=module.downgrade,
                    rebuilds_tables=getattr(module, "REBUILDS_TABLES", False),
                )
            )
    if problems:
        more = f" (and {len(problems) - 1} more problem(s): {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise MigrationDefinitionError(
            f"{problems[0]}{more}", hint="fix the migration file(s); nothing has been run"
        )
    numbers: dict[int, str] = {}
    for m in found:
        if m.number in numbers:
            raise MigrationDefinitionError(
                f"{m.path}: migration id {m.id} has the same number as {numbers[m.number]}",
                hint="give each migration a distinct number; nothing has been run",
            )
        numbers[m.number] = m.label
    return sorted(found, key=lambda m: m.number)
