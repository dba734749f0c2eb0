"""Planning: which migrations run, in which direction and order, on which file. Pure: no I/O.

Ids are ordered globally (001 < 002 < …); each migration targets one database, and within a
database the applied migrations must be a prefix of its migrations (no gaps), unless told otherwise.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import DriftError, MigrationDefinitionError, UnknownNameError, UsageError
from .discovery import Migration
from .state import FileState

__all__ = ["Step", "Plan", "resolve_migration", "plan_upgrade", "plan_downgrade", "drifted", "unknown_applied"]

_SPEC = re.compile(r"^[A-Za-z0-9_]{1,120}$")


@dataclass(frozen=True)
class Step:
    migration: Migration
    direction: str  # "upgrade" | "downgrade"


@dataclass
class Plan:
    direction: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def databases(self) -> list[str]:
        seen: list[str] = []
        for step in self.steps:
            if step.migration.database not in seen:
                seen.append(step.migration.database)
        return seen

    def __bool__(self) -> bool:
        return bool(self.steps)


def resolve_migration(spec: str, migrations: Sequence[Migration]) -> Migration:
    """A migration by id (``004`` or ``4``), label (``004_create_ledger``) or name."""
    text = str(spec).strip()
    labels = [m.label for m in migrations]
    if _SPEC.match(text):
        for m in migrations:
            if text in (m.id, m.label, m.name) or (text.isdigit() and int(text) == m.number):
                return m
    raise UnknownNameError("migration", text, [m.id for m in migrations] + labels)


def drifted(migrations: Sequence[Migration], states: Mapping[str, FileState]) -> list[tuple[Migration, str]]:
    """Applied migrations whose file changed since they were applied: (migration, recorded checksum)."""
    by_id = {m.id: m for m in migrations}
    found = []
    for state in states.values():
        for mid, record in state.records.items():
            m = by_id.get(mid)
            if m is not None and record.checksum != m.checksum:
                found.append((m, record.checksum))
    return sorted(found, key=lambda item: item[0].number)


def unknown_applied(migrations: Sequence[Migration], states: Mapping[str, FileState]) -> list[tuple[str, str]]:
    """(database, id) of applied records with no migration file."""
    known = {m.id for m in migrations}
    return sorted(
        ((s.name, mid) for s in states.values() for mid in s.records if mid not in known),
        key=lambda item: int(item[1]),
    )


def _check_prefix(migrations: Sequence[Migration], states: Mapping[str, FileState], allow_out_of_order: bool) -> None:
    if allow_out_of_order:
        return
    for name, state in states.items():
        own = [m for m in migrations if m.database == name]
        applied = set(state.records)
        highest = max((i for i, m in enumerate(own) if m.id in applied), default=-1)
        if highest < 0:
            continue
        gaps = [m for m in own[:highest] if m.id not in applied]
        if gaps:
            raise MigrationDefinitionError(
                f"{state.path.name}: migration {gaps[0].label} is not applied but the later "
                f"{own[highest].label} is (gap in applied history)",
                hint="apply it out of order with `migrate upgrade --allow-out-of-order`, or downgrade past it first",
            )


def _refuse_drift(migrations: Sequence[Migration], states: Mapping[str, FileState], action: str) -> None:
    changed = drifted(migrations, states)
    if changed:
        m = changed[0]
        others = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise DriftError(
            f"applied migration {m[0].label} ({m[0].database}) changed since it was applied{others}; {action} blocked",
            hint=f"see the diff with `migrate verify`, then record the change with `migrate accept {m[0].id}` or restore the file",
        )
    missing = unknown_applied(migrations, states)
    if missing:
        db, mid = missing[0]
        raise DriftError(
            f"migration {mid} is applied to {db} but its file is missing; {action} blocked",
            hint="restore the migration file (or point --migrations-dir at it)",
        )


def plan_upgrade(
    migrations: Sequence[Migration],
    states: Mapping[str, FileState],
    *,
    target: str | None = None,
    database: str | None = None,
    allow_out_of_order: bool = False,
) -> Plan:
    """Pending migrations up to and including ``target`` (all when ``None``), optionally of one database."""
    _refuse_drift(migrations, states, "upgrade")
    _check_prefix(migrations, states, allow_out_of_order)
    limit = resolve_migration(target, migrations) if target is not None else None
    plan = Plan("upgrade")
    for m in migrations:
        if limit is not None and m.number > limit.number:
            break
        if database is not None and m.database != database:
            continue
        state = states.get(m.database)
        if state is not None and m.id in state.records:
            continue
        plan.steps.append(Step(m, "upgrade"))
    if limit is not None and not plan.steps and limit.id in states[limit.database].records:
        plan.notes.append(f"{limit.label} is already applied")
    return plan


def plan_downgrade(
    migrations: Sequence[Migration],
    states: Mapping[str, FileState],
    *,
    target: str | None = None,
    database: str | None = None,
) -> Plan:
    """Applied migrations down to and including ``target`` (to zero when ``None``), newest first."""
    _refuse_drift(migrations, states, "downgrade")
    limit = resolve_migration(target, migrations) if target is not None else None
    applied = [
        m for m in migrations
        if m.database in states and m.id in states[m.database].records
        and (database is None or m.database == database)
    ]
    if limit is not None:
        if limit not in applied:
            where = f" to {states[limit.database].path.name}" if limit.database in states else ""
            raise UsageError(f"migration {limit.label} is not applied{where}; nothing to downgrade")
        applied = [m for m in applied if m.number >= limit.number]
    if not applied:
        scope = f"database {database}" if database else "any database"
        raise UsageError(f"nothing to downgrade: no migration is applied to {scope} (already at zero)")
    return Plan("downgrade", [Step(m, "downgrade") for m in sorted(applied, key=lambda m: m.number, reverse=True)])
