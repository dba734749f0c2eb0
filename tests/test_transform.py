"""`db.transform()`: table rebuilds inside migrations (SQLite's documented procedure, statements from
sqlite-utils), on real files through the runner: data, indexes, triggers, views and foreign keys
survive; what would break them is refused with one line and leaves the file as it was."""
from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from toolkit.db import connect
from toolkit.errors import MigrationDefinitionError, MigrationFailedError
from toolkit.migrate.rebuild import foreign_keys_off
from toolkit.content import load_migrations
from toolkit.migrate.runner import downgrade, upgrade
from toolkit.migrate.verify import verify

REBUILDS = "REBUILDS_TABLES = True"

#: desks <- tickets <- ticket_events: ``tickets`` has a foreign key out (desk_id), one pointing at it
#: (ticket_events, ON DELETE CASCADE: dropping the old table with foreign keys on would empty it),
#: an index, a trigger on it and a view over it.
SCHEMA = '''
db.script("""
CREATE TABLE desks (desk_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE tickets (
    ticket_id  INTEGER PRIMARY KEY,
    desk_id    INTEGER NOT NULL REFERENCES desks (desk_id),
    symbol     TEXT    NOT NULL CHECK (length(symbol) BETWEEN 1 AND 8),
    qty        TEXT    NOT NULL,
    note       TEXT,
    opened_at  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX idx_tickets_symbol ON tickets (symbol);
CREATE TABLE ticket_events (
    event_id   INTEGER PRIMARY KEY,
    ticket_id  INTEGER NOT NULL REFERENCES tickets (ticket_id) ON DELETE CASCADE,
    kind       TEXT    NOT NULL
);
CREATE TRIGGER trg_tickets_opened AFTER INSERT ON tickets
BEGIN
    INSERT INTO ticket_events (ticket_id, kind) VALUES (NEW.ticket_id, 'opened');
END;
CREATE VIEW v_ticket_sizes AS
    SELECT t.ticket_id, d.name AS desk, t.symbol, t.qty FROM tickets t JOIN desks d USING (desk_id);
""")
'''
DROP_SCHEMA = 'db.script("DROP VIEW v_ticket_sizes; DROP TABLE ticket_events; DROP TABLE tickets; DROP TABLE desks;")'

ORIGINAL_ORDER = ["ticket_id", "desk_id", "symbol", "qty", "note", "opened_at"]
REBUILD_UP = 'db.transform("tickets", add={"venue": str}, not_null={"venue"}, defaults={"venue": "XNAS"}, types={"qty": int}, drop=["note"])'
REBUILD_DOWN = f'db.transform("tickets", add={{"note": str}}, types={{"qty": str}}, drop=["venue"], column_order={ORIGINAL_ORDER!r})'


def rows(settings, sql: str, params: tuple = ()) -> list[tuple]:
    conn = connect(settings.path("trading"), readonly=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def write(settings, *statements: str) -> None:
    conn = connect(settings.path("trading"))
    try:
        conn.execute("BEGIN IMMEDIATE")
        for sql in statements:
            conn.execute(sql)
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.fixture
def tickets(migrated, lifecycle, extra_dir):
    """Settings with 900 (the three tables) applied and a few rows in them."""
    lifecycle.write_migration(extra_dir, "900_tickets.py", SCHEMA, DROP_SCHEMA)
    settings = migrated.with_(migrations_dirs=(extra_dir,))
    upgrade(settings, migrations=load_migrations(settings))
    write(settings,
          "INSERT INTO desks (desk_id, name) VALUES (1, 'equities'), (2, 'futures')",
          "INSERT INTO tickets (ticket_id, desk_id, symbol, qty, note, opened_at) VALUES "
          "(1, 1, 'MSFT', '10', 'first', 1700000000), (2, 1, 'AAPL', '5', NULL, 1700000100), (3, 2, 'ES', '2', 'x', 1700000200)")
    return settings


def rebuild(lifecycle, extra_dir, upgrade_code: str = REBUILD_UP, downgrade_code: str = REBUILD_DOWN,
            preamble: str = REBUILDS, name: str = "901_rebuild_tickets.py") -> None:
    lifecycle.write_migration(extra_dir, name, upgrade_code, downgrade_code, preamble=preamble)


def fk_check(settings) -> list[tuple]:
    return rows(settings, "PRAGMA foreign_key_check")


def objects(settings, kind: str) -> set[str]:
    return {r[0] for r in rows(settings, "SELECT name FROM sqlite_master WHERE type = ?", (kind,))}


# -- a rebuild that works -------------------------------------------------------------------------

def test_a_rebuild_keeps_the_data_indexes_trigger_view_and_foreign_keys(tickets, lifecycle, extra_dir):
    events_before = rows(tickets, "SELECT * FROM ticket_events ORDER BY event_id")
    assert len(events_before) == 3  # the trigger fired for each ticket
    rebuild(lifecycle, extra_dir)

    result = upgrade(tickets, migrations=load_migrations(tickets))
    (step,) = result.steps
    assert step.migration == "901_rebuild_tickets"
    sql = "\n".join(step.statements)
    assert 'CREATE TABLE "tickets_new_rebuild"' in sql and 'DROP TABLE "tickets"' in sql
    assert "CREATE TRIGGER trg_tickets_opened" in sql  # DROP TABLE took it; recreated

    # the data: qty is an integer now, venue has its default, note is gone
    assert rows(tickets, "SELECT ticket_id, desk_id, symbol, qty, typeof(qty), venue, opened_at FROM tickets ORDER BY ticket_id") == [
        (1, 1, "MSFT", 10, "integer", "XNAS", 1700000000),
        (2, 1, "AAPL", 5, "integer", "XNAS", 1700000100),
        (3, 2, "ES", 2, "integer", "XNAS", 1700000200),
    ]
    columns = {r[1]: r for r in rows(tickets, "PRAGMA table_info(tickets)")}
    assert "note" not in columns
    assert columns["venue"][2:5] == ("TEXT", 1, "'XNAS'")  # NOT NULL DEFAULT 'XNAS'
    assert columns["opened_at"][2:5] == ("INTEGER", 1, "0")  # DEFAULT 0 stays a number, not '0'
    # ON DELETE CASCADE did not fire when the old table was dropped
    assert rows(tickets, "SELECT * FROM ticket_events ORDER BY event_id") == events_before

    # index, trigger and view exist and work
    assert "idx_tickets_symbol" in objects(tickets, "index")
    plan = rows(tickets, "EXPLAIN QUERY PLAN SELECT ticket_id FROM tickets WHERE symbol = 'ES'")
    assert any("idx_tickets_symbol" in r[-1] for r in plan)
    assert rows(tickets, "SELECT * FROM v_ticket_sizes ORDER BY ticket_id") == [
        (1, "equities", "MSFT", 10), (2, "equities", "AAPL", 5), (3, "futures", "ES", 2)]
    write(tickets, "INSERT INTO tickets (ticket_id, desk_id, symbol, qty) VALUES (4, 2, 'NQ', 1)")
    assert rows(tickets, "SELECT ticket_id, kind FROM ticket_events WHERE ticket_id = 4") == [(4, "opened")]
    assert rows(tickets, "SELECT venue FROM tickets WHERE ticket_id = 4") == [("XNAS",)]

    # foreign keys: clean, and still enforced in both directions
    assert fk_check(tickets) == []
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        write(tickets, "INSERT INTO tickets (ticket_id, desk_id, symbol, qty) VALUES (5, 99, 'X', 1)")
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        write(tickets, "INSERT INTO ticket_events (ticket_id, kind) VALUES (99, 'opened')")
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
        write(tickets, "INSERT INTO tickets (ticket_id, desk_id, symbol, qty, venue) VALUES (6, 1, 'X', 1, NULL)")
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        write(tickets, "INSERT INTO tickets (ticket_id, desk_id, symbol, qty) VALUES (7, 1, 'TOO-LONG-SYMBOL', 1)")

    # the file's own connections are back to foreign keys on, and verify (which replays the
    # rebuild in memory) finds the live schema to be what the migrations produce
    report = verify(tickets, migrations=load_migrations(tickets))
    assert report.findings == []


def test_a_rebuild_downgrades_back_to_the_original_schema(tickets, lifecycle, extra_dir):
    schema_before = rows(tickets, "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite%' ORDER BY type, name")
    rebuild(lifecycle, extra_dir)
    upgrade(tickets, migrations=load_migrations(tickets))
    result = downgrade(tickets, migrations=load_migrations(tickets), target="901")
    assert [s.migration for s in result.steps] == ["901_rebuild_tickets"]

    assert [r[1] for r in rows(tickets, "PRAGMA table_info(tickets)")] == ORIGINAL_ORDER
    assert rows(tickets, "SELECT ticket_id, qty, typeof(qty), note FROM tickets ORDER BY ticket_id") == [
        (1, "10", "text", None), (2, "5", "text", None), (3, "2", "text", None)]  # note's values went with the column
    assert rows(tickets, "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite%' ORDER BY type, name") == schema_before
    assert fk_check(tickets) == []
    write(tickets, "INSERT INTO tickets (ticket_id, desk_id, symbol, qty) VALUES (4, 2, 'NQ', '1')")
    assert rows(tickets, "SELECT kind FROM ticket_events WHERE ticket_id = 4") == [("opened",)]
    assert verify(tickets, migrations=load_migrations(tickets)).findings == []  # the rebuilt table differs from 900's text only in quoting
    upgrade(tickets, migrations=load_migrations(tickets))  # and up again
    assert verify(tickets, migrations=load_migrations(tickets)).findings == []


def test_dry_run_prints_the_rebuild_and_changes_nothing(tickets, lifecycle, extra_dir, cli):
    rebuild(lifecycle, extra_dir)
    before = lifecycle.snapshot(tickets.data_dir)
    result = cli("migrate", "--data-dir", str(tickets.data_dir), "--migrations-dir", str(extra_dir), "upgrade", "--dry-run")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "-- 901_rebuild_tickets" in out
    for expected in ('ALTER TABLE "tickets" ADD COLUMN "venue" TEXT DEFAULT \'XNAS\';', 'CREATE TABLE "tickets_new_rebuild" (',
                     'INSERT INTO "tickets_new_rebuild"', 'DROP TABLE "tickets";',
                     'ALTER TABLE "tickets_new_rebuild" RENAME TO "tickets";', "CREATE INDEX idx_tickets_symbol",
                     "CREATE TRIGGER trg_tickets_opened"):
        assert expected in out, expected
    assert ";;" not in out
    assert lifecycle.snapshot(tickets.data_dir) == before


# -- refusals: one line, the file exactly as before -----------------------------------------------

def refused(settings, lifecycle, *, dry_run: bool = False) -> MigrationFailedError:
    before = lifecycle.snapshot(settings.data_dir)
    with pytest.raises(MigrationFailedError) as caught:
        upgrade(settings, migrations=load_migrations(settings), dry_run=dry_run)
    after = lifecycle.snapshot(settings.data_dir)
    assert after["trading"] == before["trading"]  # bytes, logical content, per-table hashes, records
    message = str(caught.value)
    assert "\n" not in message
    return caught.value


def test_a_rebuild_that_leaves_a_foreign_key_violation_is_refused(tickets, lifecycle, extra_dir):
    # desk 3 does not exist: adding the foreign key to existing rows would leave an orphan
    write(tickets, "CREATE TABLE desk_notes (note_id INTEGER PRIMARY KEY, desk_id INTEGER, text TEXT)",
          "INSERT INTO desk_notes VALUES (1, 1, 'ok'), (2, 3, 'orphan')")
    rebuild(lifecycle, extra_dir, 'db.transform("desk_notes", add_foreign_keys=[("desk_id", "desks", "desk_id")])')

    error = refused(tickets, lifecycle)  # trading.db's bytes and content hash unchanged
    message = str(error)
    assert "foreign key check failed" in message and "desk_notes -> desks" in message
    assert "901_rebuild_tickets" in message and "trading" in message and str(tickets.path("trading")) in message
    assert "left exactly as before" in message and "migrate upgrade" in message
    assert error.statement is None  # the check, not a statement, refused it
    assert rows(tickets, "PRAGMA foreign_key_list(desk_notes)") == []
    assert lifecycle.history(tickets.data_dir)["901"][0] == "failed"

    # the rehearsal says the same, and changes nothing either
    dry = refused(tickets, lifecycle, dry_run=True)
    assert "dry run" in str(dry) and "foreign key check failed" in str(dry)


def test_a_violation_made_by_the_migrations_own_statements_is_refused(tickets, lifecycle, extra_dir):
    # foreign keys are off for the whole migration: a plain DELETE is only caught by the check
    rebuild(lifecycle, extra_dir, 'db.execute("DELETE FROM desks WHERE desk_id = 2")\n' + REBUILD_UP)
    message = str(refused(tickets, lifecycle))
    assert "tickets -> desks" in message and "missing row of desks" in message


def test_violations_the_file_already_had_do_not_block_a_rebuild(tickets, lifecycle, extra_dir):
    conn = sqlite3.connect(tickets.path("trading"), isolation_level=None)  # foreign keys off: a defect
    try:
        conn.execute("INSERT INTO ticket_events (ticket_id, kind) VALUES (42, 'orphan')")
    finally:
        conn.close()
    rebuild(lifecycle, extra_dir)
    upgrade(tickets, migrations=load_migrations(tickets))
    assert fk_check(tickets) == [("ticket_events", 4, "tickets", 0)]  # still there, still reported
    assert [f.check for f in verify(tickets, migrations=load_migrations(tickets)).findings] == ["foreign_key_check"]


def test_transform_needs_the_declaration(tickets, lifecycle, extra_dir):
    rebuild(lifecycle, extra_dir, preamble="")
    message = str(refused(tickets, lifecycle))
    assert "REBUILDS_TABLES = True" in message and "db.transform('tickets') refused" in message


def test_a_malformed_declaration_is_reported_before_anything_runs(tickets, lifecycle, extra_dir):
    rebuild(lifecycle, extra_dir, preamble='REBUILDS_TABLES = "yes"')
    before = lifecycle.snapshot(tickets.data_dir)
    with pytest.raises(MigrationDefinitionError, match="REBUILDS_TABLES must be True or False"):
        upgrade(tickets, migrations=load_migrations(tickets))
    assert lifecycle.snapshot(tickets.data_dir) == before


@pytest.mark.parametrize(("code", "expected"), [
    # the view reads symbol: dropping it would break the view
    ('db.transform("tickets", drop=["symbol"])', "view v_ticket_sizes uses column 'symbol', which this transform drops"),
    # ticket_events references tickets(ticket_id) (the view and trigger that use it are out of the way)
    ('db.script("DROP VIEW v_ticket_sizes; DROP TRIGGER trg_tickets_opened;")\ndb.transform("tickets", rename={"ticket_id": "id"})',
     "table ticket_events has a foreign key to tickets(ticket_id)"),
    # the trigger on tickets inserts NEW.ticket_id: renaming would break it
    ('db.execute("DROP VIEW v_ticket_sizes")\ndb.transform("ticket_events", rename={"ticket_id": "tid"})',
     "trigger trg_tickets_opened uses column 'ticket_id', which this transform renames"),
    ('db.transform("tickets", add={"venue": str}, not_null={"venue"})', "new NOT NULL column 'venue' needs a default"),
    ('db.transform("tickets", add={"fee": "DECIMAL"})', "unknown type 'DECIMAL' for new column 'fee'"),
    ('db.transform("v_ticket_sizes", drop=["qty"])', "'v_ticket_sizes' is a view"),
    ('db.transform("nowhere", drop=["x"])', "there is no table 'nowhere'"),
    ('db.transform("tickets", drop=["nope"])', "table tickets has no column 'nope'"),
    ('db.transform("lot_matches", types={"matched_at": float})', "WITHOUT ROWID"),
    ('db.execute("CREATE TABLE tags (name TEXT COLLATE NOCASE PRIMARY KEY, n INTEGER)")\ndb.transform("tags", types={"n": float})',
     "would not reproduce its COLLATE clause"),
    ('db.execute("CREATE TABLE sized (n INTEGER, half REAL GENERATED ALWAYS AS (n / 2.0))")\ndb.transform("sized", types={"n": float})',
     "column 'half' is generated"),
    ('db.execute("CREATE TABLE odd (n BOOLEAN)")\ndb.transform("odd", rename={"n": "flag"})',
     "changed the type of column 'n' ('BOOLEAN' -> "),
])
def test_rebuilds_that_would_break_or_lose_something_are_refused(tickets, lifecycle, extra_dir, code, expected):
    rebuild(lifecycle, extra_dir, code)
    message = str(refused(tickets, lifecycle))
    assert expected in message, message
    assert "901_rebuild_tickets" in message and "left exactly as before" in message


def test_the_command_line_reports_a_refused_rebuild_on_one_line(tickets, lifecycle, extra_dir, cli):
    rebuild(lifecycle, extra_dir, 'db.transform("tickets", drop=["symbol"])')
    result = cli("migrate", "--data-dir", str(tickets.data_dir), "--migrations-dir", str(extra_dir), "upgrade")
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "v_ticket_sizes" in lines[0] and str(tickets.path("trading")) in lines[0]


# -- the mechanism --------------------------------------------------------------------------------

def test_foreign_keys_are_switched_off_only_outside_a_transaction_and_restored(tmp_path):
    conn = connect(tmp_path / "x.db", create=True)
    try:
        with foreign_keys_off(conn):
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 0
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        with pytest.raises(ValueError), foreign_keys_off(conn):
            raise ValueError("a failing migration")
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        conn.execute("BEGIN")
        with pytest.raises(RuntimeError, match="outside a transaction"), foreign_keys_off(conn):
            pass
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_status_and_the_runner_do_not_import_sqlite_utils(migrated):
    code = (
        "import sys\n"
        "from toolkit.config import load_settings\n"
        "from toolkit.content import load_migrations\n"
        "from toolkit.migrate.status import status\n"
        "import toolkit.migrate.runner, toolkit.migrate.verify, toolkit.migrate.rebuild\n"
        f"s = load_settings({str(migrated.data_dir)!r}, env={{}})\n"
        "status(s, migrations=load_migrations(s))\n"
        "assert 'sqlite_utils' not in sys.modules, 'sqlite_utils imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_no_op_rebuild_reproduces_every_bundled_table(settings):
    """sqlite-utils regenerates CREATE TABLE from introspection: for the bundled schema that must give
    back the same definition (up to formatting), or rebuilds would change tables nobody asked to change."""
    import sqlglot
    from sqlglot import exp

    from toolkit.migrate.discovery import MigrationContext
    from toolkit.migrate.rebuild import RebuildError, transform

    def canonical(sql: str) -> str:
        tree = sqlglot.parse_one(sql, read="sqlite")
        for identifier in tree.find_all(exp.Identifier):
            identifier.set("quoted", False)
        return tree.sql(dialect="sqlite", normalize=True, comments=False)

    migrations = load_migrations(settings)
    rebuilt = []
    for database in ("positions", "trading", "ml_training"):
        conn = sqlite3.connect(":memory:", isolation_level=None)
        try:
            for m in migrations:
                if m.database == database:
                    m.upgrade(MigrationContext(conn, database))
            before = dict(conn.execute("SELECT name, sql FROM sqlite_master"))
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
            for table in tables:
                conn.execute("BEGIN")
                try:
                    if table == "lot_matches":
                        with pytest.raises(RebuildError, match="WITHOUT ROWID"):
                            transform(MigrationContext(conn, database, rebuilds_tables=True), table)
                        continue
                    transform(MigrationContext(conn, database, rebuilds_tables=True), table)
                    after = dict(conn.execute("SELECT name, sql FROM sqlite_master"))
                    assert after.keys() == before.keys(), table
                    for name, sql in before.items():
                        assert after[name] == sql or canonical(after[name]) == canonical(sql), name
                    rebuilt.append(table)
                finally:
                    conn.execute("ROLLBACK")
        finally:
            conn.close()
    assert len(rebuilt) == 15
