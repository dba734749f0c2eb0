"""A migration cannot take the runner's transaction away from it.

Every hostile migration below first creates a table and a row, then tries to end, escape or outlive
the transaction the runner opened for it (however the statement is spelled, through ``db.execute`` or
on the connection directly), or to end the process. Run through the real CLI in a subprocess, each
gives exit 3 (130 for an interrupt) and one line naming the migration, the database and the statement
or call, changes no database, and is not recorded as applied; ``--dry-run`` refuses the same and
changes nothing at all. A migration that goes around SQLite's authorizer is caught afterwards and
told exactly what it committed: never "left exactly as before" when it was not.
"""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from dbstate import content_hashes, query
from toolkit.config import ALL_FILES, DATABASES, load_settings
from toolkit.content import load_migrations
from toolkit.migrate.runner import upgrade

LABEL = "900_hostile"
BEFORE = 'db.execute("CREATE TABLE escaped (x)")\ndb.execute("INSERT INTO escaped VALUES (1)")\n'
AFTER = '\ndb.execute("CREATE TABLE after_escape (x)")'

#: (statement run through db.execute, what the error line says about it)
REFUSED = {
    "leading-semicolon": (";COMMIT", "COMMIT/END is refused in a migration"),
    "byte-order-mark": ("\ufeffCOMMIT", "COMMIT/END is refused in a migration"),
    "comment-first": ("/* c */ COMMIT", "COMMIT/END is refused in a migration"),
    "end": ("  end", "COMMIT/END is refused in a migration"),
    "begin": ("BEGIN", "BEGIN is refused in a migration"),
    "rollback": ("ROLLBACK", "ROLLBACK is refused in a migration"),
    "savepoint": ("SAVEPOINT x", "SAVEPOINT x is refused in a migration"),
    "release": ("RELEASE x", "RELEASE x is refused in a migration"),
    "attach": ("ATTACH DATABASE ':memory:' AS other", "ATTACH/DETACH is refused in a migration"),
    "detach": ("DETACH DATABASE other", "ATTACH/DETACH is refused in a migration"),
    "vacuum": ("VACUUM", "VACUUM is refused in a migration"),
    "vacuum-into": ("-- compact\nvacuum INTO '/tmp/escaped.db'", "VACUUM is refused in a migration"),
    "journal_mode": ("PRAGMA journal_mode=DELETE", "PRAGMA journal_mode = DELETE is refused in a migration"),
    "foreign_keys": ("PRAGMA foreign_keys=OFF", "PRAGMA foreign_keys = OFF is refused in a migration"),
    "synchronous": ("PRAGMA main.synchronous = OFF", "PRAGMA synchronous = OFF is refused in a migration"),
    "wal_checkpoint": ("PRAGMA wal_checkpoint", "PRAGMA wal_checkpoint is refused in a migration"),
    "hidden-after": ("CREATE TABLE hidden (x); COMMIT", "db.execute runs one statement, this call holds 2"),
}

#: Bodies that bypass db.execute: statements on the connection itself, and leaving the process.
DIRECT = {
    "conn-commit": ('db._conn.execute(";COMMIT")', 3, "COMMIT/END is refused in a migration"),
    "conn-rollback": ('db._conn.execute("rollback transaction")', 3, "ROLLBACK is refused in a migration"),
    "conn-savepoint": ('db._conn.execute("\\ufeffSAVEPOINT s")', 3, "SAVEPOINT s is refused in a migration"),
    "conn-commit-method": ("db._conn.commit()", 3, "COMMIT/END is refused in a migration"),
    "conn-vacuum": ('db._conn.execute("VACUUM")', 3, "VACUUM is refused in a migration"),
    "sys-exit-0": ("sys.exit(0)", 3, "called sys.exit(0)"),
    "sys-exit-1": ("sys.exit(1)", 3, "called sys.exit(1)"),
    "sys-exit-text": ('sys.exit("giving up")', 3, "called sys.exit('giving up')"),
    "keyboard-interrupt": ("raise KeyboardInterrupt", 130, "was rolled back and not recorded as applied"),
}


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    settings = load_settings(tmp_path_factory.mktemp("escapes") / "data", env={})
    upgrade(settings, migrations=load_migrations(settings))
    return settings.data_dir


@pytest.fixture
def data(template: Path, tmp_path: Path) -> Path:
    shutil.copytree(template, tmp_path / "data")
    return tmp_path / "data"


def _migration(extra: Path, lifecycle, body: str) -> Path:
    return lifecycle.write_migration(extra, f"{LABEL}.py", BEFORE + body + AFTER, 'db.execute("DROP TABLE escaped")',
                                     preamble="import sys")


def _run(cli, data: Path, extra: Path, *args: str):
    return cli("migrate", "--data-dir", str(data), "--migrations-dir", str(extra), "upgrade", *args,
               cwd=data.parent, timeout=60)


def _one_line(result) -> str:
    """The command's one error line, never a traceback: stderr holds nothing else but the progress
    line of the step (click adds a blank line after an interrupt)."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and line != f"upgrade {LABEL} on trading"]
    assert len(lines) == 1, f"expected one error line on stderr, got:\n{result.stderr}"
    return lines[0]


def _state(data: Path) -> tuple[dict[str, str], dict[str, str]]:
    settings = load_settings(data, env={})
    ledger = {mid: status for mid, status in query(settings, "migrations", "SELECT migration_id, status FROM migration_history")}
    return content_hashes(settings, DATABASES), ledger


def _refused(cli, lifecycle, data: Path, extra: Path, body: str, code: int, reason: str, *, names_statement: str | None):
    _migration(extra, lifecycle, body)
    hashes, ledger = _state(data)
    result = _run(cli, data, extra)
    assert result.returncode == code, result.stdout + result.stderr
    line = _one_line(result)
    trading = str(data / "trading.db")
    for needle in (LABEL, "database trading", trading, reason):
        assert needle in line, f"{needle!r} not in {line!r}"
    if names_statement is not None:
        assert f"at statement `{names_statement}`" in line, line
    if code == 3:
        assert line.startswith("error: ") and "the file was left exactly as before" in line, line
        assert f"{LABEL}.py" in line and "`migrate upgrade` again" in line, line  # the next step
    after_hashes, after_ledger = _state(data)
    assert after_hashes == hashes  # positions, trading, ml_training: not a row or a schema object changed
    assert {k: v for k, v in after_ledger.items() if k != "900"} == ledger
    assert after_ledger.get("900") == ("failed" if code == 3 else None)  # interrupts are not failures
    assert "900" not in lifecycle.records(data / "trading.db")
    assert not {"escaped", "after_escape", "hidden"} & lifecycle.objects(data / "trading.db")
    return line


@pytest.mark.parametrize("case", list(REFUSED))
def test_transaction_control_through_db_execute_is_refused(cli, lifecycle, data, extra_dir, case):
    statement, reason = REFUSED[case]
    line = _refused(cli, lifecycle, data, extra_dir, f"db.execute({statement!r})", 3, reason,
                    names_statement=" ".join(statement.split()))
    assert line.startswith("error: ") and "trading" in line  # one line, naming the database


@pytest.mark.parametrize("case", list(DIRECT))
def test_going_around_db_execute_or_leaving_the_process_is_refused(cli, lifecycle, data, extra_dir, case):
    body, code, reason = DIRECT[case]
    line = _refused(cli, lifecycle, data, extra_dir, body, code, reason, names_statement=None)
    if code == 130:
        assert line.startswith("interrupted: upgrade of migration 900_hostile"), line


@pytest.mark.parametrize("case", list(REFUSED) + [c for c in DIRECT if c.startswith(("conn-", "sys-exit"))])
def test_a_dry_run_refuses_the_same_and_changes_nothing(cli, lifecycle, data, extra_dir, case):
    body = f"db.execute({REFUSED[case][0]!r})" if case in REFUSED else DIRECT[case][0]
    reason = REFUSED[case][1] if case in REFUSED else DIRECT[case][2]
    _migration(extra_dir, lifecycle, body)
    settings = load_settings(data, env={})
    before = content_hashes(settings, ALL_FILES)
    result = _run(cli, data, extra_dir, "--dry-run")
    assert result.returncode == 3, result.stdout + result.stderr
    line = _one_line(result)
    for needle in (f"dry run: migration {LABEL}", "database trading", reason, "nothing was changed"):
        assert needle in line, f"{needle!r} not in {line!r}"
    assert content_hashes(settings, ALL_FILES) == before
    assert not {"escaped", "after_escape"} & lifecycle.objects(data / "trading.db")


def test_a_dry_run_interrupted_in_a_migration_changes_nothing(cli, lifecycle, data, extra_dir):
    _migration(extra_dir, lifecycle, "raise KeyboardInterrupt")
    settings = load_settings(data, env={})
    before = content_hashes(settings, ALL_FILES)
    result = _run(cli, data, extra_dir, "--dry-run")
    assert result.returncode == 130, result.stdout + result.stderr
    assert f"dry run: migration {LABEL}" in _one_line(result)
    assert content_hashes(settings, ALL_FILES) == before


# -- around the authorizer: caught afterwards, and told the truth -----------------------------------

UNGUARD = "sqlite3.Connection.set_authorizer(db._conn, None)\n"


def test_a_commit_behind_the_authorizer_s_back_is_named_not_hidden(cli, lifecycle, data, extra_dir):
    lifecycle.write_migration(extra_dir, f"{LABEL}.py", BEFORE + UNGUARD + 'db._conn.execute("COMMIT")' + AFTER,
                              'db.execute("DROP TABLE escaped")', preamble="import sqlite3")
    result = _run(cli, data, extra_dir)
    assert result.returncode == 3, result.stdout + result.stderr
    line = _one_line(result)
    for needle in (LABEL, "database trading", str(data / "trading.db"), "went around the runner's transaction",
                   "table after_escape created", "table escaped created", "not recorded as applied",
                   "migrate verify", "migrate restore"):
        assert needle in line, f"{needle!r} not in {line!r}"
    assert "left exactly as before" not in line
    # what the line says is what happened: both tables are in the file, and 900 is not applied
    assert {"escaped", "after_escape"} <= lifecycle.objects(data / "trading.db")
    assert "900" not in lifecycle.records(data / "trading.db")
    assert lifecycle.history(data)["900"][0] == "failed"


def test_a_rollback_and_a_new_transaction_behind_its_back_are_caught(cli, lifecycle, data, extra_dir):
    body = BEFORE + UNGUARD + 'db._conn.execute("ROLLBACK")\ndb._conn.execute("BEGIN")' + AFTER
    lifecycle.write_migration(extra_dir, f"{LABEL}.py", body, "pass", preamble="import sqlite3")
    hashes, _ = _state(data)
    result = _run(cli, data, extra_dir)
    assert result.returncode == 3, result.stdout + result.stderr
    line = _one_line(result)
    for needle in (LABEL, "database trading", "rolled the runner's transaction back", "nothing was committed",
                   "the file was left exactly as before", "not recorded as applied"):
        assert needle in line, f"{needle!r} not in {line!r}"
    # without the check, the runner would have committed after_escape alone and recorded 900 as applied
    assert _state(data)[0] == hashes
    assert "900" not in lifecycle.records(data / "trading.db")


def test_a_dry_run_that_commits_behind_its_back_says_what_it_committed(cli, lifecycle, data, extra_dir):
    lifecycle.write_migration(extra_dir, f"{LABEL}.py", BEFORE + UNGUARD + 'db._conn.execute("COMMIT")',
                              "pass", preamble="import sqlite3")
    result = _run(cli, data, extra_dir, "--dry-run")
    assert result.returncode == 3, result.stdout + result.stderr
    line = _one_line(result)
    assert "dry run: migration 900_hostile went around the runner's transaction" in line, line
    assert "table escaped created" in line and "nothing was changed" not in line, line


# -- what stays allowed --------------------------------------------------------------------------------

def test_a_refused_statement_that_is_caught_leaves_the_transaction_whole(cli, lifecycle, data, extra_dir):
    body = BEFORE + "try:\n    db.execute('COMMIT')\nexcept Exception:\n    pass" + AFTER
    lifecycle.write_migration(extra_dir, f"{LABEL}.py", body, 'db.execute("DROP TABLE after_escape")\n'
                              'db.execute("DROP TABLE escaped")')
    result = _run(cli, data, extra_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "900" in lifecycle.records(data / "trading.db")
    assert {"escaped", "after_escape"} <= lifecycle.objects(data / "trading.db")


def test_connection_settings_a_migration_changes_are_put_back(cli, lifecycle, data, extra_dir):
    lifecycle.write_migration(extra_dir, "900_legacy.py", 'db.execute("PRAGMA legacy_alter_table = ON")\n'
                              'db.execute("PRAGMA user_version = 7")', "pass")
    lifecycle.write_migration(extra_dir, "901_reads.py", 'db.execute("CREATE TABLE seen (setting)")\n'
                              'db.execute("INSERT INTO seen VALUES (?)", db.query("PRAGMA legacy_alter_table")[0])',
                              'db.execute("DROP TABLE seen")')
    result = _run(cli, data, extra_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    conn = sqlite3.connect(data / "trading.db")
    try:
        assert conn.execute("SELECT * FROM seen").fetchall() == [(0,)]  # 901 ran with it off again
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 7  # part of the file: committed with 900
    finally:
        conn.close()
