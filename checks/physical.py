"""Whole-file rules: physical corruption, foreign keys, schema drift."""
from __future__ import annotations

from collections.abc import Iterator

from toolkit.config import DATABASES
from toolkit.rules.model import CheckContext, Rule, Violation, rule

__all__ = ["RULES"]


@rule("sqlite_quick_check", severity="CRITICAL", databases=list(DATABASES), key=["database"], sound_files_only=False,
      remedy="restore the file from a backup (`migrate restore`)")
def sqlite_quick_check(ctx: CheckContext, rule_: Rule) -> Iterator[Violation]:
    """Physical corruption (and rows that break CHECK/NOT NULL constraints), per file: PRAGMA quick_check."""
    cache = ctx.cache.setdefault("quick_check", {})
    for database in DATABASES:
        if database not in cache:
            cache[database] = ctx.backend.physical_problems(ctx.conn, database)
        lines = cache[database]
        if lines:
            more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
            yield Violation(rule_.id, {"database": database}, f"{lines[0]}{more}")


@rule("foreign_key_violations", severity="HIGH", databases=list(DATABASES), key=["database", "table", "rowid", "parent"],
      remedy="restore the missing parent row or correct the reference")
def foreign_key_violations(ctx: CheckContext, rule_: Rule) -> Iterator[Violation]:
    """Rows whose foreign key points at a missing row: PRAGMA foreign_key_check, per file."""
    for database in DATABASES:
        for table, rowid, parent, _ in ctx.foreign_key_check(database):
            key = {"database": database, "table": table, "rowid": rowid, "parent": parent}
            yield Violation(rule_.id, {k: v for k, v in key.items() if v is not None},
                            f"{table} row {rowid} references a missing {parent} row")


@rule("schema_drift", severity="HIGH", databases=list(DATABASES), key=["database", "object", "migration"],
      remedy="run `migrate upgrade`, `migrate verify` and `migrate accept` as the findings say")
def schema_drift(ctx: CheckContext, rule_: Rule) -> Iterator[Violation]:
    """The live schema or migration checksums differ from the migrations (pending, edited, missing or extra objects)."""
    from toolkit.content import load_migrations
    from toolkit.migrate.plan import drifted, unknown_applied
    from toolkit.migrate.state import read_file_state
    from toolkit.migrate.verify import expected_schema, live_schema, schema_differences

    migrations = load_migrations(ctx.settings)
    states = {database: read_file_state(ctx.settings, database, ctx.conn) for database in DATABASES}
    for migration, _ in drifted(migrations, states):
        yield Violation(rule_.id, {"database": migration.database, "migration": migration.id},
                        f"{migration.label} changed since it was applied (see `migrate verify`)")
    for database, mid in unknown_applied(migrations, states):
        yield Violation(rule_.id, {"database": database, "migration": mid}, f"migration {mid} is applied but its file is missing")
    for migration in migrations:
        if migration.id not in states[migration.database].records:
            yield Violation(rule_.id, {"database": migration.database, "migration": migration.id},
                            f"{migration.label} is not applied (run `migrate upgrade`)")
    for database in DATABASES:
        expected = expected_schema(migrations, database, list(states[database].records))
        for subject, detail in schema_differences(expected, live_schema(ctx.conn, database)):
            yield Violation(rule_.id, {"database": database, "object": subject}, detail)


RULES = (sqlite_quick_check, foreign_key_violations, schema_drift)
