"""`integrity repair` (without --apply): one census of the rules, each repairable rule's changes
planned from it, kept as a :class:`RepairPlan` — a value that can be shown, saved, loaded and applied
exactly (``repair.apply`` refuses it when the rows it changes no longer hold what it saw).

The census runs every selected rule and every rule reading a table some repair changes, once, on a
read-only connection (the SQL rules on a second one, in a thread): their violation counts per scope
(ticker) are what verification compares against after applying, and the repairable rules'
violations, with their fixes, are what the planners turn into row changes. Each change's ``before``
is read from its row then, so the plan records what it saw.
"""
from __future__ import annotations

import enum
import json
import threading
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DATABASES, Settings
from ..backend import backend_for
from ..errors import LedgerError, UsageError
from ..migrate.state import refuse_lost_databases
from ..rules.model import CheckContext, Rule, Violation
from ..rules.registry import Registry
from ..rules.runner import RuleResult, execute_rules, new_run_id, sql_violations
from .model import LEDGER_TABLES, Change, Untouched
from .store import ChangeStore
from .writer import canonical_json, read_row

__all__ = ["PlanStatus", "RulePlan", "RepairPlan", "plan_repairs", "iter_violations", "tables_read", "PLAN_FORMAT"]

#: The first line of a saved plan names its format and version.
PLAN_FORMAT = "paper-ledger-toolkit repair plan"
PLAN_VERSION = 1

#: How many violations (with their fixes) the census keeps for planning; beyond it, a rule's
#: violations are computed again while it is planned (streaming, on the tickers it has).
CENSUS_BUFFER = 100_000


class PlanStatus(enum.StrEnum):
    """What became of one rule in a plan, and after applying it."""

    NOTHING = "nothing"
    PLANNED = "planned"
    NOT_REPAIRABLE = "not repairable"
    SKIPPED = "skipped"
    ERROR = "error"
    APPLIED = "applied"
    ROLLED_BACK = "rolled back"


@dataclass
class RulePlan:
    rule: Rule
    status: PlanStatus = PlanStatus.NOTHING
    violations: int = 0
    changes: Counter = field(default_factory=Counter)   # op -> rows
    samples: list[Change] = field(default_factory=list)
    untouched: int = 0
    untouched_samples: list[Untouched] = field(default_factory=list)
    reason: str | None = None

    @property
    def total_changes(self) -> int:
        return sum(self.changes.values())


@dataclass
class RepairPlan:
    """What applying would change: per rule, its status and counts; every row change, in order, in
    ``store``; the census counts per rule and scope, for verification after applying."""

    data_dir: str
    plan_id: str = field(default_factory=lambda: new_run_id("pln"))
    created_at: float = field(default_factory=time.time)
    rules: list[RulePlan] = field(default_factory=list)
    census: dict[str, Counter] = field(default_factory=dict)
    store: ChangeStore = field(default_factory=ChangeStore, repr=False)
    #: What the census learnt of the files' pages (never saved: a plan applied later checks again).
    pages: dict[str, list[str]] = field(default_factory=dict, repr=False)

    @property
    def total_changes(self) -> int:
        return sum(r.total_changes for r in self.rules)

    def rule_plan(self, rule_id: str) -> RulePlan:
        return next(r for r in self.rules if r.rule.id == rule_id)

    def close(self) -> None:
        self.store.close()

    # -- saving and loading ----------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the plan as JSON lines (a header, then one change or untouched key a line), via a
        temporary file renamed into place."""
        header = {
            "format": PLAN_FORMAT, "version": PLAN_VERSION, "plan_id": self.plan_id, "created_at": self.created_at,
            "data_dir": self.data_dir,
            "rules": [{"id": r.rule.id, "status": str(r.status), "violations": r.violations, "changes": dict(r.changes),
                       "untouched": r.untouched, "reason": r.reason,
                       "untouched_samples": [[u.key, u.reason] for u in r.untouched_samples]} for r in self.rules],
            "census": {rule_id: [[scope, n] for scope, n in counts.items()] for rule_id, counts in self.census.items()},
        }
        temporary = path.with_name(f".{path.name}.{new_run_id('tmp')}")
        try:
            with temporary.open("w", encoding="utf-8") as out:
                out.write(canonical_json(header) + "\n")
                for item in self.store.planned():
                    c = item.change
                    out.write(canonical_json({"change": [c.rule_id, c.database, c.table, c.op, c.key, c.before, c.after,
                                                         item.base, item.first, c.repairs]}) + "\n")
                for rule_id, key in self.store.untouched():
                    out.write(canonical_json({"untouched": [rule_id, json.loads(key)]}) + "\n")
            temporary.replace(path)
        finally:
            temporary.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path, registry: Registry, *, sample: int = 20) -> RepairPlan:
        """Read a saved plan; refuses (UsageError) a file that is not one, naming the line."""
        def bad(line: int, why: str) -> UsageError:
            return UsageError(f"{path}:{line}: not a repair plan ({why})",
                              hint="save one with `integrity repair --save-plan FILE`")

        try:
            handle = path.open(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the plan ({exc.strerror or exc})", hint="check the path") from exc
        with handle:
            try:
                header = json.loads(handle.readline())
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise bad(1, f"the first line is not JSON: {exc}") from None
            if not isinstance(header, dict) or header.get("format") != PLAN_FORMAT:
                raise bad(1, "no plan header")
            if header.get("version") != PLAN_VERSION:
                raise bad(1, f"version {header.get('version')!r}, this toolkit reads {PLAN_VERSION}")
            plan = cls(str(header.get("data_dir")), plan_id=str(header.get("plan_id")),
                       created_at=float(header.get("created_at") or 0))
            try:
                for item in header["rules"]:
                    rule = registry[item["id"]]
                    plan.rules.append(RulePlan(rule, PlanStatus(item["status"]), int(item["violations"]),
                                               Counter({str(k): int(v) for k, v in item["changes"].items()}),
                                               untouched=int(item["untouched"]), reason=item["reason"],
                                               untouched_samples=[Untouched(rule.id, k, r) for k, r in item["untouched_samples"]]))
                plan.census = {rule_id: Counter({scope: int(n) for scope, n in pairs})
                               for rule_id, pairs in header["census"].items()}
            except (KeyError, TypeError, ValueError) as exc:
                raise bad(1, f"malformed header: {type(exc).__name__}: {exc}") from None
            counted: Counter = Counter()
            for number, line in enumerate(handle, 2):
                try:
                    data = json.loads(line)
                    if "change" in data:
                        rule_id, database, table, op, key, before, after, base, first, repairs = data["change"]
                        _check_change(rule_id, database, table, op, key, before, after, plan)
                        plan.store.load_row(rule_id, database, table, op, key, before, after, base, first, repairs)
                        counted[(rule_id, op)] += 1
                    else:
                        rule_id, key = data["untouched"]
                        plan.store.add_untouched(str(rule_id), dict(key))
                except UsageError as exc:
                    raise bad(number, exc.message) from None
                except (ValueError, TypeError, KeyError, RecursionError) as exc:
                    raise bad(number, f"{type(exc).__name__}: {exc}") from None
        for rule_plan in plan.rules:
            wanted = {op: n for op, n in rule_plan.changes.items() if n}
            found = {op: counted[(rule_plan.rule.id, op)] for op in ("update", "insert", "delete") if counted[(rule_plan.rule.id, op)]}
            if wanted != found:
                raise bad(1, f"{rule_plan.rule.id}: the header counts {wanted} changes, the file holds {found}")
            rule_plan.samples = [c for _, c in zip(range(sample), plan.store.changes(rule_plan.rule.id))]
        return plan


def _check_change(rule_id: Any, database: Any, table: Any, op: Any, key: Any, before: Any, after: Any, plan: RepairPlan) -> None:
    """A loaded change must be well formed, belong to a planned rule, and never delete a ledger row."""
    if rule_id not in {r.rule.id for r in plan.rules if r.status == PlanStatus.PLANNED}:
        raise UsageError(f"a change for {rule_id!r}, which the plan does not repair")
    if database not in DATABASES or not isinstance(table, str) or op not in ("update", "insert", "delete"):
        raise UsageError(f"a change of {database!r}.{table!r} by {op!r}")
    if not isinstance(key, dict) or not key or not all(isinstance(k, str) for k in key):
        raise UsageError(f"a change without a row key ({key!r})")
    if op != "delete" and (not isinstance(after, dict) or not after):
        raise UsageError(f"an {op} without values")
    if (database, table) in LEDGER_TABLES and op == "delete":
        raise UsageError(f"a change deleting a ledger row ({database}.{table} {key}); ledger rows are never deleted")


# -- the census ----------------------------------------------------------------------------------------

def iter_violations(ctx: CheckContext, rule: Rule) -> Iterator[Violation]:
    """One rule's violations (with fixes when ``ctx.want_fixes``)."""
    if rule.scan is not None:
        yield from rule.scan.run(ctx, {rule.id: rule})
    elif rule.sql is not None:
        yield from sql_violations(ctx, rule)
    else:
        yield from rule.check(ctx, rule)  # type: ignore[misc]


def tables_read(rule: Rule) -> set[tuple[str, str]]:
    return {tuple(item.split(".", 1)) for item in rule.reads}  # type: ignore[misc]


class Census:
    """One run of the rules before repairing: their results, their violation counts per scope
    (ticker), and the repairable rules' violations with their fixes — so planning needs no second
    pass over the ledger."""

    def __init__(self, ctx: CheckContext, rules: list[Rule], repairable: Iterable[Rule], *, sample: int = 0,
                 limit: int = CENSUS_BUFFER, worker: Callable[[], sqlite3.Connection] | None = None) -> None:
        self.by_scope: dict[str, Counter] = {r.id: Counter() for r in rules}
        self.kept: dict[str, list[Violation]] = {r.id: [] for r in repairable}
        self.overflow: set[str] = set()
        room = [limit]
        by_scope, kept, overflow = self.by_scope, self.kept, self.overflow
        lock = threading.Lock()  # the worker thread (SQL rules) observes too

        def observe(violation: Violation) -> None:
            with lock:
                by_scope[violation.rule_id][violation.scope] += 1
                bucket = kept.get(violation.rule_id)
                if bucket is None or violation.rule_id in overflow:
                    return
                if room[0] <= 0:
                    overflow.add(violation.rule_id)
                    room[0] += len(bucket)
                    bucket.clear()
                    return
                bucket.append(violation)
                room[0] -= 1

        wanted, ctx.want_fixes = ctx.want_fixes, True
        try:
            self.results = {r.rule.id: r for r in execute_rules(ctx, rules, sample=sample, observe=observe, worker=worker)}
        finally:
            ctx.want_fixes = wanted

    def violations(self, ctx: CheckContext, rule: Rule) -> Iterator[Violation]:
        """The rule's violations: kept from the census, or computed again on the tickers that have them."""
        if rule.id not in self.overflow:
            yield from self.kept.get(rule.id, ())
            return
        scopes = self.by_scope.get(rule.id, Counter())
        tickers = frozenset(s for s in scopes if isinstance(s, str))
        limit = tickers if rule.scan is not None and tickers and None not in scopes else None
        wanted, ctx.want_fixes, ctx.tickers = ctx.want_fixes, True, limit
        try:
            yield from iter_violations(ctx, rule)
        finally:
            ctx.want_fixes, ctx.tickers = wanted, None


def _from_census(rule: Rule, census: RuleResult) -> RulePlan | None:
    """The plan entry a rule gets without planning: skipped, errored, clean or not repairable."""
    if census.status in (PlanStatus.SKIPPED, PlanStatus.ERROR):
        return RulePlan(rule, status=PlanStatus(str(census.status)), reason=census.reason or census.error)
    if census.count == 0:
        return RulePlan(rule)
    if rule.repair is None:
        reason = f"no automatic repair: {rule.remedy}" if rule.remedy else "no automatic repair"
        # The plan names the rows it leaves alone (from the census samples), not just the rule.
        return RulePlan(rule, status=PlanStatus.NOT_REPAIRABLE, violations=census.count, untouched=census.count,
                        untouched_samples=[Untouched(rule.id, v.key, reason) for v in census.samples], reason=reason)
    return None


def _plan_rule(ctx: CheckContext, rule: Rule, store: ChangeStore, violations: Iterable[Violation], sample: int) -> RulePlan:
    """Turn one rule's violations into stored changes (each with its row as it is now)."""
    plan = RulePlan(rule)
    assert rule.repair is not None

    def counted(items: Iterable[Violation]) -> Iterator[Violation]:
        for violation in items:
            plan.violations += 1
            yield violation

    for item in rule.repair(ctx, rule, counted(violations)):
        if isinstance(item, Untouched):
            plan.untouched += 1
            store.add_untouched(rule.id, item.key)
            if len(plan.untouched_samples) < sample:
                plan.untouched_samples.append(item)
            continue
        if (item.database, item.table) in LEDGER_TABLES and item.op == "delete":
            raise LedgerError(f"{rule.id}: a repair tried to delete a ledger row ({item.database}.{item.table} {item.key})")
        bad = _not_finite(item.after)
        if bad is not None:
            # Never write a non-finite amount: the row the value was computed from holds one.
            untouched = Untouched(rule.id, item.repairs or item.key,
                                  f"{item.database}.{item.table} {item.key}: the computed {bad}; a row it is computed "
                                  "from holds such an amount: fix that row by hand")
            plan.untouched += 1
            store.add_untouched(rule.id, untouched.key)
            if len(plan.untouched_samples) < sample:
                plan.untouched_samples.append(untouched)
            continue
        live = None
        if item.op != "insert":
            live = read_row(ctx.conn, item.database, item.table, item.key, item.after or () if item.op == "update" else ())
        stored = store.add(item, live)
        if stored is None:
            continue  # the row already holds these values (an earlier rule's change, or the data itself)
        plan.changes[stored.op] += 1
        if len(plan.samples) < sample:
            plan.samples.append(stored)
    if plan.violations:
        plan.status = PlanStatus.PLANNED if plan.total_changes else PlanStatus.NOTHING
        if not plan.total_changes and plan.untouched:
            plan.status, plan.reason = PlanStatus.NOT_REPAIRABLE, "every violation needs a hand fix (see untouched)"
    return plan


def _not_finite(values: dict[str, Any] | None) -> str | None:
    """The first column whose new value is a non-finite number (NaN, ±inf) or a float beyond the
    ledger's bound on amounts (``toolkit.domain.MAX_AMOUNT``, ``is_amount``), as ``column=value``."""
    import math

    from ..domain import MAX_AMOUNT, is_amount

    for column, value in (values or {}).items():
        if isinstance(value, float) and not is_amount(value):
            why = "is not a finite number" if not math.isfinite(value) else f"is beyond the ledger's bound of ±{MAX_AMOUNT:g}"
            return f"{column}={value!r} {why}"
    return None


def reader(settings: Settings) -> Callable[[], sqlite3.Connection]:
    """Opens a read-only connection to the databases (the census runs its SQL rules on one, in a thread)."""
    backend = backend_for(settings)
    return lambda: backend.open(DATABASES, readonly=True, cache_kib=32_768)


def plan_repairs(settings: Settings, *, registry: Registry, rule_ids: Iterable[str] | None = None, sample: int = 20,
                 progress: Callable[[str], None] | None = None, conn: sqlite3.Connection | None = None) -> RepairPlan:
    """What `integrity repair --apply` would change, rule by rule, from one census. Changes nothing.

    ``conn`` plans on an open connection — the write transaction that will apply the plan, so the
    census sees exactly what the writes will meet and warms the same page cache; it refuses every
    write while planning, so a planner can read but never write behind the journal's back.
    By default the plan reads through a read-only connection of its own.
    """
    rules = registry.select(list(rule_ids) if rule_ids else None)
    if conn is None:  # (apply_repairs, which hands its connection in, has checked already)
        refuse_lost_databases(settings)  # never plan to bring other files in line with a lost one
        backend_for(settings).require(DATABASES)
    repairable = [r for r in rules if r.repair is not None]
    affected = {t for r in repairable for t in tables_read(r)}
    census_rules = list(dict.fromkeys(rules + [r for r in registry if r.reads and tables_read(r) & affected]))
    open_reader = reader(settings)
    own = conn is None
    planning = open_reader() if own else conn
    assert planning is not None
    result = RepairPlan(str(settings.data_dir.resolve()))
    reading = getattr(planning, "reading_only", None)
    hold = reading("planning the repair") if reading is not None else _query_only(planning, not own)
    try:
        hold.__enter__()
        ctx = CheckContext(planning, settings, progress=progress)
        ctx.say("checking before repair")
        census = Census(ctx, census_rules, repairable, sample=sample, worker=open_reader)
        result.census = census.by_scope
        result.pages = dict(ctx.cache.get("quick_check", {}))
        for rule in rules:
            known = _from_census(rule, census.results[rule.id])
            if known is not None:
                result.rules.append(known)
                continue
            ctx.say(f"planning {rule.id}")
            try:
                result.rules.append(_plan_rule(ctx, rule, result.store, census.violations(ctx, rule), sample))
            except Exception as exc:
                result.store.discard(rule.id)  # a rule is planned whole or not at all
                result.rules.append(RulePlan(rule, status=PlanStatus.ERROR, reason=f"{type(exc).__name__}: {exc}"))
        return result
    except BaseException:
        result.close()
        raise
    finally:
        hold.__exit__(None, None, None)
        if own:
            planning.close()


@contextmanager
def _query_only(conn: sqlite3.Connection, needed: bool) -> Iterator[None]:
    """``PRAGMA query_only`` for the block, on a plain connection that could write."""
    if not needed:
        yield
        return
    conn.execute("PRAGMA query_only = ON")
    try:
        yield
    finally:
        conn.execute("PRAGMA query_only = OFF")
