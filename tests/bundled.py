"""The migrations that ship with the toolkit, as tests expect them: read from ``migrations/`` itself.

Tests about "every bundled migration" derive their expected ids, labels and per-database lists from
here, so adding a migration does not mean editing every such test; tests about one particular
migration (004 creates trades, 005 creates rl_model_states...) keep naming it.
"""
from __future__ import annotations

from toolkit.config import DATABASES
from toolkit.content import bundled_migrations_dir
from toolkit.migrate.discovery import Migration, discover

__all__ = ["BUNDLED", "BUNDLED_IDS", "NEWEST", "by_id", "ids_of", "labels_of", "after", "plan_order"]

#: Every bundled migration, by id.
BUNDLED: tuple[Migration, ...] = tuple(sorted(discover([bundled_migrations_dir()]), key=lambda m: m.number))
BUNDLED_IDS: tuple[str, ...] = tuple(m.id for m in BUNDLED)
#: The newest bundled migration (what "revert one migration" reverts).
NEWEST: Migration = BUNDLED[-1]
assert set(m.database for m in BUNDLED) <= set(DATABASES)


def by_id(migration_id: str) -> Migration:
    return next(m for m in BUNDLED if m.id == migration_id)


def ids_of(database: str, migrations=BUNDLED) -> list[str]:
    """The ids of ``database``'s migrations among ``migrations`` (all bundled by default), oldest first."""
    return [m.id for m in migrations if m.database == database]


def labels_of(database: str, migrations=BUNDLED) -> list[str]:
    return [m.label for m in migrations if m.database == database]


def after(migration_id: str, database: str | None = None) -> list[Migration]:
    """The bundled migrations newer than ``migration_id`` (of one database if given), oldest first."""
    return [m for m in BUNDLED if m.number > int(migration_id) and database in (None, m.database)]


def plan_order(migrations=BUNDLED) -> list[Migration]:
    """``migrations`` in the order an upgrade plan shows them: per database, databases in the order
    the oldest migration first reaches each, each database's migrations oldest first."""
    databases = list(dict.fromkeys(m.database for m in migrations))
    return [m for database in databases for m in migrations if m.database == database]
