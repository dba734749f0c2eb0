"""Bad input to `migrate` (issue item 6): every case gives one error line naming the thing, the right
exit code, and changes nothing (file bytes, logical content, per-file records, migration_history).

Files are prepared in-process with the library; the commands run as real subprocesses
(`python -m toolkit migrate ...`) so exit codes and stderr are the user's.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from dbstate import damage_root_page

from toolkit.migrate.runner import downgrade, upgrade
from toolkit.content import load_migrations

from bundled import BUNDLED_IDS, NEWEST, ids_of


def error_line(result, *needles: str) -> str:
    """The command's single `error:` line (no traceback), containing every needle."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, f"expected exactly one error line, got stderr:\n{result.stderr}"
    # one line: nothing after the error line continues it
    after = result.stderr.split(lines[0], 1)[1]
    assert after.strip() == "", f"the error continues over several lines:\n{result.stderr}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def checkpoint(path: Path) -> None:
    """Fold the WAL into the main file so byte-level damage hits committed pages."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def remove_sidecars(path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)


@pytest.fixture
def partly(settings):
    """Everything up to 003 applied; 004 and later pending (004 and 006 on trading, 005 on ml_training...)."""
    upgrade(settings, migrations=load_migrations(settings), target="003")
    return settings


def migrate(cli, settings, *args: str, **kwargs):
    return cli("migrate", "--data-dir", str(settings.data_dir), *args, **kwargs)


# -- the data directory ---------------------------------------------------------------------------

def test_status_of_a_missing_data_dir_says_not_initialised_and_creates_nothing(cli, settings):
    result = migrate(cli, settings, "status")
    assert result.returncode == 0, result.stderr
    assert "not initialised" in result.stdout
    assert str(settings.data_dir) in result.stdout
    assert not settings.data_dir.exists()


def test_verify_of_a_missing_data_dir_is_a_runtime_error_naming_it(cli, settings):
    result = migrate(cli, settings, "verify")
    assert result.returncode == 3
    error_line(result, str(settings.data_dir), "not initialised")
    assert not settings.data_dir.exists()


def test_upgrade_creates_a_missing_data_dir_and_every_file(cli, settings, lifecycle):
    nested = settings.data_dir / "deeper" / "still"
    result = cli("migrate", "--data-dir", str(nested), "upgrade")
    assert result.returncode == 0, result.stderr
    for name in ("positions", "trading", "ml_training", "migrations"):
        assert (nested / f"{name}.db").is_file()
    assert lifecycle.records(nested / "trading.db") == ids_of("trading")
    assert {mid: row[0] for mid, row in lifecycle.history(nested).items()} == {m: "applied" for m in BUNDLED_IDS}


@pytest.mark.parametrize("relative", ["a-file", "a-file/data"])
def test_a_data_dir_that_is_a_file_or_lies_under_one(cli, tmp_path, relative):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a directory\n")
    result = cli("migrate", "--data-dir", str(tmp_path / relative), "upgrade")
    assert result.returncode == 3
    error_line(result, str(tmp_path / relative))
    assert blocker.read_bytes() == b"not a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


# -- a database path that is a directory ----------------------------------------------------------

@pytest.mark.parametrize("command", [["upgrade"], ["status"], ["downgrade", "--yes"], ["verify"]])
def test_a_database_path_that_is_a_directory(cli, partly, lifecycle, command):
    path = partly.path("trading")
    path.unlink()
    remove_sidecars(path)
    path.mkdir()
    before = lifecycle.snapshot(partly.data_dir)
    result = migrate(cli, partly, *command)
    assert result.returncode == 3
    error_line(result, str(path), "directory")
    assert lifecycle.snapshot(partly.data_dir) == before
    assert path.is_dir() and not any(path.iterdir())


def test_a_directory_in_a_fresh_data_dir_creates_no_database(cli, settings):
    settings.data_dir.mkdir()
    (settings.data_dir / "trading.db").mkdir()
    result = migrate(cli, settings, "upgrade")
    assert result.returncode == 3
    error_line(result, str(settings.path("trading")), "directory")
    created = sorted(p.name for p in settings.data_dir.iterdir() if p.name.endswith(".db") and p.is_file())
    assert created == [], f"a failed upgrade left new database files behind: {created}"


# -- a file that is not SQLite, or is damaged -----------------------------------------------------

@pytest.mark.parametrize("command", [["upgrade"], ["status"], ["verify"], ["downgrade", "--yes"]])
def test_a_file_that_is_not_sqlite(cli, partly, lifecycle, command):
    path = partly.path("trading")
    path.unlink()
    remove_sidecars(path)
    path.write_bytes(os.urandom(8192))
    before = lifecycle.snapshot(partly.data_dir)
    assert "unreadable" in before["trading"]
    result = migrate(cli, partly, *command)
    assert result.returncode == 3
    error_line(result, str(path), "not an SQLite database")
    assert lifecycle.snapshot(partly.data_dir) == before


def test_a_truncated_file(cli, partly, lifecycle):
    path = partly.path("trading")
    checkpoint(path)
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size // 3 + 123)
    before = lifecycle.snapshot(partly.data_dir)
    for command in (["upgrade"], ["downgrade", "--yes"], ["status"], ["verify"]):
        result = migrate(cli, partly, *command)
        assert result.returncode == 3
        error_line(result, str(path), "corrupt")
        assert lifecycle.snapshot(partly.data_dir) == before


def test_bytes_overwritten_in_the_middle_of_a_btree_page(cli, partly, lifecycle):
    path = partly.path("trading")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executemany(
            "INSERT INTO orders (order_id, ticker, order_type, side, quantity, submitted_at) VALUES (?, 'AAPL', 'market', 'buy', 1, ?)",
            [(f"order-{i}", 1_700_000_000 + i) for i in range(30)],
        )
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'orders'").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    assert not Path(str(path) + "-wal").exists() or Path(str(path) + "-wal").stat().st_size == 0
    with path.open("r+b") as fh:
        fh.seek((root - 1) * page_size)
        page = fh.read(page_size)
        assert page[0] == 0x0D and int.from_bytes(page[3:5], "big") == 30  # one table leaf, 30 cells
        content = int.from_bytes(page[5:7], "big")  # where the cells start
        low, high = content + (page_size - content) // 4, content + 3 * (page_size - content) // 4
        fh.seek((root - 1) * page_size + low)
        fh.write(b"\xa5" * (high - low))
    before = lifecycle.snapshot(partly.data_dir)

    result = migrate(cli, partly, "upgrade")
    assert result.returncode == 3
    error_line(result, str(path), "corrupt")
    assert lifecycle.snapshot(partly.data_dir) == before

    result = migrate(cli, partly, "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    findings = [line for line in result.stdout.splitlines() if line.startswith("quick_check")]
    assert findings and all("trading.db" in line for line in findings), result.stdout
    assert lifecycle.snapshot(partly.data_dir) == before


def damage_index_root(path: Path, index: str) -> None:
    """Damage one index's root page (``dbstate.damage_root_page``) and make sure quick_check sees it."""
    damage_root_page(path, index)
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA quick_check").fetchall() != [("ok",)]
    finally:
        conn.close()


#: A file no pending migration touches (positions.db is fully migrated first), and the ledger itself.
DAMAGED_ELSEWHERE = {"positions": "idx_positions_strategy", "migrations": "idx_migration_events_migration"}


@pytest.mark.parametrize("name", list(DAMAGED_ELSEWHERE))
@pytest.mark.parametrize("applied", ["003", NEWEST.id], ids=["pending-elsewhere", "nothing-pending"])
@pytest.mark.parametrize("dry_run", [False, True], ids=["upgrade", "dry-run"])
def test_upgrade_refuses_a_data_dir_with_a_file_that_fails_quick_check(cli, settings, lifecycle, name, applied, dry_run):
    """Not only the files the plan changes: a damaged file anywhere in the data directory stops the
    upgrade (with nothing pending too), before the ledger is reconciled or a backup is taken."""
    upgrade(settings, migrations=load_migrations(settings), target=applied)
    upgrade(settings, migrations=load_migrations(settings), database="positions")  # nothing pending on positions
    path = settings.path(name)
    damage_index_root(path, DAMAGED_ELSEWHERE[name])
    backups = sorted(p.name for p in settings.backup_dir.iterdir()) if settings.backup_dir.exists() else []
    before = lifecycle.snapshot(settings.data_dir)
    result = migrate(cli, settings, "upgrade", *(["--dry-run"] if dry_run else []))
    assert result.returncode == 3, result.stdout + result.stderr
    error_line(result, str(path), "quick_check", "migrate restore", "nothing was changed")
    assert lifecycle.snapshot(settings.data_dir) == before
    assert (sorted(p.name for p in settings.backup_dir.iterdir()) if settings.backup_dir.exists() else []) == backups
    assert lifecycle.records(settings.path("trading")) == (["002"] if applied == "003" else ids_of("trading"))


def test_verify_reports_a_file_whose_quick_check_raises(cli, migrated, lifecycle):
    """A table root page with a bad page type: the file opens and its schema reads, but the pragma
    itself raises ``database disk image is malformed``. That is a finding naming the file (exit 1),
    and the other files are still verified."""
    path = migrated.path("trading")
    checkpoint(path)
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = 'orders'").fetchone()[0]
    finally:
        conn.close()
    with path.open("r+b") as fh:
        fh.seek((root - 1) * page_size)
        fh.write(b"\x0a")  # an index leaf where a table page belongs
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        with pytest.raises(sqlite3.DatabaseError, match="malformed"):
            conn.execute("PRAGMA quick_check").fetchall()
    finally:
        conn.close()
    before = lifecycle.snapshot(migrated.data_dir)

    result = migrate(cli, migrated, "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "error:" not in result.stderr, result.stderr
    findings = [line for line in result.stdout.splitlines() if line.startswith("quick_check")]
    assert findings and all("trading.db" in line and "malformed" in line for line in findings), result.stdout

    result = migrate(cli, migrated, "verify", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert {(f["check"], f["database"], f["subject"]) for f in data["findings"] if f["check"] == "quick_check"} == {
        ("quick_check", "trading", "trading.db")}
    checked = {(c["database"], c["check"]): c["ok"] for c in data["checked"]}
    assert checked[("trading", "quick_check")] is False
    assert all(checked[(name, "quick_check")] for name in ("positions", "ml_training", "migrations"))
    assert lifecycle.snapshot(migrated.data_dir) == before


# -- a read-only file -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["trading", "migrations"])
def test_a_read_only_file(cli, partly, lifecycle, name):
    path = partly.path(name)
    path.chmod(0o444)
    try:
        before = lifecycle.snapshot(partly.data_dir)
        for command in (["upgrade"], ["downgrade", "--yes"]):
            result = migrate(cli, partly, *command)
            assert result.returncode == 3
            error_line(result, str(path), "read-only")
            assert lifecycle.snapshot(partly.data_dir) == before
        if name == "trading":  # reading a read-only database is still fine
            result = migrate(cli, partly, "status")
            assert result.returncode == 0, result.stderr
            assert lifecycle.snapshot(partly.data_dir) == before
    finally:
        path.chmod(0o644)


# -- a database locked by another writer ----------------------------------------------------------

def test_a_database_locked_by_another_writer_past_the_busy_timeout(cli, partly, lifecycle):
    path = partly.path("trading")
    before = lifecycle.snapshot(partly.data_dir)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        result = cli("migrate", "--data-dir", str(partly.data_dir), "--busy-timeout", "0.5", "upgrade")
        elapsed = time.monotonic() - started
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert result.returncode == 3
    error_line(result, str(path), "locked")
    assert 0.5 <= elapsed < 20
    assert lifecycle.snapshot(partly.data_dir) == before
    # once the writer has gone, the same command works
    result = migrate(cli, partly, "upgrade")
    assert result.returncode == 0, result.stderr
    assert lifecycle.records(path) == ids_of("trading")


# -- broken migration files -----------------------------------------------------------------------

def test_a_migration_with_a_python_syntax_error(cli, partly, lifecycle, extra_dir):
    bad = extra_dir / "900_broken_syntax.py"
    bad.write_text('"""Broken."""\nDATABASE = "trading"\n\ndef upgrade(db)\n    pass\n\ndef downgrade(db):\n    pass\n')
    before = lifecycle.snapshot(partly.data_dir)
    for command in (["upgrade"], ["status"], ["downgrade", "--yes"]):
        result = migrate(cli, partly, "--migrations-dir", str(extra_dir), *command)
        assert result.returncode == 3, result.stderr
        error_line(result, str(bad), "syntax error", "nothing has been run")
        assert lifecycle.snapshot(partly.data_dir) == before
    # 004 and later were pending and still are: nothing ran before the file was refused
    assert lifecycle.records(partly.path("trading")) == ["002"]


def test_a_migration_with_an_sql_error(cli, partly, lifecycle, extra_dir):
    upgrade(partly, migrations=load_migrations(partly))
    lifecycle.write_migration(
        extra_dir, "900_bad_sql.py",
        """
        db.execute("CREATE TABLE half_done (x INTEGER)")
        db.execute("INSERT INTO no_such_table VALUES (1)")
        """,
        'db.execute("DROP TABLE half_done")',
    )
    before = lifecycle.snapshot(partly.data_dir)
    result = migrate(cli, partly, "--migrations-dir", str(extra_dir), "upgrade")
    assert result.returncode == 3
    line = error_line(result, "900_bad_sql", "trading", str(partly.path("trading")),
                      "INSERT INTO no_such_table VALUES (1)", "no such table")
    assert "left exactly as before" in line
    after = lifecycle.snapshot(partly.data_dir)
    for name in ("positions", "trading", "ml_training"):
        assert after[name] == before[name], name
    assert "half_done" not in lifecycle.objects(partly.path("trading"))
    status, database, error, _ = lifecycle.history(partly.data_dir)["900"]
    assert (status, database) == ("failed", "trading")
    assert "INSERT INTO no_such_table" in error and "no such table" in error
    old = {r[0]: r for r in before["migrations"]["history"]}
    new = {r[0]: r for r in after["migrations"]["history"]}
    assert {k: v for k, v in new.items() if k != "900"} == old


@pytest.mark.parametrize("files", [
    ("900_first.py", "900_second.py"),
    ("0901_padded.py", "901_plain.py"),
    ("004_shadows_bundled.py",),
])
def test_two_migration_files_with_the_same_id(cli, partly, lifecycle, extra_dir, files):
    for index, name in enumerate(files):
        lifecycle.write_migration(extra_dir, name, f'db.execute("CREATE TABLE dup_{index} (x)")',
                                  f'db.execute("DROP TABLE dup_{index}")')
    before = lifecycle.snapshot(partly.data_dir)
    result = migrate(cli, partly, "--migrations-dir", str(extra_dir), "upgrade")
    assert result.returncode == 3
    line = error_line(result, files[-1] if len(files) > 1 else files[0])
    assert "duplicate" in line or "same number" in line
    assert lifecycle.snapshot(partly.data_dir) == before


# -- unknown or hostile --migration values --------------------------------------------------------

@pytest.mark.parametrize("spec, suggestion", [
    ("00O4", "'004'"),
    ("create_ledger_tablez", "'004_create_ledger_tables'"),
])
@pytest.mark.parametrize("command", [["upgrade"], ["downgrade", "--yes"]])
def test_an_unknown_migration_suggests_close_names(cli, partly, lifecycle, spec, suggestion, command):
    before = lifecycle.snapshot(partly.data_dir)
    result = migrate(cli, partly, *command, "--migration", spec)
    assert result.returncode == 2
    error_line(result, repr(spec), "did you mean", suggestion)
    assert lifecycle.snapshot(partly.data_dir) == before


@pytest.mark.parametrize("command", [["upgrade"], ["downgrade", "--yes"]])
def test_sql_in_a_migration_id_is_an_unknown_name_and_drops_nothing(cli, partly, lifecycle, command):
    before = lifecycle.snapshot(partly.data_dir)
    result = migrate(cli, partly, *command, "--migration", "1; DROP TABLE positions")
    assert result.returncode == 2
    error_line(result, "unknown migration", "1; DROP TABLE positions")
    assert "positions" in lifecycle.objects(partly.path("positions"))
    assert lifecycle.snapshot(partly.data_dir) == before


# -- downgrade past zero, and without confirmation ------------------------------------------------

def test_downgrade_of_a_missing_data_dir_is_past_zero(cli, settings):
    result = migrate(cli, settings, "downgrade", "--yes")
    assert result.returncode == 2
    error_line(result, "nothing to downgrade")
    assert not settings.data_dir.exists()


def test_downgrade_past_zero(cli, settings, lifecycle):
    upgrade(settings, migrations=load_migrations(settings))
    downgrade(settings, migrations=load_migrations(settings))
    before = lifecycle.snapshot(settings.data_dir)
    result = migrate(cli, settings, "downgrade", "--yes")
    assert result.returncode == 2
    error_line(result, "nothing to downgrade", "zero")
    assert lifecycle.snapshot(settings.data_dir) == before


def test_downgrade_to_a_migration_that_is_not_applied(cli, partly, lifecycle):
    before = lifecycle.snapshot(partly.data_dir)
    result = migrate(cli, partly, "downgrade", "--migration", "004", "--yes")
    assert result.returncode == 2
    error_line(result, "004_create_ledger_tables", "not applied")
    assert lifecycle.snapshot(partly.data_dir) == before


@pytest.mark.parametrize("answer", [None, "y\n"])
def test_downgrade_without_a_terminal_and_without_yes(cli, partly, lifecycle, answer):
    before = lifecycle.snapshot(partly.data_dir)
    result = migrate(cli, partly, "downgrade", input=answer if answer is not None else "")
    assert result.returncode == 2
    error_line(result, "--yes", "003_create_ml_training_tables")
    assert lifecycle.snapshot(partly.data_dir) == before
    assert lifecycle.records(partly.path("positions")) == ["001"]


# -- an edited applied migration ------------------------------------------------------------------

def test_an_edited_applied_migration_blocks_until_accepted(cli, settings, lifecycle, extra_dir):
    path = lifecycle.write_migration(
        extra_dir, "900_add_strategy_index.py",
        'db.execute("CREATE INDEX idx_trades_strategy ON trades (strategy)")',
        'db.execute("DROP INDEX idx_trades_strategy")',
    )
    run = lambda *args: migrate(cli, settings, "--migrations-dir", str(extra_dir), *args)  # noqa: E731
    assert run("upgrade").returncode == 0
    path.write_text(path.read_text().replace(
        "def upgrade(db):\n", "def upgrade(db):\n    # index the nightly report's filter column\n"))
    lifecycle.write_migration(extra_dir, "901_after.py", 'db.execute("CREATE TABLE after_edit (x)")',
                              'db.execute("DROP TABLE after_edit")', database="positions")
    before = lifecycle.snapshot(settings.data_dir)

    result = run("upgrade")
    assert result.returncode == 3
    error_line(result, "900_add_strategy_index", "changed since it was applied", "accept 900")
    result = run("downgrade", "--yes")
    assert result.returncode == 3
    error_line(result, "900_add_strategy_index", "downgrade blocked")
    assert lifecycle.snapshot(settings.data_dir) == before

    result = run("verify")
    assert result.returncode == 1
    assert "900_add_strategy_index" in result.stdout
    assert "+    # index the nightly report's filter column" in result.stdout
    assert "--- 900_add_strategy_index.py (applied)" in result.stdout

    status = run("status", "--json")
    assert status.returncode == 0, status.stderr
    drift = {d["name"]: d["drift"] for d in json.loads(status.stdout)["databases"]}
    assert drift == {"positions": [], "trading": ["900"], "ml_training": []}

    result = run("accept", "900")
    assert result.returncode == 0, result.stderr
    assert "accepted 900_add_strategy_index" in result.stdout
    assert ("accept", "accepted") in {(a, s) for mid, a, s in lifecycle.events(settings.data_dir) if mid == "900"}

    result = run("verify")
    assert result.returncode == 0, result.stdout
    assert "no findings" in result.stdout
    result = run("upgrade")
    assert result.returncode == 0, result.stderr
    assert "applied 901_after" in result.stdout

    result = run("accept", "900")
    assert result.returncode == 2
    error_line(result, "unchanged")


# -- disk full during a migration -----------------------------------------------------------------

def test_disk_full_during_a_migration(cli, settings, lifecycle, extra_dir):
    upgrade(settings, migrations=load_migrations(settings))
    lifecycle.write_migration(
        extra_dir, "900_fill_the_disk.py",
        """
        pages = db.query("PRAGMA page_count")[0][0]
        db.execute(f"PRAGMA max_page_count = {pages + 4}")
        db.execute("CREATE TABLE ballast (payload BLOB)")
        for _ in range(100):
            db.execute("INSERT INTO ballast (payload) VALUES (randomblob(8000))")
        """,
        'db.execute("DROP TABLE ballast")',
    )
    before = lifecycle.snapshot(settings.data_dir)
    result = migrate(cli, settings, "--migrations-dir", str(extra_dir), "upgrade")
    assert result.returncode == 3
    line = error_line(result, str(settings.path("trading")), "database trading", "900_fill_the_disk",
                      "INSERT INTO ballast (payload) VALUES (randomblob(8000))")
    assert "full" in line
    after = lifecycle.snapshot(settings.data_dir)
    for name in ("positions", "trading", "ml_training"):
        assert after[name] == before[name], name
    assert "ballast" not in lifecycle.objects(settings.path("trading"))
    status, database, error, _ = lifecycle.history(settings.data_dir)["900"]
    assert (status, database) == ("failed", "trading")
    assert "full" in error and "INSERT INTO ballast" in error
    # the page limit died with the failed run: nothing is left capped
    conn = sqlite3.connect(settings.path("trading"))
    try:
        assert conn.execute("PRAGMA max_page_count").fetchone()[0] > 1_000_000
    finally:
        conn.close()


def test_a_damaged_file_is_refused_before_any_backup_is_taken(cli, partly, lifecycle):
    """A file with an SQLite header and garbage after it is refused before anything is backed up."""
    path = partly.path("trading")
    shutil.rmtree(partly.backup_dir, ignore_errors=True)
    path.unlink()
    remove_sidecars(path)
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    result = migrate(cli, partly, "upgrade")
    assert result.returncode == 3
    error_line(result, str(path))
    assert not partly.backup_dir.exists() or not any(partly.backup_dir.iterdir())
