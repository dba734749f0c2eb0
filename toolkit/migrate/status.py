"""`migrate status`: per database, which version it is at and what is pending or drifted.

Kept cheap (it runs in well under a tenth of a second): read-only connections, no sqlglot.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from ..config import DATABASES, Settings
from ..db import is_read_only
from ..errors import LockTimeoutError
from ..backend import backend_for
from ..lock import read_holder
from .plan import drifted, unknown_applied
from .discovery import Migration
from .state import read_states, reconcile, reconcile_if_free

__all__ = ["DatabaseStatus", "StatusReport", "status"]


@dataclass
class DatabaseStatus:
    name: str
    file: str
    exists: bool
    version: str | None
    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    last_applied_at: int | None = None
    drift: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


@dataclass
class StatusReport:
    data_dir: str
    data_dir_source: str
    initialised: bool
    databases: list[DatabaseStatus]
    reconciled: list[str] = field(default_factory=list)
    reconcile_pending: bool = False
    lock_holder: str | None = None
    not_written: str | None = None     # why the reconciliation was only reported

    @property
    def up_to_date(self) -> bool:
        return self.initialised and all(not d.pending and not d.drift for d in self.databases)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["up_to_date"] = self.up_to_date
        return data


def status(settings: Settings, *, migrations: Sequence[Migration]) -> StatusReport:
    """Read every file's migration records, reconcile the ledger with ``migrations``, and summarise."""
    initialised = settings.data_dir.is_dir() and settings.history_path.exists()
    states = read_states(settings, DATABASES)
    report = StatusReport(str(settings.data_dir), settings.data_dir_source, initialised, [])
    if initialised and is_read_only(settings.history_path):
        history = backend_for(settings).history(readonly=True)
        assert history is not None
        try:
            report.reconciled = reconcile(history, states, migrations, write=False)
            report.reconcile_pending = bool(report.reconciled)
            report.not_written = f"{settings.history_path.name} is read-only"
        finally:
            history.close()
    elif initialised:
        try:
            report.reconciled = reconcile_if_free(settings, states, migrations, "migrate status")
        except LockTimeoutError:
            holder = read_holder(settings.lock_path)
            report.lock_holder = holder.describe() if holder else "another process"
            report.not_written = f"{report.lock_holder} holds the lock"
            history = backend_for(settings).history(readonly=True)
            assert history is not None
            try:
                report.reconciled = reconcile(history, states, migrations, write=False)
                report.reconcile_pending = bool(report.reconciled)
            finally:
                history.close()
    changed = {m.id for m, _ in drifted(migrations, states)}
    missing = unknown_applied(migrations, states)
    for name in DATABASES:
        state = states[name]
        own = [m for m in migrations if m.database == name]
        applied = [m.id for m in own if m.id in state.records]
        report.databases.append(
            DatabaseStatus(
                name=name,
                file=str(state.path),
                exists=state.exists,
                version=max(state.records, key=int) if state.records else None,
                applied=applied,
                pending=[m.id for m in own if m.id not in state.records],
                last_applied_at=max((r.applied_at for r in state.records.values()), default=None),
                drift=sorted(mid for mid in state.records if mid in changed),
                unknown=[mid for db, mid in missing if db == name],
            )
        )
    return report
