"""Money and time are finite and bounded everywhere the toolkit writes them (toolkit.domain:
MAX_AMOUNT, MAX_EPOCH).

The writer refuses a value beyond the bounds — or one whose notional or resulting cash balance
would be — with a one-line LedgerError naming the value and the bound, and writes nothing. Rows
written past the writer (raw SQL) with such values are reported by the rule they break, never an
error of a rule: the sums of the bankroll, the ledger scan and the accounting core do not raise.
"""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from dbstate import content_hashes
from toolkit.config import load_settings
from toolkit.domain import MAX_AMOUNT, MAX_EPOCH
from toolkit.errors import LedgerError
from toolkit.fixtures import generate
from toolkit.ledger import TradeStore

T0 = 1_700_000_000
NAN, INF = math.nan, math.inf
BOUND = f"{MAX_AMOUNT:g}"           # "1e+12": every refusal names the bound
JUST_BEYOND = math.nextafter(MAX_AMOUNT, INF)


@pytest.fixture
def store(migrated):
    with TradeStore(migrated) as store:
        store.open_account(100_000.0, at=T0)
        store.buy("AAPL", 10.0, 100.0, run_id="r", executed_at=T0 + 10)
        yield store


def _buy(ticker="AAPL", quantity=1.0, price=100.0, commission=0.0, executed_at=T0 + 20):
    return lambda store: store.buy(ticker, quantity, price, run_id="r", commission=commission, executed_at=executed_at)


def _sell(quantity=1.0, price=100.0):
    return lambda store: store.sell("AAPL", quantity, price, run_id="r", executed_at=T0 + 20)


BAD_CALLS = [
    # (name, call, what the message must name besides the bound)
    ("quantity 1e300 x price 1e300", _buy(quantity=1e300, price=1e300), "1e+300"),
    ("price 1e16", _buy(price=1e16), "1e+16"),
    ("price just beyond the bound", _buy(price=JUST_BEYOND), repr(JUST_BEYOND)),
    ("quantity 1e13", _buy(quantity=1e13, price=0.01), "10000000000000.0"),
    ("notional beyond the bound", _buy(quantity=2e6, price=1e6), "2000000000000.0"),
    ("an integer quantity too large for a float", _buy(quantity=10**400), "1" + "0" * 400),
    ("commission inf", _buy(commission=INF), "inf"),
    ("commission 1e13", _buy(commission=1e13), "10000000000000.0"),
    ("SELL at a price beyond the bound", _sell(price=1e300), "1e+300"),
    ("BUY making cash beyond the bound", _buy(price=MAX_AMOUNT, commission=1e6), "-1000000901000.0"),
    ("adjust_cash(-1e308)", lambda s: s.adjust_cash(-1e308, "withdrawal"), "-1e+308"),
    ("adjustment overflowing cash", lambda s: s.adjust_cash(MAX_AMOUNT, "deposit"), "1000000099000.0"),
    ("adjustment of inf", lambda s: s.adjust_cash(INF, "deposit"), "inf"),
    ("open_account(1e300)", lambda s: s.open_account(1e300), "1e+300"),
    ("open_account(inf)", lambda s: s.open_account(INF), "inf"),
    ("executed_at 2**70", _buy(executed_at=2**70), str(2**70)),
    ("executed_at -1", _buy(ticker="MSFT", executed_at=-1), "-1"),
    ("executed_at a float", _buy(executed_at=T0 + 20.5), "1700000020.5"),
    ("executed_at a bool", _buy(ticker="MSFT", executed_at=True), "True"),
    ("executed_at beyond the year 9999", _buy(executed_at=MAX_EPOCH + 1), str(MAX_EPOCH + 1)),
    ("adjustment at 2**70", lambda s: s.adjust_cash(5.0, "deposit", at=2**70), str(2**70)),
    ("adjustment at NaN", lambda s: s.adjust_cash(5.0, "deposit", at=NAN), "nan"),
    ("NaN quantity", _buy(quantity=NAN), "nan"),
    ("NaN price", _buy(price=NAN), "nan"),
    ("NaN commission", _buy(commission=NAN), "nan"),
    ("NaN time", _buy(executed_at=NAN), "nan"),
    ("NaN adjustment", lambda s: s.adjust_cash(NAN, "deposit"), "nan"),
    ("NaN starting capital", lambda s: s.open_account(NAN), "nan"),
]


@pytest.mark.parametrize("name, call, value", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_the_writer_refuses_a_value_beyond_the_bounds_and_writes_nothing(store, migrated, name, call, value):
    before = content_hashes(migrated, ("trading", "positions"))
    with pytest.raises(LedgerError) as info:
        call(store)
    message = str(info.value)
    assert "\n" not in message
    assert value in message, message
    assert BOUND in message or str(MAX_EPOCH) in message, message   # the bound, and where it is defined
    assert content_hashes(migrated, ("trading", "positions")) == before
    assert not store.connection.in_transaction
    assert store.buy("AAPL", 1.0, 101.0, run_id="r", executed_at=T0 + 30).cash_balance == 100_000.0 - 1_000.0 - 101.0


def test_the_writer_does_not_build_on_a_stored_trade_beyond_the_bounds(store, migrated):
    """A raw row the accounting cannot replay (quantity and price 1e300: their product is inf) stops the
    writer on that ticker — it would project an infinite entry price — and only on that ticker."""
    conn = sqlite3.connect(migrated.path("trading"), isolation_level=None)
    try:
        conn.execute(_TRADE, (77, "AAPL", 1e300, 1e300, 0.0, T0 + 15))
    finally:
        conn.close()
    before = content_hashes(migrated, ("trading", "positions"))
    with pytest.raises(LedgerError) as info:
        store.buy("AAPL", 1.0, 100.0, run_id="r", executed_at=T0 + 20)
    message = str(info.value)
    assert "trade 77 of AAPL (quantity 1e+300, price 1e+300" in message and "\n" not in message, message
    assert "integrity check" in message
    assert content_hashes(migrated, ("trading", "positions")) == before
    assert store.buy("MSFT", 1.0, 100.0, run_id="r", executed_at=T0 + 20).position.entry_price == 100.0


def test_values_at_the_bounds_are_accepted_and_the_check_agrees(migrated, cli):
    """Golden: the largest amounts and the last time the ledger holds are written, and the gate passes."""
    with TradeStore(migrated) as store:
        assert store.open_account(MAX_AMOUNT, at=T0) == MAX_AMOUNT
        assert store.buy("BRK.A", 1.0, MAX_AMOUNT, run_id="r", executed_at=T0).cash_balance == 0.0
        assert store.adjust_cash(-MAX_AMOUNT, "withdrawal: to the bound", at=T0 + 1) == -MAX_AMOUNT
        assert store.adjust_cash(MAX_AMOUNT, "deposit", at=T0 + 2) == 0.0
        result = store.sell("BRK.A", 1.0, MAX_AMOUNT, run_id="r", executed_at=T0 + 3)
        assert (result.cash_balance, result.realized_pnl) == (MAX_AMOUNT, 0.0)
        assert store.adjust_cash(-MAX_AMOUNT, "withdrawal", at=T0 + 4) == 0.0
        store.buy("PENNY", MAX_AMOUNT, 0.5, run_id="r", executed_at=0, commission=0.0)
        store.adjust_cash(MAX_AMOUNT / 2, "deposit", at=T0 + 5)
        assert store.buy("PENNY", 1.0, 1.0, run_id="r", executed_at=MAX_EPOCH, commission=0.0).position.quantity == MAX_AMOUNT + 1
        assert store.sell("PENNY", MAX_AMOUNT, 1.0, run_id="r", executed_at=MAX_EPOCH,
                          commission=0.0).realized_pnl == MAX_AMOUNT / 2
        assert store.stats().cash_balance == MAX_AMOUNT - 1.0
    check = cli("integrity", "--data-dir", str(migrated.data_dir), "check", "--format", "json")
    assert check.returncode == 0, check.stdout + check.stderr


# -- rows written past the writer -----------------------------------------------------------------

@pytest.fixture
def data(tmp_path: Path) -> Path:
    settings = load_settings(tmp_path / "data", env={})
    generate(settings, trades=300, tickers=4, seed=21)
    return settings.data_dir


def _raw(data: Path, *statements: tuple[str, tuple]) -> None:
    conn = sqlite3.connect(data / "trading.db", isolation_level=None)
    try:
        for sql, params in statements:
            conn.execute(sql, params)
    finally:
        conn.close()


def _check(cli, data: Path) -> dict[str, dict]:
    """The gate's JSON report, by rule: it fails (exit 1), no rule errs, nothing crashes."""
    check = cli("integrity", "--data-dir", str(data), "check", "--format", "json", "--sample", "50")
    assert "Traceback" not in check.stderr, check.stderr
    assert check.returncode == 1, check.stdout + check.stderr
    rules = {r["id"]: r for r in json.loads(check.stdout)["rules"]}
    assert {i: r["error"] for i, r in rules.items() if r["status"] == "error"} == {}
    assert {i for i, r in rules.items() if r["status"] == "skipped"} == set()
    return rules


def _messages(rule: dict) -> dict[str, str]:
    return {json.dumps(v["key"], sort_keys=True): v["message"] for v in rule["samples"]}


_TRADE = ("INSERT INTO trades (trade_id, run_id, ticker, action, quantity, price, commission, executed_at, is_close, status) "
          "VALUES (?, 'raw', ?, 'BUY', ?, ?, ?, ?, 0, 'OPEN')")


def test_raw_trades_beyond_the_bounds_are_reported_by_the_row_rule_and_the_bankroll(cli, data: Path) -> None:
    """Two notionals of 1e308 (their sum overflows the float range), an infinite price, a quantity
    1e300 (not above the old 1e300 threshold), a commission 1e13 and a time past the year 9999."""
    t = 1_800_000_000
    _raw(data, *[(_TRADE, row) for row in (
        (900001, "ZZA", 1e300, 1e8, 0.0, t),
        (900002, "ZZB", 1e300, 1e8, 0.0, t),
        (900003, "ZZC", 1.0, INF, 0.0, t),
        (900004, "ZZD", 1e13, 1.0, 0.0, t),
        (900005, "ZZE", 1.0, 10.0, 1e13, t),
        (900006, "ZZF", 1.0, 10.0, 0.0, 2**62),
    )])
    rules = _check(cli, data)
    invalid = _messages(rules["trade_row_invalid"])
    assert set(invalid) == {json.dumps({"trade_id": n}) for n in range(900001, 900007)}, invalid
    assert "quantity 1.0e+300 is beyond the ledger's bound of ±1e+12" in invalid['{"trade_id": 900001}']
    assert "price Inf is not a finite amount" in invalid['{"trade_id": 900003}']
    assert "quantity 10000000000000.0 is beyond" in invalid['{"trade_id": 900004}']
    assert "commission 10000000000000.0 is beyond" in invalid['{"trade_id": 900005}']
    assert f"executed_at {2**62} is not an epoch second in 0..{MAX_EPOCH}" in invalid['{"trade_id": 900006}']
    bankroll = _messages(rules["bankroll_mismatch"])
    assert "not a finite amount" in bankroll['{"account_id": 1}'], bankroll
    # the ledger scan leaves the rows whose quantity or price is beyond the bound out of the FIFO; a
    # commission or a time beyond it does not stop a lot from opening (positions.db lacks those two)
    assert set(_messages(rules["position_ledger_mismatch"])) == {'{"side": "long", "ticker": "ZZE"}', '{"side": "long", "ticker": "ZZF"}'}
    for rule in ("lot_status_inconsistent", "unlinked_closes", "orphaned_sells", "realized_pnl_mismatch"):
        assert rules[rule]["status"] == "passed", rules[rule]


def test_a_raw_sell_beyond_the_bounds_is_left_out_of_the_fifo(cli, data: Path) -> None:
    conn = sqlite3.connect(data / "trading.db")
    ticker, last = conn.execute("SELECT ticker, max(executed_at) FROM trades WHERE status = 'OPEN' AND action = 'BUY' "
                                "GROUP BY ticker ORDER BY ticker LIMIT 1").fetchone()
    conn.close()
    _raw(data, ("INSERT INTO trades (trade_id, run_id, ticker, action, quantity, price, commission, executed_at, "
                "is_close, status) VALUES (900010, 'raw', ?, 'SELL', 1e300, 1e300, 0, ?, 1, 'CLOSED')", (ticker, last + 1)))
    rules = _check(cli, data)
    assert "quantity 1.0e+300 is beyond" in _messages(rules["trade_row_invalid"])['{"trade_id": 900010}']
    assert "not a finite amount" in _messages(rules["bankroll_mismatch"])['{"account_id": 1}']
    assert rules["orphaned_sells"]["status"] == rules["unlinked_closes"]["status"] == "passed"


@pytest.mark.parametrize("amounts", [(-1e308, -1e308), (1e300,), (INF,), (1e13, -1e13)],
                         ids=["sum overflows", "1e300", "inf", "beyond but cancelling"])
def test_raw_adjustments_beyond_the_bounds_are_reported_by_the_bankroll(cli, data: Path, amounts) -> None:
    _raw(data, *[("INSERT INTO account_adjustments (adjustment_id, amount, reason, created_at) "
                  "VALUES (?, ?, 'raw', 1800000000)", (900100 + n, amount)) for n, amount in enumerate(amounts)])
    rules = _check(cli, data)
    message = _messages(rules["bankroll_mismatch"])['{"account_id": 1}']
    assert "adjustment 900100 of" in message and ("not a finite amount" in message or "beyond" in message), message


@pytest.mark.parametrize("column, value, reason", [
    ("cash_balance", 1e300, "cash_balance 1e+300 is beyond the ledger's bound"),
    ("cash_balance", INF, "cash_balance inf is not a finite amount"),
    ("starting_capital", 1e300, "starting_capital 1e+300 is beyond the ledger's bound"),
    ("starting_capital", INF, "starting_capital inf is not a finite amount"),
])
def test_a_raw_account_beyond_the_bounds_is_reported_by_the_bankroll(cli, data: Path, column, value, reason) -> None:
    # the stored cash follows a raw starting capital, so only the bound can tell
    also = ", cash_balance = cash_balance - starting_capital + ?1" if column == "starting_capital" else ""
    _raw(data, (f"UPDATE account SET {column} = ?1{also}", (value,)))
    rules = _check(cli, data)
    message = _messages(rules["bankroll_mismatch"])['{"account_id": 1}']
    assert reason in message, message
    repair = cli("integrity", "--data-dir", str(data), "repair", "--apply", "--yes")
    assert "Traceback" not in repair.stderr, repair.stderr
    conn = sqlite3.connect(data / "trading.db")
    cash = conn.execute("SELECT cash_balance FROM account").fetchone()[0]
    conn.close()
    assert cash == value if column == "starting_capital" else abs(cash) <= MAX_AMOUNT   # fixed only when computable


@pytest.mark.parametrize("capital", [1e300, INF, NAN, 0.0, -5.0, MAX_AMOUNT, True])
def test_the_session_generator_refuses_a_capital_beyond_the_bounds_and_creates_nothing(tmp_path: Path, capital) -> None:
    from toolkit.errors import UsageError

    settings = load_settings(tmp_path / "data", env={})
    with pytest.raises(UsageError) as info:
        generate(settings, trades=50, tickers=2, starting_capital=capital)
    assert repr(capital) in str(info.value) and "\n" not in str(info.value)
    assert not settings.data_dir.exists()


def test_the_session_generator_refuses_a_session_running_past_the_last_time(tmp_path: Path) -> None:
    from toolkit.errors import UsageError

    settings = load_settings(tmp_path / "data", env={})
    with pytest.raises(UsageError, match=f"past the ledger's last time \\({MAX_EPOCH}"):
        generate(settings, trades=10**10, tickers=2)
    assert not settings.data_dir.exists()


def test_snapshots_and_orders_whose_amounts_overflow_are_reported_as_such(cli, data: Path) -> None:
    conn = sqlite3.connect(data / "trading.db", isolation_level=None)
    try:
        snapshot = conn.execute("SELECT min(snapshot_id) FROM portfolio_snapshots").fetchone()[0]
        fill, order = conn.execute("SELECT fill_id, order_id FROM fills ORDER BY fill_id LIMIT 1").fetchone()
    finally:
        conn.close()
    _raw(data, ("UPDATE portfolio_snapshots SET cash_balance = 1e308, long_market_value = 1e308, short_market_value = 0, "
                "total_equity = 1e300 WHERE snapshot_id = ?", (snapshot,)),
         ("UPDATE fills SET price = 1e300, quantity = 1e300 WHERE fill_id = ?", (fill,)))
    check = cli("integrity", "--data-dir", str(data), "check", "--format", "json", "--fail-on", "medium")
    assert "Traceback" not in check.stderr and check.returncode == 1, check.stdout + check.stderr
    rules = {r["id"]: r for r in json.loads(check.stdout)["rules"]}
    assert [r for r in rules.values() if r["status"] == "error"] == []
    snapshots = _messages(rules["snapshot_equity_mismatch"])
    assert "cash + long - short is not a finite amount" in snapshots[json.dumps({"snapshot_id": snapshot})], snapshots
    orders = _messages(rules["order_fill_mismatch"])
    assert "fills VWAP Inf (not a finite amount)" in orders[json.dumps({"order_id": order})], orders
