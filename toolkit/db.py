"""Connections, explicit transactions, attaching the databases, and a logical content hash.

Every connection is opened with ``isolation_level=None``: Python never begins or commits on our
behalf, and every transaction in the toolkit is opened by :func:`atomic` (``BEGIN IMMEDIATE`` or a
``SAVEPOINT`` when nested).
Writable connections use WAL, ``synchronous=NORMAL``, ``foreign_keys=ON`` and a busy timeout.
Read-only connections never write anything, not even on a read-only snapshot (see
:func:`read_only_uri`).
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import DatabaseBusyError, DatabaseFileError, ToolkitError

__all__ = [
    "PRAGMA_READS_WITH_ARGUMENT",
    "atomic",
    "connect",
    "open_databases",
    "transaction",
    "savepoint",
    "split_statements",
    "translate_error",
    "is_read_only",
    "nobody_writes",
    "is_wal_file",
    "read_only_uri",
    "check_file",
    "quick_check",
    "content_hash",
    "table_hashes",
    "user_tables",
    "quote_ident",
]

#: PRAGMAs that take an argument but only read (the authorizer shows it as a value).
PRAGMA_READS_WITH_ARGUMENT = frozenset({
    "table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list",
    "foreign_key_check", "integrity_check", "quick_check", "table_list", "pragma_list", "function_list",
    "module_list", "collation_list", "database_list", "compile_options",
})

RESTORE_HINT = "restore a backup with `migrate restore`, or move the file aside"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def is_read_only(path: Path) -> bool:
    """True when the file is marked read-only. Mode bits count even for root, who bypasses them."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not (mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) or not os.access(path, os.W_OK)


def nobody_writes(path: Path) -> bool:
    """True when nobody can write ``path``: its mode bits grant write permission to no one (root
    aside, who bypasses them and whom the toolkit's own writers refuse too), or its file system is
    mounted read-only. Unlike :func:`is_read_only`, a file that only this user cannot write does
    not count: its owner may be writing it."""
    try:
        if not os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            return True
        return bool(os.statvfs(path).f_flag & getattr(os, "ST_RDONLY", 1))
    except (OSError, AttributeError):
        return False


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None
    except OSError:
        return 1  # there, but unreadable: treat it as holding something


def read_only_uri(path: Path) -> str:
    """The URI a read-only connection opens ``path`` with, so that reading never writes anything.

    ``mode=ro`` by default. On a read-only snapshot (:func:`nobody_writes` the file or its
    directory) SQLite could not create the ``-wal``/``-shm`` files a WAL database needs (and root,
    who could, must not write into a snapshot), so:

    - no ``-wal`` content (and no ``-shm`` a live writer would be using): ``immutable=1`` — no
      locks, no ``-shm``, no ``-wal``. Safe because nobody can write the file; an immutable open
      would ignore a ``-wal``, which is why one with content rules it out.
    - a ``-wal`` and its ``-shm``: ``mode=ro`` with the ``-shm`` only read (``readonly_shm=1``,
      SQLite keeps the wal-index in memory), so the commits in the ``-wal`` are read too.
    - a ``-wal`` with content but no ``-shm`` in a read-only directory: refused, naming the file
      (SQLite cannot read that log without creating the ``-shm``).
    """
    uri = path.resolve().as_uri() + "?mode=ro"
    directory_frozen = nobody_writes(path.parent)
    if not (directory_frozen or nobody_writes(path)):
        return uri
    if _size(f"{path}-journal"):
        return uri  # a hot rollback journal: SQLite must see it (and says so if it cannot roll it back)
    wal, shm = _size(f"{path}-wal"), _size(f"{path}-shm") is not None
    if not wal and (wal is None or not shm):
        return uri + "&immutable=1"
    if shm:
        return uri + "&readonly_shm=1"
    if directory_frozen:
        raise DatabaseFileError(
            path, f"has a write-ahead log ({path.name}-wal) but no {path.name}-shm, in a read-only directory: "
                  "SQLite cannot read it without writing",
            hint="take the snapshot with its -shm file (or checkpoint the database first), or copy it somewhere writable")
    return uri


def is_wal_file(path: Path) -> bool:
    """Whether the file's header says WAL mode (read and write versions 2): the journal mode an
    immutable connection cannot report (it says ``delete``)."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18] == 2 and header[19] == 2


def check_file(path: Path, *, must_exist: bool = True, writable: bool = False) -> bool:
    """Refuse paths that cannot be a database before SQLite does something surprising with them.

    Returns whether the file exists.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if must_exist:
            raise DatabaseFileError(path, "does not exist", hint="run `migrate upgrade` to create the databases") from None
        return False
    except OSError as exc:
        raise DatabaseFileError(path, f"cannot be examined ({exc.strerror or exc})", hint="check the path and its permissions") from exc
    if stat.S_ISDIR(mode):
        raise DatabaseFileError(path, "is a directory, not a database file", hint="point --data-dir at the directory that holds it")
    if not stat.S_ISREG(mode):
        # SQLite would block forever opening a FIFO, or read a device: refuse before it touches it.
        raise DatabaseFileError(path, "is not a regular file (a FIFO, a socket or a device)",
                                hint="move it aside; a database is a regular file")
    if writable and is_read_only(path):
        raise DatabaseFileError(path, "is read-only", hint="make it writable (chmod u+w) and run the command again")
    return True


def translate_error(exc: sqlite3.Error, path: object, *, action: str = "") -> ToolkitError:
    """Map an sqlite3 error to a toolkit error naming the file and the next step."""
    text = str(exc)
    lowered = text.lower()
    where = f" while {action}" if action else ""
    if "file is not a database" in lowered:
        return DatabaseFileError(path, "is not an SQLite database", hint=RESTORE_HINT)
    if "malformed" in lowered or "corrupt" in lowered:
        return DatabaseFileError(path, f"is corrupt ({text}){where}", hint=RESTORE_HINT)
    if "database is locked" in lowered or "database table is locked" in lowered:
        return DatabaseBusyError(
            f"{path}: locked by another connection{where}",
            hint="retry when the other writer has finished, or raise --busy-timeout",
        )
    if "readonly" in lowered or "read-only" in lowered:
        return DatabaseFileError(path, f"is read-only{where}", hint="make it writable and run the command again")
    if "disk is full" in lowered or "database or disk is full" in lowered:
        return DatabaseFileError(path, f"disk full{where}", hint="free space (or raise max_page_count) and run the command again")
    if "unable to open" in lowered:
        return DatabaseFileError(path, f"cannot be opened ({text})", hint="check the path and its permissions")
    return DatabaseFileError(path, f"{text}{where}")


def _opening_error(exc: sqlite3.Error, path: Path, *, readonly: bool, action: str) -> ToolkitError:
    """:func:`translate_error`, but a read-only open that SQLite refuses because it would have to
    create the ``-shm``/``-wal`` files in a directory this user cannot write (files someone else
    owns, and may be writing, so they cannot be opened immutable) says that, not "make it writable"."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if readonly and name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")) and is_read_only(path.parent):
        return DatabaseFileError(
            path, f"cannot be read by this user: SQLite must create its {path.name}-shm beside it and the "
                  "directory is not writable (its owner may be writing the file)",
            hint="run as the owner, or check a read-only snapshot (a copy made with chmod -R a-w, or a read-only mount)")
    return translate_error(exc, path, action=action)


def _apply_pragmas(conn: sqlite3.Connection, busy_timeout: float, *, writable: bool, schema: str = "main") -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    if writable:
        mode = conn.execute(f"PRAGMA {schema}.journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            conn.execute(f"PRAGMA {schema}.journal_mode = WAL")
        conn.execute(f"PRAGMA {schema}.synchronous = NORMAL")


def connect(
    path: str | os.PathLike[str],
    *,
    readonly: bool = False,
    create: bool = False,
    busy_timeout: float = 5.0,
    factory: type[sqlite3.Connection] = sqlite3.Connection,
) -> sqlite3.Connection:
    """Open one database file with the toolkit's pragmas and explicit transactions.

    ``create`` allows a missing file to be created (only `migrate upgrade` and the ledger writer's
    set-up do that). Errors name the file: a directory, a missing file, a non-SQLite or corrupt file.
    """
    path = Path(path)
    existed = check_file(path, must_exist=not create, writable=not readonly)
    if readonly:
        target, uri = read_only_uri(path), True
    else:
        target, uri = str(path), False
    try:
        conn = sqlite3.connect(target, isolation_level=None, uri=uri, timeout=busy_timeout, factory=factory)
    except sqlite3.Error as exc:
        raise _opening_error(exc, path, readonly=readonly, action="opening") from exc
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        _apply_pragmas(conn, busy_timeout, writable=not readonly)
    except sqlite3.Error as exc:
        conn.close()
        if not existed and path.exists() and path.stat().st_size == 0:
            path.unlink()
        raise _opening_error(exc, path, readonly=readonly, action="opening") from exc
    return conn


def open_databases(
    paths: dict[str, Path],
    *,
    readonly: bool = True,
    busy_timeout: float = 5.0,
    factory: type[sqlite3.Connection] = sqlite3.Connection,
    cache_kib: int | None = None,
) -> sqlite3.Connection:
    """One connection with every database attached under its logical name (``trading.trades``).

    The main schema is an empty in-memory database, so rules can join across files.
    """
    conn = sqlite3.connect(":memory:", isolation_level=None, uri=True, timeout=busy_timeout, factory=factory)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        for name, path in paths.items():
            check_file(path, must_exist=True, writable=not readonly)
            target = read_only_uri(path) if readonly else path.resolve().as_uri()
            try:
                conn.execute(f"ATTACH DATABASE ? AS {quote_ident(name)}", (target,))
                conn.execute(f"SELECT count(*) FROM {quote_ident(name)}.sqlite_master").fetchone()
                if not readonly:
                    _apply_pragmas(conn, busy_timeout, writable=True, schema=quote_ident(name))
                if cache_kib:
                    conn.execute(f"PRAGMA {quote_ident(name)}.cache_size = -{int(cache_kib)}")
            except sqlite3.Error as exc:
                raise _opening_error(exc, path, readonly=readonly, action="attaching") from exc
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def atomic(conn: sqlite3.Connection, savepoint: str | None = None, *, mode: str = "IMMEDIATE",
           path: object = None, action: str = "") -> Iterator[sqlite3.Connection]:
    """The toolkit's one way into a unit of work: ``BEGIN <mode>`` … ``COMMIT`` outside a transaction,
    ``SAVEPOINT`` … ``RELEASE`` inside one (``savepoint`` names it). Any exception — KeyboardInterrupt
    included — rolls the unit back (``ROLLBACK`` / ``ROLLBACK TO`` + ``RELEASE``, only while the
    transaction is still open) and propagates. SQLite errors while beginning are reported naming
    ``path`` and ``action`` when given.
    """
    if mode not in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE"):
        raise ValueError(f"unknown transaction mode {mode!r}")
    nested = conn.in_transaction
    ident = quote_ident(savepoint or "atomic")
    try:
        conn.execute(f"SAVEPOINT {ident}" if nested else f"BEGIN {mode}")
    except sqlite3.Error as exc:
        if path is None:
            raise
        raise translate_error(exc, path, action=action or "starting a transaction") from exc
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            if nested:
                conn.execute(f"ROLLBACK TO {ident}")
                conn.execute(f"RELEASE {ident}")
            else:
                conn.execute("ROLLBACK")
        raise
    conn.execute(f"RELEASE {ident}" if nested else "COMMIT")


@contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """A top-level transaction through :func:`atomic` (refuses to nest: use a savepoint for that)."""
    if conn.in_transaction:
        raise ToolkitError("a transaction is already open on this connection", hint="use db.atomic() to nest a savepoint")
    with atomic(conn, mode=mode):
        yield conn


@contextmanager
def savepoint(conn: sqlite3.Connection, name: str) -> Iterator[sqlite3.Connection]:
    """A named nested unit of work through :func:`atomic` (a transaction of its own outside one)."""
    with atomic(conn, name):
        yield conn


def split_statements(script: str) -> list[str]:
    """Split an SQL script into complete statements (trigger bodies and string literals respected).

    ``executescript`` is never used: it commits any open transaction first.
    """
    statements: list[str] = []
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            stmt = buffer.strip()
            if stmt.strip("; \t\r\n"):
                statements.append(stmt.rstrip(";").strip())
            buffer = ""
    if buffer.strip("; \t\r\n"):
        statements.append(buffer.rstrip(";").strip())
    return statements


def quick_check(conn: sqlite3.Connection, schema: str = "main") -> list[str]:
    """``PRAGMA quick_check`` lines other than ``ok`` (physical damage and constraint failures)."""
    rows = conn.execute(f"PRAGMA {quote_ident(schema)}.quick_check").fetchall()
    # One row may hold many problems, one per line, under a "*** in database main ***" heading:
    # return one problem per item, so callers can show the first on a single line.
    problems = []
    for (text,) in rows:
        for line in str(text).splitlines():
            line = line.strip()
            if line and line != "ok" and not (line.startswith("*** in database") and line.endswith("***")):
                problems.append(line)
    return problems


def user_tables(conn: sqlite3.Connection, schema: str = "main", *, include_internal: bool = False) -> list[tuple[str, bool]]:
    """(name, without_rowid) for each table in ``schema``, sorted; toolkit bookkeeping excluded."""
    rows = conn.execute(
        f"SELECT name, sql FROM {quote_ident(schema)}.sqlite_master WHERE type = 'table' ORDER BY name"
    ).fetchall()
    tables = []
    for name, sql in rows:
        if name.startswith("sqlite_") or (not include_internal and name.startswith("_toolkit_")):
            continue
        tables.append((name, "WITHOUT ROWID" in (sql or "").upper()))
    return tables


def _order_by(conn: sqlite3.Connection, schema: str, table: str, without_rowid: bool) -> str:
    if not without_rowid:
        return "_rowid_"
    info = conn.execute(f"PRAGMA {quote_ident(schema)}.table_info({quote_ident(table)})").fetchall()
    pk = [quote_ident(r[1]) for r in sorted(info, key=lambda r: r[5]) if r[5]]
    return ", ".join(pk)


def table_hashes(conn: sqlite3.Connection, schema: str = "main") -> dict[str, str]:
    """SHA-256 of every user table's rows (in key order) and of the schema, by name.

    Values are hashed through ``repr`` of typed values, so 1 and 1.0 and '1' differ. Toolkit
    bookkeeping tables (``_toolkit_*``) are excluded: they record operations, not content.
    """
    result: dict[str, str] = {}
    ident = quote_ident(schema)
    digest = hashlib.sha256()
    for row in conn.execute(
        f"SELECT type, name, tbl_name, sql FROM {ident}.sqlite_master "
        "WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND tbl_name NOT LIKE '\\_toolkit\\_%' ESCAPE '\\' "
        "ORDER BY type, name"
    ):
        digest.update(repr(row).encode())
    result["<schema>"] = digest.hexdigest()
    for table, without_rowid in user_tables(conn, schema):
        digest = hashlib.sha256()
        order = _order_by(conn, schema, table, without_rowid)
        cursor = conn.execute(f"SELECT * FROM {ident}.{quote_ident(table)} ORDER BY {order}")
        while True:
            rows = cursor.fetchmany(4096)
            if not rows:
                break
            digest.update(repr(rows).encode())
        result[table] = digest.hexdigest()
    return result


def content_hash(conn: sqlite3.Connection, schema: str = "main") -> str:
    """One logical hash of a database's schema and every table's content."""
    digest = hashlib.sha256()
    for name, value in sorted(table_hashes(conn, schema).items()):
        digest.update(f"{name}={value}\n".encode())
    return digest.hexdigest()

