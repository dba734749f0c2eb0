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


def _late_global_option(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the command name (`migrate upgrade --data-dir D`) overrides the
    same option given before it; extra migration directories add up."""
    if value is None or value == ():
        return
    holder = ctx.find_object(_Settings)
    if holder is None:  # pragma: no cover - every command runs under a group that sets it
        return
    if param.name == "migrations_dir":
        value = tuple(holder.options.get("migrations_dir") or ()) + tuple(value)
    holder.options[str(param.name)] = value
    holder._value = None


def _global_options(func: Callable | None = None, *, late: bool = False) -> Callable:
    """The options every command takes: on the group, and (``late``) again on each command."""
    extra: dict[str, Any] = {"callback": _late_global_option, "expose_value": False} if late else {}

    def decorate(func: Callable) -> Callable:
        options = [
            click.option("--data-dir", type=click.Path(path_type=Path), default=None, **extra,
                         help="Directory holding the databases [env TOOLKIT_DATA_DIR, pyproject [tool.toolkit] data-dir; default ./data]."),
            click.option("--busy-timeout", type=click.FloatRange(min=0), default=None, **extra,
                         help="Seconds to wait for another connection's write lock on a database [default 5]."),
            click.option("--lock-timeout", type=click.FloatRange(min=0), default=None, **extra,
                         help="Seconds to wait for another toolkit process holding the data directory [default 30]."),
            click.option("--migrations-dir", multiple=True, type=click.Path(path_type=Path, file_okay=False), **extra,
                         help="Extra directory of migrations, after the bundled ones (repeatable)."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate(func) if func is not None else decorate


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
    except click.exceptions.Abort as exc:
        # click turns a Ctrl-C anywhere in a command into Abort (raised *from* the KeyboardInterrupt);
        # only an Abort at a prompt (raised from None) is a refused confirmation.
        if isinstance(exc.__cause__, KeyboardInterrupt):
            _echo_err("interrupted; every database is left at its last committed state")
            return 130
        _echo_err("aborted; nothing more was changed")
        return EXIT_USAGE
    except ToolkitError as exc:
        _echo_err(f"error: {exc}")
        return exc.exit_code
    except sqlite3.Error as exc:
        _echo_err(f"error: SQLite: {exc}")
        return EXIT_RUNTIME
    except OSError as exc:  # a path the library did not foresee: still one line naming it, never a traceback
        _echo_err(f"error: {exc}")
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
@_global_options(late=True)
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
@_global_options(late=True)
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
@_global_options(late=True)
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
            _echo_err(f"to reconcile (not written: {report.not_written}): {note}")
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
@_global_options(late=True)
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
@_global_options(late=True)
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
@_global_options(late=True)
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


# -- integrity -------------------------------------------------------------------------------------

SEVERITIES = ["CRITICAL", "HIGH", "MEDIUM", "LOW"]


@click.group(name="integrity", context_settings=CONTEXT)
@_global_options
@click.option("--checks-dir", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory of project rules (*.py defining @rule objects), after the bundled ones (repeatable).")
@click.pass_context
def integrity_group(ctx: click.Context, **options: Any) -> None:
    """Check the ledger before a deploy, repair it after a session.

    Rules come from the bundled catalogue, plugins (entry-point group toolkit.checks) and
    the project's checks directories; `integrity list` shows them.
    """
    ctx.obj = _Settings(**options)


def _progress() -> Callable[[str], None] | None:
    return _echo_err if sys.stderr.isatty() else None


def _registry(settings):
    from .rules.registry import load_registry

    return load_registry(settings)


@integrity_group.command("check")
@_global_options(late=True)
@click.option("--rule", "rule_ids", multiple=True, metavar="ID", help="Only this rule (repeatable); default: all.")
@click.option("--fail-on", type=click.Choice(SEVERITIES, case_sensitive=False), default="HIGH", show_default=True,
              help="Exit 1 when a violation at or above this severity remains after the baseline.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "junit", "sarif", "markdown"]), default="table",
              show_default=True, help="Output format.")
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), help="Write the report to FILE instead of stdout.")
@click.option("--baseline", type=click.Path(path_type=Path, dir_okay=False), help="Accept the violations listed in FILE.")
@click.option("--sample", type=click.IntRange(min=0), default=20, show_default=True, help="Violations shown per rule.")
@click.pass_context
def integrity_check(ctx: click.Context, rule_ids: tuple[str, ...], fail_on: str, fmt: str, output: Path | None,
                    baseline: Path | None, sample: int) -> int:
    """Run the rules over all databases at once; the pre-deploy gate.

    Exit codes: 0 nothing at or above --fail-on, 1 violations (or a rule errored or was
    skipped), 3 runtime error. Every run is recorded (see `integrity history`).
    """
    from .report import render
    from .rules.baseline import load_baseline
    from .rules.model import Severity
    from .rules.runner import run_checks

    settings = _settings(ctx)
    accepted = load_baseline(baseline) if baseline is not None else None
    report = run_checks(settings, rule_ids=list(rule_ids) or None, registry=_registry(settings),
                        fail_on=Severity[fail_on.upper()], sample=sample,
                        accepted=accepted.fingerprints if accepted else None,
                        baseline_name=str(baseline) if baseline else None, progress=_progress())
    text = render(report, fmt)
    if output is not None:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        from .report import _summary

        _echo_err(f"{fmt} report written to {output}; {_summary(report)}")
    else:
        click.echo(text)
    return report.exit_code


@integrity_group.command("list")
@_global_options(late=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def integrity_list(ctx: click.Context, as_json: bool) -> int:
    """Show the registry: id, severity, databases, repairable, description."""
    rules = list(_registry(_settings(ctx)))
    if as_json:
        click.echo(_json([{"id": r.id, "severity": r.severity.name, "databases": list(r.databases), "kind": r.kind,
                           "repairable": r.repairable, "description": r.description, "source": r.source} for r in rules]))
    else:
        click.echo(_table([[r.id, r.severity.name, ",".join(r.databases), "yes" if r.repairable else "-", r.description]
                           for r in rules], ["rule", "severity", "databases", "repair", "description"]))
    return EXIT_OK


@integrity_group.group("baseline")
def integrity_baseline() -> None:
    """Accept known violations so only new ones fail the gate."""


@integrity_baseline.command("create")
@_global_options(late=True)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--rule", "rule_ids", multiple=True, metavar="ID", help="Only this rule (repeatable).")
@click.pass_context
def integrity_baseline_create(ctx: click.Context, file: Path, rule_ids: tuple[str, ...]) -> int:
    """Write FILE accepting every current violation (fingerprint: rule id + natural key)."""
    from .rules.baseline import write_baseline
    from .rules.runner import run_checks

    settings = _settings(ctx)
    report = run_checks(settings, rule_ids=list(rule_ids) or None, registry=_registry(settings), sample=0,
                        collect=True, progress=_progress(), record=False)
    count = write_baseline(file, report)
    click.echo(f"baseline {file}: {count} accepted violation(s)")
    for result in report.results:
        if result.status in ("error", "skipped"):
            _echo_err(f"warning: {result.rule.id} {result.status}: {result.error or result.reason} (nothing accepted for it)")
    return EXIT_OK


@integrity_baseline.command("prune")
@_global_options(late=True)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=False))
@click.pass_context
def integrity_baseline_prune(ctx: click.Context, file: Path) -> int:
    """Drop accepted violations from FILE that no longer occur."""
    from .rules.baseline import load_baseline, prune_baseline
    from .rules.runner import run_checks

    settings = _settings(ctx)
    load_baseline(file)  # refuse a malformed file before running anything
    report = run_checks(settings, registry=_registry(settings), sample=0, collect=True, progress=_progress(), record=False)
    kept, removed = prune_baseline(file, report)
    click.echo(f"baseline {file}: {removed} pruned, {kept} kept")
    return EXIT_OK


@integrity_group.command("history")
@_global_options(late=True)
@click.argument("run_id", required=False)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def integrity_history(ctx: click.Context, run_id: str | None, limit: int, as_json: bool) -> int:
    """List recorded check runs, or show one run's results per rule."""
    from dataclasses import asdict

    from .rules.history import check_run, list_check_runs

    settings = _settings(ctx)
    if run_id:
        run = check_run(settings, run_id)
        if as_json:
            click.echo(_json(asdict(run)))
        else:
            click.echo(f"{run.run_id}  {_when(run.started_at)} UTC  {run.seconds:.2f} s  fail-on {run.fail_on}  exit {run.exit_code}")
            click.echo(_table([[r["rule"], r["severity"], r["status"], r["count"], r["baselined"] or "",
                                (r["error"] or "")[:80]] for r in run.results],
                              ["rule", "severity", "status", "count", "baselined", "error / reason"]))
        return EXIT_OK
    runs = list_check_runs(settings, limit=limit)
    if as_json:
        click.echo(_json([asdict(r) for r in runs]))
    elif not runs:
        click.echo("no check runs recorded")
    else:
        click.echo(_table([[r.run_id, _when(r.started_at), f"{r.seconds:.2f}", r.fail_on, r.rules, r.violations, r.blocking,
                            r.exit_code] for r in runs],
                          ["run", "started (UTC)", "seconds", "fail-on", "rules", "violations", "blocking", "exit"]))
    return EXIT_OK


@integrity_group.group("repair", invoke_without_command=True)
@_global_options(late=True)
@click.option("--rule", "rule_ids", multiple=True, metavar="ID", help="Only this rule's repair (repeatable); default: all.")
@click.option("--apply", "do_apply", is_flag=True, help="Apply the repairs (default: only print the plan).")
@click.option("--yes", is_flag=True, help="Apply without asking (required without a terminal).")
@click.option("--sample", type=click.IntRange(min=0), default=20, show_default=True, help="Changes shown per rule.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format.")
@click.pass_context
def integrity_repair(ctx: click.Context, rule_ids: tuple[str, ...], do_apply: bool, yes: bool, sample: int, fmt: str) -> int:
    """Plan (default) or apply the repairs of the rules that have one.

    --apply runs each rule's repair in a savepoint, re-checks it and every rule reading the
    same tables, and keeps it only if it holds; every changed row is logged for `repair undo`.
    Exits 1 if a repair had to be rolled back.
    """
    if ctx.invoked_subcommand is not None:
        return EXIT_OK
    from .report import render_plan, render_repair
    from .repair.engine import apply_repairs, plan_repairs

    settings = _settings(ctx)
    registry = _registry(settings)
    if not do_apply:
        click.echo(render_plan(plan_repairs(settings, rule_ids=rule_ids or None, sample=sample, registry=registry,
                                            progress=_progress()), fmt))
        return EXIT_OK
    if not yes:
        plan = plan_repairs(settings, rule_ids=rule_ids or None, sample=sample, registry=registry, progress=_progress())
        if not plan.total_changes:
            click.echo(render_plan(plan, fmt))
            return EXIT_OK
        _echo_err(render_plan(plan))
        _confirm(f"Apply {plan.total_changes} row change(s) to {settings.data_dir}?", yes)
    result = apply_repairs(settings, rule_ids=rule_ids or None, sample=sample, registry=registry, progress=_progress())
    _print_reconciled(result.reconciled)
    for item in result.backups:
        _echo_err(f"backup: {item.database} -> {item.path}")
    click.echo(render_repair(result, fmt))
    return EXIT_FINDINGS if result.rolled_back else EXIT_OK


@integrity_repair.command("undo")
@_global_options(late=True)
@click.argument("run_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal).")
@click.pass_context
def integrity_repair_undo(ctx: click.Context, run_id: str, yes: bool) -> int:
    """Restore exactly the values a repair run replaced (refuses if those rows changed since)."""
    from .repair.engine import undo_repair

    settings = _settings(ctx)
    _confirm(f"Undo repair run {run_id} in {settings.data_dir}?", yes)
    result = undo_repair(settings, run_id, progress=_progress())
    _print_reconciled(result.reconciled)
    for item in result.backups:
        _echo_err(f"backup: {item.database} -> {item.path}")
    click.echo(f"undid {result.undone}: {result.rows} row(s) restored (undo run {result.run_id})")
    return EXIT_OK


@integrity_repair.command("log")
@_global_options(late=True)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def integrity_repair_log(ctx: click.Context, limit: int, as_json: bool) -> int:
    """List repair and undo runs recorded in migrations.db."""
    from dataclasses import asdict

    from .repair.engine import list_repairs

    runs = list_repairs(_settings(ctx), limit=limit)
    if as_json:
        click.echo(_json([asdict(r) for r in runs]))
    elif not runs:
        click.echo("no repair runs recorded")
    else:
        click.echo(_table([[r.run_id, r.kind, _when(r.started_at), r.changes, r.status, r.undone_by or r.undoes or ""]
                           for r in runs], ["run", "kind", "started (UTC)", "rows", "status", "undone by / undoes"]))
    return EXIT_OK


@integrity_group.command("demo")
@_global_options(late=True)
@click.option("--trades", type=click.IntRange(min=200), default=5_000, show_default=True, help="Trades in the demo session.")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the demo session.")
@click.pass_context
def integrity_demo(ctx: click.Context, trades: int, seed: int) -> int:
    """Migrate, generate a session with a handful of defects, check, repair, check again."""
    from .demo import run_demo

    return run_demo(_settings(ctx), trades=trades, seed=seed, echo=click.echo)


@integrity_group.command("adversarial")
@_global_options(late=True)
@click.option("--disable-guardrails", is_flag=True,
              help="Run the attacks on a plain connection: each must then be detected by the rules it targets.")
@click.option("--attack", "attack_ids", multiple=True, metavar="ID", help="Only this attack (repeatable).")
@click.option("--list", "list_only", is_flag=True, help="List the attacks and exit.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format.")
@click.pass_context
def integrity_adversarial(ctx: click.Context, disable_guardrails: bool, attack_ids: tuple[str, ...], list_only: bool,
                          fmt: str) -> int:
    """Attack the real databases inside one rollback-only session (nothing can persist).

    Guardrails on: every attack must be blocked. --disable-guardrails: every attack must be
    detected by the rules it targets. Exit 1 on a gap, 4 if the data changed (isolation breach).
    """
    from dataclasses import asdict

    from .guard.harness import load_attacks, run_attacks

    if list_only:
        click.echo(_table([[a.id, a.kind, ", ".join(a.targets) or "-", a.description] for a in load_attacks()],
                          ["attack", "kind", "targets", "description"]))
        return EXIT_OK
    report = run_attacks(_settings(ctx), guardrails=not disable_guardrails, attack_ids=list(attack_ids) or None,
                         progress=_progress())
    if fmt == "json":
        click.echo(_json({"schema_version": 1, "data_dir": report.data_dir, "guardrails": report.guardrails,
                          "exit_code": report.exit_code, "breach": report.breach, "seconds": round(report.seconds, 3),
                          "attacks": [asdict(o) for o in report.outcomes]}))
    else:
        click.echo(_table([[o.outcome.upper() if o.outcome == "gap" else o.outcome, o.id, ", ".join(o.targets) or "-",
                            o.detail[:100]] for o in report.outcomes], ["outcome", "attack", "targets", "detail"]))
        mode = "guardrails on" if report.guardrails else "guardrails disabled"
        click.echo(f"{len(report.outcomes)} attacks ({mode}): {len(report.gaps)} gap(s); "
                   + (f"ISOLATION BREACH: {report.breach}" if report.breach else "data unchanged (content hash proven)")
                   + f"; {report.seconds:.2f} s")
    return report.exit_code


# -- entry points ----------------------------------------------------------------------------------

@click.group(name="toolkit", context_settings=CONTEXT)
def toolkit_group() -> None:
    """The trading-database toolkit: `migrate` and `integrity`."""


toolkit_group.add_command(migrate_group)
toolkit_group.add_command(integrity_group)


def migrate_main() -> None:
    sys.exit(run(migrate_group, prog_name="migrate"))


def integrity_main() -> None:
    sys.exit(run(integrity_group, prog_name="integrity"))


def main() -> None:
    """`python -m toolkit`."""
    sys.exit(run(toolkit_group, prog_name="python -m toolkit"))
