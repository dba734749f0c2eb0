"""`integrity repair`: plan, verified apply, log, undo.

Apply, for the data directory (under its lock)::

    BEGIN IMMEDIATE                      one transaction over positions, trading, ml_training
      census: every rule that reads a table some repair changes, counted per scope (ticker)
      SAVEPOINT (all rules)
        for each repairable rule with violations:
          SAVEPOINT
            its violations (computed by the accounting core) -> changes, written in batches;
            each changed row journaled in _toolkit_repair_journal of its own file;
            the first change to a file backs that file up (its committed state) first
          RELEASE
        re-run the repaired rules and every rule reading a changed table, on the touched scope
        (one ledger scan): RELEASE if each repaired rule is clean there (but for what it left
        untouched) and no other rule got worse;
      otherwise ROLLBACK TO, and again rule by rule: each rule's repair in its own savepoint,
      verified the same way before the next, rolled back alone if it fails, and the report says why
    COMMIT                               per file: all of its repair or nothing
    copy the journals into migrations.db (repair_runs, repair_log)

A crash before COMMIT leaves every file as it was; a crash during COMMIT leaves each file with all of
its repair and its journal, or neither; a crash after it is reconciled by the next repair command.
Repairs never delete ledger rows; rows removed from derived tables (positions) are kept in the log.
"""
from __future__ import annotations

import functools
import itertools
import json
import threading
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from ..backup import Backup, take_backup
from ..config import DATABASES, Settings
from ..db import check_file, connect, open_databases, quote_ident, translate_error
from ..errors import LedgerError, ToolkitError, UnknownNameError, UsageError
from ..history import open_history
from ..lock import data_dir_lock
from ..migrate.state import ensure_bookkeeping
from ..rules.model import CheckContext, Rule, Violation
from ..rules.registry import Registry, load_registry
from ..rules.runner import RuleResult, _file_state, _missing_tables, execute_rules, new_run_id
from .model import LEDGER_TABLES, Change, Untouched

__all__ = [
    "RulePlan",
    "RepairPlan",
    "RuleOutcome",
    "RepairResult",
    "UndoResult",
    "RepairRun",
    "plan_repairs",
    "apply_repairs",
    "undo_repair",
    "list_repairs",
    "reconcile_repair_log",
    "RepairConflict",
]

_BATCH = 2_000


class RepairConflict(ToolkitError):
    """A row a repair (or an undo) expected to find was not there, or had changed."""


# -- results ---------------------------------------------------------------------------------------

@dataclass
class RulePlan:
    rule: Rule
    status: str = "nothing"          # nothing | planned | not repairable | skipped | error
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
    data_dir: str
    rules: list[RulePlan] = field(default_factory=list)

    @property
    def total_changes(self) -> int:
        return sum(r.total_changes for r in self.rules)


@dataclass
class RuleOutcome(RulePlan):
    verified: bool = False
    rolled_back: str | None = None


@dataclass
class RepairResult:
    run_id: str
    data_dir: str
    started_at: float
    seconds: float = 0.0
    rules: list[RuleOutcome] = field(default_factory=list)
    backups: list[Backup] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)

    @property
    def applied_changes(self) -> int:
        return sum(r.total_changes for r in self.rules if r.status == "applied")

    @property
    def rolled_back(self) -> list[RuleOutcome]:
        return [r for r in self.rules if r.status == "rolled back"]


@dataclass
class UndoResult:
    run_id: str
    undone: str
    rows: int
    reconciled: list[str] = field(default_factory=list)
    backups: list[Backup] = field(default_factory=list)


@dataclass(frozen=True)
class RepairRun:
    run_id: str
    kind: str
    started_at: int
    rules: list[str]
    changes: int
    status: str
    undone_by: str | None
    undoes: str | None


# -- shared pieces --------------------------------------------------------------------------------

def _paths(settings: Settings) -> dict:
    return {name: settings.path(name) for name in DATABASES}


def _reader(settings: Settings) -> Callable[[], sqlite3.Connection]:
    """Opens a read-only connection to the files (the census runs its SQL rules on one, in a thread)."""
    return lambda: open_databases(_paths(settings), readonly=True, busy_timeout=settings.busy_timeout, cache_kib=32_768)


def iter_violations(ctx: CheckContext, rule: Rule) -> Iterator[Violation]:
    """One rule's violations (with fixes when ``ctx.want_fixes``)."""
    from ..rules.runner import sql_violations

    if rule.scan is not None:
        yield from rule.scan.run(ctx, {rule.id: rule})
    elif rule.sql is not None:
        yield from sql_violations(ctx, rule)
    else:
        yield from rule.check(ctx, rule)  # type: ignore[misc]


def _blocked(ctx: CheckContext, rule: Rule) -> str | None:
    damaged = _file_state(ctx, rule.databases)
    reason = next((damaged[d] for d in rule.databases if d in damaged), None)
    return reason or _missing_tables(ctx, rule)


def _selected(registry: Registry, rule_ids: Iterable[str] | None) -> list[Rule]:
    return registry.select(list(rule_ids) if rule_ids else None)


def _tables_read(rule: Rule) -> set[tuple[str, str]]:
    return {tuple(item.split(".", 1)) for item in rule.reads}  # type: ignore[misc]


# -- planning ---------------------------------------------------------------------------------------

def _from_census(rule: Rule, census: RuleResult) -> RulePlan | None:
    """The plan entry a rule gets without planning: skipped, errored, clean or not repairable."""
    if census.status in ("skipped", "error"):
        return RulePlan(rule, status=census.status, reason=census.reason or census.error)
    if census.count == 0:
        return RulePlan(rule)
    if rule.repair is None:
        reason = f"no automatic repair: {rule.remedy}" if rule.remedy else "no automatic repair"
        # The plan names the rows it leaves alone (from the census samples), not just the rule.
        return RulePlan(rule, status="not repairable", violations=census.count, untouched=census.count,
                        untouched_samples=[Untouched(rule.id, v.key, reason) for v in census.samples], reason=reason)
    return None


def _plan_rule(ctx: CheckContext, rule: Rule, sample: int, sink: Callable[[Change], None] | None,
               untouched_keys: set[str] | None = None, violations: Iterable[Violation] | None = None) -> RulePlan:
    plan = RulePlan(rule)
    if violations is None:
        violations = iter_violations(ctx, rule)
    assert rule.repair is not None

    def counted(items: Iterable[Violation]) -> Iterator[Violation]:
        for violation in items:
            plan.violations += 1
            yield violation

    for item in rule.repair(ctx, rule, counted(violations)):
        if isinstance(item, Untouched):
            plan.untouched += 1
            if untouched_keys is not None:
                untouched_keys.add(_json(item.key))
            if len(plan.untouched_samples) < sample:
                plan.untouched_samples.append(item)
            continue
        if (item.database, item.table) in LEDGER_TABLES and item.op == "delete":
            raise LedgerError(f"{rule.id}: a repair tried to delete a ledger row ({item.database}.{item.table} {item.key})")
        plan.changes[item.op] += 1
        if len(plan.samples) < sample:
            plan.samples.append(item)
        if sink is not None:
            sink(item)
    if plan.violations:
        plan.status = "planned" if plan.total_changes else "nothing"
        if not plan.total_changes and plan.untouched:
            plan.status, plan.reason = "not repairable", "every violation needs a hand fix (see untouched)"
    return plan


def plan_repairs(settings: Settings, *, rule_ids: Iterable[str] | None = None, sample: int = 20,
                 registry: Registry | None = None, progress: Callable[[str], None] | None = None) -> RepairPlan:
    """What `integrity repair --apply` would change, rule by rule. Changes nothing."""
    registry = registry or load_registry(settings)
    rules = _selected(registry, rule_ids)
    for path in _paths(settings).values():
        check_file(path)
    reader = _reader(settings)
    conn = reader()
    try:
        ctx = CheckContext(conn, settings, progress=progress)
        census = _Census(ctx, rules, [r for r in rules if r.repair is not None], sample=sample, worker=reader)
        result = RepairPlan(str(settings.data_dir))
        for rule in rules:
            known = _from_census(rule, census.results[rule.id])
            if known is not None:
                result.rules.append(known)
                continue
            ctx.say(f"planning {rule.id}")
            try:
                result.rules.append(_plan_rule(ctx, rule, sample, None, violations=census.violations(ctx, rule)))
            except Exception as exc:
                result.rules.append(RulePlan(rule, status="error", reason=f"{type(exc).__name__}: {exc}"))
        return result
    finally:
        conn.close()


# -- writing changes -------------------------------------------------------------------------------

_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode  # one canonical form, for keys too


@functools.lru_cache(maxsize=256)
def _row_sql(op: str, database: str, table: str, keys: tuple[str, ...], columns: tuple[str, ...]) -> str:
    """The statement reading (``select``), updating, deleting or inserting one row by its key."""
    target = f"{quote_ident(database)}.{quote_ident(table)}"
    where = " AND ".join(f"{quote_ident(k)} = ?" for k in keys)
    if op == "select":
        return f"SELECT {', '.join(quote_ident(c) for c in columns) or '*'} FROM {target} WHERE {where}"
    if op == "update":
        return f"UPDATE {target} SET {', '.join(f'{quote_ident(c)} = ?' for c in columns)} WHERE {where}"
    if op == "delete":
        return f"DELETE FROM {target} WHERE {where}"
    return f"INSERT INTO {target} ({', '.join(quote_ident(c) for c in columns)}) VALUES ({', '.join('?' * len(columns))})"


def _journal(conn: sqlite3.Connection, database: str, rows: list[tuple]) -> None:
    """Append (run_id, seq, rule_id, table, op, key, before, after, at, reverses) rows to a file's journal."""
    conn.executemany(
        f"INSERT INTO {quote_ident(database)}._toolkit_repair_journal (run_id, seq, rule_id, table_name, op, row_key, "
        "before, after, at, reverses) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)




def _same(a: Any, b: Any) -> bool:
    return a is None and b is None or (type(a) is type(b) and a == b)


class _Writer:
    """Applies changes in batches and journals every row in its own file, same transaction.

    An update's "before" is read from the row as it is at that moment (an earlier rule's repair may
    already have changed it), and an update that would change nothing is dropped, so the log holds
    exactly the transitions that happened and an undo can replay them backwards. The scope a change
    touched (its ticker) is read from the row too, not taken from the planner.
    """

    def __init__(self, conn: sqlite3.Connection, run_id: str, now: int,
                 before_first_write: Callable[[str], None], *, seq: dict[str, int] | None = None) -> None:
        self.conn = conn
        self.run_id = run_id
        self.now = now
        self.before_first_write = before_first_write
        self.seq = seq if seq is not None else {}
        self.pending: list[Change] = []
        self.scopes: set[Any] = set()
        self.touched: set[tuple[str, str]] = set()
        self.repaired = 0
        self.unchanged = 0
        self._tickers: dict[Any, str | None] = {}

    def add(self, change: Change) -> None:
        self.pending.append(change)
        if len(self.pending) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        """Write the pending changes: per table in the order planned, runs of the same statement as
        one ``executemany`` (changes to different tables are independent rows, so a planner that
        alternates tables, e.g. a close's link then its matches, still writes in large batches)."""
        by_table: dict[tuple[str, str], list[Change]] = {}
        for change in self.pending:
            by_table.setdefault((change.database, change.table), []).append(change)
        self.pending = []
        self._tickers.clear()  # trade -> ticker, for this batch's scopes
        for changes in by_table.values():
            for _, run in itertools.groupby(changes, key=_signature):
                self._execute(list(run))

    def _scope(self, change: Change) -> str | None:
        """The ticker a changed row belongs to, read from the ledger."""
        if change.database == "trading" and change.table in ("trades", "lot_matches"):
            trade_id = change.key.get("trade_id", change.key.get("close_trade_id"))
            if trade_id not in self._tickers:
                row = self.conn.execute("SELECT ticker FROM trading.trades WHERE trade_id = ?", (trade_id,)).fetchone()
                self._tickers[trade_id] = row[0] if row else None
            return self._tickers[trade_id]
        if change.database == "positions":
            return change.key.get("ticker") or (change.after or change.before or {}).get("ticker")
        return None

    def _current(self, batch: list[Change], keys: tuple[str, ...]) -> list[Change]:
        """Refresh each change's "before" from the row as it is now; drop updates that change nothing."""
        first = batch[0]
        columns = tuple(first.after or {}) if first.op == "update" else ()
        select = _row_sql("select", first.database, first.table, keys, columns)
        live = []
        for change in batch:
            cursor = self.conn.execute(select, [change.key[k] for k in keys])
            row = cursor.fetchone()
            if row is None:
                raise RepairConflict(f"{change.rule_id}: {change.op} of {first.database}.{first.table} {change.key}: no such row",
                                     hint="the rows changed while the repair ran; run `integrity repair` again")
            if first.op == "update":
                current = dict(zip(columns, row))
                if all(_same(current[c], change.after[c]) for c in columns):  # type: ignore[index]
                    self.unchanged += 1
                    continue
                live.append(replace(change, before=current))
            else:
                live.append(replace(change, before=dict(zip([d[0] for d in cursor.description], row))))
        return live

    def _execute(self, batch: list[Change]) -> None:
        first = batch[0]
        database = first.database
        keys = tuple(first.key)
        if first.op in ("update", "delete"):
            batch = self._current(batch, keys)
            if not batch:
                return
        if database not in self.seq:
            self.before_first_write(database)
            self.seq[database] = 0
        columns = tuple(first.after or {})
        if first.op == "update":
            sql = _row_sql("update", database, first.table, keys, columns)
            params = [[c.after[col] for col in columns] + [c.key[k] for k in keys] for c in batch]  # type: ignore[index]
        elif first.op == "insert":
            sql = _row_sql("insert", database, first.table, (), columns)
            params = [[c.after[col] for col in columns] for c in batch]  # type: ignore[index]
        else:
            sql = _row_sql("delete", database, first.table, keys, ())
            params = [[c.key[k] for k in keys] for c in batch]
        cursor = self.conn.executemany(sql, params)
        if cursor.rowcount != len(batch):
            raise RepairConflict(
                f"{first.rule_id}: {first.op} of {len(batch)} row(s) in {database}.{first.table} changed {cursor.rowcount}",
                hint="the rows changed while the repair ran; run `integrity repair` again")
        seq = self.seq[database]
        rows = []
        for change in batch:
            seq += 1
            rows.append((self.run_id, seq, change.rule_id, change.table, change.op, _json(change.key),
                         None if change.before is None else _json(change.before),
                         None if change.after is None else _json(change.after), self.now, None))
            scope = self._scope(change)
            if scope is not None:
                self.scopes.add(scope)
        self.touched.add((database, first.table))
        self.seq[database] = seq
        _journal(self.conn, database, rows)
        self.repaired += len(batch)


def _signature(change: Change) -> tuple:
    return (change.database, change.table, change.op, tuple(change.key), tuple(change.after or ()))


# -- applying ---------------------------------------------------------------------------------------

#: How many violations (with their fixes) the census keeps for planning; beyond it, a rule's
#: violations are computed again while it is repaired (streaming, on the tickers it has).
CENSUS_BUFFER = 100_000


class _Census:
    """One run of the rules before repairing: their results, their violation counts per scope
    (ticker), and the repairable rules' violations with their fixes — so planning needs no second
    pass over the ledger. Every fix is a function of the executed trades, which no repair changes,
    so fixes stay valid while earlier rules are repaired (the writer re-reads each row's values)."""

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


def _prepare_files(settings: Settings) -> None:
    """Bookkeeping tables exist in every file before the repair transaction (no DDL inside it)."""
    for name in DATABASES:
        conn = connect(settings.path(name), busy_timeout=settings.busy_timeout)
        try:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_toolkit_repair_journal'").fetchone():
                conn.execute("BEGIN IMMEDIATE")
                ensure_bookkeeping(conn)
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise translate_error(exc, settings.path(name), action="preparing the repair journal") from exc
        finally:
            conn.close()


@dataclass
class _Written:
    """One rule's repair, written in its savepoint and waiting to be verified."""

    rule: Rule
    outcome: RuleOutcome
    writer: _Writer
    untouched: set[str]


def _verify(ctx: CheckContext, registry: Registry, written: list[_Written], scope_counts: dict[str, Counter]) -> str | None:
    """None if the repairs hold: re-run, on the touched scope, the repaired rules and every rule
    reading a changed table. Each repaired rule must find nothing there but what it left untouched;
    no other rule may find more than before."""
    repaired = {w.rule.id: w.untouched for w in written}
    touched = set().union(*(w.writer.touched for w in written))
    related = [r for r in registry if r.reads and _tables_read(r) & touched]
    related += [w.rule for w in written if w.rule not in related]
    scopes = set().union(*(w.writer.scopes for w in written))
    tickers = frozenset(s for s in scopes if isinstance(s, str)) or None
    scoped = [r for r in related if r.scan is not None]
    whole = [r for r in related if r.scan is None]
    left: list[Violation] = []

    def census(rules: list[Rule], limit: frozenset[str] | None) -> tuple[dict[str, RuleResult], dict[str, Counter]]:
        by_scope: dict[str, Counter] = {r.id: Counter() for r in rules}

        def observe(violation: Violation) -> None:
            by_scope[violation.rule_id][violation.scope] += 1
            untouched = repaired.get(violation.rule_id)
            if untouched is not None and _json(violation.key) not in untouched:
                left.append(violation)

        ctx.tickers = limit
        try:
            return {r.rule.id: r for r in execute_rules(ctx, rules, sample=0, observe=observe)}, by_scope
        finally:
            ctx.tickers = None

    results: dict[str, RuleResult] = {}
    after_scope: dict[str, Counter] = {}
    for group, limit in ((scoped, tickers), (whole, None)):
        if group:
            found, counts = census(group, limit)
            results.update(found)
            after_scope.update(counts)
    for other in related:
        if results[other.id].status in ("error", "skipped"):
            return f"re-checking {other.id} failed: {results[other.id].error or results[other.id].reason}"
    if left:
        more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
        return f"{left[0].rule_id} still finds {left[0].key}: {left[0].message}{more}"
    for other in related:
        before = scope_counts.get(other.id, Counter())
        after = after_scope.get(other.id, Counter())
        in_scope = other.scan is not None and tickers is not None
        was = sum(before[t] for t in tickers) if in_scope else sum(before.values())  # type: ignore[union-attr]
        now = sum(after.values())
        if other.id not in repaired and now > was:
            return f"{other.id} got worse ({was} -> {now} violations)"
    for other in related:  # the next repair compares against the state after this one
        counts = scope_counts.setdefault(other.id, Counter())
        if other.scan is not None and tickers is not None:
            for t in tickers:
                counts.pop(t, None)
        else:
            counts.clear()
        counts.update(after_scope.get(other.id, Counter()))
    return None


def _write_rule(ctx: CheckContext, rule: Rule, census: _Census, writer: _Writer, sample: int) -> _Written:
    """Plan one rule's repair and write it (the caller holds a savepoint); not yet verified."""
    outcome = RuleOutcome(rule)
    untouched: set[str] = set()
    plan = _plan_rule(ctx, rule, sample, writer.add, untouched, violations=census.violations(ctx, rule))
    writer.flush()
    plan.changes["update"] -= writer.unchanged  # already right after an earlier rule's repair
    if not plan.changes["update"]:
        del plan.changes["update"]
    if plan.status == "planned" and not writer.repaired:
        plan.status = "nothing"
    for name in ("status", "violations", "changes", "samples", "untouched", "untouched_samples", "reason"):
        setattr(outcome, name, getattr(plan, name))
    return _Written(rule, outcome, writer, untouched)


@dataclass
class _Apply:
    """What applying needs, shared by the two ways of applying (together, then one by one)."""

    ctx: CheckContext
    conn: sqlite3.Connection
    registry: Registry
    census: _Census
    run_id: str
    backup_once: Callable[[str], None]
    sample: int
    say: Callable[[str], None]
    now: int = field(default_factory=lambda: int(time.time()))

    def write(self, rule: Rule, seq: dict[str, int]) -> _Written:
        """Plan and write one rule's repair in its own savepoint (released; the caller verifies)."""
        self.say(f"repairing {rule.id}")
        writer = _Writer(self.conn, self.run_id, self.now, self.backup_once, seq=seq)
        self.conn.execute("SAVEPOINT repair_rule")
        try:
            item = _write_rule(self.ctx, rule, self.census, writer, self.sample)
        except BaseException:
            self.conn.execute("ROLLBACK TO repair_rule")
            self.conn.execute("RELEASE repair_rule")
            raise
        self.conn.execute("RELEASE repair_rule")
        return item

    def together(self, rules: list[Rule], scope_counts: dict[str, Counter]) -> dict[str, RuleOutcome] | None:
        """Every rule's repair inside one outer savepoint, verified once; None (and nothing changed)
        if a repair raised or the verification failed."""
        written: list[_Written] = []
        seq: dict[str, int] = {}
        counts = {rule_id: Counter(by) for rule_id, by in scope_counts.items()}
        self.conn.execute("SAVEPOINT repair_all")
        try:
            for rule in rules:
                written.append(self.write(rule, seq))  # the writers share seq: one journal sequence per file
            done = [w for w in written if w.outcome.status == "planned"]
            self.say("verifying the repairs")
            problem = _verify(self.ctx, self.registry, done, counts) if done else None
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            self.conn.execute("ROLLBACK TO repair_all")
            self.conn.execute("RELEASE repair_all")
            self.say(f"verifying the repairs together failed ({problem}): repairing rule by rule")
            return None
        self.conn.execute("RELEASE repair_all")
        scope_counts.clear()
        scope_counts.update(counts)
        for item in written:
            if item.outcome.status == "planned":
                item.outcome.status, item.outcome.verified = "applied", True
        return {w.rule.id: w.outcome for w in written}

    def one_by_one(self, rules: list[Rule], scope_counts: dict[str, Counter]) -> dict[str, RuleOutcome]:
        """Each rule's repair verified before the next; one that fails is rolled back alone."""
        outcomes: dict[str, RuleOutcome] = {}
        seq: dict[str, int] = {}
        for rule in rules:
            self.conn.execute("SAVEPOINT repair_checked")
            outcome = outcomes[rule.id] = RuleOutcome(rule)
            try:
                item = self.write(rule, dict(seq))
                outcome = outcomes[rule.id] = item.outcome
                problem = _verify(self.ctx, self.registry, [item], scope_counts) if outcome.status == "planned" else None
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem is not None:
                self.conn.execute("ROLLBACK TO repair_checked")
                self.conn.execute("RELEASE repair_checked")
                outcome.status, outcome.rolled_back = "rolled back", problem
                continue
            self.conn.execute("RELEASE repair_checked")
            if outcome.status == "planned":
                seq = item.writer.seq
                outcome.status, outcome.verified = "applied", True
        return outcomes


def apply_repairs(
    settings: Settings,
    *,
    rule_ids: Iterable[str] | None = None,
    sample: int = 20,
    registry: Registry | None = None,
    progress: Callable[[str], None] | None = None,
    connection_factory: Callable[[dict], sqlite3.Connection] | None = None,
) -> RepairResult:
    """Apply every selected rule's repair, each verified in its own savepoint (see module doc)."""
    registry = registry or load_registry(settings)
    rules = [r for r in _selected(registry, rule_ids)]
    for path in _paths(settings).values():
        check_file(path, writable=True)
    say = progress or (lambda _: None)
    result = RepairResult(new_run_id("rep"), str(settings.data_dir), time.time())
    clock = time.perf_counter()
    with data_dir_lock(settings.lock_path, timeout=settings.lock_timeout, command="integrity repair --apply"):
        result.reconciled = reconcile_repair_log(settings)
        _prepare_files(settings)
        if connection_factory is not None:
            conn = connection_factory(_paths(settings))
        else:
            # Repairs write through the guarded connection, as trusted code: they may correct derived
            # columns and the positions projection, but can never delete a ledger row or touch what a
            # trade executed at (the authorizer refuses it, whatever a planner asks).
            from ..guard.connection import connect_guarded

            conn = connect_guarded(settings, cache_kib=32_768)
        trust = conn.trusted("repair") if hasattr(conn, "trusted") else _no_trust()
        try:
            trust.__enter__()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise translate_error(exc, settings.data_dir, action="starting the repair") from exc
            ctx = CheckContext(conn, settings, progress=progress, want_fixes=True)
            backed_up: set[str] = set()

            def backup_once(database: str) -> None:
                if database not in backed_up:
                    backed_up.add(database)
                    say(f"backing up {database}")
                    item = take_backup(settings, database, "pre-repair")
                    if item is not None:
                        result.backups.append(item)

            repairable = [r for r in rules if r.repair is not None]
            affected = {t for r in repairable for t in _tables_read(r)}
            census_rules = list(dict.fromkeys(rules + [r for r in registry if r.reads and _tables_read(r) & affected]))
            say("checking before repair")
            # Nothing is written yet and this transaction holds the write lock: a second, read-only
            # connection sees exactly what this one does, so the SQL rules run on it in a thread.
            census = _Census(ctx, census_rules, repairable, sample=sample,
                             worker=_reader(settings) if connection_factory is None else None)
            scope_counts = census.by_scope
            ctx.want_fixes = True
            pending = [rule for rule in rules if _from_census(rule, census.results[rule.id]) is None]
            # First all repairs at once, verified by one re-run of the rules (one ledger scan
            # instead of one per rule); if that verification fails, undo them all and go rule by
            # rule, so each rule stands or falls on its own and the report says which and why.
            applying = _Apply(ctx, conn, registry, census, result.run_id, backup_once, sample, say)
            outcomes = applying.together(pending, scope_counts) if len(pending) > 1 else None
            if outcomes is None:
                outcomes = applying.one_by_one(pending, scope_counts)
            for rule in rules:
                if rule.id in outcomes:
                    result.rules.append(outcomes[rule.id])
                else:
                    result.rules.append(RuleOutcome(**vars(_from_census(rule, census.results[rule.id]))))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            trust.__exit__(None, None, None)
            conn.close()
        result.seconds = time.perf_counter() - clock
        _record_run(settings, result)
        result.reconciled += reconcile_repair_log(settings)
    return result


class _no_trust:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


# -- the log in migrations.db ------------------------------------------------------------------------

def _record_run(settings: Settings, result: RepairResult) -> None:
    history = open_history(settings, create=True)
    assert history is not None
    try:
        summary = {r.rule.id: {"status": r.status, "changes": dict(r.changes), "untouched": r.untouched,
                               "rolled_back": r.rolled_back} for r in result.rules}
        status = "applied" if result.applied_changes else "nothing"
        if result.rolled_back:
            status = "partial" if result.applied_changes else "rolled back"
        history.execute("BEGIN IMMEDIATE")
        history.execute(
            "INSERT OR REPLACE INTO repair_runs (run_id, kind, started_at, data_dir, rules, changes, status, summary) "
            "VALUES (?, 'repair', ?, ?, ?, ?, ?, ?)",
            (result.run_id, int(result.started_at), result.data_dir, _json([r.rule.id for r in result.rules]),
             result.applied_changes, status, _json(summary)))
        history.execute("COMMIT")
    finally:
        history.close()


def reconcile_repair_log(settings: Settings) -> list[str]:
    """Copy journal rows that migrations.db lacks (a crash after a file's commit); returns notes."""
    history = open_history(settings, create=True)
    assert history is not None
    notes: list[str] = []
    try:
        for name in DATABASES:
            path = settings.path(name)
            if not path.exists():
                continue
            conn = connect(path, readonly=True, busy_timeout=settings.busy_timeout)
            try:
                if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_toolkit_repair_journal'").fetchone():
                    continue
                runs = [r[0] for r in conn.execute("SELECT DISTINCT run_id FROM _toolkit_repair_journal")]
                logged = {r[0]: r[1] for r in history.execute(
                    "SELECT run_id, count(*) FROM repair_log WHERE database_name = ? GROUP BY run_id", (name,))}
                for run_id in runs:
                    have = conn.execute("SELECT count(*) FROM _toolkit_repair_journal WHERE run_id = ?", (run_id,)).fetchone()[0]
                    if logged.get(run_id, 0) == have:
                        continue
                    rows = conn.execute(
                        "SELECT run_id, ?, seq, rule_id, table_name, op, row_key, before, after, at "
                        "FROM _toolkit_repair_journal WHERE run_id = ? ORDER BY seq", (name, run_id))
                    history.execute("BEGIN IMMEDIATE")
                    history.executemany(
                        "INSERT OR IGNORE INTO repair_log (run_id, database_name, seq, rule_id, table_name, op, row_key, "
                        "before, after, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                    reverses = conn.execute("SELECT max(reverses) FROM _toolkit_repair_journal WHERE run_id = ?",
                                            (run_id,)).fetchone()[0]
                    if not history.execute("SELECT 1 FROM repair_runs WHERE run_id = ?", (run_id,)).fetchone():
                        kind = "undo" if reverses else "repair"
                        history.execute(
                            "INSERT INTO repair_runs (run_id, kind, started_at, data_dir, rules, changes, status, undoes) "
                            "VALUES (?, ?, ?, ?, '[]', 0, 'applied (reconciled)', ?)",
                            (run_id, kind, int(time.time()), str(settings.data_dir), reverses))
                        notes.append(f"{kind} run {run_id} was committed to {path.name} but not logged: logged now")
                    if reverses:
                        history.execute("UPDATE repair_runs SET undone_by = ?, status = 'undone' "
                                        "WHERE run_id = ? AND undone_by IS NULL", (run_id, reverses))
                    history.execute(
                        "UPDATE repair_runs SET changes = (SELECT count(*) FROM repair_log WHERE run_id = ?) WHERE run_id = ?",
                        (run_id, run_id))
                    history.execute("COMMIT")
            finally:
                conn.close()
    except BaseException:
        if history.in_transaction:
            history.execute("ROLLBACK")
        raise
    finally:
        history.close()
    return notes


def list_repairs(settings: Settings, *, limit: int = 20) -> list[RepairRun]:
    """Repair and undo runs, newest first (after logging any the files committed but the log lacks)."""
    if not settings.history_path.exists():
        return []
    from ..errors import LockTimeoutError

    try:
        with data_dir_lock(settings.lock_path, timeout=0, command="integrity repair log"):
            reconcile_repair_log(settings)
    except LockTimeoutError:
        pass  # another toolkit process is working; it reconciles when it is done
    history = open_history(settings)
    assert history is not None
    try:
        rows = history.execute(
            "SELECT run_id, kind, started_at, rules, changes, status, undone_by, undoes FROM repair_runs "
            "ORDER BY started_at DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
    finally:
        history.close()
    return [RepairRun(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7]) for r in rows]


# -- undo ------------------------------------------------------------------------------------------

def _current(conn: sqlite3.Connection, database: str, table: str, key: dict, columns: Iterable[str]) -> tuple | None:
    return conn.execute(_row_sql("select", database, table, tuple(key), tuple(columns)), list(key.values())).fetchone()


#: Journal rows an undo holds in memory at a time.
_UNDO_CHUNK = 5_000


def _journal_chunks(conn: sqlite3.Connection, name: str, run_id: str) -> Iterator[list[tuple]]:
    """A run's journal rows in one file, newest first, a chunk at a time (read ahead of the writes:
    the undo appends its own rows to the same table while it goes)."""
    below = 1 << 62
    while True:
        rows = conn.execute(
            f"SELECT seq, rule_id, table_name, op, row_key, before, after FROM {quote_ident(name)}._toolkit_repair_journal "
            "WHERE run_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?", (run_id, below, _UNDO_CHUNK)).fetchall()
        if not rows:
            return
        yield rows
        below = rows[-1][0]


def _undo_conflict(conn: sqlite3.Connection, name: str, table: str, op: str, key: dict, after: str | None) -> str | None:
    """Why a journaled change can no longer be undone (the row is not as the repair left it), or None."""
    if op == "delete":
        if _current(conn, name, table, key, []) is not None:
            return f"{name}.{table} {key}: a row was inserted where the repair deleted one"
        return None
    wanted = json.loads(after)  # type: ignore[arg-type]
    current = _current(conn, name, table, key, wanted)
    if current is None or list(current) != list(wanted.values()):
        return f"{name}.{table} {key}: changed since the repair ({'missing' if current is None else dict(zip(wanted, current))})"
    return None


def _undo_statement(name: str, table: str, op: str, key: dict, before: str | None, after: str | None) -> tuple[str, list, str]:
    """The statement that reverses one journaled change, its parameters, and the reverse op."""
    if op == "update":
        old = json.loads(before)  # type: ignore[arg-type]
        return _row_sql("update", name, table, tuple(key), tuple(old)), [*old.values(), *key.values()], "update"
    if op == "insert":
        return _row_sql("delete", name, table, tuple(key), ()), list(key.values()), "delete"
    old = json.loads(before)  # type: ignore[arg-type]
    return _row_sql("insert", name, table, (), tuple(old)), list(old.values()), "insert"


def undo_repair(settings: Settings, run_id: str, *, progress: Callable[[str], None] | None = None) -> UndoResult:
    """Restore exactly the values a repair run replaced; refuses, naming rows, if they changed since."""
    say = progress or (lambda _: None)
    with data_dir_lock(settings.lock_path, timeout=settings.lock_timeout, command="integrity repair undo"):
        reconciled = reconcile_repair_log(settings)
        history = open_history(settings, create=True)
        assert history is not None
        try:
            row = history.execute("SELECT kind, status, undone_by FROM repair_runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                known = [r[0] for r in history.execute("SELECT run_id FROM repair_runs WHERE kind = 'repair' ORDER BY started_at DESC LIMIT 50")]
                raise UnknownNameError("repair run", run_id, known)
        finally:
            history.close()
        kind, status, undone_by = row
        if kind != "repair":
            raise UsageError(f"{run_id} is an undo, not a repair run", hint="undo the repair run it undid again with a new repair instead")
        if undone_by:
            raise UsageError(f"repair run {run_id} was already undone (by {undone_by})", hint="nothing to do")
        undo_id = new_run_id("und")
        result = UndoResult(undo_id, run_id, 0, reconciled)
        conn = open_databases(_paths(settings), readonly=False, busy_timeout=settings.busy_timeout)
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise translate_error(exc, settings.data_dir, action="starting the undo") from exc
            files = [name for name in DATABASES
                     if conn.execute(f"SELECT 1 FROM {quote_ident(name)}.sqlite_master WHERE name = '_toolkit_repair_journal'").fetchone()
                     and conn.execute(f"SELECT 1 FROM {quote_ident(name)}._toolkit_repair_journal WHERE run_id = ? LIMIT 1",
                                      (run_id,)).fetchone()]
            say("checking that the repaired rows are as the repair left them")
            conflicts: list[str] = []
            found = 0
            for name in files:
                for rows in _journal_chunks(conn, name, run_id):
                    for seq, rule_id, table, op, row_key, before, after in rows:
                        problem = _undo_conflict(conn, name, table, op, json.loads(row_key), after)
                        if problem is not None:
                            found += 1
                            if len(conflicts) < 2:
                                conflicts.append(problem)
            if found:
                raise RepairConflict(
                    f"cannot undo {run_id}: {found} row(s) changed since it ran, e.g. {conflicts[0]}"
                    + (f"; also {conflicts[1]}" if len(conflicts) > 1 else ""),
                    hint="nothing was changed; repair again, or restore a backup with `migrate restore`")
            now = int(time.time())
            for name in files:
                say(f"backing up {name}")
                item = take_backup(settings, name, "pre-undo")
                if item is not None:
                    result.backups.append(item)
                say(f"restoring {name}")
                n = 0
                for rows in _journal_chunks(conn, name, run_id):
                    statements: list[tuple[str, list]] = []
                    journal = []
                    for seq, rule_id, table, op, row_key, before, after in rows:
                        n += 1
                        sql, params, reverse = _undo_statement(name, table, op, json.loads(row_key), before, after)
                        if statements and statements[-1][0] == sql:
                            statements[-1][1].append(params)
                        else:
                            statements.append((sql, [params]))
                        journal.append((undo_id, n, rule_id, table, reverse, row_key,
                                        after if op != "delete" else None, before if op != "insert" else None, now, run_id))
                    for sql, batch in statements:
                        cursor = conn.executemany(sql, batch)
                        if cursor.rowcount != len(batch):  # the conflict check above makes this unreachable
                            raise RepairConflict(f"cannot undo {run_id}: {name} changed while undoing",
                                                 hint="nothing was changed; run the undo again")
                    _journal(conn, name, journal)
                    result.rows += len(rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()
        _record_undo(settings, undo_id, run_id, result.rows, now)
        result.reconciled += reconcile_repair_log(settings)
    return result


def _record_undo(settings: Settings, undo_id: str, run_id: str, rows: int, now: int) -> None:
    """Log an undo in migrations.db (after the files committed; a crash before this is reconciled
    from the journal, whose rows name the run they reverse)."""
    history = open_history(settings, create=True)
    assert history is not None
    try:
        history.execute("BEGIN IMMEDIATE")
        history.execute(
            "INSERT OR REPLACE INTO repair_runs (run_id, kind, started_at, data_dir, rules, changes, status, undoes) "
            "VALUES (?, 'undo', ?, ?, '[]', ?, 'applied', ?)", (undo_id, now, str(settings.data_dir), rows, run_id))
        history.execute("UPDATE repair_runs SET undone_by = ?, status = 'undone' WHERE run_id = ?", (undo_id, run_id))
        history.execute("COMMIT")
    finally:
        history.close()
