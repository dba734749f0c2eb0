"""`migrate` as a user runs it (`python -m toolkit migrate ...` in a subprocess): JSON output,
dry-run output, where the data directory comes from, DB_PATH_PREFIX, restore, reconciliation notes."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import jsonschema
import pytest

from toolkit.migrate.runner import upgrade
from toolkit.content import load_migrations

from bundled import BUNDLED, NEWEST, after, ids_of, labels_of

DATA_FILES = ("positions", "trading", "ml_training")

STATUS_SCHEMA = {
    "type": "object",
    "required": ["data_dir", "data_dir_source", "initialised", "databases", "reconciled", "to_reconcile",
                 "reconcile_pending", "lock_holder", "up_to_date"],
    "properties": {
        "data_dir": {"type": "string"},
        "data_dir_source": {"enum": ["option", "$TOOLKIT_DATA_DIR", "pyproject.toml", "default"]},
        "initialised": {"type": "boolean"},
        "up_to_date": {"type": "boolean"},
        "reconcile_pending": {"type": "boolean"},
        "lock_holder": {"type": ["string", "null"]},
        "reconciled": {"type": "array", "maxItems": 0},
        "to_reconcile": {"type": "array", "items": {"type": "string"}},
        "databases": {
            "type": "array", "minItems": 3, "maxItems": 3,
            "items": {
                "type": "object",
                "required": ["name", "file", "exists", "version", "applied", "pending", "last_applied_at", "drift", "unknown"],
                "properties": {
                    "name": {"enum": ["positions", "trading", "ml_training"]},
                    "file": {"type": "string"},
                    "exists": {"type": "boolean"},
                    "version": {"type": ["string", "null"], "pattern": "^[0-9]{3,}$"},
                    "applied": {"type": "array", "items": {"type": "string"}},
                    "pending": {"type": "array", "items": {"type": "string"}},
                    "last_applied_at": {"type": ["integer", "null"]},
                    "drift": {"type": "array", "items": {"type": "string"}},
                    "unknown": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}

VERIFY_SCHEMA = {
    "type": "object",
    "required": ["data_dir", "ok", "findings", "reconciled", "to_reconcile", "checked"],
    "properties": {
        "data_dir": {"type": "string"},
        "ok": {"type": "boolean"},
        "reconciled": {"type": "array", "maxItems": 0},
        "to_reconcile": {"type": "array", "items": {"type": "string"}},
        "findings": {"type": "array", "items": {
            "type": "object", "required": ["check", "database", "subject", "detail"],
            "properties": {k: {"type": "string"} for k in ("check", "database", "subject", "detail")},
        }},
        "checked": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["database", "check", "ok"],
            "properties": {"database": {"type": "string"}, "check": {"type": "string"}, "ok": {"type": "boolean"}},
        }},
    },
}


def migrate(cli, settings, *args, **kwargs):
    return cli("migrate", "--data-dir", str(settings.data_dir), *args, **kwargs)


def status_json(cli, settings, *extra, env=None) -> dict:
    result = migrate(cli, settings, *extra, "status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    jsonschema.validate(data, STATUS_SCHEMA)
    return data


# -- status --json / verify --json ----------------------------------------------------------------

def test_status_json_of_a_missing_data_dir(cli, settings):
    data = status_json(cli, settings)
    assert data["initialised"] is False and data["up_to_date"] is False
    assert data["data_dir"] == str(settings.data_dir) and data["data_dir_source"] == "option"
    assert [(d["name"], d["exists"], d["version"], d["applied"]) for d in data["databases"]] == [
        ("positions", False, None, []), ("trading", False, None, []), ("ml_training", False, None, [])]
    assert {d["name"]: d["pending"] for d in data["databases"]} == {name: ids_of(name) for name in DATA_FILES}
    assert not settings.data_dir.exists()


def test_status_json_partly_and_fully_migrated(cli, settings):
    upgrade(settings, migrations=load_migrations(settings), target="003")
    data = status_json(cli, settings)
    dbs = {d["name"]: d for d in data["databases"]}
    assert data["initialised"] is True and data["up_to_date"] is False
    assert (dbs["trading"]["version"], dbs["trading"]["applied"], dbs["trading"]["pending"]) == (
        "002", ["002"], ids_of("trading", after("003")))
    assert dbs["positions"]["file"] == str(settings.path("positions"))
    assert isinstance(dbs["positions"]["last_applied_at"], int)
    upgrade(settings, migrations=load_migrations(settings))
    data = status_json(cli, settings)
    assert data["up_to_date"] is True and data["reconciled"] == []
    assert [d["version"] for d in data["databases"]] == [ids_of(name)[-1] for name in DATA_FILES]
    assert all(d["pending"] == [] and d["drift"] == [] for d in data["databases"])


def test_verify_json_clean_and_with_findings(cli, migrated):
    result = migrate(cli, migrated, "verify", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    jsonschema.validate(data, VERIFY_SCHEMA)
    assert data["ok"] is True and data["findings"] == []
    assert {(c["database"], c["check"]) for c in data["checked"]} >= {
        (db, check) for db in ("positions", "trading", "ml_training") for check in ("quick_check", "foreign_key_check", "journal_mode")}
    assert all(c["ok"] for c in data["checked"])

    conn = sqlite3.connect(migrated.path("trading"), isolation_level=None)
    try:
        conn.execute("CREATE TABLE hand_made (x)")
        conn.execute("DROP INDEX idx_trades_run_id")
    finally:
        conn.close()
    result = migrate(cli, migrated, "verify", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    jsonschema.validate(data, VERIFY_SCHEMA)
    assert data["ok"] is False
    assert {(f["check"], f["database"], f["subject"]) for f in data["findings"]} == {
        ("schema", "trading", "table hand_made"), ("schema", "trading", "index idx_trades_run_id")}
    text = migrate(cli, migrated, "verify")
    assert text.returncode == 1 and "2 finding(s)" in text.stdout and "hand_made" in text.stdout


def test_a_ledger_that_disagrees_is_reported_by_reads_and_reconciled_by_a_writing_command(cli, migrated, lifecycle):
    # status and verify only read: they report what is to reconcile and write nothing (they used to
    # reconcile themselves); the next writing command records it.
    conn = sqlite3.connect(migrated.history_path, isolation_level=None)
    try:
        conn.execute("DELETE FROM migration_history WHERE migration_id = '004'")
        conn.execute("UPDATE migration_history SET status = 'applied' WHERE migration_id = '005'")
    finally:
        conn.close()
    before = lifecycle.snapshot(migrated.data_dir)
    for command in ("status", "verify"):
        result = migrate(cli, migrated, command)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "reconciled:" not in result.stderr
        notes = [line for line in result.stderr.splitlines() if line.startswith("to reconcile: ")]
        assert len(notes) == 1 and "004_create_ledger_tables" in notes[0] and "missing from the ledger" in notes[0]
        assert "reconciling records it as applied" in notes[0]
        assert lifecycle.snapshot(migrated.data_dir) == before
    assert "004" not in lifecycle.history(migrated.data_dir)
    assert json.loads(migrate(cli, migrated, "status", "--json").stdout)["reconcile_pending"] is True

    written = migrate(cli, migrated, "upgrade")
    assert written.returncode == 0, written.stderr
    notes = [line for line in written.stderr.splitlines() if line.startswith("reconciled: ")]
    assert len(notes) == 1 and "004_create_ledger_tables" in notes[0] and "recorded as applied" in notes[0]
    assert lifecycle.history(migrated.data_dir)["004"][0] == "applied"
    assert ("004", "reconcile", "applied") in lifecycle.events(migrated.data_dir)
    again = migrate(cli, migrated, "status")
    assert "reconcile" not in again.stderr
    assert migrate(cli, migrated, "verify").returncode == 0


# -- dry run --------------------------------------------------------------------------------------

def test_dry_run_prints_the_plan_and_sql_per_database_and_creates_nothing(cli, settings):
    result = migrate(cli, settings, "upgrade", "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    headers = [line for line in out.splitlines() if line.startswith("-- ") and "would run" in line]
    assert headers == [f"-- {name} ({settings.path(name)}): {len(ids_of(name))} migration(s) would run"
                       for name in DATA_FILES]
    for label in (m.label for m in BUNDLED):
        assert f"-- {label}" in out
    assert out.index("-- 004_create_ledger_tables") < out.index("CREATE TABLE trades (") < out.index("-- ml_training")
    # the up steps only: the one DROP TABLE is 006's rebuild of trades, no down step's DROP shows
    drops = [line for line in out.splitlines() if line.startswith("DROP ")]
    assert drops == ["DROP VIEW v_trades;", "DROP TABLE trades;"]
    assert out.index("-- 006_trades_open_or_close") < out.index("DROP TABLE trades;") < out.index("-- ml_training")
    assert "DROP COLUMN" not in out  # 007's down step
    assert out.count("CHECK (is_close = (action = 'SELL'))") == 1  # 004 creates it; 006's down step would restore it
    assert out.rstrip().endswith("-- dry run: nothing was changed")
    assert not settings.data_dir.exists()


def test_dry_run_on_an_existing_data_dir_is_byte_identical(cli, settings, lifecycle):
    upgrade(settings, migrations=load_migrations(settings), target="003")
    upgrade(settings, migrations=load_migrations(settings), database="positions")  # positions: nothing pending
    names = sorted(p.name for p in settings.data_dir.iterdir() if p.name.endswith(".db"))
    before = lifecycle.snapshot(settings.data_dir)
    result = migrate(cli, settings, "upgrade", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "-- positions" not in result.stdout
    assert "-- trading" in result.stdout and "CREATE TABLE trades (" in result.stdout
    assert "CREATE TABLE rl_model_states (" in result.stdout
    assert lifecycle.snapshot(settings.data_dir) == before
    assert sorted(p.name for p in settings.data_dir.iterdir() if p.name.endswith(".db")) == names
    upgrade(settings, migrations=load_migrations(settings))
    result = migrate(cli, settings, "upgrade", "--dry-run")
    assert result.returncode == 0 and "nothing to upgrade" in result.stdout


# -- where the data directory comes from ----------------------------------------------------------

def test_data_dir_precedence_on_the_command_line(cli, tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()

    def where(*args, env=None):
        result = cli("migrate", *args, "status", "--json", cwd=cwd, env=env)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        return Path(data["data_dir"]), data["data_dir_source"]

    assert where() == (cwd / "data", "default")
    (cwd / "pyproject.toml").write_text('[project]\nname = "bot"\n\n[tool.toolkit]\ndata-dir = "state"\n')
    assert where() == (cwd / "state", "pyproject.toml")
    env = {"TOOLKIT_DATA_DIR": str(tmp_path / "env-dir")}
    assert where(env=env) == (tmp_path / "env-dir", "$TOOLKIT_DATA_DIR")
    assert where("--data-dir", "cli-dir", env=env) == (cwd / "cli-dir", "option")

    # and the commands act there: pyproject.toml with no option or variable
    result = cli("migrate", "upgrade", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (cwd / "state").glob("*.db")) == [
        "migrations.db", "ml_training.db", "positions.db", "trading.db"]
    assert not (cwd / "data").exists()
    result = cli("migrate", "upgrade", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "env-dir" / "trading.db").is_file()


def test_db_path_prefix_on_the_command_line(cli, settings, lifecycle):
    env = {"DB_PATH_PREFIX": "test_"}
    assert migrate(cli, settings, "upgrade", "--migration", "003", env=env).returncode == 0
    assert migrate(cli, settings, "upgrade", env=env).returncode == 0
    files = sorted(p.name for p in settings.data_dir.iterdir() if p.is_file())
    assert [f for f in files if f.endswith(".db")] == [
        "test_migrations.db", "test_ml_training.db", "test_positions.db", "test_trading.db"]
    assert ".test_toolkit.lock" in files
    # one backup of each file the second run changed
    assert sorted(p.name.split("-")[0] for p in settings.backup_dir.iterdir()) == sorted(
        {f"test_{m.database}" for m in after("003")})
    data = status_json(cli, settings, env=env)
    assert data["up_to_date"] is True
    assert all(Path(d["file"]).name.startswith("test_") for d in data["databases"])
    assert migrate(cli, settings, "verify", env=env).returncode == 0
    # without the prefix the same directory holds no databases
    plain = status_json(cli, settings)
    assert plain["initialised"] is False
    assert migrate(cli, settings, "downgrade", "--yes", env=env).returncode == 0
    assert lifecycle.records(settings.data_dir / "test_trading.db") == []


# -- restore --------------------------------------------------------------------------------------

def test_restore_from_the_command_line(cli, migrated, lifecycle, extra_dir):
    lifecycle.write_migration(extra_dir, "900_add_audit.py", 'db.execute("CREATE TABLE audit (x)")',
                              'db.execute("DROP TABLE audit")')
    run = lambda *a, **k: migrate(cli, migrated, "--migrations-dir", str(extra_dir), *a, **k)  # noqa: E731
    assert run("upgrade").returncode == 0
    listing = run("restore", "--list")
    assert listing.returncode == 0 and "pre-upgrade-900" in listing.stdout and "trading" in listing.stdout

    before = lifecycle.snapshot(migrated.data_dir)
    refused = run("restore", "--database", "trading", input="y\n")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert lifecycle.snapshot(migrated.data_dir) == before

    result = run("restore", "--database", "trading", "--yes")
    assert result.returncode == 0, result.stderr
    assert "restored trading from trading-" in result.stdout
    assert any(line.startswith("reconciled: 900_add_audit") for line in result.stderr.splitlines())
    assert "audit" not in lifecycle.objects(migrated.path("trading"))
    assert lifecycle.history(migrated.data_dir)["900"][0] == "rolled_back"
    assert run("verify").returncode == 0
    status = json.loads(run("status", "--json").stdout)
    assert {d["name"]: d["pending"] for d in status["databases"]}["trading"] == ["900"]

    unknown = run("restore", "--database", "tradin", "--yes")
    assert unknown.returncode == 2
    assert run("upgrade").returncode == 0
    assert lifecycle.records(migrated.path("trading")) == [*ids_of("trading"), "900"]


# -- the rest of the command surface --------------------------------------------------------------

def test_help_and_unknown_commands(cli):
    result = cli("migrate", "--help")
    assert result.returncode == 0
    for command in ("upgrade", "downgrade", "status", "verify", "accept", "restore"):
        assert command in result.stdout
    assert "--data-dir" in result.stdout and "--migrations-dir" in result.stdout
    bad = cli("migrate", "upgrde")
    assert bad.returncode == 2 and "upgrade" in bad.stderr
    bad = cli("migrate", "upgrade", "--database", "tradng")
    assert bad.returncode == 2 and "tradng" in bad.stderr
    bad = cli("migrate", "--busy-timeout", "-1", "status")
    assert bad.returncode == 2


def test_the_whole_lifecycle_through_the_cli(cli, settings, lifecycle):
    up = migrate(cli, settings, "upgrade", "--migration", "002")
    assert up.returncode == 0, up.stderr
    assert [line.split()[1] for line in up.stdout.splitlines()] == ["001_create_positions_tables", "002_create_trading_tables"]
    up = migrate(cli, settings, "upgrade", "--database", "ml_training")
    assert [line.split()[1] for line in up.stdout.splitlines()] == labels_of("ml_training")
    up = migrate(cli, settings, "upgrade")
    assert [line.split()[1] for line in up.stdout.splitlines()] == [
        m.label for m in after("002") if m.database != "ml_training"]  # 004 and the newer trading, positions ones
    assert "backup: trading -> " in up.stderr
    down = migrate(cli, settings, "downgrade", "--migration", "004", "--yes")
    assert down.returncode == 0, down.stderr
    assert [line.split()[1] for line in down.stdout.splitlines()] == [m.label for m in reversed(BUNDLED) if m.number >= 4]
    down = migrate(cli, settings, "downgrade", "--yes")
    assert down.returncode == 0
    assert all(lifecycle.records(settings.path(n)) == [] for n in ("positions", "trading", "ml_training"))
    assert {row[0] for row in lifecycle.history(settings.data_dir).values()} == {"rolled_back"}
    assert migrate(cli, settings, "upgrade").returncode == 0
    assert migrate(cli, settings, "verify").returncode == 0
    counts = {}
    for mid, action, state in lifecycle.events(settings.data_dir):
        counts[(mid, action, state)] = counts.get((mid, action, state), 0) + 1
    assert counts[("004", "upgrade", "applied")] == 2 and counts[("004", "downgrade", "rolled_back")] == 1
    assert counts[("001", "upgrade", "applied")] == 2 and counts[("001", "downgrade", "rolled_back")] == 1


@pytest.mark.parametrize("args", [["migrate", "--help"], ["--help"]])
def test_python_dash_m_toolkit_reaches_migrate(cli, args):
    result = cli(*args)
    assert result.returncode == 0 and "migrate" in result.stdout


def test_global_options_work_after_the_command_name(cli, tmp_path, lifecycle, extra_dir):
    """README: every command takes the global options, so `migrate upgrade --data-dir D` works too."""
    data = tmp_path / "late"
    result = cli("migrate", "upgrade", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert lifecycle.records(data / "trading.db") == ids_of("trading")
    assert not (tmp_path / "data").exists()
    # after the command name wins over before it
    result = cli("migrate", "--data-dir", str(tmp_path / "elsewhere"), "status", "--data-dir", str(data), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data_dir"] == str(data)
    assert not (tmp_path / "elsewhere").exists()
    # extra migration directories given before and after add up
    second = tmp_path / "more_migrations"
    second.mkdir()
    lifecycle.write_migration(extra_dir, "900_first_extra.py", 'db.execute("CREATE TABLE first_extra (x)")',
                              'db.execute("DROP TABLE first_extra")')
    lifecycle.write_migration(second, "901_second_extra.py", 'db.execute("CREATE TABLE second_extra (x)")',
                              'db.execute("DROP TABLE second_extra")')
    result = cli("migrate", "--migrations-dir", str(extra_dir), "upgrade", "--data-dir", str(data),
                 "--migrations-dir", str(second), "--lock-timeout", "1")
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["900_first_extra", "901_second_extra"]
    result = cli("migrate", "verify", "--data-dir", str(data), "--migrations-dir", str(extra_dir),
                 "--migrations-dir", str(second))
    assert result.returncode == 0, result.stdout + result.stderr
    bad = cli("migrate", "status", "--data-dir", str(data), "--busy-timeout", "soon")
    assert bad.returncode == 2


@pytest.mark.parametrize("answer, code", [("n\n", 2), ("\n", 2), ("\x04", 2), ("y\n", 0)])
def test_downgrade_asks_on_a_terminal(settings, lifecycle, answer, code):
    """With a terminal on stdin the downgrade asks; only "y" goes ahead (Enter or end of input refuses)."""
    import os
    import subprocess
    import sys

    upgrade(settings, migrations=load_migrations(settings))
    before = lifecycle.snapshot(settings.data_dir)
    master, slave = os.openpty()
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("TOOLKIT_DATA_DIR", "DB_PATH_PREFIX")}
        proc = subprocess.Popen([sys.executable, "-m", "toolkit", "migrate", "--data-dir", str(settings.data_dir),
                                 "downgrade", "--migration", NEWEST.id],
                                stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        os.write(master, answer.encode())
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == code, out + err
    assert f"Revert 1 migration(s): {NEWEST.label} ({NEWEST.database})?" in err
    if code == 0:
        assert f"reverted {NEWEST.label}" in out
        assert lifecycle.records(settings.path(NEWEST.database)) == ids_of(NEWEST.database)[:-1]
    else:
        assert "Traceback" not in err
        assert lifecycle.snapshot(settings.data_dir) == before
