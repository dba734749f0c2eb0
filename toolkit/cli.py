"""Command-line shell: `migrate` and `integrity` (also `python -m toolkit migrate|integrity`).

Each command parses its options, makes one call into the library, and renders the result. No SQL
and no decisions live here. Library modules are imported inside commands, so `migrate status`
never pays for sqlglot, sqlite-utils or the rule catalogue.
"""
from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from .errors import EXIT_FINDINGS, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, ConfirmationRequired, ToolkitError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# -- shared plumbing -------------------------------------------------------------------------------

def _echo_err(message: str) -> None:
    click.echo(message, err=True)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def _when(ts: float | int | None) -> str:
    if ts is None:
        return "-"
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


class _Settings:
    """Resolved lazily so `--help` never touches the disk."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self._value = None

    def get(self):
        if self._value is None:
            from .config import load_settings

            opts = dict(self.options)
            data_dir = opts.pop("data_dir", None)
            opts["migrations_dir"] = list(opts.get("migrations_dir") or []) or None
            opts["checks_dir"] = list(opts.get("checks_dir") or []) or None
            self._value = load_settings(data_dir, **opts)
        return self._value


def _settings(ctx: click.Context):
    return ctx.find_object(_Settings).get()


def _confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; refuse without one unless --yes (scripts must say so explicitly)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfirmationRequired(f"refusing to continue without confirmation: {question}", hint="stdin is not a terminal; pass --yes")
    if not click.confirm(question, default=False, err=True):
        raise ConfirmationRequired("cancelled; nothing was changed")


def _global_options(func: Callable) -> Callable:
    options = [
        click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                     help="Directory holding the databases [env TOOLKIT_DATA_DIR, pyproject [tool.toolkit] data-dir; default ./data]."),
        click.option("--busy-timeout", type=click.FloatRange(min=0), default=None,
                     help="Seconds to wait for another connection's write lock on a database [default 5]."),
        click.option("--lock-timeout", type=click.FloatRange(min=0), default=None,
                     help="Seconds to wait for another toolkit process holding the data directory [default 30]."),
        click.option("--migrations-dir", multiple=True, type=click.Path(path_type=Path, file_okay=False),
                     help="Extra directory of migrations, after the bundled ones (repeatable)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def run(group: click.Group, args: Sequence[str] | None = None, prog_name: str | None = None) -> int:
    """Invoke a click group and turn results and errors into exit codes (never a traceback for a
    ToolkitError or an SQLite error)."""
    try:
        result = group.main(args=list(args) if args is not None else None, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        _echo_err("aborted; nothing more was changed")
        return EXIT_USAGE
    except ToolkitError as exc:
        _echo_err(f"error: {exc}")
        return exc.exit_code
    except sqlite3.Error as exc:
        _echo_err(f"error: SQLite: {exc}")
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        _echo_err("interrupted; every database is left at its last committed state")
        return 130
    return result if isinstance(result, int) else EXIT_OK


# -- migrate ---------------------------------------------------------------------------------------

@click.group(name="migrate", context_settings=CONTEXT)
@_global_options
@click.pass_context
def migrate_group(ctx: click.Context, **options: Any) -> None:
    """Move positions.db, trading.db and ml_training.db through their migrations.

    Each migration runs in one transaction on its file and records itself in that file;
    migrations.db is the cross-database ledger, reconciled with the files by every command.
    """
    ctx.obj = _Settings(**options)


def _print_reconciled(notes: Sequence[str]) -> None:
    for note in notes:
        _echo_err(f"reconciled: {note}")


@migrate_group.command("upgrade")
@click.option("--migration", "target", metavar="ID", help="Apply pending migrations up to and including ID.")
@click.option("--database", type=click.Choice(["positions", "trading", "ml_training"]), help="Only migrations of this database.")
@click.option("--dry-run", is_flag=True, help="Print, per database, the plan and the exact SQL; change nothing.")
@click.option("--allow-out-of-order", is_flag=True, help="Apply a pending migration older than an applied one.")
@click.pass_context
def migrate_upgrade(ctx: click.Context, target: str | None, database: str | None, dry_run: bool, allow_out_of_order: bool) -> int:
    """Apply pending migrations (creates the data directory and databases if needed)."""
    from .migrate.runner import upgrade

    settings = _settings(ctx)
    result = upgrade(settings, target=target, database=database, dry_run=dry_run,
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
@click.option("--migration", "target", metavar="ID", help="Revert down to and including ID (default: everything).")
@click.option("--database", type=click.Choice(["positions", "trading", "ml_training"]), help="Only migrations of this database.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal).")
@click.pass_context
def migrate_downgrade(ctx: click.Context, target: str | None, database: str | None, yes: bool) -> int:
    """Revert applied migrations, newest first (asks for confirmation; backs up first)."""
    from .migrate.runner import downgrade, preview_downgrade

    settings = _settings(ctx)
    plan = preview_downgrade(settings, target=target, database=database)
    listing = ", ".join(f"{s.migration.label} ({s.migration.database})" for s in plan.steps)
    _confirm(f"Revert {len(plan.steps)} migration(s): {listing}?", yes)
    result = downgrade(settings, target=target, database=database, expected=plan, progress=_echo_err)
    _print_reconciled(result.reconciled)
    for item in result.backups:
        _echo_err(f"backup: {item.database} -> {item.path}")
    for step in result.steps:
        click.echo(f"reverted {step.migration} on {step.database} ({step.duration * 1000:.0f} ms)")
    return EXIT_OK


@migrate_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def migrate_status(ctx: click.Context, as_json: bool) -> int:
    """Per database: file, version, applied, pending, last applied time, drift."""
    from .migrate.status import status

    report = status(_settings(ctx))
    if as_json:
        click.echo(_json(report.to_dict()))
        return EXIT_OK
    _print_reconciled(report.reconciled if not report.reconcile_pending else [])
    if report.reconcile_pending:
        for note in report.reconciled:
            _echo_err(f"to reconcile (not written while {report.lock_holder} holds the lock): {note}")
    click.echo(f"data dir: {report.data_dir} ({report.data_dir_source})")
    if not report.initialised:
        click.echo("not initialised: run `migrate upgrade` to create the databases")
    rows = [
        [d.name, Path(d.file).name if d.exists else f"{Path(d.file).name} (missing)", d.version or "-",
         len(d.applied), len(d.pending), _when(d.last_applied_at),
         ", ".join(d.drift + [f"{u} (no file)" for u in d.unknown]) or "-"]
        for d in report.databases
    ]
    click.echo(_table(rows, ["database", "file", "version", "applied", "pending", "last applied (UTC)", "drift"]))
    if report.initialised:
        click.echo("up to date" if report.up_to_date else "pending or drifted migrations: see above")
    return EXIT_OK


@migrate_group.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def migrate_verify(ctx: click.Context, as_json: bool) -> int:
    """Checksums, ledger vs files, live vs expected schema, quick_check, foreign keys, WAL.

    Exits 1 when anything is found.
    """
    from .migrate.verify import verify

    report = verify(_settings(ctx))
    if as_json:
        click.echo(_json(report.to_dict()))
    else:
        _print_reconciled(report.reconciled)
        if report.findings:
            click.echo(_table([[f.check, f.database, f.subject, f.detail] for f in report.findings],
                              ["check", "database", "subject", "detail"]))
            click.echo(f"{len(report.findings)} finding(s)")
        else:
            click.echo(f"verified: {len(report.checked)} checks on {len({c['database'] for c in report.checked})} files, no findings")
    return EXIT_FINDINGS if report.findings else EXIT_OK


@migrate_group.command("accept")
@click.argument("migration_id", metavar="ID")
@click.pass_context
def migrate_accept(ctx: click.Context, migration_id: str) -> int:
    """Record the edited text of an applied migration as deliberate (clears its drift)."""
    from .migrate.maintenance import accept

    result = accept(_settings(ctx), migration_id, progress=_echo_err)
    _print_reconciled(result.reconciled)
    click.echo(result.diff)
    click.echo(f"accepted {result.migration} ({result.database}): {result.old_checksum[:12]} -> {result.new_checksum[:12]}")
    return EXIT_OK


@migrate_group.command("restore")
@click.argument("backup", required=False)
@click.option("--database", type=click.Choice(["positions", "trading", "ml_training", "migrations"]),
              help="Restore the newest backup of this database (when no BACKUP is named).")
@click.option("--list", "list_only", is_flag=True, help="List the backups and exit.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal).")
@click.pass_context
def migrate_restore(ctx: click.Context, backup: str | None, database: str | None, list_only: bool, yes: bool) -> int:
    """Put a backup back in place (the current file is backed up first)."""
    from .backup import find_backup, list_backups
    from .migrate.maintenance import restore

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
    result = restore(settings, backup or str(item.path), item.database, progress=_echo_err)
    _print_reconciled(result.reconciled)
    if result.safety:
        _echo_err(f"backup of the replaced file: {result.safety.path}")
    click.echo(f"restored {result.restored.database} from {result.restored.path.name}")
    return EXIT_OK


# -- entry points ----------------------------------------------------------------------------------

@click.group(name="toolkit", context_settings=CONTEXT)
def toolkit_group() -> None:
    """The trading-database toolkit: `migrate` and `integrity`."""


toolkit_group.add_command(migrate_group)


def migrate_main() -> None:
    sys.exit(run(migrate_group, prog_name="migrate"))


def main() -> None:
    """`python -m toolkit`."""
    sys.exit(run(toolkit_group, prog_name="python -m toolkit"))
