"""The migration runner through the library: failures mid-run, dry runs, backups and retention,
restore, DB_PATH_PREFIX and where settings come from. Real SQLite files under tmp_path, no mocks."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from toolkit.backup import list_backups
from toolkit.config import load_settings
from toolkit.db import connect, content_hash
from toolkit.errors import DatabaseFileError, MigrationDefinitionError, MigrationFailedError, UsageError
from toolkit.migrate.maintenance import restore
from toolkit.migrate.runner import downgrade, upgrade
from toolkit.migrate.status import status
from toolkit.migrate.verify import verify
from toolkit.content import load_migrations

from bundled import BUNDLED, BUNDLED_IDS, after, ids_of, labels_of, plan_order


def logical(settings, name: str) -> str:
    conn = connect(settings.path(name), readonly=True)
    try:
        return content_hash(conn)
    finally:
        conn.close()


def by_name(report) -> dict:
    return {d.name: d for d in report.databases}


def add_order(settings, order_id: str) -> None:
    conn = connect(settings.path("trading"))
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO orders (order_id, ticker, order_type, side, quantity, submitted_at) "
            "VALUES (?, 'MSFT', 'market', 'buy', 3, 1700000000)", (order_id,))
        conn.execute("COMMIT")
    finally:
        conn.close()


# -- a failing migration in the middle of a run ---------------------------------------------------

def test_a_failing_migration_mid_run_keeps_earlier_files_migrated_and_consistent(settings, lifecycle, extra_dir, tmp_path):
    lifecycle.write_migration(
        extra_dir, "900_broken_backfill.py",
        """
        db.execute("CREATE TABLE backfill_tmp (x INTEGER)")
        db.execute("INSERT INTO backfill_tmp VALUES (1)")
        db.execute("UPDATE trades SET no_such_column = 1")
        """,
        'db.execute("DROP TABLE backfill_tmp")',
    )
    lifecycle.write_migration(extra_dir, "901_later.py", 'db.execute("CREATE TABLE later (x)")',
                              'db.execute("DROP TABLE later")', database="positions")
    with_extra = settings.with_(migrations_dirs=(extra_dir,))

    with pytest.raises(MigrationFailedError) as caught:
        upgrade(with_extra, migrations=load_migrations(with_extra))
    error = caught.value
    assert (error.migration_id, error.database, Path(error.path)) == ("900", "trading", settings.path("trading"))
    assert error.statement == "UPDATE trades SET no_such_column = 1"
    assert "no_such_column" in str(error) and "900_broken_backfill" in str(error)
    assert isinstance(error.__cause__, sqlite3.OperationalError)

    # everything before 900 is applied and recorded, in the files and in the ledger
    for name in ("positions", "trading", "ml_training"):
        assert lifecycle.records(settings.path(name)) == ids_of(name), name
    assert "backfill_tmp" not in lifecycle.objects(settings.path("trading"))
    ledger = lifecycle.history(settings.data_dir)
    assert {mid: row[0] for mid, row in ledger.items()} == {**{m: "applied" for m in BUNDLED_IDS}, "900": "failed"}
    assert "UPDATE trades SET no_such_column = 1" in ledger["900"][2]

    # trading.db is exactly what the bundled migrations alone produce
    reference = load_settings(tmp_path / "reference", cwd=tmp_path, env={})
    upgrade(reference, migrations=load_migrations(reference))
    for name in ("positions", "trading", "ml_training"):
        assert logical(settings, name) == logical(reference, name), name

    report = status(with_extra, migrations=load_migrations(with_extra))
    dbs = by_name(report)
    assert dbs["trading"].pending == ["900"] and dbs["trading"].applied == ids_of("trading")
    assert dbs["positions"].pending == ["901"] and dbs["ml_training"].pending == []
    assert not report.up_to_date and report.reconciled == []
    assert verify(with_extra, migrations=load_migrations(with_extra)).findings == []


@pytest.mark.parametrize("statement", ["COMMIT", "BEGIN", "SAVEPOINT sp", "VACUUM", "ATTACH DATABASE ':memory:' AS x",
                                       "PRAGMA journal_mode = DELETE"])
def test_a_migration_cannot_end_the_runners_transaction(migrated, lifecycle, extra_dir, statement):
    lifecycle.write_migration(
        extra_dir, "900_escapes.py",
        f'db.execute("CREATE TABLE escaped (x)")\ndb.execute({statement!r})',
        'db.execute("DROP TABLE escaped")',
    )
    before = lifecycle.snapshot(migrated.data_dir)
    with pytest.raises(MigrationFailedError) as caught:
        upgrade(migrated.with_(migrations_dirs=(extra_dir,)), migrations=load_migrations(migrated.with_(migrations_dirs=(extra_dir,))))
    assert caught.value.statement == statement
    after = lifecycle.snapshot(migrated.data_dir)
    assert after["trading"] == before["trading"]
    assert "escaped" not in lifecycle.objects(migrated.path("trading"))


def test_executescript_is_refused_inside_a_migration(migrated, lifecycle, extra_dir):
    lifecycle.write_migration(extra_dir, "900_script.py",
                              'db.executescript("CREATE TABLE s1 (x); CREATE TABLE s2 (y);")',
                              'db.script("DROP TABLE s2; DROP TABLE s1;")')
    with pytest.raises(MigrationFailedError, match="executescript"):
        upgrade(migrated.with_(migrations_dirs=(extra_dir,)), migrations=load_migrations(migrated.with_(migrations_dirs=(extra_dir,))))
    assert not {"s1", "s2"} & lifecycle.objects(migrated.path("trading"))


# -- targets and scopes ---------------------------------------------------------------------------

def test_upgrade_to_a_target_and_one_database(settings, lifecycle):
    first = upgrade(settings, migrations=load_migrations(settings), target="002")
    assert [s.migration for s in first.steps] == ["001_create_positions_tables", "002_create_trading_tables"]
    assert not settings.path("ml_training").exists()
    second = upgrade(settings, migrations=load_migrations(settings), database="ml_training")
    assert [s.migration for s in second.steps] == labels_of("ml_training")
    assert lifecycle.records(settings.path("trading")) == ["002"]
    third = upgrade(settings, migrations=load_migrations(settings), target="4")  # ids resolve by number too
    assert [s.migration for s in third.steps] == ["004_create_ledger_tables"]
    rest = upgrade(settings, migrations=load_migrations(settings))
    assert [s.migration for s in rest.steps] == [m.label for m in after("004") if m.database != "ml_training"]
    again = upgrade(settings, migrations=load_migrations(settings))
    assert again.steps == [] and any("nothing to upgrade" in n for n in again.notes)


def test_downgrade_to_a_migration_reverts_it_and_everything_after(migrated, lifecycle):
    result = downgrade(migrated, migrations=load_migrations(migrated), target="004")
    # 004 and every newer migration, newest first
    assert [s.migration for s in result.steps] == [m.label for m in reversed(BUNDLED) if m.number >= 4]
    assert lifecycle.records(migrated.path("positions")) == ["001"]
    assert lifecycle.records(migrated.path("trading")) == ["002"]
    assert lifecycle.records(migrated.path("ml_training")) == ["003"]
    assert "trades" not in lifecycle.objects(migrated.path("trading"))
    assert {mid: row[0] for mid, row in lifecycle.history(migrated.data_dir).items()} == {
        mid: "applied" if int(mid) < 4 else "rolled_back" for mid in BUNDLED_IDS}
    assert verify(migrated, migrations=load_migrations(migrated)).ok


def test_a_gap_in_applied_history_is_refused(migrated, lifecycle, extra_dir):
    lifecycle.write_migration(extra_dir, "900_first.py", 'db.execute("CREATE TABLE g1 (x)")', 'db.execute("DROP TABLE g1")')
    lifecycle.write_migration(extra_dir, "901_second.py", 'db.execute("CREATE TABLE g2 (x)")', 'db.execute("DROP TABLE g2")')
    extra = migrated.with_(migrations_dirs=(extra_dir,))
    upgrade(extra, migrations=load_migrations(extra))
    assert lifecycle.records(migrated.path("trading")) == [*ids_of("trading"), "900", "901"]
    # take 900 out by hand, leaving 901 applied: a gap in the middle of applied history
    conn = sqlite3.connect(migrated.path("trading"), isolation_level=None)
    try:
        conn.execute("DELETE FROM _toolkit_migrations WHERE migration_id = '900'")
        conn.execute("DROP TABLE g1")
    finally:
        conn.close()
    with pytest.raises(MigrationDefinitionError, match="gap"):
        upgrade(extra, migrations=load_migrations(extra))
    assert "g1" not in lifecycle.objects(migrated.path("trading"))
    upgrade(extra, migrations=load_migrations(extra), allow_out_of_order=True)
    assert lifecycle.records(migrated.path("trading")) == [*ids_of("trading"), "900", "901"]


# -- dry run --------------------------------------------------------------------------------------

def test_dry_run_on_a_missing_data_dir_plans_everything_and_creates_nothing(settings):
    result = upgrade(settings, migrations=load_migrations(settings), dry_run=True)
    assert result.dry_run
    # per database, in the order the plan first reaches each
    assert [(s.migration[:3], s.database) for s in result.steps] == [(m.id, m.database) for m in plan_order()]
    shown = [s.database for s in result.steps]
    assert shown[0] == "positions" and len(shown) == len(BUNDLED)
    runs = [db for i, db in enumerate(shown) if i == 0 or shown[i - 1] != db]
    assert len(runs) == len(set(runs)) == 3  # each database's steps together
    statements = {s.migration[:3]: "\n".join(s.statements) for s in result.steps}
    assert "CREATE TABLE trades" in statements["004"]
    assert "CREATE TABLE rl_model_states" in statements["005"]
    assert "CREATE VIEW v_position_summary" in statements["001"]
    assert not settings.data_dir.exists()


def test_dry_run_on_an_existing_data_dir_changes_no_byte(settings, lifecycle):
    upgrade(settings, migrations=load_migrations(settings), target="003")
    add_order(settings, "before-dry-run")
    files_before = sorted(p.name for p in settings.data_dir.iterdir())
    before = lifecycle.snapshot(settings.data_dir)
    result = upgrade(settings, migrations=load_migrations(settings), dry_run=True)
    assert [s.migration[:3] for s in result.steps] == [m.id for m in plan_order(after("003"))]
    assert all(s.statements for s in result.steps)
    assert lifecycle.snapshot(settings.data_dir) == before
    new_files = {p.name for p in settings.data_dir.iterdir()} - set(files_before)
    assert not {n for n in new_files if n.endswith(".db")}
    assert not settings.backup_dir.exists()


def test_dry_run_reports_a_migration_that_would_fail_and_changes_nothing(migrated, lifecycle, extra_dir):
    lifecycle.write_migration(extra_dir, "900_would_fail.py", 'db.execute("ALTER TABLE nowhere ADD COLUMN x")')
    before = lifecycle.snapshot(migrated.data_dir)
    with pytest.raises(MigrationFailedError, match="ALTER TABLE nowhere"):
        upgrade(migrated.with_(migrations_dirs=(extra_dir,)), migrations=load_migrations(migrated.with_(migrations_dirs=(extra_dir,))), dry_run=True)
    assert lifecycle.snapshot(migrated.data_dir) == before


# -- backups --------------------------------------------------------------------------------------

def test_backups_are_taken_before_changes_and_hold_the_old_content(settings, lifecycle):
    first = upgrade(settings, migrations=load_migrations(settings), target="003")
    assert first.backups == []  # the files did not exist: nothing to back up
    add_order(settings, "kept-in-the-backup")
    old = {name: logical(settings, name) for name in ("trading", "ml_training", "positions")}
    result = upgrade(settings, migrations=load_migrations(settings), target="005")  # 004 and 005
    assert sorted(b.database for b in result.backups) == ["ml_training", "trading"]  # positions untouched
    for item in result.backups:
        assert item.path.parent == settings.backup_dir and item.path.is_file()
        assert item.reason.startswith("pre-upgrade-")
        conn = connect(item.path, readonly=True)
        try:
            assert content_hash(conn) == old[item.database]
            applied = [r[0] for r in conn.execute("SELECT migration_id FROM _toolkit_migrations ORDER BY 1")]
        finally:
            conn.close()
        assert applied == {"trading": ["002"], "ml_training": ["003"]}[item.database]
    assert logical(settings, "trading") != old["trading"]  # the live file did change


def test_backup_retention_is_bounded(settings):
    bounded = settings.with_(backup_retention=2)
    # up to 005 only: the rounds below change trading and ml_training, never positions (007 changes it)
    upgrade(bounded, migrations=load_migrations(bounded), target="005")
    taken = []
    for _ in range(4):
        taken += downgrade(bounded, migrations=load_migrations(bounded), target="004").backups
        taken += upgrade(bounded, migrations=load_migrations(bounded), target="005").backups
    trading = list_backups(bounded, "trading")
    assert len(trading) == 2
    assert len([b for b in taken if b.database == "trading"]) == 8
    newest = sorted((b for b in taken if b.database == "trading"), key=lambda b: b.created_at)[-2:]
    assert {b.path for b in trading} == {b.path for b in newest}
    assert len(list_backups(bounded, "ml_training")) == 2
    assert list_backups(bounded, "positions") == []  # never changed after it was created


def test_backup_retention_comes_from_pyproject(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.toolkit]\nbackup-retention = 1\n')
    configured = load_settings(None, cwd=tmp_path, env={})
    assert configured.backup_retention == 1 and configured.data_dir == tmp_path / "data"
    upgrade(configured, migrations=load_migrations(configured))
    for _ in range(3):
        downgrade(configured, migrations=load_migrations(configured), target="005")
        upgrade(configured, migrations=load_migrations(configured))
    assert len(list_backups(configured, "ml_training")) == 1
    (tmp_path / "pyproject.toml").write_text('[tool.toolkit]\nbackup-retention = 0\n')
    with pytest.raises(UsageError, match="backup-retention"):
        load_settings(None, cwd=tmp_path, env={})


# -- restore --------------------------------------------------------------------------------------

def test_restore_puts_a_backup_back_and_reconciles_the_ledger(migrated, lifecycle, extra_dir):
    lifecycle.write_migration(extra_dir, "900_add_notes.py", 'db.execute("CREATE TABLE notes (body TEXT)")',
                              'db.execute("DROP TABLE notes")')
    extra = migrated.with_(migrations_dirs=(extra_dir,))
    add_order(migrated, "in-the-backup")
    before_900 = logical(migrated, "trading")
    upgrade(extra, migrations=load_migrations(extra))
    add_order(migrated, "after-the-backup")
    assert "notes" in lifecycle.objects(migrated.path("trading"))

    result = restore(extra, None, "trading", migrations=load_migrations(extra))
    assert result.restored.reason == "pre-upgrade-900"
    assert logical(migrated, "trading") == before_900
    assert "notes" not in lifecycle.objects(migrated.path("trading"))
    assert any("900_add_notes" in note and "rolled back" in note for note in result.reconciled)
    assert lifecycle.history(migrated.data_dir)["900"][0] == "rolled_back"
    assert ("-", "restore", "restored") in lifecycle.events(migrated.data_dir)

    # the replaced file was itself backed up first, so the restore can be undone
    assert result.safety is not None and result.safety.reason == "pre-restore"
    conn = connect(result.safety.path, readonly=True)
    try:
        assert conn.execute("SELECT count(*) FROM orders WHERE order_id = 'after-the-backup'").fetchone() == (1,)
    finally:
        conn.close()

    assert by_name(status(extra, migrations=load_migrations(extra)))["trading"].pending == ["900"]
    assert verify(extra, migrations=load_migrations(extra)).ok
    again = upgrade(extra, migrations=load_migrations(extra))
    assert [s.migration for s in again.steps] == ["900_add_notes"]
    assert lifecycle.records(migrated.path("trading")) == [*ids_of("trading"), "900"]
    assert verify(extra, migrations=load_migrations(extra)).ok


def test_restoring_a_damaged_backup_changes_nothing(migrated, lifecycle):
    downgrade(migrated, migrations=load_migrations(migrated), target="004")
    item = list_backups(migrated, "trading")[0]
    item.path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 4000)
    before = lifecycle.snapshot(migrated.data_dir)
    with pytest.raises(DatabaseFileError):
        restore(migrated, item.path.name, None, migrations=load_migrations(migrated))
    assert lifecycle.snapshot(migrated.data_dir) == before


def test_restore_needs_a_backup(migrated):
    with pytest.raises(UsageError, match="no backups of trading"):
        restore(migrated, None, "trading", migrations=load_migrations(migrated))
    with pytest.raises(UsageError, match="not found"):
        restore(migrated, "trading-20200101T000000-000000-manual.db", None, migrations=load_migrations(migrated))


# -- DB_PATH_PREFIX -------------------------------------------------------------------------------

def test_db_path_prefix_prefixes_every_file(tmp_path, lifecycle):
    data = tmp_path / "data"
    prefixed = load_settings(data, cwd=tmp_path, env={"DB_PATH_PREFIX": "test_"})
    upgrade(prefixed, migrations=load_migrations(prefixed), target="003")
    upgrade(prefixed, migrations=load_migrations(prefixed))  # second run changes existing files: backups are taken
    names = sorted(p.name for p in data.iterdir() if p.is_file())
    assert {"test_positions.db", "test_trading.db", "test_ml_training.db", "test_migrations.db"} <= set(names)
    assert not [n for n in names if n.endswith(".db") and not n.startswith("test_")]
    assert all(p.name.startswith("test_") for p in prefixed.backup_dir.iterdir())
    assert prefixed.lock_path.name == ".test_toolkit.lock"
    assert lifecycle.records(data / "test_trading.db") == ids_of("trading")
    assert set(lifecycle.history(data, prefix="test_")) == set(BUNDLED_IDS)
    assert verify(prefixed, migrations=load_migrations(prefixed)).ok

    plain = load_settings(data, cwd=tmp_path, env={})
    report = status(plain, migrations=load_migrations(plain))
    assert not report.initialised and all(not d.exists for d in report.databases)
    assert list_backups(plain) == []
    with pytest.raises(UsageError, match="DB_PATH_PREFIX"):
        load_settings(data, cwd=tmp_path, env={"DB_PATH_PREFIX": "sub/test_"})


# -- where settings come from ---------------------------------------------------------------------

def test_data_dir_precedence_option_env_pyproject_default(tmp_path):
    cwd = tmp_path / "project"
    cwd.mkdir()
    env = {"TOOLKIT_DATA_DIR": str(tmp_path / "from-env")}
    assert load_settings(None, cwd=cwd, env={}).data_dir == cwd / "data"
    assert load_settings(None, cwd=cwd, env={}).data_dir_source == "default"
    (cwd / "pyproject.toml").write_text('[tool.toolkit]\ndata-dir = "from-pyproject"\n')
    chosen = load_settings(None, cwd=cwd, env={})
    assert (chosen.data_dir, chosen.data_dir_source) == (cwd / "from-pyproject", "pyproject.toml")
    chosen = load_settings(None, cwd=cwd, env=env)
    assert (chosen.data_dir, chosen.data_dir_source) == (tmp_path / "from-env", "$TOOLKIT_DATA_DIR")
    chosen = load_settings(tmp_path / "from-option", cwd=cwd, env=env)
    assert (chosen.data_dir, chosen.data_dir_source) == (tmp_path / "from-option", "option")
    chosen = load_settings("relative", cwd=cwd, env=env)
    assert chosen.data_dir == cwd / "relative"


def test_other_settings_come_from_pyproject_unless_given(tmp_path, lifecycle):
    extra = tmp_path / "mine"
    extra.mkdir()
    lifecycle.write_migration(extra, "900_from_pyproject.py", 'db.execute("CREATE TABLE from_pyproject (x)")',
                              'db.execute("DROP TABLE from_pyproject")')
    (tmp_path / "pyproject.toml").write_text(
        '[tool.toolkit]\nmigrations-dir = "mine"\nbusy-timeout = 0.25\nlock-timeout = 7\n')
    configured = load_settings(None, cwd=tmp_path, env={})
    assert configured.migrations_dirs == (extra,)
    assert (configured.busy_timeout, configured.lock_timeout) == (0.25, 7.0)
    assert load_settings(None, cwd=tmp_path, env={}, busy_timeout=1.5).busy_timeout == 1.5
    result = upgrade(configured, migrations=load_migrations(configured))
    assert result.steps[-1].migration == "900_from_pyproject"
    (tmp_path / "pyproject.toml").write_text('[tool.toolkit]\nbusy-timeout = "soon"\n')
    with pytest.raises(UsageError, match="busy-timeout"):
        load_settings(None, cwd=tmp_path, env={})


def test_the_ledger_keeps_the_seed_columns(migrated):
    conn = sqlite3.connect(migrated.history_path)
    try:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(migration_history)")]
        rows = conn.execute("SELECT migration_id, migration_name, database_path, status, applied_date "
                            "FROM migration_history ORDER BY migration_id").fetchall()
    finally:
        conn.close()
    assert columns[:8] == ["migration_id", "migration_name", "database_path", "applied_at", "applied_date",
                           "duration_seconds", "status", "error_message"]
    assert [(r[0], r[1], Path(r[2]).name, r[3]) for r in rows] == [
        (m.id, m.label, f"{m.database}.db", "applied") for m in BUNDLED]
    assert [r[1] for r in rows[:2]] == ["001_create_positions_tables", "002_create_trading_tables"]
    assert all(time.strptime(r[4], "%Y-%m-%d %H:%M:%S") for r in rows)


def test_every_connection_is_wal_with_foreign_keys(migrated):
    for name in ("positions", "trading", "ml_training", "migrations"):
        conn = connect(migrated.path(name))
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            assert conn.isolation_level is None
        finally:
            conn.close()


def test_migration_statuses_are_enum_members_stored_as_plain_text(migrated, lifecycle, extra_dir):
    from toolkit.migrate import MigrationStatus
    from toolkit.migrate.state import MigrationStatus as from_state

    assert MigrationStatus is from_state
    assert MigrationStatus.APPLIED == "applied" and MigrationStatus.ROLLED_BACK == "rolled_back"
    assert f"{MigrationStatus.FAILED}" == "failed" and str(MigrationStatus.ACCEPTED) == "accepted"
    downgrade(migrated, migrations=load_migrations(migrated), target="005")
    lifecycle.write_migration(extra_dir, "900_fails.py", 'db.execute("INSERT INTO no_such_table VALUES (1)")')
    extra = migrated.with_(migrations_dirs=(extra_dir,))
    with pytest.raises(MigrationFailedError):
        upgrade(extra, migrations=load_migrations(extra))
    conn = sqlite3.connect(migrated.history_path)
    try:
        history = dict(conn.execute("SELECT migration_id, typeof(status) || ' ' || status FROM migration_history"))
        events = set(conn.execute("SELECT typeof(status), status FROM migration_events"))
    finally:
        conn.close()
    assert history == {**{mid: "text applied" for mid in BUNDLED_IDS}, "900": "text failed"}
    assert events == {("text", "applied"), ("text", "rolled_back"), ("text", "failed")}
