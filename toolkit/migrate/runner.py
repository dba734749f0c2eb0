"""Executing migration plans: lock, reconcile, back up, one transaction per migration per file.

Order of events for one migration on one file::

    BEGIN IMMEDIATE                      (waits up to the busy timeout for other writers)
    backup through the backup API        (first change to this file in this run)
    the migration's statements           (SQLite's authorizer refuses transaction control meanwhile;
                                          then its transaction must still be this one: TransactionWatch)
    INSERT INTO _toolkit_migrations      (the record, in the same transaction)
    COMMIT                               <- the file is now migrated, and says so
    migration_history upsert             (migrations.db; reconciled later if we die before this)

A failure anywhere before COMMIT rolls the file back to exactly what it was. A migration whose code
went around the authorizer and ended the transaction is not recorded as applied, and its error names
what was committed instead. ``sys.exit`` in a migration is a failure; an interrupt rolls it back and
propagates as :class:`~toolkit.migrate.discovery.MigrationInterrupted` (a KeyboardInterrupt naming it).

A migration that declares ``REBUILDS_TABLES = True`` (it calls ``db.transform()``) runs with foreign
keys switched off around that transaction (``PRAGMA foreign_keys`` cannot change inside one), and
``PRAGMA foreign_key_check`` must show no violation the file did not already have before COMMIT.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..backend import backend_for
from ..backup import Backup
from ..config import DATABASES, HISTORY, Settings
from ..db import atomic, check_file, translate_error
from ..errors import DatabaseFileError, MigrationFailedError, ToolkitError
from ..lock import Holder
from .discovery import (Migration, MigrationContext, MigrationInterrupted, RefusedStatement, TransactionEscaped,
                        TransactionWatch, refused_reason)
from .plan import Plan, Step, plan_downgrade, plan_upgrade
from .rebuild import foreign_key_violations, foreign_keys_off, refuse_new_violations
from .state import (FileState, MigrationStatus, ensure_bookkeeping, read_states, reconcile, record_event, record_history,
                    refuse_lost)

__all__ = [
    "Progress",
    "StepResult",
    "RunResult",
    "upgrade",
    "downgrade",
    "preview_downgrade",
    "CHECKPOINT",
]

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _no_checkpoint(point: str, migration: Migration) -> None:
    """Crash tests replace this (in a child process) to die at a precise point."""


#: Called at named points of a run: ``after_file_commit`` (file committed, ledger not yet written).
CHECKPOINT: list[Callable[[str, Migration], None]] = [_no_checkpoint]


@dataclass
class StepResult:
    migration: str
    database: str
    direction: str
    duration: float
    statements: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    direction: str
    dry_run: bool = False
    reconciled: list[str] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    backups: list[Backup] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _waiting(progress: Progress) -> Callable[[Holder | None], None]:
    def told(holder: Holder | None) -> None:
        who = holder.describe() if holder else "another process"
        progress(f"waiting for the data directory lock held by {who}")

    return told


def _took_over(progress: Progress) -> Callable[[Holder], None]:
    def told(holder: Holder) -> None:
        progress(f"previous lock holder {holder.describe()} ended without releasing; lock taken over")

    return told


def _physical(problems: list[str]) -> list[str]:
    """quick_check lines that mean damage (a row violating a constraint is not damage)."""
    return [p for p in problems if "constraint failed" not in p and not p.startswith("NULL value")]


def _refuse_damaged(settings: Settings) -> None:
    """Refuse a data directory in which any file fails ``PRAGMA quick_check``, before anything is
    changed (ledger reconciliation and backups included).

    Every file of the data directory is checked, not only those the plan touches: a run that migrates
    around a damaged file, or finds nothing to do, would report success on a data directory that
    needs a restore first.
    """
    for name in (*DATABASES, HISTORY):
        path = settings.path(name)
        if not check_file(path, must_exist=False):
            continue
        backend = backend_for(settings)
        conn = backend.connect(name, readonly=True)
        try:
            problems = _physical(backend.physical_problems(conn, name))
        except sqlite3.Error as exc:
            raise translate_error(exc, path, action="checking it before migrating") from exc
        finally:
            conn.close()
        if problems:
            raise DatabaseFileError(
                path, f"is corrupt (quick_check: {problems[0]}); nothing was changed",
                hint=f"restore a backup with `migrate restore --database {name}` (`migrate restore --list` shows them)",
            )


def _preflight(settings: Settings, plan: Plan) -> dict[str, sqlite3.Connection]:
    """Open every file the plan touches, refusing read-only ones, before any change.

    The files' health was checked by :func:`_refuse_damaged` under the same lock."""
    conns: dict[str, sqlite3.Connection] = {}
    try:
        for name in plan.databases:
            path = settings.path(name)
            check_file(path, must_exist=False, writable=True)
            conns[name] = backend_for(settings).connect(name, create=True)
    except BaseException:
        for conn in conns.values():
            conn.close()
        raise
    return conns


def _record(history: sqlite3.Connection, migration: Migration, path: Path, status: MigrationStatus, started: float,
            duration: float | None, error: str | None, action: str) -> None:
    """Record a step's outcome: the migration's row in ``migration_history`` and an event. A failed
    downgrade rolled back, so the migration is still applied: only its event is recorded."""
    with atomic(history):
        if not (status is MigrationStatus.FAILED and action == "downgrade"):
            record_history(
                history, migration, migration_id=migration.id, name=migration.label, database=migration.database,
                path=path, status=status, at=started, duration=duration, error=error,
            )
        record_event(history, migration_id=migration.id, database=migration.database, action=action,
                     status=status, detail=error, duration=duration, at=started)


def _run_step(
    settings: Settings,
    conn: sqlite3.Connection,
    history: sqlite3.Connection,
    step: Step,
    *,
    backup_first: bool,
    created: bool = False,
    result: RunResult,
) -> None:
    m = step.migration
    path = settings.path(m.database)
    started = time.time()
    clock = time.perf_counter()
    ctx = MigrationContext(conn, m.database, rebuilds_tables=m.rebuilds_tables)
    with foreign_keys_off(conn, m.rebuilds_tables):
        _run_in_transaction(settings, conn, history, step, ctx, path, started, clock,
                            backup_first=backup_first, created=created, result=result)
    duration = time.perf_counter() - clock
    CHECKPOINT[0]("after_file_commit", m)
    status = MigrationStatus.APPLIED if step.direction == "upgrade" else MigrationStatus.ROLLED_BACK
    _record(history, m, path, status, started, duration, None, step.direction)
    result.steps.append(StepResult(m.label, m.database, step.direction, duration, list(ctx.statements)))


def _shown(statement: str | None) -> str | None:
    shown = " ".join(statement.split()) if statement else None
    return shown[:197] + "..." if shown and len(shown) > 200 else shown


def _failure(subject: str, verb: str, m: Migration, path: Path, ctx: MigrationContext, watch: TransactionWatch | None,
             exc: BaseException, *, unchanged: str, again: str, created: bool = False) -> BaseException:
    """The one-line error for a migration that did not complete, once its transaction is rolled back:
    a refused statement, an exception, ``sys.exit``, an interrupt, or code that went around the
    runner's transaction (then what it committed is named, never "left as before")."""
    where = f"on database {m.database} ({path})"
    # Code that ended the transaction and then failed, with nothing committed, is an ordinary failure
    # (SQLite itself rolls back on some errors, e.g. a full disk): the file is as it was.
    escaped = watch is not None and watch.verdict and (watch.committed or isinstance(exc, TransactionEscaped))
    if isinstance(exc, KeyboardInterrupt) and not escaped:
        return MigrationInterrupted(f"{subject} {where} was rolled back and not recorded as applied; every "
                                    "database is left at its last committed state")

    def failed(message: str, hint: str) -> MigrationFailedError:
        return MigrationFailedError(message, migration_id=m.id, database=m.database, path=path,
                                    statement=ctx.current, hint=hint)

    if escaped:
        assert watch is not None
        try:
            changes = watch.changes()
        except sqlite3.Error as error:
            changes = f"changes were committed to the file (they could not be listed: {error})"
        if watch.committed and created:
            changes += f"; {path.name} did not exist before this run and is removed again"
        last = _shown(ctx.current)
        after = f" after statement `{last}`" if last else ""
        state = changes if watch.committed else f"{changes}; {unchanged}"
        check = ("check the file (`migrate verify`) and put a backup back if needed (`migrate restore --list`); "
                 if watch.committed and not created else "")
        return failed(f"{subject} went around the runner's transaction {where}{after}: {watch.verdict}; {state}; "
                      "it was not recorded as applied", f"{check}remove the transaction control from {m.path.name}")
    if isinstance(exc, SystemExit):
        return failed(f"{subject} called sys.exit({exc.code!r}) {where}: rolled back, not recorded as applied; {unchanged}",
                      f"a migration fails by raising an exception, never by exiting; fix {m.path.name} and {again}")
    refused = exc.message if isinstance(exc, RefusedStatement) else refused_reason(ctx, exc)
    shown = _shown(ctx.current)
    if refused and not isinstance(exc, RefusedStatement):
        shown = None  # refused on the connection itself, not through db.execute
    at = f" at statement `{shown}`" if shown else (" at a statement run on the connection directly" if refused else "")
    reason = refused or (exc.message if isinstance(exc, ToolkitError) else f"{type(exc).__name__}: {exc}")
    hint = f"remove that statement from {m.path.name} and {again}" if refused else f"fix the cause and {again}"
    return failed(f"{subject} {verb} {where}{at}: {reason}; {unchanged}", hint)


def _run_in_transaction(settings: Settings, conn: sqlite3.Connection, history: sqlite3.Connection, step: Step,
                        ctx: MigrationContext, path: Path, started: float, clock: float, *,
                        backup_first: bool, created: bool, result: RunResult) -> None:
    m = step.migration
    began = False
    watch: TransactionWatch | None = None
    try:
        with atomic(conn, path=path, action=f"starting migration {m.label}"):
            began = True
            if backup_first:
                item = backend_for(settings).backup(m.database, f"pre-{step.direction}-{m.id}")
                if item is not None:
                    result.backups.append(item)
            ensure_bookkeeping(conn)
            baseline = foreign_key_violations(conn) if m.rebuilds_tables else None
            watch = TransactionWatch(conn, path)
            watch.run(m.upgrade if step.direction == "upgrade" else m.downgrade, ctx)
            watch.close()
            ctx.current = None
            if baseline is not None:
                refuse_new_violations(conn, baseline)
            if step.direction == "upgrade":
                conn.execute(
                    "INSERT INTO _toolkit_migrations (migration_id, name, checksum, source, applied_at, duration_seconds) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (m.id, m.label, m.checksum, m.source, int(started), time.perf_counter() - clock),
                )
            else:
                conn.execute("DELETE FROM _toolkit_migrations WHERE migration_id = ?", (m.id,))
    except BaseException as exc:
        if not began:
            raise  # BEGIN failed (translated, naming the file), or an interrupt before it: nothing ran
        failure = _failure(f"{step.direction} of migration {m.label}", "failed", m, path, ctx, watch, exc,
                           unchanged="the file was left exactly as before", again=f"run `migrate {step.direction}` again",
                           created=created)
        if isinstance(failure, MigrationFailedError):
            try:
                _record(history, m, path, MigrationStatus.FAILED, started, time.perf_counter() - clock,
                        failure.message, step.direction)
            except sqlite3.Error:
                pass  # the failure itself is what the user must see
        raise failure from exc
    finally:
        if watch is not None:
            watch.close()


def _execute(settings: Settings, plan: Plan, history: sqlite3.Connection, result: RunResult, progress: Progress) -> None:
    existed = {name: settings.path(name).exists() for name in plan.databases}
    conns = _preflight(settings, plan)
    touched: set[str] = set()
    try:
        for step in plan.steps:
            name = step.migration.database
            progress(f"{step.direction} {step.migration.label} on {name}")
            try:
                _run_step(settings, conns[name], history, step, backup_first=name not in touched and existed[name],
                          created=name not in touched and not existed[name], result=result)
            except BaseException:
                if not existed[name] and name not in touched:
                    conns.pop(name).close()
                    _remove_created(settings.path(name))
                raise
            touched.add(name)
    finally:
        for conn in conns.values():
            conn.close()


class _Rehearsed(Exception):
    """Ends a dry run's transaction: everything it did is rolled back."""


def _remove_created(path: Path) -> None:
    """A file this run created whose first migration failed goes away again: 'exactly as before'."""
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _dry_run(settings: Settings, plan: Plan, result: RunResult) -> None:
    """Rehearse the plan inside transactions that are rolled back; record the exact SQL."""
    by_db: dict[str, list[Step]] = {}
    for step in plan.steps:
        by_db.setdefault(step.migration.database, []).append(step)
    for name, steps in by_db.items():
        path = settings.path(name)
        on_disk = check_file(path, must_exist=False)
        if on_disk:
            conn = sqlite3.connect(str(path), isolation_level=None, timeout=settings.busy_timeout)
        else:
            conn = sqlite3.connect(":memory:", isolation_level=None)
        try:
            if any(step.migration.rebuilds_tables for step in steps):
                # The rehearsal is one transaction, so foreign keys stay off throughout (SQLite's
                # default for this plain connection anyway): a rebuild rehearses as it will run, and
                # its foreign key check is rehearsed as well.
                conn.execute("PRAGMA foreign_keys = OFF")
            try:
                with atomic(conn, path=path, action="rehearsing the upgrade"):
                    for step in steps:
                        ctx = MigrationContext(conn, name, rebuilds_tables=step.migration.rebuilds_tables)
                        watch: TransactionWatch | None = None
                        try:
                            baseline = foreign_key_violations(conn) if step.migration.rebuilds_tables else None
                            watch = TransactionWatch(conn, path if on_disk else None)
                            watch.run(step.migration.upgrade, ctx)
                            watch.close()
                            if baseline is not None:
                                ctx.current = None
                                refuse_new_violations(conn, baseline)
                        except BaseException as exc:
                            raise _failure(f"dry run: migration {step.migration.label}", "would fail", step.migration,
                                           path, ctx, watch, exc, unchanged="nothing was changed",
                                           again="run `migrate upgrade --dry-run` again") from exc
                        finally:
                            if watch is not None:
                                watch.close()
                        result.steps.append(StepResult(step.migration.label, name, "upgrade", 0.0, list(ctx.statements)))
                    raise _Rehearsed  # a rehearsal always rolls back
            except _Rehearsed:
                pass
        finally:
            conn.close()


def _states_and_history(settings: Settings, migrations: Sequence[Migration], result: RunResult,
                        *, create: bool) -> tuple[dict[str, FileState], sqlite3.Connection]:
    # Read the files first: a file that cannot be read (a directory, not SQLite, corrupt) is refused
    # before the ledger is created, so a refused command leaves no new file behind.
    states = read_states(settings, DATABASES)
    history = backend_for(settings).history(create=create)
    assert history is not None
    try:
        refuse_lost(states, history)  # never recreate a lost database, nor bring the ledger in line with it
        result.reconciled.extend(reconcile(history, states, migrations))
    except BaseException:
        history.close()
        raise
    return states, history


def _make_data_dir(settings: Settings) -> None:
    """Create the data directory, or say plainly why it cannot be (a file in the way, no permission)."""
    directory = settings.data_dir
    if directory.exists() and not directory.is_dir():
        raise DatabaseFileError(directory, "is not a directory", hint="point --data-dir at the directory that holds the databases")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseFileError(directory, f"cannot create the data directory ({exc.strerror or exc})") from exc


def upgrade(
    settings: Settings,
    *,
    migrations: Sequence[Migration],
    target: str | None = None,
    database: str | None = None,
    dry_run: bool = False,
    allow_out_of_order: bool = False,
    progress: Progress = _quiet,
) -> RunResult:
    """Apply pending ``migrations`` (up to ``target``; of one ``database``). Creates the data directory."""
    if database is not None:
        settings.path(database)  # validates the name
    result = RunResult("upgrade", dry_run=dry_run)
    if dry_run:
        _refuse_damaged(settings)
        states = read_states(settings, DATABASES)
        plan = plan_upgrade(migrations, states, target=target, database=database, allow_out_of_order=allow_out_of_order)
        result.notes.extend(plan.notes)
        _dry_run(settings, plan, result)
        if not plan:
            result.notes.append("nothing to upgrade")
        return result
    _make_data_dir(settings)
    with backend_for(settings).lock("migrate upgrade", on_wait=_waiting(progress), on_takeover=_took_over(progress)):
        _refuse_damaged(settings)
        states, history = _states_and_history(settings, migrations, result, create=True)
        try:
            plan = plan_upgrade(migrations, states, target=target, database=database, allow_out_of_order=allow_out_of_order)
            result.notes.extend(plan.notes)
            if not plan:
                result.notes.append(f"nothing to upgrade: all {len(migrations)} migrations applied" if target is None and database is None else "nothing to upgrade")
                return result
            _execute(settings, plan, history, result, progress)
        finally:
            history.close()
    return result


def preview_downgrade(settings: Settings, *, migrations: Sequence[Migration], target: str | None = None,
                      database: str | None = None) -> Plan:
    """The downgrade plan as things stand (for the confirmation prompt); changes nothing."""
    if database is not None:
        settings.path(database)
    return plan_downgrade(migrations, read_states(settings, DATABASES), target=target, database=database)


def downgrade(
    settings: Settings,
    *,
    migrations: Sequence[Migration],
    target: str | None = None,
    database: str | None = None,
    expected: Plan | None = None,
    progress: Progress = _quiet,
) -> RunResult:
    """Revert applied migrations newest first, down to and including ``target`` (to zero when ``None``).

    ``expected`` is the plan the user confirmed; if the state changed meanwhile, nothing runs.
    """
    if database is not None:
        settings.path(database)
    result = RunResult("downgrade")
    if not settings.data_dir.is_dir():
        plan_downgrade(migrations, read_states(settings, DATABASES), target=target, database=database)
    with backend_for(settings).lock("migrate downgrade", on_wait=_waiting(progress), on_takeover=_took_over(progress)):
        _refuse_damaged(settings)
        states, history = _states_and_history(settings, migrations, result, create=True)
        try:
            plan = plan_downgrade(migrations, states, target=target, database=database)
            if expected is not None and [s.migration.id for s in plan.steps] != [s.migration.id for s in expected.steps]:
                raise ToolkitError(
                    "the databases changed while the downgrade was being confirmed; nothing was done",
                    hint="run `migrate downgrade` again",
                )
            _execute(settings, plan, history, result, progress)
        finally:
            history.close()
    return result

