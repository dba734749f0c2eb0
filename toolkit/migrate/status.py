"""`migrate status`: per database, which version it is at and what is pending or drifted.

Kept cheap (it runs in well under a tenth of a second): read-only connections, no sqlglot. It reads
only — it never reconciles the ledger, takes the lock or creates a file — so it runs on a read-only
snapshot and never rewrites the ledger's history (say, after a data file was lost): what a writing
command would reconcile is reported instead.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import DATABASES, Settings
from ..lock import read_holder
from .plan import drifted, unknown_applied
from .discovery import Migration
from .state import read_ledger, read_states

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
    #: The ledger says this database was created and migrated, but its file is missing, empty or
    #: another database: what is wrong (restore it; upgrading would not bring it back).
    lost: str | None = None


@dataclass
class StatusReport:
    data_dir: str
    data_dir_source: str
    initialised: bool
    databases: list[DatabaseStatus]
    reconciled: list[str] = field(default_factory=list)     # always empty: status never writes the ledger
    to_reconcile: list[str] = field(default_factory=list)   # what a writing command would reconcile
    lock_holder: str | None = None                          # a writing command at work, if any

    @property
    def reconcile_pending(self) -> bool:
        return bool(self.to_reconcile)

    @property
    def up_to_date(self) -> bool:
        return self.initialised and all(not d.pending and not d.drift and not d.lost for d in self.databases)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["reconcile_pending"] = self.reconcile_pending
        data["up_to_date"] = self.up_to_date
        return data


def _lock_holder(path: Path) -> str | None:
    """Who holds the data-directory lock now, without taking it or creating the lock file: a shared,
    non-blocking ``flock`` probe on a read-only descriptor (the holder's details are in the file)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the file names a holder only while one holds it
        holder = read_holder(path)
        return holder.describe() if holder else None
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(path)
            return holder.describe() if holder else "another process"
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def status(settings: Settings, *, migrations: Sequence[Migration]) -> StatusReport:
    """Read every file's migration records and the ledger against ``migrations``, and summarise.

    Reads only: disagreement between the ledger and the files is reported in ``to_reconcile``.
    """
    initialised = settings.data_dir.is_dir() and settings.history_path.exists()
    states = read_states(settings, DATABASES)
    report = StatusReport(str(settings.data_dir), settings.data_dir_source, initialised, [])
    lost: dict[str, str] = {}
    if initialised:
        view = read_ledger(settings, states, migrations)
        report.to_reconcile = view.to_reconcile if view else []
        lost = view.lost if view else {}
        report.lock_holder = _lock_holder(settings.lock_path)
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
                lost=lost.get(name),
            )
        )
    return report
