"""Repairs: plan (one census → a RepairPlan you can show, save and load), apply exactly that plan
(refused when stale; verified; journaled), the repair log, and undo.

    plan.py     census, planning, RepairPlan (+ save/load)     store.py   a plan's changes, on disk
    writer.py   row statements, batches, the per-file journal  verify.py  re-checking written repairs
    apply.py    apply_repairs(plan)                            log.py     repair_runs / repair_log
    undo.py     undo_repair(run_id)                            model.py   Change, Untouched, planners

Names are imported lazily.
"""
from __future__ import annotations

from .._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "Change": ".model", "Untouched": ".model", "update_row": ".model", "changed_columns": ".model",
    "PlanStatus": ".plan", "RulePlan": ".plan", "RepairPlan": ".plan", "plan_repairs": ".plan",
    "RuleOutcome": ".apply", "RepairResult": ".apply", "apply_repairs": ".apply",
    "RepairConflict": ".writer", "StalePlanError": ".writer",
    "RepairRun": ".log", "RunStatus": ".log", "list_repairs": ".log", "reconcile_repair_log": ".log",
    "UndoResult": ".undo", "undo_repair": ".undo",
})
