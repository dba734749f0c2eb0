"""`integrity`: the gate, baselines, history, repair, the demo and the adversarial harness. Each
command parses, loads the content it needs (``toolkit.content``), makes one call into the library
and renders the result."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import EXIT_FINDINGS, EXIT_OK
from .common import (CONTEXT, _confirm, _echo_err, _global_options, _json, _print_reconciled, _progress, _Settings,
                     _settings, _table, _when)


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


def _registry(settings):
    from ..content import load_registry

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
@click.option("--history-file", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Record the run in FILE (an SQLite run history, created if absent) instead of migrations.db: "
                   "for a read-only data directory. Read it with `integrity history --history-file FILE`.")
@click.pass_context
def integrity_check(ctx: click.Context, rule_ids: tuple[str, ...], fail_on: str, fmt: str, output: Path | None,
                    baseline: Path | None, sample: int, history_file: Path | None) -> int:
    """Run the rules over all databases at once; the pre-deploy gate.

    Exit codes: 0 nothing at or above --fail-on, 1 violations (or a rule errored or was
    skipped), 3 runtime error. Every run is recorded in migrations.db, or in --history-file
    (see `integrity history`); reads only otherwise, so it runs on a read-only snapshot, where
    the run is recorded only with --history-file (stderr says so; the exit code is the same).
    """
    from ..outputs import refuse_output_over_input, write_text_atomic
    from ..report import render, summary
    from ..rules.baseline import load_baseline
    from ..rules.history import check_history_file, record_check_run
    from ..rules.model import Severity
    from ..rules.runner import run_checks

    settings = _settings(ctx)
    if output is not None:
        refuse_output_over_input(settings, output, "--output")
    if history_file is not None:
        if output is not None and output.resolve() == history_file.resolve():
            raise click.UsageError("--output and --history-file name the same file; name two files")
        check_history_file(settings, history_file)
    accepted = load_baseline(baseline) if baseline is not None else None
    report = run_checks(settings, rule_ids=list(rule_ids) or None, registry=_registry(settings),
                        fail_on=Severity[fail_on.upper()], sample=sample,
                        accepted=accepted.fingerprints if accepted else None,
                        baseline_name=str(baseline) if baseline else None, progress=_progress())
    recorded = record_check_run(settings, report, history_file=history_file)
    if not recorded.recorded:
        _echo_err(f"run history not recorded: {recorded.read_only} is read-only; use --history-file FILE to keep it elsewhere")
    text = render(report, fmt)
    if output is not None:
        write_text_atomic(output, text if text.endswith("\n") else text + "\n")
        _echo_err(f"{fmt} report written to {output}; {summary(report)}")
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
    from ..outputs import refuse_output_over_input
    from ..rules.baseline import write_baseline
    from ..rules.runner import run_checks

    settings = _settings(ctx)
    refuse_output_over_input(settings, file, "baseline file")
    report = run_checks(settings, rule_ids=list(rule_ids) or None, registry=_registry(settings), sample=0,
                        collect=True, progress=_progress())
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
    from ..rules.baseline import load_baseline, prune_baseline
    from ..rules.runner import run_checks

    settings = _settings(ctx)
    load_baseline(file)  # refuse a malformed file before running anything
    report = run_checks(settings, registry=_registry(settings), sample=0, collect=True, progress=_progress())
    kept, removed = prune_baseline(file, report)
    click.echo(f"baseline {file}: {removed} pruned, {kept} kept")
    return EXIT_OK


@integrity_group.command("history")
@_global_options(late=True)
@click.argument("run_id", required=False)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs to list.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--history-file", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Read the runs `integrity check --history-file FILE` recorded, instead of migrations.db.")
@click.pass_context
def integrity_history(ctx: click.Context, run_id: str | None, limit: int, as_json: bool, history_file: Path | None) -> int:
    """List recorded check runs, or show one run's results per rule (reads only)."""
    from dataclasses import asdict

    from ..rules.history import check_run, list_check_runs

    settings = _settings(ctx)
    if run_id:
        run = check_run(settings, run_id, history_file=history_file)
        if as_json:
            click.echo(_json(asdict(run)))
        else:
            click.echo(f"{run.run_id}  {_when(run.started_at)} UTC  {run.seconds:.2f} s  fail-on {run.fail_on}  exit {run.exit_code}")
            click.echo(_table([[r["rule"], r["severity"], r["status"], r["count"], r["baselined"] or "",
                                (r["error"] or "")[:80]] for r in run.results],
                              ["rule", "severity", "status", "count", "baselined", "error / reason"]))
        return EXIT_OK
    runs = list_check_runs(settings, limit=limit, history_file=history_file)
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
@click.option("--apply", "apply_plan", is_flag=False, flag_value="", default=None, metavar="[PLAN]",
              help="Apply the repairs: those of a plan saved with --save-plan (exactly that plan, refused if the "
                   "data changed since), or, without PLAN, a plan made now (default: only print the plan).")
@click.option("--save-plan", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Write the plan to FILE (JSON lines), to review and apply later with --apply FILE.")
@click.option("--yes", is_flag=True, help="Apply without asking (required without a terminal).")
@click.option("--sample", type=click.IntRange(min=0), default=20, show_default=True, help="Changes shown per rule.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True, help="Output format.")
@click.pass_context
def integrity_repair(ctx: click.Context, rule_ids: tuple[str, ...], apply_plan: str | None, save_plan: Path | None,
                     yes: bool, sample: int, fmt: str) -> int:
    """Plan (default), save or apply the repairs of the rules that have one.

    One census plans every repair; --apply writes exactly that plan (a saved one is refused,
    exit 1, changing nothing, if a row it changes no longer holds what it saw), re-checks the
    repaired rules and every rule reading the same tables, and keeps a repair only if it holds;
    every changed row is logged for `repair undo`. Exits 1 if a repair had to be rolled back.
    """
    if ctx.invoked_subcommand is not None:
        return EXIT_OK
    from ..repair.apply import apply_repairs
    from ..repair.plan import RepairPlan, plan_repairs
    from ..outputs import refuse_output_over_input
    from ..report import render_plan

    settings = _settings(ctx)
    if save_plan is not None:
        refuse_output_over_input(settings, save_plan, "--save-plan")
    registry = _registry(settings)
    if apply_plan == "" and yes and save_plan is None:
        # Nothing to show or keep first: plan inside the repair's own transaction (one census).
        result = apply_repairs(settings, registry=registry, rule_ids=rule_ids or None, sample=sample, progress=_progress())
        return _repaired(result, fmt)
    if apply_plan:
        if rule_ids:
            raise click.UsageError("--rule cannot narrow a saved plan; make a new plan with --rule instead")
        plan = RepairPlan.load(Path(apply_plan), registry, sample=sample)
    else:
        plan = plan_repairs(settings, registry=registry, rule_ids=rule_ids or None, sample=sample, progress=_progress())
    try:
        if save_plan is not None:
            plan.save(save_plan)
            _echo_err(f"plan {plan.plan_id} saved to {save_plan}; apply it with `integrity repair --apply {save_plan}`")
        if apply_plan is None:
            click.echo(render_plan(plan, fmt))
            return EXIT_OK
        if not yes:
            if not plan.total_changes:
                click.echo(render_plan(plan, fmt))
                return EXIT_OK
            _echo_err(render_plan(plan))
            _confirm(f"Apply {plan.total_changes} row change(s) to {settings.data_dir}?", yes)
        result = apply_repairs(settings, registry=registry, plan=plan, progress=_progress())
    finally:
        plan.close()
    return _repaired(result, fmt)


def _repaired(result: Any, fmt: str) -> int:
    from ..report import render_repair

    _print_reconciled(result.reconciled)
    for item in result.backups:
        _echo_err(f"backup: {item.database} -> {item.path}")
    click.echo(render_repair(result, fmt))
    return EXIT_FINDINGS if result.incomplete else EXIT_OK


@integrity_repair.command("undo")
@_global_options(late=True)
@click.argument("run_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal).")
@click.pass_context
def integrity_repair_undo(ctx: click.Context, run_id: str, yes: bool) -> int:
    """Restore exactly the values a repair run replaced (refuses if those rows changed since)."""
    from ..repair.undo import undo_repair

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

    from ..repair.log import list_repairs

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

    from ..content import bundled_attacks
    from ..guard.harness import run_attacks

    attacks = bundled_attacks()
    if list_only:
        click.echo(_table([[a.id, a.kind, ", ".join(a.targets) or "-", a.description] for a in attacks],
                          ["attack", "kind", "targets", "description"]))
        return EXIT_OK
    settings = _settings(ctx)
    report = run_attacks(settings, registry=_registry(settings), attacks=attacks, guardrails=not disable_guardrails,
                         attack_ids=list(attack_ids) or None, progress=_progress())
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
