"""Read-only looks at a data directory's files for tests: rows, logical content, per-table hashes.

Every helper opens its own read-only connection (``mode=ro``), so looking never changes a file.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

from toolkit.config import ALL_FILES, DATABASES, Settings
from toolkit.db import content_hash, table_hashes


def ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)


def query(settings: Settings, name: str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = ro(settings.path(name))
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def content_hashes(settings: Settings, names: Iterable[str] = ALL_FILES) -> dict[str, str]:
    """One logical hash per file (by default the toolkit's own migrations.db too)."""
    result = {}
    for name in names:
        conn = ro(settings.path(name))
        try:
            result[name] = content_hash(conn)
        finally:
            conn.close()
    return result


def tables(settings: Settings) -> dict[str, dict[str, str]]:
    """table_hashes of every data file (``_toolkit_*`` bookkeeping excluded by design)."""
    result = {}
    for name in DATABASES:
        conn = ro(settings.path(name))
        try:
            result[name] = table_hashes(conn)
        finally:
            conn.close()
    return result


def file_hashes(data: Path, names: Iterable[str] = ALL_FILES) -> dict[str, tuple[str, dict[str, str]]]:
    """Per file of a data directory: (content_hash, table_hashes), through a separate plain connection."""
    result = {}
    for name in names:
        conn = sqlite3.connect(data / f"{name}.db", isolation_level=None)
        try:
            result[name] = (content_hash(conn), table_hashes(conn))
        finally:
            conn.close()
    return result


def damage_root_page(path: Path, name: str, *, whole: bool = False) -> None:
    """Damage the root page of table or index ``name``: its 8-byte header (the file opens, its other
    tables read, ``PRAGMA quick_check`` reports the page) or, with ``whole``, every byte of it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
    finally:
        conn.close()
    with open(path, "r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(b"\xff" * (page_size if whole else 8))
