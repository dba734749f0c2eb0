"""The interface every backend implements: connections with the databases under their logical
names, the one transaction helper, cross-process exclusion, backups, physical and foreign-key
checks, row-guard installation, and the per-database migration records.

Connections follow the DB-API as ``sqlite3`` does (``execute``, ``executemany``, ``in_transaction``,
``close``), and SQL addresses a table as ``<database>.<table>`` (``trading.trades``) on every backend.
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from ..config import DATABASES, Settings

__all__ = ["Backend", "MigrationRecord"]

#: One applied migration as a database records it: (migration_id, name, checksum, applied_at).
MigrationRecord = tuple[str, str, str, int]


class Backend(abc.ABC):
    """Where the databases of one set of settings live, and what can be done to them."""

    #: A short name for messages and reports ("sqlite").
    kind: str = ""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # -- locations -------------------------------------------------------------------------------

    @abc.abstractmethod
    def where(self, name: str) -> str:
        """Where a logical database lives, for messages (a file path, a schema)."""

    @abc.abstractmethod
    def require(self, names: Iterable[str] = DATABASES, *, writable: bool = False) -> None:
        """Refuse (DatabaseFileError, naming it and the next step) a database that is missing or
        cannot be used as asked, before anything opens it."""

    # -- connections and transactions ----------------------------------------------------------

    @abc.abstractmethod
    def open(self, names: Iterable[str] = DATABASES, *, readonly: bool = True, cache_kib: int | None = None,
             factory: type | None = None) -> Any:
        """One connection reaching every named database as ``<name>.<table>``."""

    @abc.abstractmethod
    def connect(self, name: str, *, readonly: bool = False, create: bool = False) -> Any:
        """A connection to one database, its tables unqualified."""

    @abc.abstractmethod
    def history(self, *, create: bool = False, readonly: bool = False) -> Any | None:
        """The toolkit's own ledger (migration history, check runs, repair log); None if absent."""

    @abc.abstractmethod
    def atomic(self, conn: Any, savepoint: str | None = None, *, action: str = "") -> AbstractContextManager[Any]:
        """The one way into a unit of work: a transaction, or a savepoint inside one."""

    @abc.abstractmethod
    def lock(self, command: str, *, timeout: float | None = None, on_wait: Callable[[Any], None] | None = None,
             on_takeover: Callable[[Any], None] | None = None) -> AbstractContextManager[None]:
        """Exclude every other toolkit process that writes these databases, for the block."""

    # -- safety ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def backup(self, name: str, reason: str) -> Any | None:
        """A restorable copy of a database's committed state (None when it does not exist yet)."""

    # -- the storage's own integrity -------------------------------------------------------------

    @abc.abstractmethod
    def physical_problems(self, conn: Any, name: str) -> list[str]:
        """What the engine reports as damage of a database's storage (empty when sound)."""

    @abc.abstractmethod
    def foreign_key_problems(self, conn: Any, name: str) -> Iterator[tuple[str, int | None, str, int]]:
        """Rows whose foreign key points at a missing row: (table, rowid, parent, constraint)."""

    # -- guards and records ------------------------------------------------------------------------

    @abc.abstractmethod
    def install_guards(self, conn: Any, guards: Iterable[Any], names: Iterable[str]) -> int:
        """Make ``conn`` refuse the statements the row guards forbid (and any ledger delete); returns
        how many guard objects were created."""

    @abc.abstractmethod
    def migration_records(self, name: str, conn: Any | None = None) -> dict[str, MigrationRecord] | None:
        """The migrations a database records as applied (by id), or None when it keeps no migration
        records at all (not a database the toolkit migrated); ``conn`` reads them through an open
        connection that reaches the database under its logical name."""
