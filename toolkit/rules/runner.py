"""Running rules: attach every database read-only, check the files, run each rule or shared scan
once, count exactly, keep bounded samples, apply a baseline, and produce one result model.

A rule that raises is reported as an error; a rule whose file fails ``quick_check`` (physical damage)
or lacks the tables it reads is reported as skipped with the reason. Both count as CRITICAL for the
gate: the gate never passes on something it could not check.
"""
from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from ..config import DATABASES, Settings
from ..backend import backend_for
from ..errors import NotInitialisedError
from .model import CheckContext, Rule, Scan, Severity, Violation
from .registry import Registry

__all__ = ["RuleStatus", "RuleResult", "CheckReport", "run_checks", "sql_violations", "physical_problems", "new_run_id"]

_CONSTRAINT_LINES = ("CHECK constraint failed", "NULL value in", "NOT NULL constraint failed")


def physical_problems(lines: Iterable[str]) -> list[str]:
    """quick_check lines that mean physical damage (not a row that violates a constraint)."""
    return [line for line in lines if not line.startswith(_CONSTRAINT_LINES)]


def new_run_id(prefix: str) -> str:
    return f"{prefix}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.urandom(3).hex()}"


class RuleStatus(StrEnum):
    """How a rule's run ended. Members equal their strings (``RuleStatus.FAILED == "failed"``) and
    render as them in JSON, JUnit, SARIF and the run history."""

    PASSED = "passed"     # ran, found nothing (beyond the baseline)
    FAILED = "failed"     # ran, found violations
    ERROR = "error"       # raised while running
    SKIPPED = "skipped"   # not run: its file fails quick_check or lacks the tables it reads


@dataclass
class RuleResult:
    rule: Rule
    status: RuleStatus = RuleStatus.PASSED
    count: int = 0                    # violations not accepted by the baseline
    baselined: int = 0                # violations the baseline accepts
    samples: list[Violation] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None         # why it was skipped
    seconds: float = 0.0
    fingerprints: list[str] | None = None

    def __post_init__(self) -> None:
        self.status = RuleStatus(self.status)

    @property
    def blocking_severity(self) -> Severity:
        """Errors and skips weigh as CRITICAL for the gate."""
        return Severity.CRITICAL if self.status in (RuleStatus.ERROR, RuleStatus.SKIPPED) else self.rule.severity

    def blocks(self, fail_on: Severity) -> bool:
        return (self.status in (RuleStatus.ERROR, RuleStatus.SKIPPED)
                or (self.status == RuleStatus.FAILED and self.rule.severity >= fail_on))


@dataclass
class CheckReport:
    run_id: str
    started_at: float
    data_dir: str
    fail_on: Severity
    sample: int
    results: list[RuleResult] = field(default_factory=list)
    seconds: float = 0.0
    baseline: str | None = None

    @property
    def blocking(self) -> list[RuleResult]:
        return [r for r in self.results if r.blocks(self.fail_on)]

    @property
    def exit_code(self) -> int:
        return 1 if self.blocking else 0

    @property
    def violations(self) -> int:
        return sum(r.count for r in self.results)

    def result(self, rule_id: str) -> RuleResult:
        for item in self.results:
            if item.rule.id == rule_id:
                return item
        raise KeyError(rule_id)


class _Collector:
    __slots__ = ("result", "sample", "accepted", "collect", "observe")

    def __init__(self, result: RuleResult, sample: int, accepted: frozenset[str] | None, collect: bool,
                 observe: Callable[[Violation], None] | None) -> None:
        self.result = result
        self.sample = sample
        self.accepted = accepted
        self.collect = collect
        self.observe = observe
        if collect:
            result.fingerprints = []

    def add(self, violation: Violation) -> None:
        result = self.result
        if self.observe is not None:
            self.observe(violation)
        if self.accepted is not None or self.collect:
            fp = violation.fingerprint
            if self.collect:
                result.fingerprints.append(fp)  # type: ignore[union-attr]
            if self.accepted is not None and fp in self.accepted:
                result.baselined += 1
                return
        result.count += 1
        if len(result.samples) < self.sample:
            result.samples.append(violation)


def sql_violations(ctx: CheckContext, rule: Rule, sql: str | None = None) -> Iterator[Violation]:
    """The violations a query returns, read the way a SQL rule's rows are (key columns, ``message``,
    ``stored``/``computed``/``difference``/``tolerance``, ``fix_*``/``was_*``, ``fixable``).

    ``sql`` defaults to the rule's own; a Python rule passes its query to read part of its findings
    this way. ``:tolerance`` is bound to the rule's tolerance.
    """
    sql = rule.sql if sql is None else sql
    assert sql is not None, f"rule {rule.id} has no SQL"
    params = {"tolerance": ctx.tolerance(rule)} if ":tolerance" in sql else {}
    cursor = ctx.conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    try:
        keys = [(names.index(k), k) for k in rule.key]
    except ValueError:
        raise ValueError(f"the rule's SQL must return its key columns {list(rule.key)}, got {names}") from None
    extra = {n: names.index(n) for n in ("message", "stored", "computed", "difference", "tolerance") if n in names}
    m, s, c, d, t = (extra.get(n) for n in ("message", "stored", "computed", "difference", "tolerance"))
    # Columns fix_<column> / was_<column> say how to repair the row (new / old value of <column>);
    # an optional column ``fixable`` that is 0 marks a violation without an automatic repair.
    fixes = [(i, n[4:]) for i, n in enumerate(names) if n.startswith("fix_")]
    olds = [(i, n[4:]) for i, n in enumerate(names) if n.startswith("was_")]
    with_fix = ctx.want_fixes and bool(fixes)
    fixable = names.index("fixable") if "fixable" in names else None
    while True:
        rows = cursor.fetchmany(1000)
        if not rows:
            return
        for row in rows:
            fix = was = None
            if with_fix and (fixable is None or row[fixable]):
                fix = {col: row[i] for i, col in fixes}
                was = {col: row[i] for i, col in olds}
            yield Violation(
                rule.id,
                {k: row[i] for i, k in keys if row[i] is not None},
                message=(row[m] or "") if m is not None else "",
                stored=row[s] if s is not None else None,
                computed=row[c] if c is not None else None,
                difference=row[d] if d is not None else None,
                tolerance=row[t] if t is not None else None,
                fix=fix,
                was=was,
            )


def _file_state(ctx: CheckContext, databases: Iterable[str]) -> dict[str, str]:
    """Why a database cannot be checked (physical damage), by name; quick_check lines are cached."""
    problems: dict[str, str] = {}
    cache = ctx.cache.setdefault("quick_check", {})
    for name in databases:
        if name not in cache:
            ctx.say(f"checking the pages of {name}")
            try:
                cache[name] = ctx.backend.physical_problems(ctx.conn, name)
            except sqlite3.DatabaseError as exc:
                cache[name] = [f"cannot be read: {exc}"]
        physical = physical_problems(cache[name])
        if physical:
            problems[name] = f"{name}.db fails quick_check ({physical[0]})"
    return problems


def _missing_tables(ctx: CheckContext, rule: Rule) -> str | None:
    tables = ctx.cache.setdefault("tables", {})
    for item in rule.reads:
        database, _, table = item.partition(".")
        if database not in tables:
            tables[database] = {r[0] for r in ctx.conn.execute(
                f'SELECT name FROM "{database}".sqlite_master WHERE type IN (\'table\', \'view\')')}
        if table not in tables[database]:
            return f"{database}.db has no {table} table (not migrated? run `migrate upgrade`)"
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _run_one(ctx: CheckContext, item: Rule, result: RuleResult, collector: _Collector) -> None:
    started = time.perf_counter()
    try:
        produced = sql_violations(ctx, item) if item.sql is not None else item.check(ctx, item)  # type: ignore[misc]
        for violation in produced:
            collector.add(violation)
    except Exception as exc:
        result.status, result.error = RuleStatus.ERROR, _describe(exc)
    result.seconds = time.perf_counter() - started


def _run_scan(ctx: CheckContext, scan: Scan, members: dict[str, Rule], results: dict[str, RuleResult],
              collectors: dict[str, _Collector]) -> None:
    started = time.perf_counter()
    try:
        for violation in scan.run(ctx, members):
            collectors[violation.rule_id].add(violation)
    except Exception as exc:
        for rule_id in members:
            results[rule_id].status, results[rule_id].error = RuleStatus.ERROR, _describe(exc)
    for rule_id in members:
        results[rule_id].seconds = time.perf_counter() - started


def execute_rules(
    ctx: CheckContext,
    rules: Sequence[Rule],
    *,
    sample: int = 20,
    accepted: frozenset[str] | None = None,
    collect: bool = False,
    observe: Callable[[Violation], None] | None = None,
    precheck: bool = True,
    worker: Callable[[], sqlite3.Connection] | None = None,
) -> list[RuleResult]:
    """Run rules on an open context (also used by repair verification and the adversarial harness).

    ``observe`` sees every violation (before the baseline), e.g. to count them per scope.
    ``precheck=False`` skips the quick_check of the files (the caller knows they are sound).
    ``worker`` opens a second connection: then quick_check and the SQL-bound rules run on it in a
    thread (SQLite releases the GIL while it works) while this thread runs the Python scans, and
    rules reading a file that turns out damaged are reported as skipped afterwards.
    """
    ctx.cache.pop("foreign_key_check", None)  # one pass per run: the files may have changed since
    results = {r.id: RuleResult(r) for r in rules}
    collectors = {r.id: _Collector(results[r.id], sample, accepted, collect, observe) for r in rules}
    databases = sorted({d for r in rules for d in r.databases})
    runnable: list[Rule] = []
    for item in rules:
        reason = _missing_tables(ctx, item) if item.sound_files_only else None
        if reason is not None:
            results[item.id].status, results[item.id].reason = RuleStatus.SKIPPED, reason
        else:
            runnable.append(item)
    scans: dict[str, tuple[Scan, dict[str, Rule]]] = {}
    others: list[Rule] = []
    for item in runnable:
        if item.scan is not None:
            scans.setdefault(item.scan.name, (item.scan, {}))[1][item.id] = item
        else:
            others.append(item)

    def other_rules(on: CheckContext, damaged: dict[str, str]) -> None:
        for position, item in enumerate(others, 1):
            reason = next((damaged[d] for d in item.databases if d in damaged), None) if item.sound_files_only else None
            if reason is not None:
                results[item.id].status, results[item.id].reason = RuleStatus.SKIPPED, reason
                continue
            on.say(f"[{position}/{len(others)}] {item.id}")
            _run_one(on, item, results[item.id], collectors[item.id])

    if worker is not None and scans and others:
        import threading

        shared: dict[str, object] = {}

        def work() -> None:
            conn = worker()
            try:
                on = CheckContext(conn, ctx.settings, tickers=ctx.tickers, progress=ctx.progress, want_fixes=ctx.want_fixes)
                damaged = _file_state(on, databases) if precheck else {}
                shared["damaged"] = damaged
                shared["quick_check"] = on.cache.get("quick_check", {})
                other_rules(on, damaged)
            except BaseException as exc:  # reported below, on this thread
                shared["error"] = exc
            finally:
                conn.close()

        thread = threading.Thread(target=work, name="integrity-sql-rules")
        thread.start()
        for scan, members in scans.values():
            ctx.say(f"{scan.name} scan ({', '.join(members)})")
            _run_scan(ctx, scan, members, results, collectors)
        thread.join()
        if "error" in shared:
            raise shared["error"]  # type: ignore[misc]
        ctx.cache["quick_check"] = shared.get("quick_check", {})
        damaged = shared.get("damaged", {})  # type: ignore[assignment]
        for _, members in scans.values():
            for item in members.values():
                reason = next((damaged[d] for d in item.databases if d in damaged), None)  # type: ignore[index]
                if reason is not None:
                    results[item.id] = RuleResult(item, status=RuleStatus.SKIPPED, reason=reason)
    else:
        damaged = _file_state(ctx, databases) if precheck else {}
        for scan, members in scans.values():
            blocked = {i: next((damaged[d] for d in r.databases if d in damaged), None) for i, r in members.items()}
            for rule_id, reason in blocked.items():
                if reason is not None:
                    results[rule_id].status, results[rule_id].reason = RuleStatus.SKIPPED, reason
            live = {i: r for i, r in members.items() if blocked[i] is None}
            if live:
                ctx.say(f"{scan.name} scan ({', '.join(live)})")
                _run_scan(ctx, scan, live, results, collectors)
        other_rules(ctx, damaged)
    for result in results.values():
        if result.status == RuleStatus.PASSED and result.count:
            result.status = RuleStatus.FAILED
    return [results[r.id] for r in rules]


def run_checks(
    settings: Settings,
    *,
    registry: Registry,
    rule_ids: Sequence[str] | None = None,
    fail_on: Severity = Severity.HIGH,
    sample: int = 20,
    accepted: frozenset[str] | None = None,
    baseline_name: str | None = None,
    collect: bool = False,
    progress: Callable[[str], None] | None = None,
) -> CheckReport:
    """The gate: run the selected rules of ``registry`` (all by default) over the data directory's
    databases. Reads only: recording the run is the caller's choice (``rules.history``)."""
    rules = registry.select(rule_ids)
    if not settings.data_dir.is_dir():
        raise NotInitialisedError(f"{settings.data_dir}: data directory does not exist", hint="run `migrate upgrade` first")
    from ..migrate.state import refuse_lost_databases

    refuse_lost_databases(settings)  # a lost database is never "checked" as an empty one
    backend = backend_for(settings)
    backend.require(DATABASES)
    report = CheckReport(new_run_id("chk"), time.time(), str(settings.data_dir), fail_on, sample, baseline=baseline_name)
    clock = time.perf_counter()

    def connection() -> sqlite3.Connection:
        return backend.open(DATABASES, readonly=True, cache_kib=32_768)

    conn = connection()
    try:
        ctx = CheckContext(conn, settings, progress=progress, _backend=backend)
        report.results = execute_rules(ctx, rules, sample=sample, accepted=accepted, collect=collect, worker=connection)
    finally:
        conn.close()
    report.seconds = time.perf_counter() - clock
    return report
