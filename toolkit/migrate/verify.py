"""`migrate verify`: checksums, ledger vs per-file records, live vs expected schema, file health.

The expected schema of a database is what its applied migrations produce when replayed into an
empty in-memory database. Definitions are compared as written first; only when the text differs
is sqlglot asked whether the difference is mere formatting (so sqlglot loads only when needed).
"""
from __future__ import annotations

import difflib
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ..config import DATABASES, Settings
from ..db import is_wal_file, quick_check, quote_ident, translate_error
from ..errors import NotInitialisedError
from ..backend import backend_for
from .discovery import Migration, MigrationContext
from .plan import drifted, unknown_applied
from .rebuild import foreign_keys_off
from .state import FileState, MigrationStatus, read_ledger, read_states

__all__ = ["Finding", "VerifyReport", "verify", "expected_schema", "live_schema", "schema_differences", "normalize_sql"]


@dataclass(frozen=True)
class Finding:
    check: str
    database: str
    subject: str
    detail: str


@dataclass
class VerifyReport:
    data_dir: str
    findings: list[Finding] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)     # always empty: verify never writes the ledger
    checked: list[dict] = field(default_factory=list)
    to_reconcile: list[str] = field(default_factory=list)   # what a writing command would reconcile

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict:
        return {
            "data_dir": self.data_dir,
            "ok": self.ok,
            "findings": [asdict(f) for f in self.findings],
            "reconciled": self.reconciled,
            "to_reconcile": self.to_reconcile,
            "checked": self.checked,
        }


def _objects(conn: sqlite3.Connection, schema: str = "main") -> dict[tuple[str, str], str | None]:
    rows = conn.execute(
        f"SELECT type, name, sql FROM {quote_ident(schema)}.sqlite_master "
        "WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND tbl_name NOT LIKE '\\_toolkit\\_%' ESCAPE '\\'"
    )
    return {(r[0], r[1]): r[2] for r in rows}


def expected_schema(migrations: Sequence[Migration], database: str, applied: Sequence[str]) -> dict[tuple[str, str], str | None]:
    """Replay the applied migrations of ``database`` into memory and return its objects."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        wanted = set(applied)
        for m in migrations:
            if m.database == database and m.id in wanted:
                with foreign_keys_off(conn, m.rebuilds_tables):  # as the runner runs it
                    m.upgrade(MigrationContext(conn, database, rebuilds_tables=m.rebuilds_tables))
        return _objects(conn)
    finally:
        conn.close()


def live_schema(conn: sqlite3.Connection, schema: str = "main") -> dict[tuple[str, str], str | None]:
    return _objects(conn, schema)


def _squash(sql: str | None) -> str:
    return re.sub(r"\s+", " ", sql or "").strip().rstrip(";").strip()


def normalize_sql(sql: str | None) -> str:
    """A canonical form of a definition: sqlglot's rendering, or squashed whitespace if it cannot parse."""
    if not sql:
        return ""
    try:
        import sqlglot
        from sqlglot import exp
        from sqlglot.errors import SqlglotError

        try:
            tree = sqlglot.parse_one(sql, read="sqlite")
            # Quoting an identifier is formatting in SQLite ("orders" is orders; a table rebuilt
            # from introspection comes back quoted), and so are comments.
            for identifier in tree.find_all(exp.Identifier):
                identifier.set("quoted", False)
            return tree.sql(dialect="sqlite", normalize=True, comments=False).lower()
        except SqlglotError:
            pass
    except ImportError:  # pragma: no cover - sqlglot is a dependency
        pass
    return _squash(sql).lower()


def schema_differences(expected: dict, live: dict) -> list[tuple[str, str]]:
    """(subject, detail) for objects missing, unexpected, or defined differently."""
    found: list[tuple[str, str]] = []
    for key in sorted(expected.keys() - live.keys()):
        found.append((f"{key[0]} {key[1]}", "missing: the migrations create it but the file does not have it"))
    for key in sorted(live.keys() - expected.keys()):
        found.append((f"{key[0]} {key[1]}", "unexpected: the file has it but no applied migration creates it"))
    for key in sorted(expected.keys() & live.keys()):
        want, have = expected[key], live[key]
        if _squash(want) == _squash(have) or normalize_sql(want) == normalize_sql(have):
            continue
        found.append((f"{key[0]} {key[1]}", f"definition differs: expected `{_squash(want)}`, found `{_squash(have)}`"))
    return found


def _diff(old: str, new: str, label: str, limit: int = 40) -> str:
    lines = list(difflib.unified_diff(old.splitlines(), new.splitlines(), f"{label} (applied)", f"{label} (now)", lineterm="", n=1))
    if len(lines) > limit:
        lines = lines[:limit] + [f"... ({len(lines) - limit} more diff lines)"]
    return "\n".join(lines)


def _stored_source(conn: sqlite3.Connection, mid: str) -> str:
    row = conn.execute("SELECT source FROM _toolkit_migrations WHERE migration_id = ?", (mid,)).fetchone()
    return row[0] if row else ""


def verify(settings: Settings, *, migrations: Sequence[Migration]) -> VerifyReport:
    """Every consistency check the runner can make against ``migrations``; findings make `migrate verify` exit 1.

    Reads only (it runs on a read-only snapshot): the ledger is compared as a writing command would
    leave it after reconciling, and what that would change is reported in ``to_reconcile``.
    """
    if not settings.data_dir.is_dir() or not settings.history_path.exists():
        raise NotInitialisedError(f"{settings.data_dir}: not initialised", hint="run `migrate upgrade` first")
    report = VerifyReport(str(settings.data_dir))
    states: dict[str, FileState] = read_states(settings, DATABASES)
    view = read_ledger(settings, states, migrations)
    assert view is not None
    ledger, report.to_reconcile = view.rows, view.to_reconcile
    history = backend_for(settings).history(readonly=True)
    assert history is not None
    try:
        _file_health(report, history, "migrations", settings.history_path, fk=False)
    finally:
        history.close()

    changed = {m.id: recorded for m, recorded in drifted(migrations, states)}
    for db, mid in unknown_applied(migrations, states):
        report.findings.append(Finding("checksum", db, mid, "applied, but its migration file is missing"))
    for name in DATABASES:
        state = states[name]
        if name in view.lost:
            report.findings.append(Finding("lost", name, state.path.name,
                                           f"{view.lost[name]}; restore it with `migrate restore --database {name}`"))
            continue
        if not state.exists:
            report.findings.append(Finding("file", name, state.path.name, "does not exist (run `migrate upgrade`)"))
            continue
        conn = backend_for(settings).connect(name, readonly=True)
        try:
            for m in migrations:
                if m.id in changed and m.database == name:
                    old = _stored_source(conn, m.id)
                    report.findings.append(Finding("checksum", name, m.label, "file changed since it was applied:\n" + _diff(old, m.source, m.path.name)))
            for mid, record in state.records.items():
                status, db, checksum = ledger.get(mid, (None, None, None))
                if status != MigrationStatus.APPLIED or db != name:
                    report.findings.append(Finding("ledger", name, mid, f"applied in {state.path.name} but the ledger says {status or 'nothing'} ({db or 'no database'})"))
                elif checksum and checksum != record.checksum:
                    report.findings.append(Finding("ledger", name, mid, "ledger checksum differs from the checksum recorded in the file"))
            for mid, (status, db, _) in ledger.items():
                if db == name and status == MigrationStatus.APPLIED and mid not in state.records:
                    report.findings.append(Finding("ledger", name, mid, f"the ledger says applied but {state.path.name} has no record of it"))
            expected = expected_schema(migrations, name, list(state.records))
            for subject, detail in schema_differences(expected, live_schema(conn)):
                report.findings.append(Finding("schema", name, subject, detail))
            _file_health(report, conn, name, state.path, fk=True)
        except sqlite3.Error as exc:
            raise translate_error(exc, state.path, action="verifying") from exc
        finally:
            conn.close()
    return report


def _is_damage(exc: sqlite3.Error) -> bool:
    """Whether an error reading a file means the file is damaged (not busy, not an I/O hiccup)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return True
    text = str(exc).lower()
    return "malformed" in text or "corrupt" in text or "not a database" in text


def _pragma_lines(conn: sqlite3.Connection, check: str, read) -> tuple[list, str | None]:
    """Run one health pragma; a pragma that raises because the file is damaged is a finding, not a
    crash: returns (rows, why it could not run)."""
    try:
        return read(conn), None
    except sqlite3.DatabaseError as exc:
        if not _is_damage(exc):
            raise
        return [], f"{check} could not complete: {exc}"


def _file_health(report: VerifyReport, conn: sqlite3.Connection, name: str, path, *, fk: bool) -> None:
    problems, failed = _pragma_lines(conn, "quick_check", quick_check)
    if failed:
        problems = [failed]
    for line in problems[:20]:
        report.findings.append(Finding("quick_check", name, path.name, line))
    report.checked.append({"database": name, "check": "quick_check", "ok": not problems})
    if fk:
        rows, failed = _pragma_lines(conn, "foreign_key_check", lambda c: c.execute("PRAGMA foreign_key_check").fetchmany(21))
        if failed:
            report.findings.append(Finding("foreign_key_check", name, path.name, failed))
        for table, rowid, parent, _ in rows[:20]:
            report.findings.append(Finding("foreign_key_check", name, f"{table} rowid {rowid}", f"references a missing row of {parent}"))
        report.checked.append({"database": name, "check": "foreign_key_check", "ok": not rows and not failed})
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    if str(mode).lower() != "wal" and is_wal_file(path):
        mode = "wal"  # a read-only snapshot opened immutable reports "delete"; the file's header says WAL
    if str(mode).lower() != "wal":
        report.findings.append(Finding("journal_mode", name, path.name, f"journal mode is {mode}, expected wal"))
    report.checked.append({"database": name, "check": "journal_mode", "ok": str(mode).lower() == "wal"})
