"""The trade writer (toolkit.ledger.TradeStore): what it records, what it refuses, recovery after a
restart, its agreement with an independent FIFO, and two writers in two real processes."""
from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fifo_reference import UNIT, audit, cash_formula, connect_ro, fifo, quantities_for, steps
from toolkit.accounting import Close, replay
from toolkit.config import load_settings
from toolkit.db import content_hash
from toolkit.errors import LedgerError, NotInitialisedError, OversellError
from toolkit.ledger import TradeStore
from toolkit.migrate.runner import upgrade
from toolkit.content import load_migrations

T0 = 1_735_828_200
Q = 1e-9


def approx(value: float, tol: float = 1e-9):
    return pytest.approx(value, abs=tol, rel=0)


@pytest.fixture
def store(migrated):
    with TradeStore(migrated) as s:
        yield s


@pytest.fixture
def long_only(migrated):
    """A writer of a long-only ledger (allow-short = false): a SELL beyond the open lots is refused."""
    with TradeStore(migrated.with_(allow_short=False)) as s:
        yield s


def rows(settings, database: str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = connect_ro(settings.path(database))
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def contents(settings) -> dict[str, str]:
    """Logical content hashes of trading.db and positions.db, read through separate connections."""
    result = {}
    for name in ("trading", "positions"):
        conn = connect_ro(settings.path(name))
        try:
            result[name] = content_hash(conn)
        finally:
            conn.close()
    return result


def stored_cash(settings) -> float:
    return rows(settings, "trading", "SELECT cash_balance FROM account")[0][0]


def formula_cash(conn: sqlite3.Connection, schema: str = "main") -> float:
    start = conn.execute(f"SELECT starting_capital FROM {schema}.account").fetchone()[0]
    adjustments = [r[0] for r in conn.execute(f"SELECT amount FROM {schema}.account_adjustments")]
    trades = conn.execute(f"SELECT action, quantity, price, commission FROM {schema}.trades").fetchall()
    return float(cash_formula(start, adjustments, trades))


# -- what a trade records --------------------------------------------------------------------------

def test_record_returns_id_pnl_closed_lots_and_writes_every_derived_row(migrated):
    with TradeStore(migrated) as store:
        assert store.open_account(10_000.0, at=T0) == 10_000.0
        b1 = store.buy("AAPL", 10, 100, run_id="s1", commission=1.0, executed_at=T0)
        # cash 10000 - 10 * 100 - 1 = 8999
        assert (b1.trade_id, b1.ticker, b1.action, b1.realized_pnl, b1.closed_lots, b1.matches) == \
            (1, "AAPL", "BUY", None, (), ())
        assert b1.cash_balance == 8_999.0 and (b1.position.quantity, b1.position.entry_price) == (10.0, 100.0)
        b2 = store.buy("AAPL", 20.0, 110.0, run_id="s1", commission=2.0, executed_at=T0 + 10)
        assert b2.trade_id == 2 and b2.cash_balance == 6_797.0            # 8999 - 2200 - 2
        s3 = store.sell("AAPL", 25.0, 120.0, run_id="s1", commission=1.5, executed_at=T0 + 20, strategy="momentum")
        # 10 of lot 1: (120 - 100) * 10 = 200; 15 of lot 2: (120 - 110) * 15 = 150
        assert s3.trade_id == 3 and s3.action == "SELL"
        assert s3.realized_pnl == 350.0 and s3.closed_lots == (1,)
        assert [(m.entry_trade_id, m.quantity, m.realized_pnl) for m in s3.matches] == [(1, 10.0, 200.0), (2, 15.0, 150.0)]
        assert s3.cash_balance == 9_795.5                                  # 6797 + 3000 - 1.5
        assert (s3.position.quantity, s3.position.entry_price, s3.position.opened_at) == (5.0, 110.0, T0 + 10)

        sell = store.get_trade(3)
        assert (sell.run_id, sell.ticker, sell.action, sell.quantity, sell.price, sell.commission, sell.executed_at,
                sell.is_close, sell.entry_trade_id, sell.realized_pnl, sell.status, sell.exit_price, sell.exit_time,
                sell.strategy) == ("s1", "AAPL", "SELL", 25.0, 120.0, 1.5, T0 + 20, 1, 1, 350.0, "CLOSED", 120.0,
                                   T0 + 20, "momentum")
        lot1, lot2 = store.get_trade(1), store.get_trade(2)
        assert (lot1.is_close, lot1.entry_trade_id, lot1.realized_pnl, lot1.status, lot1.exit_price, lot1.exit_time) == \
            (0, None, None, "CLOSED", 120.0, T0 + 20)
        assert (lot2.status, lot2.exit_price, lot2.exit_time, lot2.realized_pnl) == ("OPEN", None, None, None)
        assert store.get_trade(99) is None

    assert rows(migrated, "trading", "SELECT close_trade_id, entry_trade_id, quantity, entry_price, exit_price, "
                "realized_pnl, matched_at FROM lot_matches ORDER BY entry_trade_id") == [
        (3, 1, 10.0, 100.0, 120.0, 200.0, T0 + 20), (3, 2, 15.0, 110.0, 120.0, 150.0, T0 + 20)]
    # positions.db: 5 left @ 110, marked at the last price 120: unrealized (120 - 110) * 5 = 50
    assert rows(migrated, "positions", "SELECT ticker, side, quantity, entry_price, current_price, unrealized_pnl, "
                "opened_at FROM positions") == [("AAPL", "long", 5.0, 110.0, 120.0, 50.0, T0 + 10)]
    # the closed lot 1: held 20 s = 20 / 3600 h, its own commission
    assert rows(migrated, "positions", "SELECT entry_trade_id, ticker, quantity, entry_price, exit_price, realized_pnl, "
                "opened_at, closed_at, holding_period_hours, commission FROM closed_positions") == [
        (1, "AAPL", 10.0, 100.0, 120.0, 200.0, T0, T0 + 20, 20 / 3600, 1.0)]
    assert stored_cash(migrated) == 9_795.5

    with TradeStore(migrated) as store:
        s4 = store.sell("AAPL", 5.0, 130.0, run_id="s1", executed_at=T0 + 30)
        # 5 of lot 2: (130 - 110) * 5 = 100; lot 2's exit price = (15 * 120 + 5 * 130) / 20 = 122.5
        assert s4.realized_pnl == 100.0 and s4.closed_lots == (2,) and s4.position is None
        lot2 = store.get_trade(2)
        assert (lot2.status, lot2.exit_price, lot2.exit_time, lot2.realized_pnl) == ("CLOSED", 122.5, T0 + 30, None)
        assert s4.cash_balance == 10_445.5                                 # 9795.5 + 650
    assert rows(migrated, "positions", "SELECT count(*) FROM positions") == [(0,)]
    assert rows(migrated, "positions", "SELECT exit_price, realized_pnl, closed_at FROM closed_positions "
                "WHERE entry_trade_id = 2") == [(122.5, 250.0, T0 + 30)]          # 150 + 100


def test_same_second_trades_are_fifo_by_trade_id_and_fractions_leave_no_dust(store, migrated):
    store.open_account(1_000.0, at=T0)
    store.buy("BRK.B", 0.1, 10.0, run_id="r", executed_at=T0)
    store.buy("BRK.B", 0.2, 11.0, run_id="r", executed_at=T0)
    result = store.sell("BRK.B", 0.3, 12.0, run_id="r", executed_at=T0)     # same second, later id
    # (12 - 10) * 0.1 + (12 - 11) * 0.2 = 0.4; both lots closed, nothing left
    assert result.realized_pnl == approx(0.4) and result.closed_lots == (1, 2) and result.position is None
    assert store.open_lots() == [] and store.open_positions() == []
    assert [t.status for t in (store.get_trade(1), store.get_trade(2))] == ["CLOSED", "CLOSED"]
    assert rows(migrated, "positions", "SELECT count(*) FROM positions") == [(0,)]


def test_smallest_quantity_is_matched_and_closed(store):
    store.open_account(1_000.0, at=T0)
    store.buy("AAPL", 1e-9, 10.0, run_id="r", executed_at=T0)
    result = store.sell("AAPL", 1e-9, 12.0, run_id="r", executed_at=T0 + 1)
    # one match of 1e-9: (12 - 10) * 1e-9 = 2e-9
    assert [(m.entry_trade_id, m.quantity) for m in result.matches] == [(1, 1e-9)]
    assert result.closed_lots == (1,) and result.position is None and store.open_lots() == []
    assert result.realized_pnl == pytest.approx(2e-9, rel=1e-9)


def test_reopened_store_recovers_open_lots_positions_and_stats(migrated):
    with TradeStore(migrated) as store:
        store.open_account(50_000.0, at=0)
        store.buy("AAA", 10, 20, run_id="r", commission=1, executed_at=10)         # 1
        store.buy("BBB", 5, 50, run_id="r", commission=1, executed_at=11)          # 2
        store.buy("AAA", 6, 25, run_id="r", commission=1, executed_at=12)          # 3
        store.sell("AAA", 12, 30, run_id="r", commission=1, executed_at=13)        # 4: 10 of 1 (+100), 2 of 3 (+10)
        store.sell("BBB", 5, 40, run_id="r", commission=1, executed_at=14)         # 5: 5 of 2 (-50)
        store.buy("BBB", 2, 45, run_id="r", commission=0.5, executed_at=15)        # 6
        store.sell("AAA", 1, 25, run_id="r", commission=0.5, executed_at=16)       # 7: 1 of 3 (0)

    with TradeStore(migrated) as store:          # a restart: everything from the ledger
        lots = store.open_lots()
        assert [(l.trade_id, l.ticker, l.quantity, l.remaining, l.price, l.executed_at) for l in lots] == [
            (3, "AAA", 6.0, 3.0, 25.0, 12), (6, "BBB", 2.0, 2.0, 45.0, 15)]
        assert [l.trade_id for l in store.open_lots("BBB")] == [6]
        assert store.open_lots("ZZZ") == []
        assert [tuple(p) for p in store.open_positions()] == [("AAA", 3.0, 25.0, 12, 1, "long"), ("BBB", 2.0, 45.0, 15, 1, "long")]
        stats = store.stats()
        # 7 trades, 4 BUYs, 3 SELLs; P&L 110 - 50 + 0 = 60; one win, one loss, one flat -> win rate 1/3
        # commissions 5 * 1 + 2 * 0.5 = 6; cash 50000 - 690 (bought) + 585 (sold) - 6 = 49889
        assert (stats.trades, stats.buys, stats.sells, stats.open_lots, stats.open_tickers) == (7, 4, 3, 2, 2)
        assert stats.realized_pnl == approx(60.0) and (stats.wins, stats.losses) == (1, 1)
        assert stats.win_rate == approx(1 / 3) and stats.commissions == approx(6.0)
        assert stats.cash_balance == approx(49_889.0, 1e-6)
        # FIFO continues where it stopped: 3 of lot 3: (28 - 25) * 3 = 9
        result = store.sell("AAA", 3, 28, run_id="r", executed_at=17)
        assert result.realized_pnl == 9.0 and result.closed_lots == (3,)
        assert [l.trade_id for l in store.open_lots()] == [6]
    assert rows(migrated, "positions", "SELECT ticker, quantity, entry_price FROM positions") == [("BBB", 2.0, 45.0)]


def test_stats_of_an_empty_ledger(store):
    stats = store.stats()
    assert (stats.trades, stats.sells, stats.open_lots, stats.realized_pnl, stats.win_rate, stats.commissions,
            stats.cash_balance) == (0, 0, 0, 0.0, None, 0, None)


# -- refusals: a clear message, and nothing written ------------------------------------------------

REFUSALS = [
    # (name, arguments of record(), message fragment)
    ("backdated BUY", ("AAPL", "BUY", 1.0, 100.0, dict(executed_at=T0 + 9)), "earlier than the ticker's last trade"),
    ("backdated SELL", ("AAPL", "SELL", 1.0, 100.0, dict(executed_at=T0 + 9)), "earlier than the ticker's last trade"),
    # ATTACK1 and aapl are symbols of the default grammar (toolkit.symbols): letters and digits, case significant
    ("attack ticker", ("ATTACK 1", "BUY", 1.0, 100.0, {}), "ticker 'ATTACK 1' is not a plausible symbol: contains whitespace"),
    ("injection ticker", ("AAPL'; DROP TABLE trades;--", "BUY", 1.0, 100.0, {}), "is not a plausible symbol"),
    ("punctuated ticker", ("AAPL!", "BUY", 1.0, 100.0, {}), "ticker 'AAPL!' is not a plausible symbol: does not match "
                                                            "symbol-pattern default"),
    ("long ticker", ("A" * 33, "BUY", 1.0, 100.0, {}), "is not a plausible symbol: longer than 32 characters"),
    ("newline ticker", ("AAPL\n", "BUY", 1.0, 100.0, {}), "ticker 'AAPL\\n' is not a plausible symbol"),
    ("padded ticker", (" AAPL", "BUY", 1.0, 100.0, {}), "is not a plausible symbol"),
    ("non-string ticker", (None, "BUY", 1.0, 100.0, {}), "ticker None is not a plausible symbol"),
    ("empty ticker", ("", "BUY", 1.0, 100.0, {}), "is not a plausible symbol"),
    ("NaN quantity", ("AAPL", "BUY", float("nan"), 100.0, {}), "quantity must be a finite number > 0, got nan"),
    ("infinite quantity", ("AAPL", "BUY", float("inf"), 100.0, {}), "quantity must be a finite number > 0"),
    ("negative quantity", ("AAPL", "BUY", -1.0, 100.0, {}), "quantity must be a finite number > 0, got -1.0"),
    ("zero quantity", ("AAPL", "SELL", 0.0, 100.0, {}), "quantity must be a finite number > 0, got 0.0"),
    ("sub-precision BUY", ("AAPL", "BUY", 1e-10, 100.0, {}), "quantity 1e-10 is 0 at the ledger's 1e-9 quantity precision"),
    ("sub-precision SELL", ("AAPL", "SELL", 4e-10, 100.0, {}), "is 0 at the ledger's 1e-9 quantity precision"),
    ("NaN price", ("AAPL", "BUY", 1.0, float("nan"), {}), "price must be a finite number > 0, got nan"),
    ("negative price", ("AAPL", "SELL", 1.0, -5.0, {}), "price must be a finite number > 0, got -5.0"),
    ("zero price", ("AAPL", "BUY", 1.0, 0, {}), "price must be a finite number > 0"),
    ("negative commission", ("AAPL", "BUY", 1.0, 100.0, dict(commission=-0.01)), "commission must be a finite number >= 0"),
    ("NaN commission", ("AAPL", "BUY", 1.0, 100.0, dict(commission=float("nan"))), "commission must be a finite number >= 0"),
    ("no run id", ("AAPL", "BUY", 1.0, 100.0, dict(run_id=None)), "run_id must name the session"),
    ("empty run id", ("AAPL", "BUY", 1.0, 100.0, dict(run_id="")), "run_id must name the session"),
    ("blank run id", ("AAPL", "SELL", 1.0, 100.0, dict(run_id="   ")), "run_id must name the session"),
    ("bad action", ("AAPL", "HOLD", 1.0, 100.0, {}), "action must be BUY or SELL, got 'HOLD'"),
    ("float time", ("AAPL", "BUY", 1.0, 100.0, dict(executed_at=T0 + 20.5)), "executed_at must be a Unix epoch integer"),
    ("negative time", ("MSFT", "BUY", 1.0, 100.0, dict(executed_at=-1)), "executed_at must be a Unix epoch integer"),
]


@pytest.mark.parametrize("name, call, message", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_trade_writes_nothing(store, migrated, name, call, message):
    store.open_account(100_000.0, at=T0)
    store.buy("AAPL", 10.0, 100.0, run_id="r", executed_at=T0 + 10)
    before = contents(migrated)
    ticker, action, quantity, price, extra = call
    kwargs = {"run_id": "r", "executed_at": T0 + 20, **extra}
    with pytest.raises(LedgerError) as info:
        store.record(ticker, action, quantity, price, **kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert not isinstance(info.value, OversellError)
    assert contents(migrated) == before
    assert not store.connection.in_transaction
    # the store is still usable afterwards
    assert store.buy("AAPL", 1.0, 101.0, run_id="r", executed_at=T0 + 30).trade_id == 2


def test_record_without_run_id_is_a_type_error_and_writes_nothing(store, migrated):
    store.open_account(1_000.0, at=T0)
    before = contents(migrated)
    with pytest.raises(TypeError, match="run_id"):
        store.record("AAPL", "BUY", 1.0, 10.0, executed_at=T0)  # type: ignore[call-arg]
    assert contents(migrated) == before


def test_oversell_is_refused_with_the_shortfall_and_writes_nothing(long_only, migrated):
    store = long_only
    store.open_account(100_000.0, at=T0)
    store.buy("AAPL", 10.0, 100.0, run_id="r", executed_at=T0)
    store.buy("AAPL", 0.5, 101.0, run_id="r", executed_at=T0 + 1)
    before = contents(migrated)
    with pytest.raises(OversellError) as info:
        store.sell("AAPL", 10.75, 120.0, run_id="r", executed_at=T0 + 2)       # 10.5 held
    error = info.value
    assert (error.ticker, error.requested, error.held) == ("AAPL", 10.75, 10.5)
    assert error.shortfall == approx(0.25)
    assert "SELL of 10.75 AAPL refused: only 10.5 held in open lots (shortfall 0.25)" in str(error)
    assert contents(migrated) == before
    # exactly the open quantity is fine and goes flat
    assert store.sell("AAPL", 10.5, 120.0, run_id="r", executed_at=T0 + 2).position is None


def test_sell_before_any_buy_is_an_oversell(long_only, migrated):
    store = long_only
    store.open_account(100_000.0, at=T0)
    store.buy("AAPL", 1.0, 100.0, run_id="r", executed_at=T0)
    before = contents(migrated)
    with pytest.raises(OversellError, match=r"SELL of 1 MSFT refused: only 0 held"):
        store.sell("MSFT", 1.0, 50.0, run_id="r", executed_at=T0 + 5)
    assert contents(migrated) == before


def test_trade_before_the_account_exists_is_refused(store, migrated):
    before = contents(migrated)
    with pytest.raises(LedgerError, match="the ledger has no account yet; call open_account"):
        store.buy("AAPL", 1.0, 10.0, run_id="r", executed_at=T0)
    assert contents(migrated) == before
    assert rows(migrated, "trading", "SELECT count(*) FROM trades") == [(0,)]
    with pytest.raises(LedgerError, match="no account"):
        store.adjust_cash(100.0, "deposit", at=T0)
    assert contents(migrated) == before


def test_account_and_adjustments(store, migrated):
    assert store.open_account(1_000.0, at=T0) == 1_000.0
    assert store.open_account(1_000.0, at=T0 + 5) == 1_000.0        # idempotent for the same capital
    before = contents(migrated)
    with pytest.raises(LedgerError, match="already exists with starting capital 1000, not 2000"):
        store.open_account(2_000.0)
    for bad in (float("nan"), -1.0, float("inf")):
        with pytest.raises(LedgerError, match="starting capital must be a finite number >= 0"):
            store.open_account(bad)
    for amount, reason, message in ((0.0, "x", "finite, non-zero"), (float("nan"), "x", "finite, non-zero"),
                                    (10.0, "  ", "needs a reason"), (10.0, None, "needs a reason")):
        with pytest.raises(LedgerError, match=message):
            store.adjust_cash(amount, reason, at=T0)
    assert contents(migrated) == before
    assert store.adjust_cash(250.0, "deposit: top-up", at=T0 + 1) == 1_250.0
    assert store.adjust_cash(-50.0, "withdrawal", at=T0 + 2) == 1_200.0
    store.buy("AAPL", 2.0, 100.0, run_id="r", commission=0.5, executed_at=T0 + 3)
    # 1000 + 250 - 50 - 200 - 0.5 = 999.5
    assert stored_cash(migrated) == 999.5
    assert rows(migrated, "trading", "SELECT amount, reason FROM account_adjustments ORDER BY adjustment_id") == [
        (250.0, "deposit: top-up"), (-50.0, "withdrawal")]


def test_store_refuses_an_uninitialised_data_dir(settings, tmp_path):
    with pytest.raises(NotInitialisedError, match="run `migrate upgrade` first"):
        TradeStore(settings)
    assert not settings.data_dir.exists() or not any(settings.data_dir.iterdir())


# -- the writer against the independent FIFO -------------------------------------------------------

adjustment_plans = st.lists(st.tuples(st.integers(0, 44), st.integers(-20_000, 20_000).filter(bool)), max_size=3)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps, adjustment_plans, st.integers(0, 3))
def test_writer_equals_independent_fifo(raw, adjustments, commission_seed):
    planned = quantities_for(raw, oversell="reject")
    adjust_at = defaultdict(list)
    for position, amount in adjustments:
        adjust_at[position].append(amount)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_settings(tmp, cwd=tmp, env={}, busy_timeout=2.0, allow_short=False)
        upgrade(cfg, migrations=load_migrations(cfg))
        facts = []                    # (ticker, provisional id, action, quantity, price, executed_at)
        results = {}                  # provisional id -> TradeResult
        refused = set()
        with TradeStore(cfg) as store:
            conn = store.connection
            store.open_account(1_000_000.0, at=T0)
            t = T0
            for k, (ticker, action, units, cents, dt) in enumerate(planned, 1):
                t += dt
                for amount in adjust_at.get(k - 1, ()):
                    store.adjust_cash(float(amount), "correction: test", at=t)
                quantity, price = units / UNIT, cents / 100
                commission = ((k * 37 + commission_seed) % 400) / 100
                facts.append((ticker, k, action, quantity, price, t))
                before = (content_hash(conn, "trading"), content_hash(conn, "positions"))
                try:
                    results[k] = store.record(ticker, action, quantity, price, run_id="prop",
                                              commission=commission, executed_at=t)
                except OversellError:
                    refused.add(k)
                    assert (content_hash(conn, "trading"), content_hash(conn, "positions")) == before
                # the cash formula holds after every write
                cash = conn.execute("SELECT cash_balance FROM trading.account").fetchone()[0]
                assert cash == approx(formula_cash(conn, "trading"), 1e-6)

            ref = fifo(facts, oversell="reject")
            assert refused == ref.rejected
            ids = {k: r.trade_id for k, r in results.items()}
            assert sorted(ids.values()) == list(range(1, len(ids) + 1))      # no gaps: refused = not recorded
            back = {v: k for k, v in ids.items()}

            stored = defaultdict(list)
            for close_id, entry_id, q, entry_price, exit_price, pnl, at in conn.execute(
                    "SELECT close_trade_id, entry_trade_id, quantity, entry_price, exit_price, realized_pnl, matched_at "
                    "FROM trading.lot_matches ORDER BY close_trade_id, entry_trade_id"):
                stored[back[close_id]].append((back[entry_id], q, entry_price, exit_price, pnl, at))
            trades = {back[r[0]]: r[1:] for r in conn.execute(
                "SELECT trade_id, action, entry_trade_id, realized_pnl, status, exit_price, exit_time FROM trading.trades")}
            for k, result in results.items():
                action, entry, pnl, status, exit_price, exit_time = trades[k]
                if action == "SELL":
                    want = ref.sells[k]
                    expected = [(m.entry_trade_id, float(m.quantity), float(m.entry_price), float(m.exit_price),
                                 float(m.realized_pnl), m.matched_at) for m in want.matches]
                    got = stored[k]           # FIFO order: entry ids ascend with time in the writer
                    assert [g[0] for g in got] == [e[0] for e in expected]
                    for g, e in zip(got, expected):
                        assert g[1] == approx(e[1], Q) and g[2:4] == e[2:4] and g[4] == approx(e[4]) and g[5] == e[5]
                    assert [back[m.entry_trade_id] for m in result.matches] == [e[0] for e in expected]
                    assert result.realized_pnl == approx(float(want.realized_pnl))
                    assert pnl == approx(float(want.realized_pnl))
                    assert pnl == approx(math.fsum(g[4] for g in got))                # Σ close = Σ matches
                    assert back.get(entry) == want.entry_trade_id and entry == ids[want.entry_trade_id]
                    assert (status, exit_price, exit_time) == ("CLOSED", facts[k - 1][4], facts[k - 1][5])
                    assert [back[i] for i in result.closed_lots] == [
                        m.entry_trade_id for m in want.matches if ref.lots[m.entry_trade_id].status == "CLOSED"
                        and ref.lots[m.entry_trade_id].matches[-1].close_trade_id == k]
                else:
                    lot = ref.lots[k]
                    assert pnl is None and entry is None and result.realized_pnl is None   # opening legs: no P&L
                    assert status == lot.status and exit_time == lot.exit_time
                    if lot.exit_price is None:
                        assert exit_price is None
                    else:
                        assert math.isclose(exit_price, float(lot.exit_price), rel_tol=1e-12, abs_tol=1e-9)

            # open lots after a restart (a fresh store) equal the reference's remaining quantities
        with TradeStore(cfg) as reopened:
            open_lots = reopened.open_lots()
            assert [(back[l.trade_id], l.ticker) for l in open_lots] == [
                (lot.trade_id, lot.ticker) for ticker in sorted(ref.positions) for lot in ref.open_lots(ticker)]
            for lot in open_lots:
                assert lot.remaining == approx(float(ref.lots[back[lot.trade_id]].remaining), Q)
            positions = {p.ticker: p for p in reopened.open_positions()}
            assert set(positions) == set(ref.positions)
            stats = reopened.stats()
            assert stats.realized_pnl == approx(float(sum(s.realized_pnl for s in ref.sells.values())), 1e-6)
            assert stats.sells == sum(1 for s in ref.sells.values() if not s.rejected)
            assert stats.open_lots == len(ref.open_lots())

            # a streaming replay over the stored trades agrees with the stored rows
            conn = reopened.connection
            cursor = conn.execute("SELECT ticker, trade_id, action, quantity, price, executed_at FROM trading.trades "
                                  "ORDER BY ticker, executed_at, trade_id")
            replayed = {trade[1]: outcome for _, _, trade, outcome in replay(cursor)}
            by_close = defaultdict(list)
            for close_id, entry_id, q in conn.execute(
                    "SELECT close_trade_id, entry_trade_id, quantity FROM trading.lot_matches"):
                by_close[close_id].append((entry_id, round(q, 9)))
            for trade_id, outcome in replayed.items():
                if isinstance(outcome, Close):
                    assert sorted(by_close[trade_id]) == sorted((m.entry_trade_id, round(m.quantity, 9))
                                                                for m in outcome.matches)
                    assert outcome.shortfall == 0.0                         # no oversell was recorded
                else:
                    status, exit_price = conn.execute("SELECT status, exit_price FROM trading.trades WHERE trade_id = ?",
                                                      (trade_id,)).fetchone()
                    assert status == outcome.status and (exit_price is None) == (outcome.exit_price is None)

        # positions.db holds one row per ticker == the open lots; quantity conserved per ticker
        stored_positions = {r[0]: r[1:] for r in rows(cfg, "positions",
                                                      "SELECT ticker, quantity, entry_price, opened_at FROM positions")}
        assert set(stored_positions) == set(ref.positions)
        for ticker, want in ref.positions.items():
            quantity, entry_price, opened_at = stored_positions[ticker]
            assert quantity == approx(float(want.quantity), Q)
            assert math.isclose(entry_price, float(want.entry_price), rel_tol=1e-9)
            assert opened_at == want.opened_at
            assert positions[ticker].quantity == approx(float(want.quantity), Q)
        for ticker in {f[0] for f in facts}:
            bought = math.fsum(f[3] for f in facts if f[0] == ticker and f[2] == "BUY")
            matched = math.fsum(r[0] for r in rows(cfg, "trading", "SELECT m.quantity FROM lot_matches m JOIN trades t "
                                                   "ON t.trade_id = m.close_trade_id WHERE t.ticker = ?", (ticker,)))
            still_open = math.fsum(l.remaining for l in open_lots if l.ticker == ticker)
            assert bought == approx(matched + still_open, Q)
        assert audit(tmp, tolerance=1e-6) == {}


# -- two writers in two processes ------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, random, sys, time
    from pathlib import Path
    from toolkit.config import load_settings
    from toolkit.errors import LedgerError, OversellError
    from toolkit.ledger import TradeStore

    data_dir, worker, count, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    rng = random.Random(worker)
    settings = load_settings(data_dir, cwd=data_dir, env={}, busy_timeout=60.0, allow_short=False)
    report = {"recorded": 0, "oversold": 0, "backdated": 0, "ids": []}
    with TradeStore(settings) as store:
        go.with_name(f"ready-{worker}").touch()
        deadline = time.time() + 60
        while not go.exists() and time.time() < deadline:
            time.sleep(0.001)
        for i in range(count):
            ticker = rng.choice(["AAA", "BBB", "CCC"])
            held = sum(lot.remaining for lot in store.open_lots(ticker))   # may be stale by the time we sell
            time.sleep(rng.random() * 0.002)                             # let the other writer in
            try:
                if held > 0 and rng.random() < 0.5:
                    quantity = held if rng.random() < 0.4 else round(held * rng.choice([0.5, 0.3, 0.9]), 4) or held
                    result = store.sell(ticker, quantity, round(rng.uniform(9, 11), 2), run_id=f"worker-{worker}",
                                        commission=0.25, executed_at=int(time.time()))
                else:
                    quantity = rng.choice([0.1, 0.2, 0.3, 1.0, 2.5, round(rng.uniform(0.01, 20), 4)])
                    result = store.buy(ticker, quantity, round(rng.uniform(9, 11), 2), run_id=f"worker-{worker}",
                                       commission=0.1, executed_at=int(time.time()))
                report["recorded"] += 1
                report["ids"].append(result.trade_id)
            except OversellError:
                report["oversold"] += 1
            except LedgerError as exc:
                if "earlier than" not in str(exc):
                    raise
                report["backdated"] += 1
    print(json.dumps(report))
""")


@pytest.mark.slow
def test_two_writer_processes_keep_the_ledger_fifo_correct(migrated, tmp_path):
    with TradeStore(migrated) as store:
        store.open_account(1_000_000.0, at=int(time.time()) - 10)
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    go = tmp_path / "go"
    count = 150
    procs = [subprocess.Popen([sys.executable, str(script), str(migrated.data_dir), str(w), str(count), str(go)],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in (1, 2)]
    deadline = time.time() + 60
    while not all((tmp_path / f"ready-{w}").exists() for w in (1, 2)) and time.time() < deadline:
        time.sleep(0.005)    # both workers up, stores open, waiting for the go
    go.touch()
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["recorded"] + r["oversold"] + r["backdated"] == count for r in reports)
    assert all(r["recorded"] > 0 for r in reports)
    all_ids = sorted(i for r in reports for i in r["ids"])
    assert all_ids == list(range(1, len(all_ids) + 1))       # every recorded trade has its own id

    stored = rows(migrated, "trading", "SELECT trade_id, run_id FROM trades ORDER BY trade_id")
    assert [r[0] for r in stored] == all_ids
    for report, worker in zip(reports, ("worker-1", "worker-2")):
        assert sorted(report["ids"]) == [r[0] for r in stored if r[1] == worker]
    # the writers really interleaved (each pauses up to 2 ms between trades)
    runs = [r[1] for r in stored]
    assert sum(1 for a, b in zip(runs, runs[1:]) if a != b) >= 10

    # every SELL's matches are FIFO-correct per the independent FIFO; no oversell recorded; cash
    # formula holds; positions == open lots (the audit checks all of it, at tight tolerance)
    conn = connect_ro(migrated.path("trading"))
    try:
        ref = fifo(conn.execute("SELECT ticker, trade_id, action, quantity, price, executed_at FROM trades").fetchall())
        assert all(s.shortfall == 0 for s in ref.sells.values())
        assert stored_cash(migrated) == approx(formula_cash(conn), 1e-6)
    finally:
        conn.close()
    assert audit(migrated.data_dir, tolerance=1e-6) == {}
