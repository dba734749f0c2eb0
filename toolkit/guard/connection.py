"""The guarded connection a bot opens its databases with, and the rollback-only session.

Guardrails (``connect_guarded``):

- an SQLite authorizer (``toolkit.guard.policy.guard_decision``): PRAGMA writes only from an
  allowlist; no ATTACH/DETACH (so no VACUUM); no DDL; the trade ledger and the positions projection
  are written only inside ``conn.trusted(...)`` (the trade writer, repairs), and even there ledger
  rows are never deleted and executed columns never updated;
- row-level invariants as TEMP triggers (:class:`~toolkit.domain.Guard`): the ledger's own by
  default (an opening leg with P&L, a trade without run id or with an implausible ticker), and
  whatever else the caller passes — the integrity rules declare one for each breach they detect
  (equity that is not cash + long − short, order fields that disagree with fills, unsafe Q-table
  keys...). TEMP triggers live on this connection only: the files' schema never changes;
- foreign keys enforced; ``executescript`` refused (it commits an open transaction first).

A refusal raises :class:`~toolkit.errors.GuardrailViolation` naming the statement and the reason.

The rollback-only session (``rollback_only``) opens one transaction that can only end in ROLLBACK:
COMMIT, END, a full ROLLBACK, RELEASE of its outer savepoint, ATTACH/DETACH, VACUUM, PRAGMA writes,
``commit()``, ``executescript`` and replacing the authorizer are refused while it is open; it rolls
back on every exit (normal, exception, KeyboardInterrupt), and afterwards proves the content of every
attached database unchanged (a logical hash of each table and the schema). A process killed inside
it leaves nothing either: nothing was ever committed. Closing the connection inside the session is
an error (:class:`SessionConnectionClosed`) raised when the session ends, after the same proof.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DATABASES, Settings, load_settings
from ..backend import backend_for
from ..db import open_databases, table_hashes
from ..domain import LEDGER_GUARDS
from ..errors import GuardrailViolation, IsolationBreach, ToolkitError
from ..domain import Guard
from .policy import guard_decision, session_decision

__all__ = ["GuardedConnection", "connect_guarded", "rollback_only", "SESSION_SAVEPOINT", "SessionConnectionClosed"]

SESSION_SAVEPOINT = "_toolkit_session"


class SessionConnectionClosed(GuardrailViolation):
    """The connection of a rollback-only session was closed before the session ended.

    Raised when the session ends, once the proof that nothing changed has been made (a change found
    by the proof is an :class:`~toolkit.errors.IsolationBreach` instead)."""

    def __init__(self, reason: str, *, hint: str) -> None:
        super().__init__(reason)
        self.hint = hint


def _screen(conn: GuardedConnection, sql: str) -> None:
    """VACUUM is refused before SQLite sees it (inside a transaction SQLite fails it without asking)."""
    if (conn._guardrails or conn._session is not None) and sql.lstrip().upper().startswith("VACUUM"):
        raise GuardrailViolation("VACUUM is not allowed on a guarded connection or in a rollback-only session", sql)


class GuardedCursor(sqlite3.Cursor):
    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:  # type: ignore[override]
        conn: GuardedConnection = self.connection  # type: ignore[assignment]
        _screen(conn, sql)
        conn._denial = None
        try:
            return super().execute(sql, parameters)
        except sqlite3.DatabaseError as exc:
            raise conn._translate(exc, sql) from exc

    def executemany(self, sql: str, seq: Iterable[Any], /) -> sqlite3.Cursor:  # type: ignore[override]
        conn: GuardedConnection = self.connection  # type: ignore[assignment]
        _screen(conn, sql)
        conn._denial = None
        try:
            return super().executemany(sql, seq)
        except sqlite3.DatabaseError as exc:
            raise conn._translate(exc, sql) from exc

    def executescript(self, *_: Any) -> sqlite3.Cursor:  # type: ignore[override]
        raise GuardrailViolation("executescript is refused: it commits any open transaction first; run statements one by one")


#: Authorizer actions that only read (a PRAGMA is judged by the policy: quick_check and the like read).
_READS = frozenset({sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_PRAGMA,
                    sqlite3.SQLITE_RECURSIVE, sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT})


class GuardedConnection(sqlite3.Connection):
    """A connection whose statements pass the guardrails (and, inside a session, the session's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guardrails = False
        self._ready = False
        self._trusted: list[str] = []
        self._session: str | None = None
        self._session_end: _SessionEnd | None = None
        self._denial: str | None = None
        self._reading_only: str | None = None

    # -- the authorizer ----------------------------------------------------------------------------
    def _authorize(self, action: int, arg1: str | None, arg2: str | None, database: str | None, _: str | None) -> int:
        if not self._ready:
            return sqlite3.SQLITE_OK
        reason = None
        if self._reading_only is not None and action not in _READS:
            reason = f"nothing is written while {self._reading_only}"
        if reason is None and self._session is not None:
            reason = session_decision(action, arg1, arg2, database, self._session)
        if reason is None and self._guardrails:
            reason = guard_decision(action, arg1, arg2, database, self._trusted[-1] if self._trusted else None)
        if reason is None:
            return sqlite3.SQLITE_OK
        if self._denial is None:
            self._denial = reason
        return sqlite3.SQLITE_DENY

    def _translate(self, exc: sqlite3.DatabaseError, sql: str) -> BaseException:
        text = str(exc)
        if self._denial is not None and ("not authorized" in text or "authorization denied" in text):
            reason, self._denial = self._denial, None
            return GuardrailViolation(reason, sql)
        if "guardrail:" in text:
            return GuardrailViolation(text.split("guardrail:", 1)[1].strip(), sql)
        if self._guardrails and "FOREIGN KEY constraint failed" in text:
            return GuardrailViolation("foreign key constraint: the row refers to a row that does not exist", sql)
        return exc

    @contextmanager
    def reading_only(self, why: str) -> Iterator[GuardedConnection]:
        """Refuse every write on this connection for the block (e.g. while a repair is planned inside
        the transaction that will apply it: a planner reads, only the journaled writer writes)."""
        previous, self._reading_only = self._reading_only, why
        try:
            yield self
        finally:
            self._reading_only = previous

    # -- statements ----------------------------------------------------------------------------------
    def cursor(self, factory: type[sqlite3.Cursor] = GuardedCursor) -> sqlite3.Cursor:  # type: ignore[override]
        return super().cursor(factory)

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:  # type: ignore[override]
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq: Iterable[Any], /) -> sqlite3.Cursor:  # type: ignore[override]
        return self.cursor().executemany(sql, seq)

    def executescript(self, *_: Any) -> sqlite3.Cursor:  # type: ignore[override]
        raise GuardrailViolation("executescript is refused: it commits any open transaction first; run statements one by one")

    def commit(self) -> None:
        if self._session is not None:
            raise GuardrailViolation("commit() is refused inside a rollback-only session")
        super().commit()

    def rollback(self) -> None:
        # A full ROLLBACK would end the session's transaction (later writes would then autocommit).
        if self._session is not None:
            raise GuardrailViolation("rollback() would end the session's transaction (use ROLLBACK TO a savepoint)")
        super().rollback()

    def close(self) -> None:
        # Closed inside a rollback-only session: end the session's transaction here, while it still
        # holds the write lock, so the proof is taken as at any other exit; the session reports the
        # close when it ends.
        end = self._session_end
        try:
            if end is not None and not end.closed:
                end.closed = True
                self._session = None
                try:
                    end.after = _end_transaction(self, end.names, prove=end.prove)
                    end.rolled_back = True
                except Exception:
                    pass  # the session re-reads the files instead
        finally:
            super().close()

    def set_authorizer(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        if self._ready:
            raise GuardrailViolation("the authorizer of a guarded connection cannot be replaced")
        super().set_authorizer(*args, **kwargs)

    def enable_load_extension(self, *_: Any) -> None:  # type: ignore[override]
        raise GuardrailViolation("loading extensions is not allowed on a guarded connection")

    @property  # type: ignore[override]
    def isolation_level(self) -> str | None:
        return sqlite3.Connection.isolation_level.__get__(self)  # type: ignore[attr-defined]

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        # Even None is refused in a session: sqlite3 COMMITs an open transaction when it is set.
        if self._session is not None:
            raise GuardrailViolation("setting isolation_level is refused inside a rollback-only session (it commits)")
        if value is not None:
            raise GuardrailViolation("a guarded connection keeps isolation_level=None (explicit transactions only)")
        sqlite3.Connection.isolation_level.__set__(self, value)  # type: ignore[attr-defined]

    # -- trust -----------------------------------------------------------------------------------------
    @contextmanager
    def trusted(self, who: str) -> Iterator[GuardedConnection]:
        """Statements in this block may write the ledger and the positions projection (the trade
        writer, repairs). The never-delete and immutable-execution rules still hold."""
        self._trusted.append(who)
        try:
            yield self
        finally:
            self._trusted.pop()

    @property
    def guardrails(self) -> bool:
        return self._guardrails

    @property
    def in_session(self) -> bool:
        return self._session is not None


def connect_guarded(
    where: Settings | str | Path,
    *,
    guardrails: bool = True,
    names: Iterable[str] = DATABASES,
    busy_timeout: float | None = None,
    cache_kib: int | None = None,
    guards: Iterable[Guard] | None = None,
) -> GuardedConnection:
    """Open the databases (attached as ``positions``, ``trading``, ``ml_training``) for a bot.

    ``guards`` are the row guards to install: by default the ledger's own
    (:data:`toolkit.domain.LEDGER_GUARDS`); the integrity rules declare more, which the adversarial
    harness and the pytest fixture install (``Registry.guards``).
    ``cache_kib`` sets each file's page cache (SQLite's default, 2 MiB, when not given).

    With ``guardrails=False`` the connection behaves like a plain one (no authorizer rules, no
    guard triggers, foreign keys off) — the adversarial harness uses that to prove its attacks are
    detected; the rollback-only session still applies.
    """
    settings = where if isinstance(where, Settings) else load_settings(where)
    if busy_timeout is not None:
        settings = settings.with_(busy_timeout=busy_timeout)
    chosen = list(names)
    backend = backend_for(settings)
    conn = backend.open(chosen, readonly=False, factory=GuardedConnection, cache_kib=cache_kib)
    assert isinstance(conn, GuardedConnection)
    try:
        if guardrails:
            backend.install_guards(conn, LEDGER_GUARDS if guards is None else guards, chosen)
        else:
            conn.execute("PRAGMA foreign_keys = OFF")
        sqlite3.Connection.set_authorizer(conn, conn._authorize)
        conn._guardrails = guardrails
        conn._ready = True
    except BaseException:
        conn.close()
        raise
    return conn


def _hashes(conn: sqlite3.Connection, schemas: Iterable[str]) -> dict[str, dict[str, str]]:
    return {schema: table_hashes(conn, schema) for schema in schemas}


@dataclass
class _SessionEnd:
    """What a session needs to know when its connection is closed before the session ends."""
    names: list[str]
    prove: bool
    closed: bool = False
    rolled_back: bool = False
    after: dict[str, dict[str, str]] | None = None


def _end_transaction(conn: sqlite3.Connection, names: list[str], *, prove: bool) -> dict[str, dict[str, str]] | None:
    """Roll the session back; the hashes after it (when proving), taken inside the session's
    transaction when its savepoint is still there, else after the full rollback."""
    after = None
    if conn.in_transaction:
        try:
            sqlite3.Connection.execute(conn, f"ROLLBACK TO {SESSION_SAVEPOINT}")
            after = _hashes(conn, names) if prove else None
        except sqlite3.Error:
            after = None  # the savepoint is gone: compare after the full rollback below
        sqlite3.Connection.execute(conn, "ROLLBACK")
    if prove and after is None:
        after = _hashes(conn, names)
    return after


def _is_closed(conn: sqlite3.Connection) -> bool:
    try:
        conn.in_transaction  # noqa: B018 - raises on a closed connection
    except sqlite3.ProgrammingError:
        return True
    return False


@contextmanager
def rollback_only(conn: GuardedConnection, *, schemas: Iterable[str] | None = None,
                  prove: bool = True) -> Iterator[GuardedConnection]:
    """A transaction that always ends in ROLLBACK, and a proof that nothing changed.

    Both hashes of the proof are taken while the session's ``BEGIN IMMEDIATE`` holds the write lock
    (after BEGIN, and after rolling back to the session's savepoint), so a bot committing just before
    or after the session cannot make it look like a breach. Raises :class:`IsolationBreach` (exit
    code 4) naming the tables whose content changed — also when the body raised, whose exception
    stays chained as the breach's context.

    If the body closes the connection, the session still proves the content unchanged (through
    ``close()`` before the connection goes; after a close it did not see, by re-reading the files
    read-only) and then raises :class:`SessionConnectionClosed`.
    """
    if not isinstance(conn, GuardedConnection):
        raise TypeError("rollback_only needs a connection from connect_guarded()")
    if conn.in_transaction:
        raise GuardrailViolation("a rollback-only session must start outside a transaction")
    files = {r[1]: r[2] for r in conn.execute("PRAGMA database_list")}
    names = list(schemas) if schemas is not None else [n for n in files if n not in ("main", "temp")]
    conn.execute("BEGIN IMMEDIATE")
    try:
        before = _hashes(conn, names) if prove else {}
        conn.execute(f"SAVEPOINT {SESSION_SAVEPOINT}")
    except BaseException:
        sqlite3.Connection.execute(conn, "ROLLBACK")
        raise
    end = _SessionEnd(names, prove)
    conn._session = SESSION_SAVEPOINT
    conn._session_end = end
    try:
        yield conn
    finally:
        conn._session = None
        conn._session_end = None
        if end.closed or _is_closed(conn):
            _closed_inside(names, files, before, end)
        else:
            after = _end_transaction(conn, names, prove=prove)
            if prove:
                _prove(names, before, after)  # type: ignore[arg-type]


def _reread(names: list[str], files: dict[str, str]) -> dict[str, dict[str, str]]:
    """The hashes of the named databases, through a new read-only connection to their files."""
    conn = open_databases({name: Path(files[name]) for name in names}, readonly=True)
    try:
        conn.execute("BEGIN")  # one read snapshot per file for all its tables
        try:
            return _hashes(conn, names)
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()


def _closed_inside(names: list[str], files: dict[str, str], before: dict[str, dict[str, str]], end: _SessionEnd) -> None:
    """The body closed the session's connection: prove what can be proven, then say so.

    Closing a connection with an open transaction rolls it back, so nothing the session wrote can have
    been committed — unless something got out of the session before the close, which the proof finds.
    """
    what = "the session's connection was closed inside the rollback-only session"
    hint = "close the connection only after the session has ended (the rolled_back_db fixture closes it itself)"
    if not end.prove:
        raise SessionConnectionClosed(f"{what}; its transaction was rolled back, nothing was committed "
                                      "(not proven: the session was opened with prove=False)", hint=hint)
    if end.rolled_back and end.after is not None:
        _prove(names, before, end.after)
        how = "proven inside the session's write lock before the connection closed"
    else:
        # Closed where the session could not see it: the connection cannot be asked anything more,
        # so the files are re-read. In-memory databases went with the connection and keep nothing.
        on_disk = [name for name in names if files.get(name)]
        try:
            after = _reread(on_disk, files)
        except (ToolkitError, sqlite3.Error) as exc:
            raise SessionConnectionClosed(
                f"{what}; SQLite rolled its transaction back, but the files could not be re-read to prove "
                f"nothing changed ({exc})", hint=hint) from exc
        _prove(on_disk, {name: before[name] for name in on_disk}, after)
        how = "proven by re-reading the files after the close"
    raise SessionConnectionClosed(f"{what}; nothing was committed ({how}: {', '.join(names)} unchanged)", hint=hint)


def _prove(names: list[str], before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> None:
    changed = [f"{schema}.{table}" for schema in names for table in set(before[schema]) | set(after[schema])
               if before[schema].get(table) != after[schema].get(table)]
    if changed:
        raise IsolationBreach(
            f"a rollback-only session changed {', '.join(changed[:5])}" + (" ..." if len(changed) > 5 else ""),
            hint="something committed outside the session (another connection?); inspect the data and restore a backup")
