"""`integrity repair --apply`: write exactly a :class:`~toolkit.repair.plan.RepairPlan`, verified.

For the data directory, under its lock::

    BEGIN IMMEDIATE                      one transaction over positions, trading, ml_training
      every planned row is compared with the plan: if one no longer holds what the plan saw, the plan
      is stale — refused, nothing written (exit 1)
      SAVEPOINT (all rules)
        each rule's changes, in its own savepoint, in batches; each row journaled in its own file;
        the first change to a file backs that file up (its committed state) first
        re-run the repaired rules and every rule reading a changed table, on the touched scope (one
        ledger scan): RELEASE if each repaired rule is clean there (but for what it left untouched)
        and no other rule got worse than the plan's census;
      otherwise ROLLBACK TO, and again rule by rule: each rule's repair in its own savepoint,
      verified the same way before the next, rolled back alone if it fails, and the report says why
      migrations.db: the run, as "committing", with the journal rows each file will hold
    COMMIT                               per file, the ledger first: trading, positions, ml_training
    migrations.db: the run's outcome; the journals copied into repair_log

Each file commits all of its repair and its journal, or neither; SQLite commits attached files one
after the other, so a failure (a full disk) or a kill can leave the ledger committed and a
projection not — never the reverse. Then the command says exactly which files committed, exits 3,
and logs the run as ``partial``; `integrity repair undo` reverses what did commit. A process killed
before it could say is settled by the next command from the journals (applied, partial, not
committed). Repairs never delete ledger rows; rows removed from derived tables (positions) are kept
in the log.
"""
from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from ..backend import backend_for
from ..backup import Backup
from ..backend.base import Backend
from ..config import DATABASES, Settings
from ..db import atomic
from ..errors import ToolkitError, UsageError
from ..migrate.state import ensure_bookkeeping, refuse_lost_databases
from ..rules.model import CheckContext, Rule
from ..rules.registry import Registry
from ..rules.runner import new_run_id
from .log import RunStatus, committed_files, reconcile_repair_log, record_run
from .plan import PlanStatus, RepairPlan, RulePlan, plan_repairs
from .store import PlannedChange
from .verify import Written, verify_repairs
from .writer import StalePlanError, Writer, read_row, same_value

__all__ = ["RuleOutcome", "RepairResult", "RepairCommitError", "apply_repairs", "stale_reason", "COMMIT_ORDER"]

#: The order the files commit in: the ledger before its projections, so a partial commit never
#: leaves a projection ahead of the ledger it projects.
COMMIT_ORDER = ("trading", "positions", "ml_training")

#: Called at named points of a repair's commit (``before_commit``, ``after_commit``); tests use it
#: to kill the process there.
CHECKPOINT: list[Callable[[str], None]] = [lambda point: None]


class RepairCommitError(ToolkitError):
    """A repair's commit failed part way: some files committed their repair, others did not."""


@dataclass
class RuleOutcome(RulePlan):
    verified: bool = False
    rolled_back: str | None = None


@dataclass
class RepairResult:
    run_id: str
    data_dir: str
    started_at: float
    plan_id: str = ""
    seconds: float = 0.0
    rules: list[RuleOutcome] = field(default_factory=list)
    backups: list[Backup] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)

    @property
    def applied_changes(self) -> int:
        return sum(r.total_changes for r in self.rules if r.status == PlanStatus.APPLIED)

    @property
    def rolled_back(self) -> list[RuleOutcome]:
        return [r for r in self.rules if r.status == PlanStatus.ROLLED_BACK]

    @property
    def incomplete(self) -> list[RuleOutcome]:
        """Rules whose repair did not happen: rolled back, or not planned (an error, a skipped rule)."""
        return [r for r in self.rules if r.status in (PlanStatus.ROLLED_BACK, PlanStatus.ERROR, PlanStatus.SKIPPED)]


def stale_reason(conn: sqlite3.Connection, item: PlannedChange, *, chained: bool) -> str | None:
    """Why a planned change no longer fits its row, or None. ``chained``: compare the whole ``before``
    (the plan's earlier changes to the row are already written); else only what the plan read from
    the data (``base``)."""
    change = item.change
    where = f"{change.database}.{change.table} {change.key}"
    if change.op == "insert":
        if (chained or item.first) and read_row(conn, change.database, change.table, change.key) is not None:
            return f"{where}: a row exists where the plan inserts one"
        return None
    expected = (change.before if chained else item.base) or {}
    if not (chained or item.first or expected):
        return None
    live = read_row(conn, change.database, change.table, change.key, expected)
    if live is None:
        return f"{where}: the row is gone"
    for column, value in expected.items():
        if not same_value(live.get(column), value):
            return f"{where}: {column} is {live.get(column)!r}, the plan saw {value!r}"
    return None


def _refuse_if_stale(conn: sqlite3.Connection, plan: RepairPlan, rule_ids: Iterable[str], *, chained: bool) -> None:
    found, shown = 0, []
    for rule_id in rule_ids:
        for item in plan.store.planned(rule_id):
            reason = stale_reason(conn, item, chained=chained)
            if reason is not None:
                found += 1
                if len(shown) < 2:
                    shown.append(reason)
    if found:
        raise StalePlanError(
            f"plan {plan.plan_id} is stale: {found} row(s) it changes no longer hold what it saw, e.g. {shown[0]}"
            + (f"; also {shown[1]}" if len(shown) > 1 else ""),
            hint="nothing was changed; make a new plan with `integrity repair`")


def _prepare_files(backend: Backend) -> None:
    """Bookkeeping tables exist in every database before the repair transaction (no DDL inside it)."""
    for name in DATABASES:
        conn = backend.connect(name)
        try:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_toolkit_repair_journal'").fetchone():
                with backend.atomic(conn, action=f"preparing the repair journal of {backend.where(name)}"):
                    ensure_bookkeeping(conn)
        finally:
            conn.close()


class _Discard(Exception):
    """Raised inside a savepoint to roll it back (a verification that failed is not an error)."""


@dataclass
class _Apply:
    """What applying needs, shared by the two ways of applying (together, then one by one)."""

    ctx: CheckContext
    conn: sqlite3.Connection
    registry: Registry
    plan: RepairPlan
    run_id: str
    backup_once: Callable[[str], None]
    say: Callable[[str], None]
    now: int = field(default_factory=lambda: int(time.time()))
    #: Journal rows per file of everything applied so far (what each file will hold once committed).
    rows: dict[str, int] = field(default_factory=dict)

    def write(self, rule: Rule, seq: dict[str, int]) -> Written:
        """Write one rule's planned changes in its own savepoint (released; the caller verifies)."""
        self.say(f"repairing {rule.id}")
        planned = self.plan.rule_plan(rule.id)
        outcome = RuleOutcome(**vars(planned))
        writer = Writer(self.conn, self.run_id, self.now, self.backup_once, seq=seq)
        with atomic(self.conn, "repair_rule"):
            for change in self.plan.store.changes(rule.id):
                writer.add(change)
            writer.flush()
        return Written(rule, outcome, writer, self.plan.store.untouched_keys(rule.id))

    def together(self, rules: list[Rule]) -> dict[str, RuleOutcome] | None:
        """Every rule's repair inside one outer savepoint, verified once; None (and nothing changed)
        if a repair raised or the verification failed."""
        written: list[Written] = []
        seq: dict[str, int] = {}
        counts = {rule_id: Counter(by) for rule_id, by in self.plan.census.items()}
        problem: str | None = None
        try:
            with atomic(self.conn, "repair_all"):
                for rule in rules:
                    written.append(self.write(rule, seq))  # the writers share seq: one journal sequence per file
                self.say("verifying the repairs")
                problem = verify_repairs(self.ctx, self.registry, written, counts)
                if problem is not None:
                    raise _Discard(problem)
        except _Discard:
            pass
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            self.say(f"verifying the repairs together failed ({problem}): repairing rule by rule")
            return None
        self.plan.census.clear()
        self.plan.census.update(counts)
        self.rows = {name: n for name, n in seq.items() if n}
        for item in written:
            item.outcome.status, item.outcome.verified = PlanStatus.APPLIED, True
        return {w.rule.id: w.outcome for w in written}

    def one_by_one(self, rules: list[Rule]) -> dict[str, RuleOutcome]:
        """Each rule's repair verified before the next; one that fails is rolled back alone. A rule
        whose planned rows depended on a rolled-back rule's changes is rolled back too (stale)."""
        outcomes: dict[str, RuleOutcome] = {}
        seq: dict[str, int] = {}
        for rule in rules:
            outcome = outcomes[rule.id] = RuleOutcome(**vars(self.plan.rule_plan(rule.id)))
            problem: str | None = None
            try:
                with atomic(self.conn, "repair_checked"):
                    _refuse_if_stale(self.conn, self.plan, [rule.id], chained=True)
                    item = self.write(rule, dict(seq))
                    outcome = outcomes[rule.id] = item.outcome
                    problem = verify_repairs(self.ctx, self.registry, [item], self.plan.census)
                    if problem is not None:
                        raise _Discard(problem)
            except _Discard:
                pass
            except StalePlanError as exc:
                problem = f"its rows no longer hold what the plan saw (an earlier repair was rolled back): {exc.message}"
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                outcome.status, outcome.rolled_back = PlanStatus.ROLLED_BACK, problem
                continue
            seq = item.writer.seq
            self.rows = {name: n for name, n in seq.items() if n}
            outcome.status, outcome.verified = PlanStatus.APPLIED, True
        return outcomes


def apply_repairs(
    settings: Settings,
    *,
    registry: Registry,
    plan: RepairPlan | None = None,
    rule_ids: Iterable[str] | None = None,
    sample: int = 20,
    progress: Callable[[str], None] | None = None,
    connection_factory: Callable[[dict], sqlite3.Connection] | None = None,
) -> RepairResult:
    """Apply ``plan`` exactly (see the module doc); without one, plan inside the write transaction
    (one census) and apply that plan.

    Refuses (:class:`StalePlanError`, exit 1, nothing changed) a plan whose rows changed since it was
    made, and (UsageError) a plan made for another data directory.
    """
    say = progress or (lambda _: None)
    if plan is not None and Path(plan.data_dir) != settings.data_dir.resolve():
        raise UsageError(f"plan {plan.plan_id} was made for {plan.data_dir}, not {settings.data_dir.resolve()}",
                         hint="apply it with --data-dir set to the directory it was made for, or make a new plan")
    refuse_lost_databases(settings)
    backend = backend_for(settings)
    backend.require(DATABASES, writable=True)
    result = RepairResult(new_run_id("rep"), str(settings.data_dir), time.time())
    clock = time.perf_counter()
    made_here = plan is None
    with backend.lock("integrity repair --apply"):
        result.reconciled = reconcile_repair_log(settings)
        _prepare_files(backend)
        if connection_factory is not None:
            conn = connection_factory({name: settings.path(name) for name in DATABASES})
        else:
            # Repairs write through the guarded connection, as trusted code: they may correct derived
            # columns and the positions projection, but can never delete a ledger row or touch what a
            # trade executed at (the authorizer refuses it, whatever a plan says).
            from ..guard.connection import connect_guarded

            conn = connect_guarded(settings, names=COMMIT_ORDER, cache_kib=32_768, guards=registry.guards)
        trust = conn.trusted("repair") if hasattr(conn, "trusted") else nullcontext()
        committing = False
        applying: _Apply | None = None
        try:
            with trust, backend.atomic(conn, action="starting the repair"):
                if plan is None:
                    # One run: plan inside this transaction (it holds the write lock, so nothing can
                    # change between the census and the writes, and no stale check is needed).
                    plan = plan_repairs(settings, registry=registry, rule_ids=rule_ids, sample=sample,
                                        progress=progress, conn=conn)
                else:
                    say("checking that the plan still fits the data")
                    _refuse_if_stale(conn, plan, [r.rule.id for r in plan.rules if r.status == PlanStatus.PLANNED],
                                     chained=False)
                result.plan_id = plan.plan_id
                rules = [r.rule for r in plan.rules]
                pending = [r.rule for r in plan.rules if r.status == PlanStatus.PLANNED]
                ctx = CheckContext(conn, settings, progress=progress, want_fixes=True)
                if made_here:  # the census checked the pages in this very transaction: no second pass
                    ctx.cache["quick_check"] = dict(plan.pages)
                backed_up: set[str] = set()

                def backup_once(database: str) -> None:
                    if database not in backed_up:
                        backed_up.add(database)
                        say(f"backing up {database}")
                        item = backend.backup(database, "pre-repair")
                        if item is not None:
                            result.backups.append(item)

                # First all repairs at once, verified by one re-run of the rules (one ledger scan
                # instead of one per rule); if that verification fails, undo them all and go rule by
                # rule, so each rule stands or falls on its own and the report says which and why.
                applying = _Apply(ctx, conn, registry, plan, result.run_id, backup_once, say)
                outcomes = applying.together(pending) if len(pending) > 1 else None
                if outcomes is None:
                    outcomes = applying.one_by_one(pending)
                for rule in rules:
                    result.rules.append(outcomes.get(rule.id) or RuleOutcome(**vars(plan.rule_plan(rule.id))))
                if applying.rows:
                    record_run(settings, result, status=RunStatus.COMMITTING, files=applying.rows)
                CHECKPOINT[0]("before_commit")
                committing = True  # the body is done: what fails from here is the COMMIT
        except Exception as exc:
            if not committing or applying is None or not applying.rows:
                raise
            raise _commit_failed(settings, result, applying.rows, exc) from exc
        finally:
            conn.close()
            if made_here and plan is not None:
                plan.close()
        CHECKPOINT[0]("after_commit")
        result.seconds = time.perf_counter() - clock
        record_run(settings, result)
        result.reconciled += reconcile_repair_log(settings)
    return result


def _commit_failed(settings: Settings, result: RepairResult, files: dict[str, int], exc: Exception) -> RepairCommitError:
    """Say exactly which files committed the repair, and log the run as partial (or not committed)."""
    done, not_done = committed_files(settings, result.run_id, files)
    status = RunStatus.PARTIAL if done else RunStatus.NOT_COMMITTED
    try:
        record_run(settings, result, status=status, files=files)
        reconcile_repair_log(settings)
    except Exception:  # the report below is what matters; the next command settles the log
        pass
    cause = exc.message if isinstance(exc, ToolkitError) else str(exc)
    names = lambda items: ", ".join(f"{n}.db" for n in items) or "no file"  # noqa: E731
    if not done:
        return RepairCommitError(f"repair run {result.run_id}: the commit failed ({cause}); no file changed",
                                 hint="free the cause (disk space?) and run `integrity repair --apply` again")
    return RepairCommitError(
        f"repair run {result.run_id}: the commit failed part way ({cause}): committed to {names(done)}, "
        f"NOT to {names(not_done)}; logged as partial",
        hint=f"undo what committed with `integrity repair undo {result.run_id}`, or free the cause and repair again")
