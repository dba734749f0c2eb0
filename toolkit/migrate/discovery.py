"""Finding migration files and validating them before anything runs.

A migration is a file ``NNN_name.py`` with a module docstring, ``DATABASE = "<logical name>"`` and
two functions, ``upgrade(db)`` and ``downgrade(db)``; ``db`` is a :class:`MigrationContext`. A migration
that rebuilds tables (``db.transform()``) also declares ``REBUILDS_TABLES = True``: the runner then
switches foreign keys off before its transaction and checks them before COMMIT.
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from ..config import DATABASES
from ..db import split_statements
from ..errors import MigrationDefinitionError

__all__ = ["Migration", "MigrationContext", "discover", "FORBIDDEN_IN_MIGRATIONS"]

FILENAME = re.compile(r"^(?P<id>\d{3,})_(?P<name>[a-z0-9][a-z0-9_]*)\.py$")

#: Statements that would end or escape the runner's transaction (and so break atomicity).
FORBIDDEN_IN_MIGRATIONS = ("BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "VACUUM", "ATTACH", "DETACH")
_FORBIDDEN_PRAGMAS = ("journal_mode", "foreign_keys", "locking_mode", "synchronous")


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


def _first_keyword(sql: str) -> str:
    text = sql.lstrip()
    while text.startswith("--") or text.startswith("/*"):
        if text.startswith("--"):
            text = text.split("\n", 1)[1].lstrip() if "\n" in text else ""
        else:
            text = text.split("*/", 1)[1].lstrip() if "*/" in text else ""
    match = re.match(r"[A-Za-z]+", text)
    return match.group(0).upper() if match else ""


class MigrationContext:
    """What a migration's ``upgrade``/``downgrade`` receives: statements run inside the runner's
    transaction, and each statement is recorded (for ``--dry-run`` and for error messages)."""

    def __init__(self, conn: sqlite3.Connection, database: str, *, rebuilds_tables: bool = False) -> None:
        self._conn = conn
        self.database = database
        self.rebuilds_tables = rebuilds_tables
        self.statements: list[str] = []
        self.current: str | None = None

    def execute(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> sqlite3.Cursor:
        """Run one statement in the migration's transaction."""
        keyword = _first_keyword(sql)
        self.current = sql
        self.statements.append(sql)
        if keyword in FORBIDDEN_IN_MIGRATIONS:
            raise sqlite3.OperationalError(
                f"{keyword} is not allowed in a migration: the runner owns the transaction"
            )
        if keyword == "PRAGMA" and any(p in sql.lower() for p in _FORBIDDEN_PRAGMAS):
            raise sqlite3.OperationalError("this PRAGMA cannot take effect inside the migration's transaction")
        return self._conn.execute(sql, params)

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
