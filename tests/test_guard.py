"""The guarded connection (toolkit.guard.connect_guarded) and the rollback-only session
(toolkit.guard.rollback_only), against real generated databases.

Every refusal must raise GuardrailViolation naming the reason and the statement, and change nothing:
the content of every file is hashed through separate connections before and after. What a bot and
the trade writer legitimately do must keep working through the same connection.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from toolkit.config import Settings, load_settings
from toolkit.db import table_hashes
from toolkit.errors import GuardrailViolation, IsolationBreach
from toolkit.fixtures import generate
from toolkit.guard import GuardedConnection, connect_guarded, rollback_only
from toolkit.guard import connection as guard_connection
from toolkit.guard.policy import EXECUTED_COLUMNS
from toolkit.ledger import TradeStore
from toolkit.rules import run_checks
from toolkit.content import load_registry

FILES = ("positions", "trading", "ml_training", "migrations")
TRADES = 1_000
REGISTRY = load_registry(plugins=False)


# -- data ------------------------------------------------------------------------------------------

def _settings(data: Path) -> Settings:
    return load_settings(data, cwd=data.parent, env={}, busy_timeout=2.0, lock_timeout=5.0)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guard-template")
    generate(_settings(root / "data"), trades=TRADES, tickers=15, seed=11)
    return root / "data"


def contents(settings: Settings) -> dict[str, dict[str, str]]:
    """Logical content of every file: the hash of its schema and of each table's rows
    (toolkit.db.table_hashes, of which content_hash is a digest), each file read through its own plain
    sqlite3 connection, independent of the connection under test."""
    result = {}
    for name in FILES:
        conn = sqlite3.connect(settings.path(name), isolation_level=None)
        try:
            result[name] = table_hashes(conn)
        finally:
            conn.close()
    return result


@pytest.fixture(scope="module")
def original(template: Path) -> dict[str, dict[str, str]]:
    """The template's content; every test's private copy starts byte-identical to it."""
    return contents(_settings(template))


@pytest.fixture
def data(tmp_path: Path, template: Path, original) -> Settings:
    """A private copy of the generated session (tests that write for real get their own files)."""
    shutil.copytree(template, tmp_path / "data")
    return _settings(tmp_path / "data")


def one(settings: Settings, database: str, sql: str, params: tuple = ()):
    conn = sqlite3.connect(settings.path(database))
    try:
        return conn.execute(sql, params).fetchone()
    finally:
        conn.close()


@pytest.fixture
def bot(data: Settings, original):
    """A bot's guarded connection (no session): whatever it is refused must leave every file as it was."""
    conn = connect_guarded(data, guards=REGISTRY.guards)
    try:
        yield conn
    finally:
        conn.close()
    assert contents(data) == original, "a refused statement changed the data"


def refused(conn: sqlite3.Connection, sql: str, params: tuple = (), *, reason: str) -> GuardrailViolation:
    """``sql`` must raise GuardrailViolation whose reason matches ``reason`` and which names the statement."""
    with pytest.raises(GuardrailViolation) as info:
        conn.execute(sql, params)
    exc = info.value
    assert re.search(reason, exc.reason, re.IGNORECASE), exc.reason
    shown = " ".join(sql.split())
    assert shown[:60] in str(exc), str(exc)
    assert str(exc).startswith("guardrail: ")
    assert not conn.in_transaction, "a refused statement left a transaction open"
    return exc


def rows_of(conn: sqlite3.Connection, *tables: str) -> dict[str, str]:
    """Content hashes of the named tables (``trading.trades``), read through ``conn``."""
    return {table: table_hashes(conn, table.split(".")[0])[table.split(".")[1]] for table in tables}


def _trade_values(**extra: object) -> tuple[str, tuple]:
    values = {"trade_id": 999_999, "run_id": "bot-run", "ticker": "AAPL", "action": "BUY", "quantity": 1.0,
              "price": 50.0, "commission": 0.0, "executed_at": 2_000_000_000, "is_close": 0, "status": "OPEN"}
    values.update(extra)
    return (f"INSERT INTO trading.trades ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            tuple(values.values()))


# -- PRAGMAs -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "PRAGMA trading.journal_mode = DELETE",
    "PRAGMA journal_mode = MEMORY",
    "PRAGMA foreign_keys = OFF",
    "PRAGMA foreign_keys = 0",
    "PRAGMA writable_schema = ON",
    "PRAGMA ignore_check_constraints = ON",
    "PRAGMA defer_foreign_keys = ON",
    "PRAGMA trading.synchronous = OFF",
    "PRAGMA trading.user_version = 99",
    "PRAGMA query_only = OFF",
])
def test_pragma_writes_outside_the_allowlist_are_refused(bot, sql: str) -> None:
    refused(bot, sql, reason=r"PRAGMA \w+ = .* is not allowed")
    # ... and nothing took effect
    assert bot.execute("PRAGMA trading.journal_mode").fetchone()[0] == "wal"
    assert bot.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert bot.execute("PRAGMA ignore_check_constraints").fetchone()[0] == 0
    assert bot.execute("PRAGMA writable_schema").fetchone()[0] == 0
    assert bot.execute("PRAGMA trading.user_version").fetchone()[0] != 99


def test_allowlisted_pragma_writes_and_pragma_reads_work(bot) -> None:
    assert bot.execute("PRAGMA busy_timeout = 1234").fetchone()[0] == 1234
    bot.execute("PRAGMA trading.cache_size = -4096")
    assert bot.execute("PRAGMA trading.cache_size").fetchone()[0] == -4096
    bot.execute("PRAGMA foreign_keys = ON")
    assert bot.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert bot.execute("PRAGMA trading.quick_check").fetchall() == [("ok",)]
    assert bot.execute("PRAGMA trading.integrity_check").fetchall() == [("ok",)]
    assert bot.execute("PRAGMA trading.foreign_key_check").fetchall() == []
    columns = [r[1] for r in bot.execute("PRAGMA trading.table_info(trades)")]
    assert {"trade_id", "run_id", "realized_pnl", "entry_trade_id"} <= set(columns)
    assert bot.execute("PRAGMA trading.journal_mode").fetchone()[0] == "wal"
    assert {r[1] for r in bot.execute("PRAGMA database_list")} >= {"positions", "trading", "ml_training"}
    # query_only is one-way: on is allowed, and then nothing can be written
    bot.execute("PRAGMA query_only = ON")
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        bot.execute("UPDATE trading.orders SET strategy = 'x'")


# -- ATTACH, VACUUM, DDL ------------------------------------------------------------------------------

def test_attach_and_detach_are_refused(bot, tmp_path: Path) -> None:
    outside = tmp_path / "outside.db"
    refused(bot, f"ATTACH DATABASE '{outside}' AS outside", reason="ATTACH/DETACH")
    refused(bot, "ATTACH DATABASE ? AS outside", (str(outside),), reason="ATTACH/DETACH")
    refused(bot, "DETACH DATABASE ml_training", reason="ATTACH/DETACH")
    assert not outside.exists()
    assert {r[1] for r in bot.execute("PRAGMA database_list")} >= {"positions", "trading", "ml_training"}
    assert "outside" not in {r[1] for r in bot.execute("PRAGMA database_list")}


@pytest.mark.parametrize("statement", ["VACUUM", "VACUUM trading", "vacuum trading INTO '{copy}'",
                                       "/* a comment first */ VACUUM INTO '{copy}'", "-- hi\nVACUUM trading INTO '{copy}'"])
def test_vacuum_is_refused(bot, tmp_path: Path, statement: str) -> None:
    copy = tmp_path / "copy.db"
    refused(bot, statement.format(copy=copy), reason="VACUUM")
    assert not copy.exists()


@pytest.mark.parametrize("sql", [
    "CREATE TABLE trading.attack_payload (data TEXT)",
    "DROP TABLE trading.performance_metrics",
    "ALTER TABLE trading.orders ADD COLUMN note TEXT",
    "ALTER TABLE trading.orders RENAME TO orders_old",
    "CREATE INDEX trading.idx_attack ON orders (strategy)",
    "DROP INDEX trading.idx_orders_strategy",
    "DROP VIEW trading.v_trades",
    "CREATE VIEW trading.v_attack AS SELECT 1",
    "CREATE TRIGGER trading.t_attack AFTER INSERT ON orders BEGIN SELECT 1; END",
    "CREATE TEMP TRIGGER t_attack BEFORE INSERT ON trading.orders BEGIN SELECT 1; END",
    "DROP TRIGGER temp.guard_opening_leg_with_pnl_0_0",
    "REINDEX trading.orders",
])
def test_ddl_is_refused(bot, sql: str) -> None:
    refused(bot, sql, reason="schema changes go through the migration runner")
    # the guard triggers are still there, and still fire
    assert bot.execute("SELECT count(*) FROM sqlite_temp_master WHERE type = 'trigger' AND name = "
                       "'guard_opening_leg_with_pnl_0_0'").fetchone()[0] == 1


def test_temp_tables_stay_available_for_scratch_work(bot) -> None:
    bot.execute("CREATE TEMP TABLE scratch (x)")
    bot.execute("INSERT INTO scratch VALUES (1)")
    assert bot.execute("SELECT x FROM scratch").fetchall() == [(1,)]
    bot.execute("DROP TABLE temp.scratch")


# -- the ledger and its projection ----------------------------------------------------------------------

@pytest.mark.parametrize("table", ["trades", "lot_matches", "account_adjustments"])
@pytest.mark.parametrize("trusted", [False, True], ids=["bot", "trusted"])
def test_ledger_rows_are_never_deleted(bot, table: str, trusted: bool) -> None:
    count = bot.execute(f"SELECT count(*) FROM trading.{table}").fetchone()[0]
    sql = f"DELETE FROM trading.{table} WHERE rowid IN (SELECT rowid FROM trading.{table} LIMIT 1)"
    if trusted:
        with bot.trusted("a repair"):
            refused(bot, sql, reason=f"DELETE from {table} is refused: ledger rows are never deleted")
    else:
        refused(bot, sql, reason=f"DELETE from {table} is refused")
    # unqualified names resolve to the same table and are refused just the same
    refused(bot, f"DELETE FROM {table}", reason=f"DELETE from {table} is refused")
    assert bot.execute(f"SELECT count(*) FROM trading.{table}").fetchone()[0] == count


#: What a trade executed at (SPEC 3: the executed facts of a row): spelled out here, not read from the policy.
#: (is_close is derived: whether a trade closes is the FIFO's to say, and close_flag_mismatch's repair sets it.)
EXECUTED = ("trade_id", "run_id", "ticker", "action", "quantity", "price", "commission", "executed_at")


def test_the_policy_protects_every_executed_column() -> None:
    assert set(EXECUTED) <= EXECUTED_COLUMNS


@pytest.mark.parametrize("column", EXECUTED)
def test_executed_columns_are_never_updated(bot, column: str) -> None:
    first = "SELECT * FROM trading.trades WHERE trade_id = (SELECT min(trade_id) FROM trading.trades)"
    before = bot.execute(first).fetchone()
    sql = f"UPDATE trading.trades SET {column} = {column} WHERE trade_id = (SELECT min(trade_id) FROM trading.trades)"
    refused(bot, sql, reason=f"UPDATE of trades.{column} is refused")
    with bot.trusted("the trade writer"):
        refused(bot, sql, reason=f"UPDATE of trades.{column} is refused: what a trade executed at is history")
        # an upsert that would rewrite an executed column is the same UPDATE
        refused(bot, f"INSERT INTO trading.trades SELECT * FROM trading.trades WHERE trade_id = 1 "
                     f"ON CONFLICT (trade_id) DO UPDATE SET {column} = excluded.{column}",
                reason=f"UPDATE of trades.{column} is refused")
    assert bot.execute(first).fetchone() == before


@pytest.mark.parametrize("sql, params, reason", [
    (*_trade_values(), r"trade ledger \(trades\) is written only through the trade writer"),
    ("UPDATE trading.trades SET status = 'OPEN', exit_price = NULL WHERE trade_id = 1", (), r"trade ledger \(trades\)"),
    ("UPDATE trading.trades SET realized_pnl = 0 WHERE action = 'SELL'", (), r"trade ledger \(trades\)"),
    ("INSERT INTO trading.lot_matches VALUES (1, 2, 1.0, 10.0, 11.0, 1.0, 0)", (), r"trade ledger \(lot_matches\)"),
    ("UPDATE trading.account SET cash_balance = cash_balance + 1000", (), r"trade ledger \(account\)"),
    ("INSERT INTO trading.account_adjustments (amount, reason, created_at) VALUES (5, 'gift', 0)", (),
     r"trade ledger \(account_adjustments\)"),
    ("INSERT INTO positions.positions (ticker, side, quantity, entry_price, opened_at, updated_at) "
     "VALUES ('ZQZQ', 'long', 25, 10.0, 1, 1)", (), "positions is a projection of the ledger"),
    ("UPDATE positions.positions SET quantity = quantity * 2", (), r"UPDATE of positions.quantity is refused"),
    ("DELETE FROM positions.positions", (), "positions is a projection"),
    ("DELETE FROM positions.closed_positions", (), "closed_positions is a projection"),
], ids=["insert-trade", "reopen-lot", "rewrite-pnl", "insert-match", "bankroll", "adjustment", "insert-position",
        "inflate-position", "delete-positions", "delete-closed-positions"])
def test_raw_writes_to_the_ledger_and_positions_need_the_trade_writer(bot, sql: str, params: tuple, reason: str) -> None:
    before = {name: table_hashes(bot, name) for name in ("trading", "positions")}
    refused(bot, sql, params, reason=reason)
    assert {name: table_hashes(bot, name) for name in ("trading", "positions")} == before


def test_account_adjustments_are_never_rewritten(bot) -> None:
    before = rows_of(bot, "trading.account_adjustments")
    with bot.trusted("a repair"):
        refused(bot, "UPDATE trading.account_adjustments SET amount = amount * 2",
                reason="UPDATE of account_adjustments is refused")
    assert rows_of(bot, "trading.account_adjustments") == before


@pytest.mark.parametrize("sql, params, reason", [
    (*_trade_values(realized_pnl=125.0), "opening_leg_with_pnl: an opening leg .is_close = 0: a BUY opening a long lot or a SELL opening a short one. never carries realized P&L"),
    (*_trade_values(run_id=None), "trade_row_invalid: a trade needs the run_id"),
    (*_trade_values(run_id="   "), "trade_row_invalid: a trade needs the run_id"),
    (*_trade_values(ticker="AAPL'; DROP TABLE trades; --"), "trade_row_invalid: the ticker is not a plausible symbol"),
    # ATTACK1 and aapl are symbols of the default grammar (toolkit.symbols); these are not
    (*_trade_values(ticker="ATTACK 1"), "trade_row_invalid: the ticker is not a plausible symbol"),
    (*_trade_values(ticker="AAPL\n"), "trade_row_invalid: the ticker is not a plausible symbol"),
    ("UPDATE trading.trades SET realized_pnl = 12.5 WHERE trade_id = "
     "(SELECT min(trade_id) FROM trading.trades WHERE action = 'BUY')", (), "opening_leg_with_pnl"),
], ids=["opening-leg-pnl", "null-run-id", "blank-run-id", "injection-ticker", "attack-ticker", "newline-ticker",
        "pnl-on-existing-buy"])
def test_row_guards_hold_even_for_trusted_writers(bot, sql: str, params: tuple, reason: str) -> None:
    with bot.trusted("a buggy writer"):
        refused(bot, sql, params, reason=reason)
    assert bot.execute("SELECT count(*) FROM trading.trades WHERE trade_id = 999999").fetchone()[0] == 0


def test_a_valid_trusted_trade_row_passes_the_row_guards(data: Settings) -> None:
    """The control of the test above: the same insert with sound values goes through."""
    conn = connect_guarded(data, guards=REGISTRY.guards)
    try:
        with conn.trusted("the trade writer"):
            conn.execute(*_trade_values(ticker="BRK.B"))
    finally:
        conn.close()
    assert one(data, "trading", "SELECT ticker, run_id, realized_pnl FROM trades WHERE trade_id = 999999") == ("BRK.B", "bot-run", None)


# -- the guards the rules declare ------------------------------------------------------------------------

EXPECTED_GUARDS = {"opening_leg_with_pnl", "trade_row_invalid", "order_fill_mismatch", "snapshot_equity_mismatch",
                   "ensemble_weights_sum", "rl_state_missing_avg_reward", "qtable_unsafe_keys"}


def test_every_declared_guard_is_installed_as_a_temp_trigger(bot, data: Settings) -> None:
    declared = {rule.id for rule in REGISTRY if rule.guards}
    assert declared == EXPECTED_GUARDS
    expected = {f"guard_{rule.id}_{n}_{m}" for rule in REGISTRY for n, guard in enumerate(rule.guards)
                for m, _ in enumerate(guard.events)}
    # plus the engine's own: ledger rows are never deleted, not even by a REPLACE
    expected |= {"guard_no_delete_trades", "guard_no_delete_lot_matches", "guard_no_delete_account_adjustments"}
    installed = {r[0] for r in bot.execute("SELECT name FROM sqlite_temp_master WHERE type = 'trigger'")}
    assert installed == expected
    # TEMP triggers live on this connection only: the files' schema is not touched
    for name in ("trading", "ml_training"):
        assert one(data, name, "SELECT count(*) FROM sqlite_master WHERE name LIKE 'guard\\_%' ESCAPE '\\'") == (0,)


def test_snapshot_equity_guard(bot) -> None:
    before = rows_of(bot, "trading.portfolio_snapshots")
    sid = "(SELECT min(snapshot_id) FROM trading.portfolio_snapshots)"
    refused(bot, f"UPDATE trading.portfolio_snapshots SET total_equity = total_equity + 1000 WHERE snapshot_id = {sid}",
            reason="snapshot_equity_mismatch: total equity must be cash \\+ long market value - short market value")
    # a multi-row statement is refused as a whole
    refused(bot, "UPDATE trading.portfolio_snapshots SET cash_balance = cash_balance - 1", reason="snapshot_equity_mismatch")
    refused(bot, "INSERT INTO trading.portfolio_snapshots (snapshot_date, snapshot_time, total_equity, cash_balance, "
                 "long_market_value, short_market_value) VALUES ('2030-01-02', 1893542400, 1500, 1000, 400, 0)",
            reason="snapshot_equity_mismatch")
    assert rows_of(bot, "trading.portfolio_snapshots") == before


def test_order_fill_guards(bot) -> None:
    before = rows_of(bot, "trading.orders")
    refused(bot, "INSERT INTO trading.orders (order_id, ticker, order_type, side, quantity, status, filled_quantity, "
                 "filled_avg_price, submitted_at) VALUES ('O-BOT-1', 'AAPL', 'market', 'buy', 10, 'filled', 10, 100, 1)",
            reason="order_fill_mismatch: a new order has no fills yet")
    order = "(SELECT min(order_id) FROM trading.orders WHERE status = 'filled')"
    refused(bot, f"UPDATE trading.orders SET filled_quantity = filled_quantity / 2 WHERE order_id = {order}",
            reason="order_fill_mismatch: an order's filled quantity, average price and status must agree with its fills")
    refused(bot, f"UPDATE trading.orders SET filled_avg_price = filled_avg_price * 1.5 WHERE order_id = {order}",
            reason="order_fill_mismatch")
    refused(bot, f"UPDATE trading.orders SET status = 'submitted' WHERE order_id = {order}", reason="order_fill_mismatch")
    assert rows_of(bot, "trading.orders") == before


def test_active_ensemble_weights_are_immutable(bot) -> None:
    before = rows_of(bot, "ml_training.ensemble_weights")
    wid = "(SELECT min(weight_id) FROM ml_training.ensemble_weights WHERE is_active = 1)"
    refused(bot, f"UPDATE ml_training.ensemble_weights SET weight = weight * 0.5 WHERE weight_id = {wid}",
            reason="ensemble_weights_sum: an active ensemble's weights are immutable")
    refused(bot, f"UPDATE ml_training.ensemble_weights SET ensemble_id = 'ens-other' WHERE weight_id = {wid}",
            reason="ensemble_weights_sum")
    assert rows_of(bot, "ml_training.ensemble_weights") == before


def test_rl_model_state_guards(bot) -> None:
    before = rows_of(bot, "ml_training.rl_model_states")
    model = "(SELECT min(model_id) FROM ml_training.rl_model_states)"
    refused(bot, "UPDATE ml_training.rl_model_states SET hyperparameters = json_remove(hyperparameters, '$.avg_reward') "
                 f"WHERE model_id = {model}", reason="rl_state_missing_avg_reward: hyperparameters must carry avg_reward")
    refused(bot, "UPDATE ml_training.rl_model_states SET hyperparameters = json_set(hyperparameters, '$.avg_reward', "
                 f"'0; DROP TABLE rl_model_states; --') WHERE model_id = {model}", reason="rl_state_missing_avg_reward")
    refused(bot, "UPDATE ml_training.rl_model_states SET q_table = json_set(q_table, '$.\"__import__(''os'').system(''id'')\"', "
                 f"json('{{\"BUY\": 0}}')) WHERE model_id = {model}",
            reason="qtable_unsafe_keys: Q-table keys must be plain state-tuple literals")
    refused(bot, "INSERT INTO ml_training.rl_model_states (model_id, model_type, q_table, hyperparameters, created_at, updated_at) "
                 "VALUES ('m-evil', 'Q_LEARNING', '{\"exec(1)\": {}}', "
                 "'{\"total_episodes\": 2, \"total_rewards\": 1.0, \"avg_reward\": 0.5}', 0, 0)",
            reason="qtable_unsafe_keys")
    assert rows_of(bot, "ml_training.rl_model_states") == before


def test_foreign_keys_are_enforced(bot) -> None:
    refused(bot, "INSERT INTO ml_training.agent_performance (run_id, evaluation_date, evaluation_type, sharpe_ratio, created_at) "
                 "VALUES ('run-ghost', '2025-01-01', 'test', 9.9, 0)", reason="foreign key constraint")
    refused(bot, "INSERT INTO trading.fills (fill_id, order_id, ticker, side, quantity, price, filled_at, commission) "
                 "VALUES ('F-GHOST', 'O-GHOST', 'AAPL', 'buy', 1, 10, 0, 0)", reason="foreign key constraint")
    assert bot.execute("SELECT count(*) FROM ml_training.agent_performance WHERE run_id = 'run-ghost'").fetchone() == (0,)
    assert bot.execute("SELECT count(*) FROM trading.fills WHERE fill_id = 'F-GHOST'").fetchone() == (0,)


def test_without_guardrails_the_connection_is_plain_but_still_a_session_connection(data: Settings) -> None:
    conn = connect_guarded(data, guardrails=False)
    try:
        assert not conn.guardrails
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM sqlite_temp_master WHERE type = 'trigger'").fetchone()[0] == 0
        with rollback_only(conn):
            conn.execute("INSERT INTO ml_training.agent_performance (run_id, evaluation_date, evaluation_type, created_at) "
                         "VALUES ('run-ghost', '2025-01-01', 'test', 0)")
            conn.execute("DELETE FROM trading.trades")
            assert conn.execute("SELECT count(*) FROM trading.trades").fetchone()[0] == 0
    finally:
        conn.close()
    assert one(data, "trading", "SELECT count(*) FROM trades")[0] == TRADES


def test_executescript_is_refused(bot) -> None:
    for call in (bot.executescript, bot.cursor().executescript):
        with pytest.raises(GuardrailViolation, match="executescript is refused"):
            call("UPDATE trading.orders SET strategy = 'script'; DELETE FROM trading.trades;")
    assert not bot.in_transaction


def test_the_authorizer_cannot_be_replaced_and_extensions_cannot_be_loaded(bot) -> None:
    with pytest.raises(GuardrailViolation, match="authorizer of a guarded connection cannot be replaced"):
        bot.set_authorizer(None)
    with pytest.raises(GuardrailViolation, match="authorizer"):
        bot.set_authorizer(lambda *args: sqlite3.SQLITE_OK)
    with pytest.raises(GuardrailViolation, match="extensions"):
        bot.enable_load_extension(True)
    # still guarded
    refused(bot, "DELETE FROM trading.trades", reason="DELETE from trades is refused")
    with pytest.raises(GuardrailViolation, match="isolation_level"):
        bot.isolation_level = "DEFERRED"
    assert bot.isolation_level is None


# -- what keeps working through the guarded connection -----------------------------------------------

def test_the_trade_writer_records_buys_and_sells_through_the_guarded_connection(data: Settings) -> None:
    cash_before = one(data, "trading", "SELECT cash_balance FROM account")[0]
    with TradeStore(data) as store:
        assert isinstance(store.connection, GuardedConnection) and store.connection.guardrails
        t0 = 2_000_000_000
        store.buy("NEWCO", 10.0, 50.0, run_id="guard-test", executed_at=t0, commission=1.0)
        store.buy("NEWCO", 5.0, 60.0, run_id="guard-test", executed_at=t0 + 60, commission=1.0)
        sell = store.sell("NEWCO", 12.0, 70.0, run_id="guard-test", executed_at=t0 + 120, commission=1.0)
        # the writer's own connection refuses a bot's raw write
        with pytest.raises(GuardrailViolation, match="trade writer"):
            store.connection.execute("UPDATE trading.account SET cash_balance = 0")
    assert sell.realized_pnl == pytest.approx((70 - 50) * 10 + (70 - 60) * 2)
    trades = sqlite3.connect(data.path("trading"))
    try:
        rows = trades.execute("SELECT action, quantity, price, is_close, status, realized_pnl, entry_trade_id, run_id "
                              "FROM trades WHERE ticker = 'NEWCO' ORDER BY trade_id").fetchall()
        matches = trades.execute("SELECT m.quantity, m.entry_price, m.exit_price FROM lot_matches AS m JOIN trades AS t "
                                 "ON t.trade_id = m.close_trade_id WHERE t.ticker = 'NEWCO' ORDER BY m.entry_trade_id").fetchall()
        cash = trades.execute("SELECT cash_balance FROM account").fetchone()[0]
    finally:
        trades.close()
    buy1, buy2, close = rows
    assert buy1[:5] == ("BUY", 10.0, 50.0, 0, "CLOSED") and buy1[5] is None
    assert buy2[:5] == ("BUY", 5.0, 60.0, 0, "OPEN") and buy2[5] is None
    assert close[:5] == ("SELL", 12.0, 70.0, 1, "CLOSED") and close[5] == pytest.approx(220.0)
    assert close[6] is not None and close[7] == "guard-test"
    assert matches == [(10.0, 50.0, 70.0), (2.0, 60.0, 70.0)]
    assert cash == pytest.approx(cash_before - 500 - 300 + 840 - 3)
    assert one(data, "positions", "SELECT side, quantity, entry_price FROM positions WHERE ticker = 'NEWCO'") == ("long", 3.0, 60.0)
    assert one(data, "positions", "SELECT count(*) FROM closed_positions WHERE ticker = 'NEWCO'") == (1,)
    report = run_checks(data, registry=REGISTRY)
    assert report.violations == 0, [(r.rule.id, r.count) for r in report.results if r.count]


def test_legitimate_bot_writes_go_through(data: Settings) -> None:
    conn = connect_guarded(data, guards=REGISTRY.guards)
    try:
        # an order: inserted unfilled, then its fills, then its fill fields, consistently
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO trading.orders (order_id, ticker, order_type, side, quantity, status, submitted_at) "
                     "VALUES ('O-BOT-1', 'AAPL', 'market', 'buy', 10, 'submitted', 2000000000)")
        conn.executemany("INSERT INTO trading.fills (fill_id, order_id, ticker, side, quantity, price, filled_at, commission) "
                         "VALUES (?, 'O-BOT-1', 'AAPL', 'buy', ?, ?, 2000000001, 0.1)", [("F-BOT-1", 4, 100.0), ("F-BOT-2", 6, 101.0)])
        conn.execute("UPDATE trading.orders SET filled_quantity = 10, filled_avg_price = 100.6, status = 'filled', "
                     "filled_at = 2000000001, commission = 0.2 WHERE order_id = 'O-BOT-1'")
        conn.execute("COMMIT")
        # a consistent snapshot
        conn.execute("INSERT INTO trading.portfolio_snapshots (snapshot_date, snapshot_time, total_equity, cash_balance, "
                     "long_market_value, short_market_value) VALUES ('2033-05-18', 2000000002, 1400.5, 1000.25, 500.25, 100)")
        # a new ensemble: deactivate the active set, insert a new one summing to 1
        conn.execute("BEGIN IMMEDIATE")
        runs = [r[0] for r in conn.execute("SELECT run_id FROM ml_training.training_runs ORDER BY run_id LIMIT 2")]
        conn.execute("UPDATE ml_training.ensemble_weights SET is_active = 0 WHERE ensemble_id = 'ens-1' AND is_active = 1")
        conn.executemany("INSERT INTO ml_training.ensemble_weights (ensemble_id, run_id, algorithm, weight, is_active, update_time) "
                         "VALUES ('ens-1', ?, 'PPO', ?, 1, 2000000003)", [(runs[0], 0.25), (runs[1], 0.75)])
        conn.execute("COMMIT")
        # an RL model state updated with a correct avg_reward and a plain state key
        conn.execute("UPDATE ml_training.rl_model_states SET hyperparameters = json_set(hyperparameters, "
                     "'$.total_episodes', 10, '$.total_rewards', 5.0, '$.avg_reward', 0.5), "
                     "q_table = json_set(q_table, '$.\"(9, 9, ''UP'')\"', json('{\"BUY\": 1}')) "
                     "WHERE model_id = (SELECT min(model_id) FROM ml_training.rl_model_states)")
    finally:
        conn.close()
    assert one(data, "trading", "SELECT status, filled_quantity, filled_avg_price FROM orders WHERE order_id = 'O-BOT-1'") == ("filled", 10.0, 100.6)
    assert one(data, "trading", "SELECT total_equity FROM portfolio_snapshots WHERE snapshot_date = '2033-05-18'") == (1400.5,)
    assert one(data, "ml_training", "SELECT count(*), total(weight) FROM ensemble_weights WHERE ensemble_id = 'ens-1' "
                                    "AND is_active = 1") == (2, 1.0)
    # the writes were consistent: the rules the guards come from agree
    report = run_checks(data, registry=REGISTRY,
                        rule_ids=["order_fill_mismatch", "snapshot_equity_mismatch", "ensemble_weights_sum",
                                  "rl_state_missing_avg_reward", "qtable_unsafe_keys", "foreign_key_violations"])
    assert report.violations == 0, [(r.rule.id, r.count) for r in report.results if r.count]


# -- the rollback-only session --------------------------------------------------------------------------

@pytest.fixture
def proven(data: Settings, original):
    """After the test, the data's content must be exactly what it was before."""
    yield data
    assert contents(data) == original, "the session left a trace"


def _scribble(conn: GuardedConnection) -> None:
    """Writes that a commit would make permanent (allowed with or without guardrails)."""
    conn.execute("UPDATE trading.orders SET strategy = 'session-write'")
    conn.execute("INSERT INTO trading.performance_metrics (metric_date, created_at) VALUES ('2030-01-01', 0)")
    if not conn.guardrails:
        conn.execute("DELETE FROM trading.trades WHERE action = 'SELL'")


def _scribbled(conn: GuardedConnection) -> bool:
    return conn.execute("SELECT count(*) FROM trading.orders WHERE strategy IS NOT 'session-write'").fetchone()[0] == 0


def _set_isolation_level(value):
    def run(conn, _):
        conn.isolation_level = value
    return run


#: escape -> (attempt(conn, outside_path), the exception, words of its message)
ESCAPES = {
    "commit()": (lambda c, o: c.commit(), GuardrailViolation, "commit"),
    "rollback()": (lambda c, o: c.rollback(), GuardrailViolation, "end the session"),
    "executescript-COMMIT": (lambda c, o: c.executescript("COMMIT"), GuardrailViolation, "executescript"),
    "cursor-executescript": (lambda c, o: c.cursor().executescript("COMMIT;"), GuardrailViolation, "executescript"),
    # sqlite3 refuses several statements in one execute(); either way COMMIT must not run
    "multi-statement": (lambda c, o: c.execute("SELECT 1; COMMIT"), sqlite3.ProgrammingError, "one statement"),
    "multi-statement-cursor": (lambda c, o: c.cursor().execute("UPDATE trading.orders SET strategy = 'x'; COMMIT"),
                               sqlite3.ProgrammingError, "one statement"),
    "COMMIT": (lambda c, o: c.execute("COMMIT"), GuardrailViolation, "COMMIT/END would commit"),
    "commit-transaction": (lambda c, o: c.execute("commit transaction"), GuardrailViolation, "COMMIT/END"),
    "executemany-COMMIT": (lambda c, o: c.executemany("COMMIT", [()]), GuardrailViolation, "COMMIT/END"),
    "END": (lambda c, o: c.execute("END"), GuardrailViolation, "COMMIT/END would commit"),
    "ROLLBACK": (lambda c, o: c.execute("ROLLBACK"), GuardrailViolation, "ROLLBACK would end the session"),
    "BEGIN": (lambda c, o: c.execute("BEGIN"), GuardrailViolation, "already open"),
    "RELEASE-outer": (lambda c, o: c.execute("RELEASE _toolkit_session"), GuardrailViolation, "RELEASE of the session's outer"),
    "RELEASE-outer-quoted": (lambda c, o: c.execute('RELEASE SAVEPOINT "_TOOLKIT_SESSION"'), GuardrailViolation, "outer savepoint"),
    "journal_mode": (lambda c, o: c.execute("PRAGMA journal_mode = DELETE"), GuardrailViolation, "journal_mode"),
    "journal_mode-schema": (lambda c, o: c.execute("PRAGMA trading.journal_mode = DELETE"), GuardrailViolation, "journal_mode"),
    "locking_mode": (lambda c, o: c.execute("PRAGMA locking_mode = EXCLUSIVE"), GuardrailViolation, "locking_mode"),
    "wal_checkpoint-truncate": (lambda c, o: c.execute("PRAGMA trading.wal_checkpoint(TRUNCATE)"), GuardrailViolation, "wal_checkpoint"),
    "ATTACH": (lambda c, o: c.execute("ATTACH DATABASE ? AS outside", (str(o),)), GuardrailViolation, "ATTACH"),
    "DETACH": (lambda c, o: c.execute("DETACH DATABASE trading"), GuardrailViolation, "ATTACH/DETACH"),
    "VACUUM": (lambda c, o: c.execute("VACUUM"), GuardrailViolation, "VACUUM"),
    "VACUUM-INTO": (lambda c, o: c.execute(f"VACUUM INTO '{o}'"), GuardrailViolation, "VACUUM"),
    # past the text screen, SQLite itself refuses a VACUUM inside the session's transaction
    "VACUUM-INTO-commented": (lambda c, o: c.execute(f"/* x */ VACUUM trading INTO '{o}'"), sqlite3.DatabaseError, "vacuum"),
    "isolation_level-DEFERRED": (_set_isolation_level("DEFERRED"), GuardrailViolation, "isolation_level"),
    "isolation_level-None": (_set_isolation_level(None), GuardrailViolation, "isolation_level"),
    "set_authorizer": (lambda c, o: c.set_authorizer(None), GuardrailViolation, "authorizer"),
}


@pytest.mark.parametrize("guardrails", [False, True], ids=["guardrails-off", "guardrails-on"])
@pytest.mark.parametrize("escape", list(ESCAPES))
def test_every_escape_from_the_session_is_denied(proven: Settings, tmp_path: Path, escape: str, guardrails: bool) -> None:
    action, error, message = ESCAPES[escape]
    outside = tmp_path / "outside.db"
    conn = connect_guarded(proven, guardrails=guardrails, guards=REGISTRY.guards)
    try:
        with rollback_only(conn) as session:
            assert session is conn and conn.in_session
            _scribble(conn)
            with pytest.raises(error) as info:
                action(conn, outside)
            assert message.lower() in str(info.value).lower()
            # still inside the same transaction, with the session's own writes still visible
            assert conn.in_transaction and conn.in_session
            assert _scribbled(conn)
            # and the session goes on working: savepoints of its own are fine
            conn.execute("SAVEPOINT mine")
            conn.execute("UPDATE trading.orders SET strategy = 'inner'")
            conn.execute("ROLLBACK TO mine")
            conn.execute("RELEASE mine")
            assert _scribbled(conn)
        assert not conn.in_transaction and not conn.in_session
        assert conn.execute("PRAGMA trading.journal_mode").fetchone()[0] == "wal"
        assert conn.isolation_level is None
    finally:
        conn.close()
    assert not outside.exists()
    assert not (proven.data_dir / "outside.db").exists()


def test_rollback_to_the_outer_savepoint_keeps_the_session_open(proven: Settings) -> None:
    conn = connect_guarded(proven, guardrails=False)
    try:
        with rollback_only(conn):
            _scribble(conn)
            conn.execute("ROLLBACK TO _toolkit_session")
            assert conn.in_transaction and not _scribbled(conn)
            _scribble(conn)
            assert _scribbled(conn)
    finally:
        conn.close()


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_leaving_the_session_by_an_exception_rolls_back(proven: Settings, exception: type[BaseException]) -> None:
    conn = connect_guarded(proven, guardrails=False)
    try:
        with pytest.raises(exception):
            with rollback_only(conn):
                _scribble(conn)
                assert _scribbled(conn)
                raise exception("boom")
        assert not conn.in_transaction and not conn.in_session
        assert not _scribbled(conn)
        # the connection is usable and a new session can start
        with rollback_only(conn):
            _scribble(conn)
    finally:
        conn.close()


def test_the_session_needs_a_guarded_connection_outside_a_transaction(proven: Settings) -> None:
    plain = sqlite3.connect(":memory:")
    try:
        with pytest.raises(TypeError):
            with rollback_only(plain):  # type: ignore[arg-type]
                pass
    finally:
        plain.close()
    conn = connect_guarded(proven, guards=REGISTRY.guards)
    try:
        conn.execute("BEGIN")
        with pytest.raises(GuardrailViolation, match="outside a transaction"):
            with rollback_only(conn):
                pass
        conn.execute("ROLLBACK")
        # sessions do not nest
        with rollback_only(conn):
            with pytest.raises(GuardrailViolation):
                with rollback_only(conn):
                    pass
            assert conn.in_session and conn.in_transaction
    finally:
        conn.close()


def test_the_guardrails_still_apply_inside_a_session(proven: Settings) -> None:
    conn = connect_guarded(proven, guards=REGISTRY.guards)
    try:
        with rollback_only(conn):
            refused_in_session = [
                "DELETE FROM trading.trades",
                "UPDATE trading.trades SET price = price * 10",
                "PRAGMA ignore_check_constraints = ON",
                "CREATE TABLE trading.attack_payload (x)",
            ]
            for sql in refused_in_session:
                with pytest.raises(GuardrailViolation):
                    conn.execute(sql)
                assert conn.in_transaction
    finally:
        conn.close()


def test_a_second_connection_cannot_write_while_the_session_is_open(proven: Settings) -> None:
    """The session holds BEGIN IMMEDIATE on every attached file: nobody else commits behind it."""
    conn = connect_guarded(proven, guardrails=False)
    other = sqlite3.connect(proven.path("trading"), timeout=0.1, isolation_level=None)
    try:
        with rollback_only(conn):
            for database in ("trading", "positions", "ml_training"):
                second = sqlite3.connect(proven.path(database), timeout=0.1, isolation_level=None)
                try:
                    with pytest.raises(sqlite3.OperationalError, match="locked"):
                        second.execute("BEGIN IMMEDIATE")
                finally:
                    second.close()
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("UPDATE orders SET strategy = 'behind the back'")
    finally:
        other.close()
        conn.close()


def test_the_proof_is_taken_inside_the_sessions_write_lock(data: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both hashes of the proof are computed inside the session's BEGIN IMMEDIATE transaction, so
    nobody else can commit between them; a bot committing the moment the session has ended is not
    mistaken for a breach (its write really lands, after the session)."""
    real_hashes, real_prove = guard_connection._hashes, guard_connection._prove
    calls = []

    def hashes(conn, schemas):
        calls.append(conn.in_transaction)
        return real_hashes(conn, schemas)

    def prove(names, before, after):
        other = sqlite3.connect(data.path("trading"), isolation_level=None)
        try:
            other.execute("UPDATE orders SET strategy = 'right after' WHERE order_id = (SELECT min(order_id) FROM orders)")
        finally:
            other.close()
        return real_prove(names, before, after)

    monkeypatch.setattr(guard_connection, "_hashes", hashes)
    monkeypatch.setattr(guard_connection, "_prove", prove)
    before = contents(data)
    conn = connect_guarded(data, guards=REGISTRY.guards)
    try:
        with rollback_only(conn):
            conn.execute("SELECT count(*) FROM trading.trades").fetchone()
    finally:
        conn.close()
    assert calls == [True, True]
    after = contents(data)
    assert after["trading"]["orders"] != before["trading"]["orders"]


def test_a_session_subverted_from_inside_is_an_isolation_breach(data: Settings) -> None:
    """Code that bypasses the Python-level session (the base class's methods, the authorizer removed)
    can commit; the proof afterwards still catches it."""
    conn = connect_guarded(data, guardrails=False)
    try:
        with pytest.raises(IsolationBreach, match=r"trading\.account"):
            with rollback_only(conn):
                conn.execute("UPDATE trading.account SET cash_balance = cash_balance + 1")
                sqlite3.Connection.set_authorizer(conn, None)
                sqlite3.Connection.execute(conn, "COMMIT")
    finally:
        conn.close()


@pytest.mark.parametrize("exception", [RuntimeError, KeyboardInterrupt])
def test_a_breach_is_not_hidden_behind_the_bodys_exception(data: Settings, exception: type[BaseException]) -> None:
    conn = connect_guarded(data, guardrails=False)
    try:
        with pytest.raises(IsolationBreach, match=r"trading\.account") as info:
            with rollback_only(conn):
                conn.execute("UPDATE trading.account SET cash_balance = cash_balance + 1")
                sqlite3.Connection.set_authorizer(conn, None)
                sqlite3.Connection.execute(conn, "COMMIT")
                raise exception("and then it failed")
        assert isinstance(info.value.__context__, exception)
    finally:
        conn.close()


#: Two ways code under test closes the session's connection: its own close() (which the session sees
#: happen), and the sqlite3 base class's (which it only finds out about afterwards).
CLOSES = {
    "close()": lambda conn: conn.close(),
    "base-class-close": lambda conn: sqlite3.Connection.close(conn),
}


@pytest.mark.parametrize("guardrails", [False, True], ids=["guardrails-off", "guardrails-on"])
@pytest.mark.parametrize("close", list(CLOSES))
def test_closing_the_connection_inside_the_session_is_a_clear_error_and_proven_harmless(
        proven: Settings, close: str, guardrails: bool) -> None:
    conn = connect_guarded(proven, guardrails=guardrails)
    try:
        with pytest.raises(GuardrailViolation) as info:
            with rollback_only(conn):
                _scribble(conn)
                assert _scribbled(conn)
                CLOSES[close](conn)
        exc = info.value
        assert isinstance(exc, guard_connection.SessionConnectionClosed)
        assert not isinstance(exc, IsolationBreach)
        text = str(exc)
        assert "the session's connection was closed inside the rollback-only session" in text
        assert "nothing was committed" in text
        assert all(name in text for name in ("positions", "trading", "ml_training")), text
        assert exc.hint and "after the session" in exc.hint
        assert "\n" not in text
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
    finally:
        conn.close()  # closing again is harmless
    # `proven` re-reads every file: the session's writes are gone


@pytest.mark.parametrize("close", list(CLOSES))
def test_a_session_subverted_and_then_closed_is_still_an_isolation_breach(data: Settings, close: str) -> None:
    """The proof after a close is real: a commit that got out of the session is found."""
    before = contents(data)
    conn = connect_guarded(data, guardrails=False)
    try:
        with pytest.raises(IsolationBreach, match=r"trading\.account"):
            with rollback_only(conn):
                conn.execute("UPDATE trading.account SET cash_balance = cash_balance + 1")
                sqlite3.Connection.set_authorizer(conn, None)
                sqlite3.Connection.execute(conn, "COMMIT")
                CLOSES[close](conn)
    finally:
        conn.close()
    assert contents(data)["trading"]["account"] != before["trading"]["account"]


def test_after_a_close_the_session_never_saw_the_files_are_re_read(data: Settings) -> None:
    """Closed behind the session's back, the connection cannot be asked anything: the proof re-reads
    the files. A commit that lands once the session's lock is gone is then seen, not assumed away."""
    conn = connect_guarded(data, guardrails=False)
    try:
        with pytest.raises(IsolationBreach, match=r"trading\.orders"):
            with rollback_only(conn):
                sqlite3.Connection.close(conn)
                other = sqlite3.connect(data.path("trading"), isolation_level=None)
                try:
                    other.execute("UPDATE orders SET strategy = 'after the close'")
                finally:
                    other.close()
    finally:
        conn.close()


def test_a_close_the_session_sees_is_proven_inside_its_write_lock(data: Settings) -> None:
    """close() inside the session rolls back and hashes before the connection goes, while the session
    still holds BEGIN IMMEDIATE: a bot committing once the lock is free is not taken for a breach (its
    write really lands, after the session)."""
    before = contents(data)
    conn = connect_guarded(data, guardrails=False)
    try:
        with pytest.raises(guard_connection.SessionConnectionClosed, match="nothing was committed"):
            with rollback_only(conn):
                conn.execute("UPDATE trading.orders SET strategy = 'session-write'")
                conn.close()
                other = sqlite3.connect(data.path("trading"), isolation_level=None)
                try:
                    other.execute("UPDATE orders SET strategy = 'after the close' WHERE order_id = (SELECT min(order_id) FROM orders)")
                finally:
                    other.close()
    finally:
        conn.close()
    assert contents(data)["trading"]["orders"] != before["trading"]["orders"]


def test_a_session_that_does_not_prove_still_says_the_connection_was_closed(proven: Settings) -> None:
    conn = connect_guarded(proven, guardrails=False)
    try:
        with pytest.raises(GuardrailViolation, match="closed inside the rollback-only session"):
            with rollback_only(conn, prove=False):
                _scribble(conn)
                conn.close()
    finally:
        conn.close()


# -- a process killed inside a session ----------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from toolkit.config import load_settings
    from toolkit.guard import connect_guarded, rollback_only

    data, marker = Path(sys.argv[1]), Path(sys.argv[2])
    settings = load_settings(data, cwd=data.parent, env={})
    conn = connect_guarded(settings, guardrails=False)
    with rollback_only(conn):
        conn.execute("DELETE FROM trading.trades")
        conn.execute("DELETE FROM trading.lot_matches")
        conn.execute("UPDATE trading.account SET cash_balance = 0")
        conn.execute("DELETE FROM positions.positions")
        conn.execute("UPDATE ml_training.rl_model_states SET q_table = '{}'")
        conn.execute("INSERT INTO trading.performance_metrics (metric_date, created_at) VALUES ('2030-01-01', 0)")
        # big enough to spill pages into the WAL before any commit
        conn.execute("CREATE TEMP TABLE n (i)")
        conn.execute("WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000) INSERT INTO n SELECT i FROM c")
        conn.execute("INSERT INTO trading.fills (fill_id, order_id, ticker, side, quantity, price, filled_at) "
                     "SELECT 'KILL-' || i, 'O-none', 'AAPL', 'buy', 1, 1, 0 FROM n")
        assert conn.execute("SELECT count(*) FROM trading.trades").fetchone()[0] == 0
        marker.write_text("written")
        time.sleep(120)
""")


def test_sigkill_inside_a_session_leaves_the_data_unchanged(proven: Settings, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    marker = tmp_path / "wrote"
    env = {k: v for k, v in os.environ.items() if k not in ("TOOLKIT_DATA_DIR", "DB_PATH_PREFIX")}
    child = subprocess.Popen([sys.executable, str(script), str(proven.data_dir), str(marker)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            if child.poll() is not None:
                pytest.fail(f"the child exited early: {child.communicate()}")
            assert time.monotonic() < deadline, "the child never wrote"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    # the kernel released the child's locks: a writer gets in at once, and the files are sound
    for name in ("trading", "positions", "ml_training"):
        conn = sqlite3.connect(proven.path(name), timeout=1.0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        finally:
            conn.close()
    assert one(proven, "trading", "SELECT count(*) FROM trades")[0] == TRADES
    # `proven` compares every file's content hash with the one taken before the child started


def test_replace_cannot_rewrite_or_delete_ledger_rows_even_when_trusted(bot) -> None:
    """INSERT OR REPLACE deletes the row it collides with without asking the authorizer; the guard's
    DELETE triggers (with recursive triggers on) refuse it, and a ledger key is never updated."""
    before = bot.execute("SELECT price FROM trading.trades WHERE trade_id = 1").fetchone()[0]
    with bot.trusted("test"):
        with pytest.raises(GuardrailViolation, match="trades rows are never deleted"):
            bot.execute("INSERT OR REPLACE INTO trading.trades (trade_id, run_id, ticker, action, quantity, price, commission, "
                        "executed_at, is_close, status) SELECT trade_id, run_id, ticker, action, quantity, price * 10, "
                        "commission, executed_at, is_close, status FROM trading.trades WHERE trade_id = 1")
        with pytest.raises(GuardrailViolation, match="lot_matches rows are never deleted"):
            bot.execute("REPLACE INTO trading.lot_matches SELECT * FROM trading.lot_matches LIMIT 1")
        with pytest.raises(GuardrailViolation, match="key never changes"):
            bot.execute("UPDATE OR REPLACE trading.lot_matches SET entry_trade_id = entry_trade_id + 1")
    assert bot.execute("SELECT price FROM trading.trades WHERE trade_id = 1").fetchone()[0] == before
