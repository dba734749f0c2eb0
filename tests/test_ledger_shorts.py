"""The trade writer with short lots and flips (SPEC §3 as issue 12 revised it), position management
and costs: real SQLite files, the independent FIFO of tests/fifo_reference.py as the judge."""
from __future__ import annotations

import json
import math
import tempfile
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolkit.config import load_settings
from toolkit.content import load_migrations
from toolkit.errors import GuardrailViolation, LedgerError, OversellError
from toolkit.guard.connection import connect_guarded
from toolkit.ledger import TradeStore
from toolkit.migrate.runner import upgrade

from dbstate import content_hashes, query
from fifo_reference import fifo

T0 = 1_767_225_600


def approx(value: float, tol: float = 1e-9):
    return pytest.approx(value, abs=tol)


rows = query


@pytest.fixture
def store(migrated):
    with TradeStore(migrated) as s:
        s.open_account(100_000.0, at=T0)
        yield s


def test_a_short_sale_opens_a_short_lot_and_receives_its_notional(store, migrated):
    result = store.sell("BTCUSDT", 0.5, 40_000.0, run_id="r", commission=2.0, executed_at=T0 + 1)
    assert result.realized_pnl is None and result.matches == () and result.trade_ids == (1,)
    assert result.position == ("BTCUSDT", 0.5, 40_000.0, T0 + 1, 1, "short")
    assert result.cash_balance == 100_000.0 + 20_000.0 - 2.0
    assert rows(migrated, "trading", "SELECT action, is_close, entry_trade_id, realized_pnl, status FROM trades") == [
        ("SELL", 0, None, None, "OPEN")]
    assert rows(migrated, "positions", "SELECT ticker, side, quantity, entry_price, current_price, unrealized_pnl "
                                       "FROM positions") == [("BTCUSDT", "short", 0.5, 40_000.0, 40_000.0, 0.0)]
    lot, = store.open_lots()
    assert (lot.trade_id, lot.side, lot.remaining) == (1, "short", 0.5)


def test_a_buy_covers_short_lots_fifo_with_the_short_pnl_sign(store, migrated):
    store.sell("ETH-USD", 2.0, 3_000.0, run_id="r", commission=1.0, executed_at=T0 + 1)      # 1: short 2 @ 3000
    store.sell("ETH-USD", 1.0, 3_100.0, run_id="r", commission=1.0, executed_at=T0 + 2)      # 2: short 1 @ 3100
    result = store.buy("ETH-USD", 2.5, 2_900.0, run_id="r", commission=1.0, executed_at=T0 + 3,
                       close_reason="TP")                                                   # 3: covers 2 of 1, 0.5 of 2
    # (3000 - 2900) * 2 + (3100 - 2900) * 0.5 = 300
    assert result.realized_pnl == approx(300.0) and result.closed_lots == (1,)
    assert [(m.entry_trade_id, m.quantity, m.realized_pnl) for m in result.matches] == [(1, 2.0, 200.0), (2, 0.5, 100.0)]
    assert result.position == ("ETH-USD", 0.5, 3_100.0, T0 + 2, 1, "short")
    assert rows(migrated, "trading", "SELECT trade_id, action, is_close, entry_trade_id, realized_pnl, status, exit_price "
                                     "FROM trades ORDER BY trade_id") == [
        (1, "SELL", 0, None, None, "CLOSED", 2_900.0), (2, "SELL", 0, None, None, "OPEN", None),
        (3, "BUY", 1, 1, 300.0, "CLOSED", 2_900.0)]
    assert rows(migrated, "positions", "SELECT entry_trade_id, side, quantity, realized_pnl, exit_reason, commission "
                                       "FROM closed_positions") == [(1, "short", 2.0, 200.0, "TP", 1.0)]
    assert rows(migrated, "positions", "SELECT side, quantity FROM positions") == [("short", 0.5)]
    # cash: 100000 + 6000 + 3100 - 7250 - 3 commissions
    assert result.cash_balance == approx(100_000.0 + 6_000.0 + 3_100.0 - 7_250.0 - 3.0)


def test_a_flip_is_stored_as_a_close_and_an_opening_at_the_same_time(store, migrated):
    store.buy("BTCUSDT", 0.002, 50_000.0, run_id="r", commission=0.1, executed_at=T0 + 1)    # 1: long 0.002
    result = store.sell("BTCUSDT", 0.005, 51_000.0, run_id="r", commission=1.0, executed_at=T0 + 2, order_id=None,
                        strategy="flip", close_reason="signal")
    assert result.flip and result.trade_ids == (2, 3) and result.trade_id == 2
    assert result.realized_pnl == approx(2.0) and result.closed_lots == (1,)
    assert result.position.side == "short" and result.position.quantity == approx(0.003)
    stored = rows(migrated, "trading", "SELECT trade_id, action, quantity, commission, executed_at, is_close, "
                                       "entry_trade_id, status, strategy FROM trades WHERE trade_id > 1 ORDER BY trade_id")
    assert [r[:2] for r in stored] == [(2, "SELL"), (3, "SELL")]
    assert stored[0][2] == approx(0.002) and stored[1][2] == approx(0.003)
    assert stored[0][3] == approx(0.4) and stored[1][3] == approx(0.6) and stored[0][3] + stored[1][3] == approx(1.0)
    assert [r[4:] for r in stored] == [(T0 + 2, 1, 1, "CLOSED", "flip"), (T0 + 2, 0, None, "OPEN", "flip")]
    assert rows(migrated, "positions", "SELECT ticker, side FROM positions") == [("BTCUSDT", "short")]
    assert rows(migrated, "positions", "SELECT side, exit_reason FROM closed_positions") == [("long", "signal")]
    # and back again: a BUY flips the short into a long
    back = store.buy("BTCUSDT", 0.004, 50_500.0, run_id="r", executed_at=T0 + 3)
    assert back.trade_ids == (4, 5) and back.realized_pnl == approx(1.5) and back.position.side == "long"
    assert back.position.quantity == approx(0.001)
    assert rows(migrated, "positions", "SELECT side, quantity FROM positions") == [("long", pytest.approx(0.001))]


def test_with_shorts_off_a_flip_or_a_short_sale_is_refused_and_writes_nothing(migrated):
    long_only = migrated.with_(allow_short=False)
    with TradeStore(long_only) as store:
        store.open_account(10_000.0, at=T0)
        store.buy("EUR/USD", 1_000.0, 1.08, run_id="r", executed_at=T0 + 1)
        before = content_hashes(long_only)
        with pytest.raises(OversellError, match=r"SELL of 1500 EUR/USD refused: only 1000 held .* allow-short = true"):
            store.sell("EUR/USD", 1_500.0, 1.09, run_id="r", executed_at=T0 + 2)
        with pytest.raises(OversellError, match=r"SELL of 1 ES=F refused: only 0 held"):
            store.sell("ES=F", 1.0, 5_000.0, run_id="r", executed_at=T0 + 2)
        assert content_hashes(long_only) == before


@pytest.mark.parametrize("kwargs, message", [
    ({"close_reason": "take-profit"}, r"close_reason 'take-profit' is not one of TP, SL, trailing"),
    ({"close_reason": "SL", "action": "BUY"}, r"close_reason 'SL' given but the trade closes nothing"),
], ids=["unknown-reason", "reason-on-an-opening"])
def test_a_bad_close_reason_is_refused_and_writes_nothing(store, migrated, kwargs, message):
    store.buy("SOL/USDT", 3.0, 150.0, run_id="r", executed_at=T0 + 1)
    before = content_hashes(migrated)
    action = kwargs.pop("action", "SELL")
    with pytest.raises(LedgerError, match=message):
        store.record("SOL/USDT", action, 1.0, 151.0, run_id="r", executed_at=T0 + 2, **kwargs)
    assert content_hashes(migrated) == before


def test_update_position_sets_stops_trail_and_marks_by_one_formula(store, migrated):
    store.sell("BTCUSDT", 0.25, 60_000.0, run_id="r", executed_at=T0 + 1)
    row = store.update_position("BTCUSDT", "short", stop_loss_price=61_000.0, take_profit_price=55_000.0,
                                trail_percent=1.5, current_price=58_000.0, metadata={"why": "breakeven"}, at=T0 + 5)
    assert (row["stop_loss_price"], row["take_profit_price"], row["trail_percent"]) == (61_000.0, 55_000.0, 1.5)
    assert row["unrealized_pnl"] == approx((60_000.0 - 58_000.0) * 0.25)      # a short gains when the price falls
    assert json.loads(row["metadata"]) == {"why": "breakeven"} and row["updated_at"] == T0 + 5
    assert (row["quantity"], row["entry_price"]) == (0.25, 60_000.0)
    # moving the stop to breakeven keeps the rest; None clears a value
    row = store.update_position("BTCUSDT", "short", stop_loss_price=60_000.0, take_profit_price=None, at=T0 + 6)
    assert (row["stop_loss_price"], row["take_profit_price"], row["trail_percent"]) == (60_000.0, None, 1.5)


@pytest.mark.parametrize("args, kwargs, message", [
    (("BTCUSDT", "short"), {"stop_loss_price": float("nan")}, r"stop_loss_price must be a finite number > 0"),
    (("BTCUSDT", "short"), {"current_price": -1.0}, r"current_price must be in \(0, 1e\+12\]"),
    (("BTCUSDT", "short"), {"trail_percent": 100.0}, r"trail_percent must be a number in \(0, 100\)"),
    (("BTCUSDT", "short"), {"metadata": "{not json"}, r"metadata must be JSON"),
    (("BTCUSDT", "short"), {"metadata": {"x": float("inf")}}, r"metadata cannot be stored as JSON"),
    (("BTCUSDT", "long"), {"stop_loss_price": 1.0}, r"there is no open long position of 'BTCUSDT'"),
    (("BTCUSDT", "sideways"), {"stop_loss_price": 1.0}, r"side must be 'long' or 'short'"),
    (("BTCUSDT", "short"), {}, r"nothing to set"),
], ids=["nan-stop", "negative-mark", "trail-100", "bad-json", "inf-in-metadata", "no-such-position", "bad-side", "nothing"])
def test_a_bad_position_update_is_refused_and_writes_nothing(store, migrated, args, kwargs, message):
    store.sell("BTCUSDT", 0.25, 60_000.0, run_id="r", executed_at=T0 + 1)
    before = content_hashes(migrated)
    with pytest.raises(LedgerError, match=message):
        store.update_position(*args, **kwargs)
    assert content_hashes(migrated) == before


def test_quantity_side_and_entry_price_are_not_position_management(store):
    store.buy("AAPL", 1.0, 100.0, run_id="r", executed_at=T0 + 1)
    with pytest.raises(TypeError, match="quantity"):
        store.update_position("AAPL", "long", quantity=5.0)  # type: ignore[call-arg]


def test_the_guarded_connection_lets_a_bot_move_a_short_stop_but_not_its_quantity(store, migrated):
    store.sell("BTCUSDT", 0.25, 60_000.0, run_id="r", executed_at=T0 + 1)
    bot = connect_guarded(migrated)
    try:
        bot.execute("UPDATE positions.positions SET stop_loss_price = 60000, trail_percent = 2.0 "
                    "WHERE ticker = 'BTCUSDT' AND side = 'short'")
        bot.commit()
        before = content_hashes(migrated)
        for column, value in (("quantity", 9.0), ("entry_price", 1.0), ("side", "'long'")):
            with pytest.raises(GuardrailViolation, match=f"UPDATE of positions.{column} is refused"):
                bot.execute(f"UPDATE positions.positions SET {column} = {value} WHERE ticker = 'BTCUSDT'")
            bot.rollback()
        assert content_hashes(migrated) == before
    finally:
        bot.close()
    assert rows(migrated, "positions", "SELECT stop_loss_price, trail_percent, quantity FROM positions") == [
        (60_000.0, 2.0, 0.25)]


def test_funding_and_borrow_are_labelled_costs_and_stats_are_gross_and_net(store, migrated):
    store.sell("BTCUSDT", 1.0, 50_000.0, run_id="r", commission=5.0, executed_at=T0 + 1)
    store.record_cost(12.5, "funding", ticker="BTCUSDT", note="8h rate 0.025%", at=T0 + 2)
    store.record_cost(-2.5, "funding", ticker="BTCUSDT", at=T0 + 3)                 # funding received
    store.record_cost(1.0, "borrow", ticker="BTCUSDT", at=T0 + 4)
    store.buy("BTCUSDT", 1.0, 49_000.0, run_id="r", commission=5.0, executed_at=T0 + 5)
    assert rows(migrated, "trading", "SELECT amount, reason FROM account_adjustments ORDER BY adjustment_id") == [
        (-12.5, "funding: BTCUSDT 8h rate 0.025%"), (2.5, "funding: BTCUSDT"), (-1.0, "borrow: BTCUSDT")]
    stats = store.stats()
    assert (stats.trades, stats.buys, stats.sells, stats.closes, stats.wins) == (2, 1, 1, 1, 1)
    assert stats.realized_pnl == approx(1_000.0) and stats.commissions == approx(10.0) and stats.costs == approx(11.0)
    assert stats.net_pnl == approx(1_000.0 - 10.0 - 11.0)
    assert stats.cash_balance == approx(100_000.0 + 1_000.0 - 10.0 - 11.0)
    with pytest.raises(LedgerError, match="kind must be one of funding, borrow"):
        store.record_cost(1.0, "fee")
    with pytest.raises(LedgerError, match="finite, non-zero"):
        store.record_cost(float("nan"), "funding")


# -- the writer against the independent FIFO, long and short ----------------------------------------

TICKERS = ("BTCUSDT", "ETH-USD", "EUR/USD")
executions = st.lists(st.tuples(st.sampled_from(TICKERS), st.sampled_from(("BUY", "SELL")),
                                st.integers(1, 40_000), st.integers(90, 110), st.integers(0, 2)),
                      min_size=1, max_size=40)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(executions)
def test_long_short_and_flip_sequences_agree_with_the_independent_fifo(plan):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_settings(tmp, cwd=tmp, env={}, busy_timeout=2.0)
        upgrade(cfg, migrations=load_migrations(cfg))
        executed = []
        with TradeStore(cfg) as store:
            store.open_account(1_000_000.0, at=T0)
            t = T0
            for k, (ticker, action, units, price, dt) in enumerate(plan):
                t += dt
                quantity = units / 10_000          # fractional, down to 0.0001
                result = store.record(ticker, action, quantity, float(price), run_id="prop", commission=0.01 * (k % 3),
                                      executed_at=t)
                executed.append((result.trade_ids, quantity))
            conn = store.connection
            stored = conn.execute("SELECT ticker, trade_id, action, quantity, price, executed_at, is_close, entry_trade_id, "
                                  "realized_pnl, status, exit_price, exit_time FROM trading.trades ORDER BY trade_id").fetchall()
            matches = defaultdict(list)
            for close_id, entry_id, q, pnl in conn.execute(
                    "SELECT close_trade_id, entry_trade_id, quantity, realized_pnl FROM trading.lot_matches"):
                matches[close_id].append((entry_id, q, pnl))
            cash = conn.execute("SELECT cash_balance FROM trading.account").fetchone()[0]
            positions = {(r[0], r[1]): r[2:] for r in conn.execute(
                "SELECT ticker, side, quantity, entry_price FROM positions.positions")}
        # every execution is stored whole: one trade, or two (a flip) summing to its quantity
        for ids, quantity in executed:
            assert 1 <= len(ids) <= 2
            assert math.fsum(stored[i - 1][3] for i in ids) == approx(quantity)
        ref = fifo([row[:6] for row in stored], allow_short=True)
        for ticker, trade_id, action, quantity, price, at, is_close, entry, pnl, status, exit_price, exit_time in stored:
            if trade_id in ref.sells:                        # a close (a SELL of long lots or a BUY covering shorts)
                want = ref.sells[trade_id]
                assert want.shortfall == 0                   # never a stored flip: every trade opens or closes
                assert is_close == 1 and entry == want.entry_trade_id and pnl == approx(float(want.realized_pnl), 1e-6)
                assert (status, exit_price, exit_time) == ("CLOSED", price, at)
                assert sorted((e, round(q, 9)) for e, q, _ in matches[trade_id]) == sorted(
                    (m.entry_trade_id, round(float(m.quantity), 9)) for m in want.matches)
            else:
                lot = ref.lots[trade_id]
                assert is_close == 0 and entry is None and pnl is None and lot.side == ("long" if action == "BUY" else "short")
                assert status == lot.status and exit_time == lot.exit_time
        want_positions = {(t, "long"): p for t, p in ref.positions.items()}
        want_positions.update({(t, "short"): p for t, p in ref.short_positions.items()})
        assert set(positions) == set(want_positions)
        for key, (quantity, entry_price) in positions.items():
            assert quantity == approx(float(want_positions[key].quantity))
            assert math.isclose(entry_price, float(want_positions[key].entry_price), rel_tol=1e-9)
        notional = math.fsum((r[3] * r[4]) * (1 if r[2] == "SELL" else -1) for r in stored)
        assert cash == approx(1_000_000.0 + notional - sum(0.01 * (k % 3) for k in range(len(plan))), 1e-6)


@pytest.mark.parametrize("env, pyproject, want", [
    ({}, "", True),
    ({"TOOLKIT_ALLOW_SHORT": "off"}, "", False),
    ({"TOOLKIT_ALLOW_SHORT": "Yes"}, "allow-short = false\n", True),
    ({}, "allow-short = false\n", False),
], ids=["default-on", "env-off", "env-beats-pyproject", "pyproject-off"])
def test_allow_short_resolves_from_environment_and_pyproject(tmp_path, env, pyproject, want):
    (tmp_path / "pyproject.toml").write_text("[tool.toolkit]\n" + pyproject, encoding="utf-8")
    assert load_settings(tmp_path / "data", cwd=tmp_path, env=env).allow_short is want
    assert load_settings(tmp_path / "data", cwd=tmp_path, env=env, allow_short=not want).allow_short is (not want)


@pytest.mark.parametrize("env, pyproject, message", [
    ({"TOOLKIT_ALLOW_SHORT": "maybe"}, "", r"allow-short must be true or false, got 'maybe' \(from \$TOOLKIT_ALLOW_SHORT\)"),
    ({}, 'allow-short = "sometimes"\n', r"allow-short must be true or false, got 'sometimes' \(from pyproject.toml\)"),
    ({}, "allow-short = 1\n", r"allow-short must be true or false, got 1 \(from pyproject.toml\)"),
], ids=["env", "pyproject-text", "pyproject-number"])
def test_a_bad_allow_short_is_refused_in_one_line(tmp_path, env, pyproject, message):
    from toolkit.errors import UsageError

    (tmp_path / "pyproject.toml").write_text("[tool.toolkit]\n" + pyproject, encoding="utf-8")
    with pytest.raises(UsageError, match=message):
        load_settings(tmp_path / "data", cwd=tmp_path, env=env)


def test_the_cli_takes_no_allow_short(cli, tmp_path):
    """`--no-allow-short` reaches the gate: the same short sale is an orphaned sell only when shorts are off."""
    data = tmp_path / "data"
    settings = load_settings(data, cwd=tmp_path, env={})
    upgrade(settings, migrations=load_migrations(settings))
    with TradeStore(settings) as store:
        store.open_account(10_000.0, at=T0)
        store.sell("BTCUSDT", 0.01, 90_000.0, run_id="r", executed_at=T0 + 1)
    on = cli("integrity", "--data-dir", str(data), "check", "--rule", "orphaned_sells")
    off = cli("integrity", "--data-dir", str(data), "--no-allow-short", "check", "--rule", "orphaned_sells")
    assert on.returncode == 0, on.stdout + on.stderr
    assert off.returncode == 1 and "trade_id=1" in off.stdout, off.stdout + off.stderr
