"""`migrate`: the schema lifecycle commands. Each parses, loads the migrations (``toolkit.content``),
makes one call into ``toolkit.migrate`` and renders the result."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import EXIT_FINDINGS, EXIT_OK
from .common import (CONTEXT, _confirm, _echo_err, _global_options, _json, _print_reconciled, _Settings,
                     _settings, _table, _when)


# -- migrate ---------------------------------------------------------------------------------------

def _print_to_reconcile(notes: list[str]) -> None:
    """What a read command found the ledger lacks (it writes nothing; a writing command records it)."""
    for note in notes:
        _echo_err(f"to reconcile: {note}")


@click.group(name="migrate", context_settings=CONTEXT)
@_global_options
@click.pass_context
def migrate_group(ctx: click.Context, **options: Any) -> None:
    """Move positions.db, trading.db and ml_training.db through their migrations.

    Each migration runs in one transaction on its file and records itself in that file;
    migrations.db is the cross-database ledger, reconciled with the files by every writing
    command (status and verify only read: they say what is to reconcile).
    """
    ctx.obj = _Settings(**options)


@migrate_group.command("upgrade")
@_global_options(late=True)
@click.option("--migration", "target", metavar="ID", help="Apply pending migrations up to and including ID.")
@click.option("--database", type=click.Choice(["positions", "trading", "ml_training"]), help="Only migrations of this database.")
@click.option("--dry-run", is_flag=True, help="Print, per database, the plan and the exact SQL; change nothing.")
@click.option("--allow-out-of-order", is_flag=True, help="Apply a pending migration older than an applied one.")
@click.pass_context
def migrate_upgrade(ctx: click.Context, target: str | None, database: str | None, dry_run: bool, allow_out_of_order: bool) -> int:
    """Apply pending migrations (creates the data directory and databases if needed)."""
    from ..content import load_migrations
    from ..migrate.runner import upgrade

    settings = _settings(ctx)
    result = upgrade(settings, migrations=load_migrations(settings), target=target, database=database, dry_run=dry_run,
                     allow_out_of_order=allow_out_of_order, progress=_echo_err)
    _print_reconciled(result.reconciled)
    if dry_run:
        current = None
        for step in result.steps:
            if step.database != current:
                current = step.database
                count = sum(1 for s in result.steps if s.database == current)
                click.echo(f"-- {current} ({settings.path(current)}): {count} migration(s) would run")
            click.echo(f"-- {step.migration}")
            for statement in step.statements:
                click.echo(statement.strip() + ";")
        for note in result.notes:
            click.echo(f"-- {note}")
        click.echo("-- dry run: nothing was changed")
        return EXIT_OK
    for item in result.backups:
        _echo_err(f"backup: {item.database} -> {item.path}")
    for step in result.steps:
        click.echo(f"applied {step.migration} to {step.database} ({step.duration * 1000:.0f} ms)")
    for note in result.notes:
        click.echo(note)
    return EXIT_OK


@migrate_group.command("downgrade")
@_global_options(late=True)
@click.option("--migration", "target", metavar="ID", help="Revert down to and including ID (default: everything).")
@click.option("--database", type=click.Choice(["positions", "trading", "ml_training"]), help="Only migrations of this database.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal).")
@click.pass_context
def migrate_downgrade(ctx: click.Context, target: str | None, database: str | None, yes: bool) -> int:
    """Revert applied migrations, newest first (asks for confirmation; backs up first)."""
    from ..content import load_migrations
    from ..migrate.runner import downgrade, preview_downgrade

    settings = _settings(ctx)
    migrations = load_migrations(settings)
    plan = preview_downgrade(settings, migrations=migrations, target=target, database=database)
    listing = ", ".join(f"{s.migration.label} ({s.migration.database})" for s in plan.steps)
    _confirm(f"Revert {len(plan.steps)} migration(s): {listing}?", yes)
    result = downgrade(settings, migrations=migrations, target=target, database=database, expected=plan, progress=_echo_err)
    _print_reconciled(result.reconciled)
    for item in result.backups:
        _echo_err(f"backup: {item.database} -> {item.path}")
    for step in result.steps:
        click.echo(f"reverted {step.migration} on {step.database} ({step.duration * 1000:.0f} ms)")
    return EXIT_OK


@migrate_group.command("status")
@_global_options(late=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def migrate_status(ctx: click.Context, as_json: bool) -> int:
    """Per database: file, version, applied, pending, last applied time, drift.

    Reads only (it runs on a read-only snapshot): what the ledger lacks is reported as
    "to reconcile" on stderr and recorded by the next writing command.
    """
    from ..content import load_migrations
    from ..migrate.status import status

    settings = _settings(ctx)
    report = status(settings, migrations=load_migrations(settings))
    if as_json:
        click.echo(_json(report.to_dict()))
        return EXIT_OK
    _print_to_reconcile(report.to_reconcile)
    if report.lock_holder:
        _echo_err(f"note: {report.lock_holder} holds the lock; a writing command is at work")
    click.echo(f"data dir: {report.data_dir} ({report.data_dir_source})")
    if not report.initialised:
        click.echo("not initialised: run `migrate upgrade` to create the databases")
    rows = [
        [d.name, f"{Path(d.file).name} (LOST)" if d.lost else Path(d.file).name if d.exists else f"{Path(d.file).name} (missing)",
         d.version or "-", len(d.applied), "-" if d.lost else len(d.pending), _when(d.last_applied_at),
         ", ".join(d.drift + [f"{u} (no file)" for u in d.unknown]) or "-"]
        for d in report.databases
    ]
    click.echo(_table(rows, ["database", "file", "version", "applied", "pending", "last applied (UTC)", "drift"]))
    for d in report.databases:
        if d.lost:
            click.echo(f"LOST: {d.lost}; restore it with `migrate restore --database {d.name}` (upgrading would not bring it back)")
    if report.initialised:
        lost = any(d.lost for d in report.databases)
        click.echo("up to date" if report.up_to_date else
                   "a database is lost: see above" if lost else "pending or drifted migrations: see above")
    return EXIT_OK


@migrate_group.command("verify")
@_global_options(late=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def migrate_verify(ctx: click.Context, as_json: bool) -> int:
    """Checksums, ledger vs files, live vs expected schema, quick_check, foreign keys, WAL.

    Exits 1 when anything is found. Reads only (it runs on a read-only snapshot): the ledger
    is compared as the next writing command will reconcile it, which is reported as "to reconcile".
    """
    from ..content import load_migrations
    from ..migrate.verify import verify

    settings = _settings(ctx)
    report = verify(settings, migrations=load_migrations(settings))
    if as_json:
        click.echo(_json(report.to_dict()))
    else:
        _print_to_reconcile(report.to_reconcile)
        if report.findings:
            click.echo(_table([[f.check, f.database, f.subject, f.detail] for f in report.findings],
                              ["check", "database", "subject", "detail"]))
            click.echo(f"{len(report.findings)} finding(s)")
        else:
            click.echo(f"verified: {len(report.checked)} checks on {len({c['database'] for c in report.checked})} files, no findings")
    return EXIT_FINDINGS if report.findings else EXIT_OK


@migrate_group.command("accept")
@_global_options(late=True)
@click.argument("migration_id", metavar="ID")
@click.pass_context
def migrate_accept(ctx: click.Context, migration_id: str) -> int:
    """Record the edited text of an applied migration as deliberate (clears its drift)."""
    from ..content import load_migrations
    from ..migrate.maintenance import accept

    settings = _settings(ctx)
    result = accept(settings, migration_id, migrations=load_migrations(settings), progress=_echo_err)
    _print_reconciled(result.reconciled)
    click.echo(result.diff)
    click.echo(f"accepted {result.migration} ({result.database}): {result.old_checksum[:12]} -> {result.new_checksum[:12]}")
    return EXIT_OK


@migrate_group.command("restore")
@_global_options(late=True)
@click.argument("backup", required=False)
@click.option("--database", type=click.Choice(["positions", "trading", "ml_training", "migrations"]),
              help="Restore the newest backup of this database (when no BACKUP is named).")
@click.option("--list", "list_only", is_flag=True, help="List the backups and exit.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal).")
@click.pass_context
def migrate_restore(ctx: click.Context, backup: str | None, database: str | None, list_only: bool, yes: bool) -> int:
    """Put a backup back in place (the current file is backed up first)."""
    from ..backup import find_backup, list_backups
    from ..content import load_migrations
    from ..migrate.maintenance import restore

    settings = _settings(ctx)
    if list_only:
        items = list_backups(settings, database)
        if not items:
            click.echo(f"no backups in {settings.backup_dir}")
        else:
            click.echo(_table([[b.database, _when(b.created_at), b.reason, f"{b.size / 1024:.0f} KiB", b.path.name] for b in items],
                              ["database", "taken (UTC)", "reason", "size", "file"]))
        return EXIT_OK
    item = find_backup(settings, backup, database)
    _confirm(f"Replace {settings.path(item.database)} with {item.path.name}?", yes)
    result = restore(settings, backup or str(item.path), item.database, migrations=load_migrations(settings),
                     progress=_echo_err)
    _print_reconciled(result.reconciled)
    if result.safety:
        _echo_err(f"backup of the replaced file: {result.safety.path}")
    click.echo(f"restored {result.restored.database} from {result.restored.path.name}")
    return EXIT_OK
