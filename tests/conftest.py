"""Shared fixtures: real SQLite files under tmp_path, the CLI in-process and as a real subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.config import Settings, load_settings
from toolkit.content import load_migrations

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory that does not exist yet (commands must create or refuse it)."""
    return tmp_path / "data"


@pytest.fixture
def settings(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("TOOLKIT_DATA_DIR", raising=False)
    monkeypatch.delenv("DB_PATH_PREFIX", raising=False)
    return load_settings(data_dir, cwd=data_dir.parent, env={}, busy_timeout=2.0, lock_timeout=5.0)


@pytest.fixture
def migrated(settings: Settings) -> Settings:
    """Settings of a data directory with every bundled migration applied."""
    from toolkit.migrate.runner import upgrade

    upgrade(settings, migrations=load_migrations(settings))
    return settings


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `python -m toolkit ...` as a real subprocess."""
    full_env = dict(os.environ)
    full_env.pop("TOOLKIT_DATA_DIR", None)
    full_env.pop("DB_PATH_PREFIX", None)
    full_env.pop("TOOLKIT_SYMBOL_PATTERN", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "toolkit", *args],
        cwd=cwd, env=full_env, input=input, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def cli():
    return run_cli


# -- schema lifecycle: extra migrations, snapshots of the data directory ---------------------------

import hashlib  # noqa: E402
import sqlite3  # noqa: E402
import textwrap  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from bundled import BUNDLED_IDS  # noqa: E402  (read from migrations/ itself)
FILE_NAMES = ("positions", "trading", "ml_training", "migrations")


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)


def _rows(path: Path, sql: str) -> list[tuple]:
    """Rows of a query on a database file, read-only; [] when the file or table does not exist."""
    if not path.is_file():
        return []
    conn = _ro(path)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def write_migration(directory: Path, filename: str, upgrade: str, downgrade: str = "pass", *,
                    database: str = "trading", doc: str = "An extra migration written by a test.",
                    preamble: str = "") -> Path:
    """Write ``NNN_name.py`` with the given function bodies (dedented, then indented under the def)."""
    def body(code: str) -> str:
        return textwrap.indent(textwrap.dedent(code).strip() or "pass", "    ")

    text = (f'"""{doc}"""\n{textwrap.dedent(preamble).strip()}\n\nDATABASE = {database!r}\n\n\n'
            f"def upgrade(db):\n{body(upgrade)}\n\n\ndef downgrade(db):\n{body(downgrade)}\n")
    path = directory / filename
    path.write_text(text, encoding="utf-8")
    return path


def snapshot(data_dir: Path, prefix: str = "") -> dict[str, dict]:
    """Everything a "changed nothing" assertion compares, per file: its bytes (SHA-256), its logical
    content (toolkit.db.content_hash / table_hashes), its own migration records, and for the ledger
    the migration_history rows. A path that is a directory, missing or unreadable says so."""
    from toolkit.db import content_hash, table_hashes

    result: dict[str, dict] = {}
    for name in FILE_NAMES:
        path = data_dir / f"{prefix}{name}.db"
        entry: dict[str, object] = {}
        if path.is_dir():
            entry["kind"] = "directory"
        elif not path.exists():
            entry["kind"] = "missing"
        else:
            entry["bytes"] = hashlib.sha256(path.read_bytes()).hexdigest()
            entry["mode"] = path.stat().st_mode
            try:
                conn = _ro(path)
                try:
                    entry["content"] = content_hash(conn)
                    entry["tables"] = table_hashes(conn)
                    if name == "migrations":
                        entry["history"] = conn.execute("SELECT * FROM migration_history ORDER BY migration_id").fetchall()
                        entry["events"] = conn.execute("SELECT * FROM migration_events ORDER BY event_id").fetchall()
                    elif conn.execute("SELECT 1 FROM sqlite_master WHERE name = '_toolkit_migrations'").fetchone():
                        entry["records"] = conn.execute(
                            "SELECT migration_id, checksum, applied_at FROM _toolkit_migrations ORDER BY migration_id").fetchall()
                finally:
                    conn.close()
            except sqlite3.DatabaseError as exc:
                entry["unreadable"] = str(exc)
        result[name] = entry
    return result


def history(data_dir: Path, prefix: str = "") -> dict[str, tuple]:
    """migration_history by id: (status, database_name, error_message, checksum)."""
    rows = _rows(data_dir / f"{prefix}migrations.db",
                 "SELECT migration_id, status, database_name, error_message, checksum FROM migration_history")
    return {r[0]: r[1:] for r in rows}


def events(data_dir: Path, prefix: str = "") -> list[tuple]:
    """migration_events as (migration_id, action, status), oldest first."""
    return _rows(data_dir / f"{prefix}migrations.db",
                 "SELECT migration_id, action, status FROM migration_events ORDER BY event_id")


def records(db_path: Path) -> list[str]:
    """The migration ids a database file records as applied (``_toolkit_migrations``), with repeats."""
    return [r[0] for r in _rows(db_path, "SELECT migration_id FROM _toolkit_migrations ORDER BY migration_id")]


def objects(db_path: Path) -> set[str]:
    """Names of the tables, indexes and views in a database file."""
    return {r[0] for r in _rows(db_path, "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}


@pytest.fixture
def extra_dir(tmp_path: Path) -> Path:
    """An empty directory for a test's own migrations (``--migrations-dir`` / ``migrations_dirs``)."""
    directory = tmp_path / "extra_migrations"
    directory.mkdir()
    return directory


@pytest.fixture
def lifecycle() -> SimpleNamespace:
    """Helpers for schema-lifecycle tests (so test modules never import conftest)."""
    return SimpleNamespace(
        write_migration=write_migration, snapshot=snapshot, history=history, events=events,
        records=records, objects=objects, rows=_rows, run_cli=run_cli, bundled_ids=BUNDLED_IDS,
    )
