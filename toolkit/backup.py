"""Backups through SQLite's backup API (never a file copy of a live WAL database).

Taken before `migrate upgrade`/`downgrade` and `integrity repair --apply` change a file, kept in
``data/backups/`` with bounded retention per database, and restorable with `migrate restore`.
"""
from __future__ import annotations

import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ALL_FILES, Settings
from .db import check_file, connect, quick_check, translate_error
from .errors import DatabaseFileError, UsageError

__all__ = ["Backup", "take_backup", "list_backups", "prune_backups", "restore_backup", "find_backup"]

_NAME = re.compile(
    r"^(?P<db>" + "|".join(ALL_FILES) + r")-(?P<stamp>\d{8}T\d{6}-\d{6})-(?P<reason>[a-z0-9][a-z0-9-]*)\.db$"
)


@dataclass(frozen=True)
class Backup:
    path: Path
    database: str
    created_at: float
    reason: str
    size: int

    @property
    def label(self) -> str:
        return self.path.name


def _stamp(now: float) -> str:
    micros = int((now - int(now)) * 1_000_000)
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"-{micros:06d}"


def _parse(path: Path, prefix: str) -> Backup | None:
    name = path.name
    if not name.startswith(prefix):
        return None
    match = _NAME.match(name[len(prefix):])
    if not match:
        return None
    stamp = match["stamp"]
    created = time.mktime(time.strptime(stamp[:15], "%Y%m%dT%H%M%S")) - time.timezone + int(stamp[16:]) / 1e6
    try:
        size = path.stat().st_size
    except OSError:
        return None
    return Backup(path, match["db"], created, match["reason"], size)


def take_backup(settings: Settings, database: str, reason: str, *, prune: bool = True) -> Backup | None:
    """Copy a database into ``backups/`` through the backup API; ``None`` if the file does not exist yet.

    Reads through a separate read-only connection, so it works while another connection of this
    process holds the file's write lock (WAL readers are never blocked by a writer).
    """
    source_path = settings.path(database)
    if not source_path.exists():
        return None
    reason = re.sub(r"[^a-z0-9-]+", "-", reason.lower()).strip("-") or "manual"
    settings.backup_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    final = settings.backup_dir / f"{settings.prefix}{database}-{_stamp(now)}-{reason}.db"
    partial = final.with_suffix(".partial")
    source = connect(source_path, readonly=True, busy_timeout=settings.busy_timeout)
    try:
        partial.unlink(missing_ok=True)  # a leftover of a crashed backup
        target = sqlite3.connect(partial, isolation_level=None)
        try:
            # The copy is a new file nobody reads until it is renamed: no journal, no syncs while
            # it is written, one fsync before the rename (a crash leaves only a .partial file).
            target.execute("PRAGMA journal_mode = OFF")
            target.execute("PRAGMA synchronous = OFF")
            source.backup(target)
        finally:
            target.close()
        _fsync(partial)
        os.replace(partial, final)
        _fsync(final.parent)
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise translate_error(exc, source_path, action="backing up") from exc
    finally:
        source.close()
    if prune:
        prune_backups(settings, database)
    return _parse(final, settings.prefix)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a directory cannot be opened on some platforms
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def list_backups(settings: Settings, database: str | None = None) -> list[Backup]:
    """Backups of this data directory (and ``DB_PATH_PREFIX``), newest first."""
    if not settings.backup_dir.is_dir():
        return []
    found = []
    for path in settings.backup_dir.iterdir():
        item = _parse(path, settings.prefix)
        if item is not None and (database is None or item.database == database):
            found.append(item)
    return sorted(found, key=lambda b: b.created_at, reverse=True)


def prune_backups(settings: Settings, database: str, *, keep: Path | None = None) -> list[Backup]:
    """Delete all but the newest ``backup_retention`` backups of ``database``; returns the removed.

    ``keep`` is spared (the backup a restore just came from)."""
    removed = [b for b in list_backups(settings, database)[settings.backup_retention:] if b.path != keep]
    for item in removed:
        item.path.unlink(missing_ok=True)
    return removed


def find_backup(settings: Settings, spec: str | None, database: str | None) -> Backup:
    """Resolve a backup from a file name/path, or the newest of ``database``."""
    if spec:
        candidate = Path(spec)
        if not candidate.exists():
            candidate = settings.backup_dir / spec
        if not candidate.exists():
            raise UsageError(f"backup {spec!r} not found in {settings.backup_dir}", hint="list them with `migrate restore --list`")
        item = _parse(candidate, settings.prefix)
        if item is None:
            raise UsageError(
                f"{candidate.name}: not a toolkit backup name (expected <database>-<time>-<reason>.db)",
                hint="list them with `migrate restore --list`",
            )
        if database and item.database != database:
            raise UsageError(f"{candidate.name} is a backup of {item.database}, not {database}")
        return item
    if not database:
        raise UsageError("name a backup file or a --database to restore its newest backup", hint="list them with `migrate restore --list`")
    items = list_backups(settings, database)
    if not items:
        raise UsageError(f"no backups of {database} in {settings.backup_dir}")
    return items[0]


def restore_backup(settings: Settings, item: Backup) -> Backup | None:
    """Put a backup back in place of its database, after backing up the current file.

    The backup is checked with ``quick_check`` first; a damaged backup changes nothing.
    Returns the backup taken of the file being replaced (so a restore is itself undoable).
    """
    check_file(item.path)
    source = connect(item.path, readonly=True, busy_timeout=settings.busy_timeout)
    try:
        problems = quick_check(source)
        if problems:
            raise DatabaseFileError(item.path, f"backup fails quick_check ({problems[0]})", hint="choose another backup")
        live = settings.path(item.database)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        safety = take_backup(settings, item.database, "pre-restore", prune=False)
        target = connect(live, create=True, busy_timeout=settings.busy_timeout)
        try:
            source.backup(target)
        except sqlite3.Error as exc:
            raise translate_error(exc, live, action="restoring") from exc
        finally:
            target.close()
    finally:
        source.close()
    prune_backups(settings, item.database, keep=item.path)
    return safety
