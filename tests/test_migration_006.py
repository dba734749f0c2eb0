"""Migrations 006 (trades: ``is_close`` means "the trade closes lots") and 007 (positions.trail_percent)
on real ledgers, no mocks.

A long-only session is written into a data directory migrated up to 005 (the schema 006 finds in
the field), then:

- 006 rebuilds trades: every row is unchanged, every other table too, the indexes are back (the
  ledger scan's covering index now ends with is_close, the opening-leg index reads is_close = 0, the
  invalid-row index no longer mentions is_close), v_trades works, `migrate verify` is clean and so is
  the foreign-key check;
- after 006 a cover (a BUY with is_close = 1) can be stored; while one is there, downgrading 006 is
  refused by the old CHECK with one error line and changes no data file; on a ledger without one the
  downgrade succeeds and SQLite enforces the long-only CHECK again;
- 007 adds positions.trail_percent with its CHECK (NULL or 0 < x < 100) and its downgrade drops it.
"""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from dbstate import content_hashes, query, tables

from toolkit.config import DATABASES, Settings, load_settings
from toolkit.content import load_migrations
from toolkit.fixtures.session import SessionSpec, write_session
from toolkit.migrate.runner import downgrade, upgrade
from toolkit.migrate.verify import live_schema, schema_differences, verify

TRADES = 1_500
OLD_CHECK = "CHECK (is_close = (action = 'SELL'))"
#: The columns of the ledger scan's covering index as 004 made it; 006 appends is_close.
LEDGER_INDEX_004 = ["ticker", "executed_at", "trade_id", "action", "quantity", "price", "entry_trade_id",
                    "realized_pnl", "status", "exit_price", "exit_time", "commission"]


def _settings(data: Path) -> Settings:
    return load_settings(data, cwd=data.parent, env={}, busy_timeout=2.0, lock_timeout=5.0)


def _checkpoint(settings: Settings) -> None:
    """Fold every WAL into its main file, so "the file did not change" can be said of its bytes."""
    for name in (*DATABASES, "migrations"):
        conn = sqlite3.connect(settings.path(name), isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()


@pytest.fixture(scope="module")
def at_005(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory at 005 (006 and 007 pending) holding a long-only session."""
    data = tmp_path_factory.mktemp("ledger-at-005") / "data"
    settings = _settings(data)
    upgrade(settings, migrations=load_migrations(settings), target="005")
    summary = write_session(settings, SessionSpec(trades=TRADES, tickers=6, seed=12))
    assert summary.trades == TRADES and summary.open_positions > 0
    _checkpoint(settings)
    return data


@pytest.fixture
def ledger(tmp_path: Path, at_005: Path) -> Settings:
    """A private copy of the session at 005."""
    shutil.copytree(at_005, tmp_path / "data")
    return _settings(tmp_path / "data")


def migrate(cli, settings: Settings, *args: str):
    return cli("migrate", "--data-dir", str(settings.data_dir), *args)


def error_line(result, *needles: str) -> str:
    """The command's single `error:` line (no traceback, nothing continuing it), containing every needle."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert result.stderr.split(lines[0], 1)[1].strip() == "", result.stderr
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def trades(settings: Settings) -> list[tuple]:
    return query(settings, "trading", "SELECT * FROM trades ORDER BY trade_id")


def definition(settings: Settings, name: str) -> str:
    return query(settings, "trading", "SELECT sql FROM sqlite_master WHERE name = ?", (name,))[0][0]


def index_columns(settings: Settings, name: str) -> list[str]:
    return [r[0] for r in query(settings, "trading", "SELECT name FROM pragma_index_info(?) ORDER BY seqno", (name,))]


def trade_indexes(settings: Settings) -> set[str]:
    return {r[0] for r in query(settings, "trading", "SELECT name FROM sqlite_master WHERE type = 'index' "
                                                    "AND tbl_name = 'trades' AND sql IS NOT NULL")}


def schema_of(settings: Settings, name: str) -> dict:
    conn = sqlite3.connect(settings.path(name).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return live_schema(conn)
    finally:
        conn.close()


def write(settings: Settings, name: str, sql: str, params: tuple = ()) -> None:
    """One statement in its own transaction, foreign keys on, as a plain writer would run it."""
    conn = sqlite3.connect(settings.path(name), isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(sql, params)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


def store_short_and_cover(settings: Settings) -> tuple[int, int]:
    """A short sale (SELL, is_close = 0) and its cover (BUY, is_close = 1) with their lot match, the
    rows the writer stores for them (toolkit.accounting close_row_values / opening_row_values)."""
    last_id, last_at, run_id = query(settings, "trading", "SELECT max(trade_id), max(executed_at), "
                                     "(SELECT run_id FROM trades ORDER BY trade_id LIMIT 1) FROM trades")[0]
    short, cover = last_id + 1, last_id + 2
    columns = ("trade_id, run_id, ticker, action, quantity, price, commission, executed_at, is_close, "
               "entry_trade_id, realized_pnl, status, exit_price, exit_time")
    write(settings, "trading", f"INSERT INTO trades ({columns}) VALUES (?, ?, 'SHRT', 'SELL', 4.0, 50.0, 1.0, ?, 0, "
                               "NULL, NULL, 'CLOSED', 45.0, ?)", (short, run_id, last_at + 60, last_at + 120))
    write(settings, "trading", f"INSERT INTO trades ({columns}) VALUES (?, ?, 'SHRT', 'BUY', 4.0, 45.0, 1.0, ?, 1, "
                               "?, 20.0, 'CLOSED', 45.0, ?)", (cover, run_id, last_at + 120, short, last_at + 120))
    write(settings, "trading", "INSERT INTO lot_matches (close_trade_id, entry_trade_id, quantity, entry_price, "
                               "exit_price, realized_pnl, matched_at) VALUES (?, ?, 4.0, 50.0, 45.0, 20.0, ?)",
          (cover, short, last_at + 120))
    return short, cover


# -- 006 on a long-only ledger ---------------------------------------------------------------------

def test_006_keeps_every_trade_and_rebuilds_the_indexes_and_the_view(ledger: Settings, cli) -> None:
    before = trades(ledger)
    assert len(before) == TRADES
    # a long-only ledger as 004's CHECK kept it: every SELL closes, every BUY opens, both present
    assert query(ledger, "trading", "SELECT action, is_close, count(*) > 0 FROM trades GROUP BY 1, 2") == [
        ("BUY", 0, 1), ("SELL", 1, 1)]
    assert OLD_CHECK in definition(ledger, "trades")
    assert index_columns(ledger, "idx_trades_ledger") == LEDGER_INDEX_004
    columns = query(ledger, "trading", "SELECT * FROM pragma_table_info('trades')")
    indexes = trade_indexes(ledger)
    hashes = tables(ledger)

    result = upgrade(ledger, migrations=load_migrations(ledger), target="006")
    assert [s.migration for s in result.steps] == ["006_trades_open_or_close"]

    # every row, column for column, in the same table shape
    assert trades(ledger) == before
    assert query(ledger, "trading", "SELECT * FROM pragma_table_info('trades')") == columns
    after = tables(ledger)
    assert {t: h for t, h in after["trading"].items() if t != "<schema>"} == {
        t: h for t, h in hashes["trading"].items() if t != "<schema>"}
    assert after["trading"]["<schema>"] != hashes["trading"]["<schema>"]
    assert after["positions"] == hashes["positions"] and after["ml_training"] == hashes["ml_training"]

    # the constraint is gone; the indexes are all back, three of them redefined
    assert OLD_CHECK not in definition(ledger, "trades")
    assert trade_indexes(ledger) == indexes
    assert {"idx_trades_ledger", "idx_trades_opening_leg_pnl", "idx_trades_invalid"} <= indexes
    assert index_columns(ledger, "idx_trades_ledger") == [*LEDGER_INDEX_004, "is_close"]
    assert definition(ledger, "idx_trades_opening_leg_pnl").endswith(
        "ON trades (trade_id) WHERE is_close = 0 AND realized_pnl IS NOT NULL")
    invalid = definition(ledger, "idx_trades_invalid")
    assert "is_close" not in invalid and "action NOT IN ('BUY', 'SELL')" in invalid
    # no opening leg carries P&L, and SQLite answers that from the partial index
    assert query(ledger, "trading", "SELECT count(*) FROM trades INDEXED BY idx_trades_opening_leg_pnl "
                                    "WHERE is_close = 0 AND realized_pnl IS NOT NULL") == [(0,)]

    # the view is back and shows every trade in time order
    view = query(ledger, "trading", "SELECT * FROM v_trades")
    assert len(view) == TRADES
    assert view == query(ledger, "trading", """
        SELECT trade_id, run_id, ticker, action, quantity, price, commission,
               datetime(executed_at, 'unixepoch'), is_close, entry_trade_id, realized_pnl, status, exit_price,
               datetime(exit_time, 'unixepoch'), order_id, strategy
        FROM trades ORDER BY executed_at, trade_id""")

    assert query(ledger, "trading", "PRAGMA foreign_key_check") == []
    assert query(ledger, "trading", "PRAGMA integrity_check") == [("ok",)]  # indexes agree with the table
    verified = migrate(cli, ledger, "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "no findings" in verified.stdout


# -- covers after 006, and reverting it -----------------------------------------------------------

def test_after_006_a_cover_is_stored_and_006_cannot_be_reverted_while_it_is_there(ledger: Settings, cli, lifecycle) -> None:
    upgrade(ledger, migrations=load_migrations(ledger), target="006")
    short, cover = store_short_and_cover(ledger)
    assert query(ledger, "trading", "SELECT trade_id, action, is_close FROM trades WHERE trade_id >= ?", (short,)) == [
        (short, "SELL", 0), (cover, "BUY", 1)]
    assert query(ledger, "trading", "PRAGMA foreign_key_check") == []
    _checkpoint(ledger)
    before = lifecycle.snapshot(ledger.data_dir)
    hashes = content_hashes(ledger, DATABASES)

    result = migrate(cli, ledger, "downgrade", "--migration", "006", "--yes")
    assert result.returncode == 3, result.stdout + result.stderr
    error_line(result, "downgrade of migration 006_trades_open_or_close", "trading", str(ledger.path("trading")),
               "the ledger holds 2 covering BUY(s) or short sale(s)", "keep 006", "left exactly as before")
    assert "reverted" not in result.stdout

    # no data file changed: bytes, logical content, per-file migration records
    after = lifecycle.snapshot(ledger.data_dir)
    for name in DATABASES:
        assert after[name] == before[name], name
    assert content_hashes(ledger, DATABASES) == hashes
    assert lifecycle.records(ledger.path("trading")) == ["002", "004", "006"]
    assert OLD_CHECK not in definition(ledger, "trades")
    # the ledger keeps the attempt, and 006 stays applied there as in the file: nothing to reconcile
    assert ("006", "downgrade", "failed") in lifecycle.events(ledger.data_dir)
    assert query(ledger, "migrations", "SELECT status FROM migration_history WHERE migration_id = '006'") == [("applied",)]
    status = migrate(cli, ledger, "status")
    assert status.returncode == 0 and "reconcile" not in status.stdout + status.stderr, status.stdout + status.stderr


def test_006_reverts_on_a_ledger_without_covers_and_the_old_check_holds_again(ledger: Settings, at_005: Path) -> None:
    before = trades(ledger)
    upgrade(ledger, migrations=load_migrations(ledger), target="006")

    result = downgrade(ledger, migrations=load_migrations(ledger), target="006")
    assert [s.migration for s in result.steps] == ["006_trades_open_or_close"]
    assert trades(ledger) == before
    assert query(ledger, "trading", "SELECT migration_id FROM _toolkit_migrations ORDER BY 1") == [("002",), ("004",)]
    # the schema is 005's again (the rebuilt table's name comes back quoted: formatting only)
    assert schema_differences(schema_of(_settings(at_005), "trading"), schema_of(ledger, "trading")) == []
    assert OLD_CHECK in definition(ledger, "trades")
    assert index_columns(ledger, "idx_trades_ledger") == LEDGER_INDEX_004
    assert "WHERE action = 'BUY' AND realized_pnl IS NOT NULL" in definition(ledger, "idx_trades_opening_leg_pnl")
    assert definition(ledger, "idx_trades_invalid").endswith("OR is_close <> (action = 'SELL')")
    assert query(ledger, "trading", "PRAGMA foreign_key_check") == []
    assert query(ledger, "trading", "PRAGMA integrity_check") == [("ok",)]
    assert len(query(ledger, "trading", "SELECT * FROM v_trades")) == TRADES
    assert verify(ledger, migrations=load_migrations(ledger)).findings == []

    # SQLite refuses a cover, and a short sale, again; a long-only row still goes in
    last_id, last_at, run_id = query(ledger, "trading", "SELECT max(trade_id), max(executed_at), "
                                     "(SELECT run_id FROM trades LIMIT 1) FROM trades")[0]
    insert = ("INSERT INTO trades (trade_id, run_id, ticker, action, quantity, price, commission, executed_at, "
              "is_close, status) VALUES (?, ?, 'SHRT', ?, 1.0, 50.0, 0.0, ?, ?, 'OPEN')")
    for action, is_close in (("BUY", 1), ("SELL", 0)):
        with pytest.raises(sqlite3.IntegrityError, match=r"CHECK constraint failed: is_close = \(action = 'SELL'\)"):
            write(ledger, "trading", insert, (last_id + 1, run_id, action, last_at + 1, is_close))
    assert trades(ledger) == before
    write(ledger, "trading", insert, (last_id + 1, run_id, "BUY", last_at + 1, 0))
    assert len(trades(ledger)) == TRADES + 1


# -- 007: positions.trail_percent ------------------------------------------------------------------

def test_007_adds_trail_percent_with_its_check_and_its_downgrade_drops_it(ledger: Settings) -> None:
    positions_before = tables(ledger)["positions"]
    result = upgrade(ledger, migrations=load_migrations(ledger))
    assert [s.migration for s in result.steps] == ["006_trades_open_or_close", "007_positions_trailing_stop"]

    columns = {r[1]: (r[2], r[3], r[4]) for r in query(ledger, "positions", "SELECT * FROM pragma_table_info('positions')")}
    assert columns["trail_percent"] == ("REAL", 0, None)  # nullable, no default
    rows = query(ledger, "positions", "SELECT position_id, trail_percent FROM positions ORDER BY position_id")
    assert rows and all(trail is None for _, trail in rows)  # every open position: no trailing stop
    position = rows[0][0]

    update = "UPDATE positions SET trail_percent = ? WHERE position_id = ?"
    for value in (2.5, 0.01, 99.99, None, 7):
        write(ledger, "positions", update, (value, position))
        assert query(ledger, "positions", "SELECT trail_percent FROM positions WHERE position_id = ?", (position,)) == [
            (None if value is None else float(value),)]
    for value in (100, 100.0, 0, 0.0, -1.5, 250.0):
        with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
            write(ledger, "positions", update, (value, position))
    assert query(ledger, "positions", "SELECT trail_percent FROM positions WHERE position_id = ?", (position,)) == [(7.0,)]
    assert verify(ledger, migrations=load_migrations(ledger)).findings == []

    down = downgrade(ledger, migrations=load_migrations(ledger), target="007")
    assert [s.migration for s in down.steps] == ["007_positions_trailing_stop"]
    assert "trail_percent" not in {r[1] for r in query(ledger, "positions", "SELECT * FROM pragma_table_info('positions')")}
    # every other column of every row is as it was, and the schema is 005's again
    assert tables(ledger)["positions"] == positions_before
    assert query(ledger, "positions", "PRAGMA integrity_check") == [("ok",)]
    assert query(ledger, "positions", "SELECT migration_id FROM _toolkit_migrations ORDER BY 1") == [("001",)]
    assert verify(ledger, migrations=load_migrations(ledger)).findings == []
