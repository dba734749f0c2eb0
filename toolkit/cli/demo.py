"""`integrity demo`: the whole product on a throw-away session, in one command.

Creates and migrates the databases, generates a session with a handful of defects of several kinds,
runs the gate (findings), plans the repair, applies it, and runs the gate again: clean but for what
has no automatic repair, which it explains.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ..config import ALL_FILES, Settings
from ..errors import UsageError

__all__ = ["DEMO_DEFECTS", "MARKER", "run_demo"]

#: A handful of defects of several kinds: seven with an automatic repair, two without.
DEMO_DEFECTS = {
    "unlinked_closes": 3,
    "realized_pnl_mismatch": 2,
    "lot_status_inconsistent": 2,
    "position_ledger_mismatch": 2,
    "bankroll_mismatch": 1,
    "opening_leg_with_pnl": 1,
    "rl_state_missing_avg_reward": 1,
    "orphaned_sells": 1,
    "qtable_unsafe_keys": 1,
}

MARKER = ".toolkit-demo"


def _clear_previous_demo(settings: Settings) -> None:
    """The demo replaces what an earlier demo created, and refuses to touch anything else."""
    directory = settings.data_dir
    present = [settings.path(name) for name in ALL_FILES if settings.path(name).exists()]
    marker = directory / MARKER
    if present and not marker.exists():
        names = ", ".join(p.name for p in present)
        raise UsageError(f"{directory} already holds databases the demo did not create ({names})",
                         hint="run the demo on an empty directory: integrity --data-dir demo-data demo")
    if marker.exists():
        for path in present:
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        shutil.rmtree(settings.backup_dir, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text("created by `integrity demo`; running the demo again replaces the databases here\n", encoding="utf-8")


def run_demo(settings: Settings, *, trades: int = 5_000, seed: int = 42, echo: Callable[[str], None] = print) -> int:
    from ..content import content_package, load_migrations, load_registry
    from ..migrate.runner import upgrade
    from ..repair.apply import apply_repairs
    from ..repair.plan import plan_repairs
    from ..report import render_plan, render_repair, render_table
    from ..rules.history import record_check_run
    from ..rules.runner import run_checks

    generate = content_package("fixtures").generate
    _clear_previous_demo(settings)
    registry = load_registry(settings)

    echo(f"== 1. migrate: create and migrate the databases in {settings.data_dir}")
    for step in upgrade(settings, migrations=load_migrations(settings)).steps:
        echo(f"   applied {step.migration} to {step.database}")

    echo(f"\n== 2. a paper-trading session of {trades:,} trades, with defects injected by raw SQL")
    manifest = generate(settings, trades=trades, tickers=40, seed=seed, defects=DEMO_DEFECTS)
    s = manifest.summary
    echo(f"   {s['trades']:,} trades, {s['lot_matches']:,} lot matches, {s['open_positions']} open positions, "
         f"{s['orders']:,} orders, {s['fills']:,} fills, {s['snapshots']} snapshots, {s['rl_models']} RL models")
    echo("   injected: " + ", ".join(f"{rule} x{len(keys)}" for rule, keys in sorted(manifest.defects.items())))

    echo("\n== 3. the gate: integrity check")
    first = run_checks(settings, registry=registry, sample=3)
    record_check_run(settings, first)
    echo(render_table(first))

    echo("\n== 4. the repair plan: integrity repair")
    plan = plan_repairs(settings, registry=registry, sample=3)
    echo(render_plan(plan))

    echo("\n== 5. apply that plan: integrity repair --apply")
    try:
        result = apply_repairs(settings, registry=registry, plan=plan)
    finally:
        plan.close()
    echo(render_repair(result))

    echo("\n== 6. the gate again")
    second = run_checks(settings, registry=registry, sample=3)
    record_check_run(settings, second)
    echo(render_table(second))
    left = [r for r in second.results if r.count or r.status in ("error", "skipped")]
    echo("")
    if not left:
        echo("clean: every defect was repaired")
    for item in left:
        how = "has an automatic repair, but it did not hold" if item.rule.repairable else f"needs a person: {item.rule.remedy}"
        echo(f"left: {item.rule.id} ({item.count}) {how}")
    stuck = [r for r in left if r.rule.repairable]
    echo(f"\nundo the repair with: integrity --data-dir {settings.data_dir} repair undo {result.run_id}")
    return 1 if stuck or result.incomplete else 0
