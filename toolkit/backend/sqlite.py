"""SQLite: one file per database in the data directory, attached under its logical name; WAL,
``synchronous=NORMAL``, foreign keys on, a busy timeout; the data directory's lock file; backups
through the backup API; ``PRAGMA quick_check`` and ``foreign_key_check``; row guards as TEMP
triggers (they live on one connection, so the files' schema never changes); migration records in
each file's ``_toolkit_migrations``.

Files are not committed atomically across each other in WAL mode: every multi-file command records
its progress per file and reconciles (see ``migrate.state`` and ``repair.log``).
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from ..backup import Backup, take_backup
from ..config import DATABASES
from ..db import atomic, check_file, connect, open_databases, quick_check, quote_ident
from ..history import open_history
from ..lock import Holder, data_dir_lock
from .base import Backend, MigrationRecord

__all__ = ["SQLiteBackend"]


class SQLiteBackend(Backend):
    kind = "sqlite"

    def where(self, name: str) -> str:
        return str(self.settings.path(name))

    def require(self, names: Iterable[str] = DATABASES, *, writable: bool = False) -> None:
        for name in names:
            check_file(self.settings.path(name), must_exist=True, writable=writable)

    # -- connections and transactions ----------------------------------------------------------

    def open(self, names: Iterable[str] = DATABASES, *, readonly: bool = True, cache_kib: int | None = None,
             factory: type | None = None) -> sqlite3.Connection:
        return open_databases({name: self.settings.path(name) for name in names}, readonly=readonly,
                              busy_timeout=self.settings.busy_timeout, cache_kib=cache_kib,
                              factory=factory or sqlite3.Connection)

    def connect(self, name: str, *, readonly: bool = False, create: bool = False) -> sqlite3.Connection:
        return connect(self.settings.path(name), readonly=readonly, create=create, busy_timeout=self.settings.busy_timeout)

    def history(self, *, create: bool = False, readonly: bool = False) -> sqlite3.Connection | None:
        return open_history(self.settings, create=create, readonly=readonly)

    def atomic(self, conn: sqlite3.Connection, savepoint: str | None = None, *,
               action: str = "") -> AbstractContextManager[sqlite3.Connection]:
        return atomic(conn, savepoint, path=self.settings.data_dir, action=action)

    def lock(self, command: str, *, timeout: float | None = None, on_wait: Callable[[Holder | None], None] | None = None,
             on_takeover: Callable[[Holder], None] | None = None) -> AbstractContextManager[None]:
        return data_dir_lock(self.settings.lock_path, timeout=self.settings.lock_timeout if timeout is None else timeout,
                             command=command, on_wait=on_wait, on_takeover=on_takeover)

    # -- safety ------------------------------------------------------------------------------------

    def backup(self, name: str, reason: str) -> Backup | None:
        return take_backup(self.settings, name, reason)

    # -- the storage's own integrity -------------------------------------------------------------

    def physical_problems(self, conn: sqlite3.Connection, name: str) -> list[str]:
        return quick_check(conn, _schema(conn, name))

    def foreign_key_problems(self, conn: sqlite3.Connection, name: str) -> Iterator[tuple[str, int | None, str, int]]:
        for row in conn.execute(f"PRAGMA {quote_ident(name)}.foreign_key_check"):
            yield tuple(row)  # type: ignore[misc]

    # -- guards and records ------------------------------------------------------------------------

    def install_guards(self, conn: sqlite3.Connection, guards: Iterable[Any], names: Iterable[str]) -> int:
        """TEMP triggers: one per guard event (``BEFORE <event> ... RAISE(ABORT)``), and one per ledger
        table refusing every delete — with recursive triggers on, the rows a REPLACE conflict removes
        fire DELETE triggers too (the authorizer never sees those deletes)."""
        from ..domain import NO_DELETE  # only for guarded connections: `migrate status` starts without it

        present = set(names)
        count = 0
        numbers: dict[str, int] = {}
        for guard in guards:
            if guard.database not in present:
                continue
            owner = guard.rule_id or "ledger"
            n = numbers[owner] = numbers.get(owner, -1) + 1
            for function_name, function in guard.functions_for(self.settings).items():
                conn.create_function(function_name, function.__code__.co_argcount, function, deterministic=True)
            tolerance = self.settings.rule_options.get(guard.rule_id, {}).get("tolerance", guard.default_tolerance)
            tolerance = float(self.settings.tolerance if tolerance is None else tolerance)
            condition = guard.when.replace("{tolerance}", repr(tolerance))
            message = f"guardrail: {owner}: {guard.reason}".replace("'", "''")
            table = ".".join(quote_ident(part) for part in guard.table.split(".", 1))
            for m, event in enumerate(guard.events):
                conn.execute(
                    f"CREATE TEMP TRIGGER {quote_ident(f'guard_{owner}_{n}_{m}')} BEFORE {event} ON {table} "
                    f"FOR EACH ROW WHEN {condition} BEGIN SELECT RAISE(ABORT, '{message}'); END")
                count += 1
        conn.execute("PRAGMA recursive_triggers = ON")
        for database, table_name in sorted(NO_DELETE):
            if database in present:
                conn.execute(
                    f"CREATE TEMP TRIGGER {quote_ident(f'guard_no_delete_{table_name}')} BEFORE DELETE ON "
                    f"{quote_ident(database)}.{quote_ident(table_name)} FOR EACH ROW BEGIN "
                    f"SELECT RAISE(ABORT, 'guardrail: {table_name} rows are never deleted (not even by INSERT OR REPLACE)'); END")
                count += 1
        return count

    def migration_records(self, name: str, conn: sqlite3.Connection | None = None) -> dict[str, MigrationRecord] | None:
        """From the file's ``_toolkit_migrations``: through ``conn`` (the file attached as ``name``, or
        opened alone — then its tables are in ``main``), else through a read-only connection of its own."""
        if conn is None:
            own = self.connect(name, readonly=True)
            try:
                return _records(own, "main")
            finally:
                own.close()
        return _records(conn, _schema(conn, name))


def _schema(conn: sqlite3.Connection, name: str) -> str:
    """Where ``name``'s tables are on ``conn``: attached under its name, or the file opened alone."""
    attached = {row[1] for row in conn.execute("PRAGMA database_list")}
    return name if name in attached else "main"


def _records(conn: sqlite3.Connection, schema: str) -> dict[str, MigrationRecord] | None:
    ident = quote_ident(schema)
    if not conn.execute(f"SELECT 1 FROM {ident}.sqlite_master WHERE type = 'table' AND name = '_toolkit_migrations'").fetchone():
        return None
    rows = conn.execute(f"SELECT migration_id, name, checksum, applied_at FROM {ident}._toolkit_migrations")
    return {r[0]: (r[0], r[1], r[2], r[3]) for r in rows}
