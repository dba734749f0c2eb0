"""The FIFO core (toolkit.accounting): hand-computed cases, then properties against an independent FIFO.

Every expected number in the hand-computed cases is worked out in the comment beside it. The
property tests compare the core with ``fifo_reference`` (interval arithmetic on a cumulative
quantity axis, exact fractions), written from SPEC §3 and not from the core.
"""
from __future__ import annotations

import math
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fifo_reference import UNIT, fifo, quantities_for, signed_quantities_for, steps
from toolkit.accounting import (
    CLOSED,
    LONG,
    LOT_ROW_COLUMNS,
    MATCH_COLUMNS,
    OPEN,
    QTY_EPSILON,
    SHORT,
    TRADE_ROW_COLUMNS,
    Close,
    Lot,
    OutOfOrderError,
    TickerBook,
    cash_balance,
    cash_effect,
    close_row_values,
    equity,
    lot_row_values,
    money_differs,
    opening_row_values,
    realized_pnl,
    replay,
    replay_book,
    round_quantity,
    same_quantity,
    split_flip,
    unrealized_pnl,
)

Q = 1e-9  # quantities compare at 1e-9


def approx(value: float, tol: float = 1e-9):
    return pytest.approx(value, abs=tol, rel=0)


# -- hand-computed cases ---------------------------------------------------------------------------

def test_sell_across_two_lots_partially_closes_the_second():
    book = TickerBook("AAPL")
    lot1 = book.buy(1, 10.0, 100.0, 1_000)        # 10 @ 100
    lot2 = book.buy(2, 20.0, 110.0, 1_010)        # 20 @ 110
    close = book.sell(3, 25.0, 120.0, 1_020)      # 25 @ 120: all of lot 1, then 15 of lot 2

    # match 1: 10 of lot 1: (120 - 100) * 10 = 200
    # match 2: 15 of lot 2: (120 - 110) * 15 = 150
    assert [(m.close_trade_id, m.entry_trade_id, m.quantity, m.entry_price, m.exit_price, m.realized_pnl, m.matched_at)
            for m in close.matches] == [(3, 1, 10.0, 100.0, 120.0, 200.0, 1_020),
                                        (3, 2, 15.0, 110.0, 120.0, 150.0, 1_020)]
    assert close.realized_pnl == 350.0            # 200 + 150
    assert close.entry_trade_id == 1              # the first lot consumed
    assert close.shortfall == 0.0 and close.consumed == 25.0
    assert [lot.trade_id for lot in close.closed_lots] == [1]
    # lot 1: CLOSED, exit price = its only match's 120, exit time 1020
    assert (lot1.status, lot1.remaining, lot1.exit_price, lot1.exit_time) == ("CLOSED", 0.0, 120.0, 1_020)
    assert lot1.realized_pnl == 200.0
    # lot 2: OPEN with 20 - 15 = 5 left, no exit price/time yet
    assert (lot2.status, lot2.remaining, lot2.exit_price, lot2.exit_time) == ("OPEN", 5.0, None, None)
    position = book.position()
    # 5 left of lot 2 only: 5 @ 110, opened when lot 2 was bought
    assert (position.ticker, position.quantity, position.entry_price, position.opened_at, position.lots) == \
        ("AAPL", 5.0, 110.0, 1_010, 1)

    # close the rest of lot 2 at another price: its exit price becomes the quantity-weighted average
    close2 = book.sell(4, 5.0, 130.0, 1_030)      # 5 @ 130: (130 - 110) * 5 = 100
    assert [(m.entry_trade_id, m.quantity, m.realized_pnl) for m in close2.matches] == [(2, 5.0, 100.0)]
    assert close2.entry_trade_id == 2 and close2.realized_pnl == 100.0
    # lot 2 exit price = (15 * 120 + 5 * 130) / 20 = (1800 + 650) / 20 = 122.5; exit time = last match 1030
    assert (lot2.status, lot2.exit_price, lot2.exit_time) == ("CLOSED", 122.5, 1_030)
    assert lot2.realized_pnl == 250.0             # 150 + 100
    assert book.position() is None and not book.lots   # flat


def test_same_timestamp_lots_are_consumed_in_trade_id_order():
    book = TickerBook("MSFT")
    book.buy(5, 3.0, 10.0, 500)                   # three lots at the same second, trade ids 5 < 6 < 7
    book.buy(6, 2.0, 11.0, 500)
    book.buy(7, 4.0, 12.0, 500)
    close = book.sell(8, 4.0, 15.0, 500)          # same second, higher trade id: sees all three lots
    # FIFO by (executed_at, trade_id): 3 of lot 5 -> (15 - 10) * 3 = 15; then 1 of lot 6 -> (15 - 11) * 1 = 4
    assert [(m.entry_trade_id, m.quantity, m.realized_pnl) for m in close.matches] == [(5, 3.0, 15.0), (6, 1.0, 4.0)]
    assert close.realized_pnl == 19.0 and close.entry_trade_id == 5
    assert [lot.trade_id for lot in close.closed_lots] == [5]
    assert [(lot.trade_id, lot.remaining) for lot in book.lots] == [(6, 1.0), (7, 4.0)]
    position = book.position()
    # 1 @ 11 + 4 @ 12 = 59 over 5 shares -> 11.8; opened_at = the first remaining lot's time
    assert position.quantity == 5.0 and position.entry_price == approx(11.8) and position.opened_at == 500


def test_replay_breaks_timestamp_ties_by_trade_id_whatever_the_input_order():
    # Trade ids do not follow insertion: the SELL 4 shares the BUYs' second but has a lower id, so
    # it comes first and finds nothing; SELL 9 (higher id, same second) consumes lots 5 then 7.
    trades = [
        ("XOM", 7, "BUY", 4.0, 12.0, 500),
        ("XOM", 9, "SELL", 5.0, 15.0, 500),
        ("XOM", 5, "BUY", 3.0, 10.0, 500),
        ("XOM", 4, "SELL", 1.0, 14.0, 500),
    ]
    ordered = sorted(trades, key=lambda t: (t[0], t[5], t[1]))
    outcomes = {trade[1]: outcome for _, _, trade, outcome in replay(ordered)}
    early = outcomes[4]
    assert isinstance(early, Close) and early.matches == () and early.shortfall == 1.0 and early.entry_trade_id is None
    late = outcomes[9]
    # 3 of lot 5: (15 - 10) * 3 = 15; 2 of lot 7: (15 - 12) * 2 = 6 -> 21
    assert [(m.entry_trade_id, m.quantity, m.realized_pnl) for m in late.matches] == [(5, 3.0, 15.0), (7, 2.0, 6.0)]
    assert late.realized_pnl == 21.0 and late.entry_trade_id == 5 and late.shortfall == 0.0
    # the independent FIFO, fed the unsorted list, agrees
    ref = fifo(trades)
    assert ref.sells[4].matches == () and ref.sells[4].shortfall == 1
    assert [(m.entry_trade_id, m.quantity) for m in ref.sells[9].matches] == [(5, 3), (7, 2)]


@pytest.mark.parametrize("first, second", [
    ((7, 500), (6, 500)),     # same second, lower trade id after a higher one
    ((7, 500), (8, 499)),     # higher trade id but an earlier second
    ((7, 500), (7, 500)),     # the same trade twice
])
def test_book_refuses_out_of_order_input(first, second):
    book = TickerBook("IBM")
    book.buy(first[0], 1.0, 10.0, first[1])
    with pytest.raises(OutOfOrderError, match=r"IBM: trade \d+ at \d+ does not follow trade 7 at 500"):
        book.buy(second[0], 1.0, 10.0, second[1])
    with pytest.raises(OutOfOrderError):
        book.sell(second[0], 1.0, 10.0, second[1])
    # refused input changed nothing: one lot, untouched, and the next in-order trade is accepted
    assert [(lot.trade_id, lot.remaining) for lot in book.lots] == [(7, 1.0)]
    close = book.sell(9, 1.0, 11.0, 501)
    assert close.realized_pnl == approx(1.0) and book.position() is None


def test_fractional_lots_closed_by_their_float_sum_leave_no_dust():
    book = TickerBook("BRK.B")
    lot1 = book.buy(1, 0.1, 10.0, 100)
    lot2 = book.buy(2, 0.2, 11.0, 100)
    close = book.sell(3, 0.3, 12.0, 101)    # 0.1 + 0.2 != 0.3 in floats; at 1e-9 they are equal
    assert [m.entry_trade_id for m in close.matches] == [1, 2]
    assert close.matches[0].quantity == approx(0.1, Q) and close.matches[1].quantity == approx(0.2, Q)
    assert math.fsum(m.quantity for m in close.matches) == approx(0.3, Q)
    # (12 - 10) * 0.1 + (12 - 11) * 0.2 = 0.2 + 0.2 = 0.4
    assert close.realized_pnl == approx(0.4)
    assert close.shortfall == 0.0
    assert lot1.status == lot2.status == "CLOSED" and lot2.remaining == 0.0
    assert lot2.exit_price == approx(12.0) and lot2.exit_time == 101
    assert [lot.trade_id for lot in close.closed_lots] == [1, 2]
    assert not book.lots and book.position() is None and book.open_quantity() == 0.0

    # lots whose float sum falls short of the SELL by float noise (0.7 + 0.1 = 0.7999999999999999)
    book.buy(4, 0.7, 10.0, 102)
    book.buy(5, 0.1, 10.0, 102)
    close = book.sell(6, 0.8, 10.5, 103)
    assert close.shortfall == 0.0 and close.consumed == 0.8
    assert [lot.trade_id for lot in close.closed_lots] == [4, 5]
    # (10.5 - 10) * 0.8 = 0.4
    assert close.realized_pnl == approx(0.4) and book.position() is None


def test_ten_sells_of_a_tenth_close_a_whole_lot_exactly():
    book = TickerBook("T")
    lot = book.buy(1, 1.0, 20.0, 0)
    closes = [book.sell(2 + k, 0.1, 21.0, 1 + k) for k in range(10)]   # float 0.1 ten times != 1.0
    assert all(c.shortfall == 0.0 for c in closes)
    assert lot.status == "CLOSED" and lot.exit_time == 10 and lot.exit_price == approx(21.0)
    assert [lot.trade_id for lot in closes[-1].closed_lots] == [1]
    assert all(not c.closed_lots for c in closes[:-1])
    # (21 - 20) * 1.0 in total
    assert math.fsum(c.realized_pnl for c in closes) == approx(1.0)
    assert book.position() is None


def test_sell_of_exactly_the_open_quantity_goes_flat():
    book = TickerBook("NVDA")
    book.buy(1, 2.5, 40.0, 10)
    book.buy(2, 1.25, 44.0, 20)
    close = book.sell(3, 3.75, 42.0, 30)        # 2.5 + 1.25 = 3.75, all of it
    # (42 - 40) * 2.5 = 5.0; (42 - 44) * 1.25 = -2.5 -> 2.5
    assert [m.realized_pnl for m in close.matches] == [5.0, -2.5]
    assert close.realized_pnl == 2.5 and close.shortfall == 0.0
    assert [lot.trade_id for lot in close.closed_lots] == [1, 2]
    assert book.position() is None and book.open_quantity() == 0.0 and book.shortfall_of(0.001) == 0.001


def test_oversell_reports_the_shortfall_and_consumes_what_is_there():
    book = TickerBook("AMD")
    lot = book.buy(1, 5.0, 10.0, 1)
    assert book.shortfall_of(5.0) == 0.0 and book.shortfall_of(7.0) == 2.0
    close = book.sell(2, 7.0, 12.0, 2)          # 7 wanted, 5 held
    # consumes the 5: (12 - 10) * 5 = 10; shortfall 7 - 5 = 2
    assert [(m.entry_trade_id, m.quantity, m.realized_pnl) for m in close.matches] == [(1, 5.0, 10.0)]
    assert close.shortfall == 2.0 and close.consumed == 5.0 and close.realized_pnl == 10.0
    assert lot.status == "CLOSED" and book.position() is None
    # selling with nothing held: everything is shortfall, no match, no entry trade
    nothing = book.sell(3, 1.5, 12.0, 3)
    assert nothing.matches == () and nothing.shortfall == 1.5 and nothing.entry_trade_id is None
    assert nothing.realized_pnl == 0.0 and nothing.consumed == 0.0


def test_shortfall_below_the_quantity_precision_is_no_shortfall():
    book = TickerBook("F")
    book.buy(1, 0.1, 10.0, 1)
    book.buy(2, 0.2, 10.0, 1)
    assert book.shortfall_of(0.3 + 4e-10) == 0.0           # within 1e-9 rounding: covered
    assert book.shortfall_of(0.3 + 1e-8) == approx(1e-8, 1e-12)


def test_opening_leg_and_position_of_a_single_buy():
    book = TickerBook("KO")
    lot = book.buy(1, 3.0, 60.0, 7)
    assert isinstance(lot, Lot)
    assert (lot.status, lot.remaining, lot.exit_price, lot.exit_time, lot.realized_pnl) == ("OPEN", 3.0, None, None, 0.0)
    assert book.position() == ("KO", 3.0, 60.0, 7, 1, "long")


def test_money_and_quantity_helpers():
    # cash: a BUY of 10 @ 100 with 1 commission pays 1000 + 1; a SELL receives 1000 - 1
    assert cash_effect("BUY", 10.0, 100.0, 1.0) == -1001.0
    assert cash_effect("SELL", 10.0, 100.0, 1.0) == 999.0
    # 1000 + 50 - 300 + 200 - 5 = 945
    assert cash_balance(1000.0, 50.0, 300.0, 200.0, 5.0) == 945.0
    assert realized_pnl(100.0, 90.0, 2.0) == -20.0      # (90 - 100) * 2
    assert same_quantity(0.1 + 0.2, 0.3) and not same_quantity(1.0, 1.000000002)
    assert round_quantity(0.30000000000000004) == 0.3
    assert QTY_EPSILON == 0.5e-9
    assert not money_differs(None, None) and money_differs(None, 0.0) and money_differs(0.0, None)
    assert money_differs(float("nan"), 1.0)
    assert not money_differs(100.0, 100.009) and money_differs(100.0, 100.011)
    assert not money_differs(100.0, 100.5, tolerance=1.0) and money_differs(100.0, 101.5, tolerance=1.0)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("a, b, same_money, same_qty", [
    (None, None, True, True),            # NULL equals NULL ...
    (None, 0.0, False, False),           # ... and nothing else
    (0.0, None, False, False),
    (NAN, NAN, False, False),            # NaN equals nothing, itself included
    (NAN, 1.0, False, False),
    (1.0, NAN, False, False),
    (NAN, None, False, False),
    (INF, INF, False, False),            # nor does an infinity
    (-INF, -INF, False, False),
    (INF, 1e308, False, False),
    ("abc", "abc", False, False),        # text in a REAL column is not an amount
    ("1.0", 1.0, False, False),
    (b"\x00", 0.0, False, False),
    (5, 5.0, True, True),                # an INTEGER column value is a number
    (100.0, 100.009, True, False),       # money within the tolerance; quantities at 1e-9
    (0.1 + 0.2, 0.3, True, True),
    (1.0, 1.0000000004, True, True),
    (1.0, 1.000000002, True, False),
])
def test_one_comparison_rule_for_money_and_quantities(a, b, same_money, same_qty):
    assert money_differs(a, b) is (not same_money)
    assert money_differs(b, a) is (not same_money)          # symmetric
    assert same_quantity(a, b) is same_qty
    assert same_quantity(b, a) is same_qty


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6)),
       st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6)),
       st.sampled_from([0.0, 1e-9, 0.01, 1.0]))
def test_comparison_rule_properties(a, b, tolerance):
    differs = money_differs(a, b, tolerance)
    assert differs == money_differs(b, a, tolerance)
    if a is None or b is None:
        assert differs == (a is not b) and same_quantity(a, b) == (a is b)
    elif not (math.isfinite(a) and math.isfinite(b)):
        assert differs and not same_quantity(a, b)
    else:
        assert differs == (abs(a - b) > tolerance)
        assert same_quantity(a, b) == (round(a, 9) == round(b, 9))


def test_replay_starts_a_new_book_per_ticker_and_replay_book_agrees():
    trades = [("AAA", 1, "BUY", 2.0, 10.0, 1), ("AAA", 3, "SELL", 1.0, 12.0, 3),
              ("BBB", 2, "BUY", 4.0, 5.0, 2), ("BBB", 4, "SELL", 4.0, 4.0, 4)]
    seen = defaultdict(set)
    last = {}
    for ticker, book, trade, outcome in replay(trades):
        assert book.ticker == ticker == trade[0]
        seen[ticker].add(id(book))
        last[ticker] = book
    assert all(len(books) == 1 for books in seen.values())
    assert last["AAA"].position().quantity == 1.0 and last["BBB"].position() is None
    bbb = replay_book("BBB", [(2, "BUY", 4.0, 5.0, 2), (4, "SELL", 4.0, 4.0, 4)])
    # 4 bought, 4 sold: flat, nothing open
    assert bbb.ticker == "BBB" and bbb.position() is None and not bbb.lots and bbb.open_quantity() == 0.0
    aaa = replay_book("AAA", [(1, "BUY", 2.0, 10.0, 1), (3, "SELL", 1.0, 12.0, 3)])
    # 2 @ 10 bought, 1 sold: 1 left of lot 1 at 10, opened at 1
    assert [(lot.trade_id, lot.remaining, lot.status) for lot in aaa.lots] == [(1, 1.0, "OPEN")]
    assert aaa.position() == ("AAA", 1.0, 10.0, 1, 1, "long") == last["AAA"].position()


def test_replay_book_is_the_state_to_record_the_next_trade_on():
    rows = [(10, "BUY", 10.0, 100.0, 1_000),       # 10 @ 100
            (11, "BUY", 20.0, 110.0, 1_000),       # 20 @ 110, same second, higher id
            (12, "SELL", 25.0, 120.0, 1_010)]      # all of lot 10, 15 of lot 11
    book = replay_book("AAPL", iter(rows))         # any iterable (a cursor in the writer)
    # 5 of lot 11 remain: 5 @ 110, opened at 1000, one lot
    assert [(lot.trade_id, lot.remaining) for lot in book.lots] == [(11, 5.0)]
    assert book.position() == ("AAPL", 5.0, 110.0, 1_000, 1, "long")
    assert book.shortfall_of(6.0) == 1.0           # 6 wanted, 5 held
    # the next SELL closes the rest of lot 11: (130 - 110) * 5 = 100; lot 11 exit = (15*120 + 5*130) / 20 = 122.5
    close = book.sell(13, 5.0, 130.0, 1_020)
    assert (close.realized_pnl, close.entry_trade_id, close.shortfall) == (100.0, 11, 0.0)
    assert [(lot.trade_id, lot.exit_price, lot.exit_time) for lot in close.closed_lots] == [(11, 122.5, 1_020)]
    assert replay_book("EMPTY", []).position() is None
    with pytest.raises(OutOfOrderError, match=r"AAPL: trade 9 at 1000 does not follow trade 11 at 1000"):
        replay_book("AAPL", [(10, "BUY", 1.0, 1.0, 1_000), (11, "BUY", 1.0, 1.0, 1_000), (9, "SELL", 1.0, 1.0, 1_000)])


def test_row_values_are_what_the_ledger_stores():
    assert TRADE_ROW_COLUMNS == ("entry_trade_id", "realized_pnl", "status", "exit_price", "exit_time")
    assert LOT_ROW_COLUMNS == ("status", "exit_price", "exit_time")
    assert MATCH_COLUMNS == ("close_trade_id", "entry_trade_id", "quantity", "entry_price", "exit_price",
                             "realized_pnl", "matched_at")
    assert (OPEN, CLOSED) == ("OPEN", "CLOSED")
    book = TickerBook("AAPL")
    lot1 = book.buy(1, 10.0, 100.0, 1_000)
    # an opening leg: no link, no P&L, OPEN, no exit
    assert opening_row_values(lot1) == (None, None, "OPEN", None, None)
    assert lot_row_values(lot1) == ("OPEN", None, None)
    lot2 = book.buy(2, 20.0, 110.0, 1_010)
    close = book.sell(3, 25.0, 120.0, 1_020)
    # the SELL: first lot consumed = 1; P&L (120-100)*10 + (120-110)*15 = 200 + 150 = 350; CLOSED at its price and time
    assert close_row_values(close) == (1, 350.0, "CLOSED", 120.0, 1_020)
    # its lot_matches rows are its matches, column for column
    assert [tuple(m) for m in close.matches] == [(3, 1, 10.0, 100.0, 120.0, 200.0, 1_020), (3, 2, 15.0, 110.0, 120.0, 150.0, 1_020)]
    # lot 1 fully consumed: CLOSED at 120 at 1020; lot 2 still OPEN (5 left)
    assert lot_row_values(lot1) == ("CLOSED", 120.0, 1_020) and lot_row_values(lot2) == ("OPEN", None, None)
    close2 = book.sell(4, 5.0, 130.0, 1_030)
    # lot 2: (15 * 120 + 5 * 130) / 20 = 122.5, last match at 1030
    assert lot_row_values(lot2) == ("CLOSED", 122.5, 1_030)
    assert close_row_values(close2) == (2, 100.0, "CLOSED", 130.0, 1_030)   # (130 - 110) * 5 = 100
    # the lot's attributes are the same values
    for lot in (lot1, lot2):
        assert (lot.status, lot.exit_price, lot.exit_time) == lot_row_values(lot)
    # an oversell with nothing held: no link, zero P&L, still a CLOSED close at its own price and time
    nothing = book.sell(5, 1.0, 90.0, 1_040)
    assert close_row_values(nothing) == (None, 0.0, "CLOSED", 90.0, 1_040)


def test_position_and_snapshot_formulas():
    book = TickerBook("KO")
    book.buy(1, 2.0, 50.0, 7)
    book.buy(2, 2.0, 60.0, 8)
    position = book.position()               # 4 @ 55
    assert unrealized_pnl(position, 58.0) == approx(12.0)     # (58 - 55) * 4
    assert unrealized_pnl(position, 50.0) == approx(-20.0)    # (50 - 55) * 4
    assert equity(1000.0, 500.0, 100.0) == 1400.0             # 1000 + 500 - 100
    assert equity(1000.25, 500.25, 0.0) == 1500.5
    assert equity(-50.0, 0.0, 0.0) == -50.0


# -- properties against the independent FIFO -------------------------------------------------------

@st.composite
def core_trades(draw, shorts: bool = False):
    """Trades in FIFO order with many same-second ties; trade ids are not monotone in time
    (only within one second), so the (executed_at, trade_id) order is really exercised.
    ``shorts``: sizes are planned against the signed position (short sales, covers and flips)."""
    planned = signed_quantities_for(draw(steps)) if shorts else quantities_for(draw(steps), oversell="consume")
    ids = draw(st.permutations(range(1, len(planned) + 1)))
    t = 1_700_000_000
    times = []
    for *_, dt in planned:
        t += dt
        times.append(t)
    # within each run of equal seconds, hand out that run's ids in increasing order
    assigned: list[int] = []
    start = 0
    while start < len(planned):
        end = start
        while end < len(planned) and times[end] == times[start]:
            end += 1
        assigned.extend(sorted(ids[start:end]))
        start = end
    return [(ticker, trade_id, action, units / UNIT, cents / 100, when)
            for (ticker, action, units, cents, _), trade_id, when in zip(planned, assigned, times)]


def _match_tuple(m):
    return (m.close_trade_id, m.entry_trade_id, float(m.quantity), float(m.entry_price), float(m.exit_price),
            float(m.realized_pnl), m.matched_at)


def assert_matches_equal(core_matches, ref_matches):
    assert len(core_matches) == len(ref_matches), (core_matches, ref_matches)
    for got, want in zip(core_matches, ref_matches):
        g, w = _match_tuple(got), _match_tuple(want)
        assert g[:2] == w[:2]                          # close id, entry id, in FIFO order
        assert g[2] == approx(w[2], Q)                 # quantity at 1e-9
        assert g[3] == w[3] and g[4] == w[4]           # entry and exit prices exactly
        assert g[5] == approx(w[5])                    # P&L to 1e-9
        assert g[6] == w[6]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(core_trades())
def test_core_equals_independent_fifo(trades):
    ref = fifo(list(reversed(trades)))                 # the reference sorts for itself
    ordered = sorted(trades, key=lambda t: (t[0], t[5], t[1]))
    lots: dict[int, Lot] = {}
    closes: dict[int, Close] = {}
    books: dict[str, TickerBook] = {}
    for ticker, book, trade, outcome in replay(ordered):
        books[ticker] = book
        if trade[2] == "BUY":
            lots[trade[1]] = outcome
        else:
            closes[trade[1]] = outcome

    assert set(closes) == set(ref.sells) and set(lots) == set(ref.lots)
    for trade_id, close in closes.items():
        want = ref.sells[trade_id]
        assert_matches_equal(close.matches, want.matches)
        assert close.shortfall == approx(float(want.shortfall), Q)      # oversells: same shortfall
        assert (close.shortfall > 0) == (want.shortfall > 0)
        assert close.realized_pnl == approx(float(want.realized_pnl))
        assert close.realized_pnl == approx(math.fsum(m.realized_pnl for m in close.matches))
        assert close.entry_trade_id == want.entry_trade_id
        assert close.consumed == approx(close.quantity - float(want.shortfall), Q)
        # the lots this SELL closed: those whose last match is this SELL and that end CLOSED
        assert [lot.trade_id for lot in close.closed_lots] == [
            m.entry_trade_id for m in want.matches if ref.lots[m.entry_trade_id].status == "CLOSED"
            and ref.lots[m.entry_trade_id].matches[-1].close_trade_id == trade_id]
    for trade_id, lot in lots.items():
        want = ref.lots[trade_id]
        assert lot.status == want.status
        assert lot.remaining == approx(float(want.remaining), Q)
        assert lot.exit_time == want.exit_time
        if want.exit_price is None:
            assert lot.exit_price is None
        else:
            assert math.isclose(lot.exit_price, float(want.exit_price), rel_tol=1e-12, abs_tol=1e-9)
    for ticker, book in books.items():
        # open lots (remaining quantities) in FIFO order
        assert [(lot.trade_id, round(lot.remaining, 9)) for lot in book.lots] == [
            (lot.trade_id, round(float(lot.remaining), 9)) for lot in ref.open_lots(ticker)]
        position, want = book.position(), ref.positions.get(ticker)
        if want is None:
            assert position is None
        else:
            assert position.quantity == approx(float(want.quantity), Q)
            assert math.isclose(position.entry_price, float(want.entry_price), rel_tol=1e-9)
            assert (position.opened_at, position.lots) == (want.opened_at, want.lots)
        # quantity conserved: bought = sold (consumed) + open
        bought = math.fsum(t[3] for t in trades if t[0] == ticker and t[2] == "BUY")
        consumed = math.fsum(c.consumed for tid, c in closes.items() if ref.sells[tid].ticker == ticker)
        assert bought == approx(consumed + book.open_quantity(), Q)
        assert bought == approx(float(ref.bought[ticker]), Q)
    # Σ close P&L = Σ match P&L
    assert math.fsum(c.realized_pnl for c in closes.values()) == approx(
        math.fsum(m.realized_pnl for c in closes.values() for m in c.matches), 1e-6)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(core_trades())
def test_replay_book_equals_independent_fifo_and_replay(trades):
    ref = fifo(trades)
    ordered = sorted(trades, key=lambda t: (t[0], t[5], t[1]))
    streamed: dict[str, TickerBook] = {}
    for ticker, book, _, _ in replay(ordered):
        streamed[ticker] = book
    for ticker in {t[0] for t in trades}:
        book = replay_book(ticker, [t[1:] for t in ordered if t[0] == ticker])
        # the open lots, FIFO order, remaining quantities at 1e-9: the independent FIFO's
        assert [(lot.trade_id, round(lot.remaining, 9)) for lot in book.lots] == [
            (lot.trade_id, round(float(lot.remaining), 9)) for lot in ref.open_lots(ticker)]
        position, want = book.position(), ref.positions.get(ticker)
        if want is None:
            assert position is None
        else:
            assert position.quantity == approx(float(want.quantity), Q)
            assert math.isclose(position.entry_price, float(want.entry_price), rel_tol=1e-9)
            assert (position.opened_at, position.lots) == (want.opened_at, want.lots)
        # and the streaming replay ends in the same book, to the exact bit
        assert [(lot.trade_id, lot.remaining, lot.matched_value) for lot in book.lots] == [
            (lot.trade_id, lot.remaining, lot.matched_value) for lot in streamed[ticker].lots]
        assert position == streamed[ticker].position()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(core_trades())
def test_row_values_equal_independent_fifo(trades):
    """What the writer, the fixtures and the rules store for each trade, against the independent FIFO."""
    ref = fifo(trades)
    ordered = sorted(trades, key=lambda t: (t[0], t[5], t[1]))
    lots: dict[int, Lot] = {}
    for _, _, trade, outcome in replay(ordered):
        if isinstance(outcome, Close):
            entry, pnl, status, exit_price, exit_time = close_row_values(outcome)
            want = ref.sells[trade[1]]
            assert entry == want.entry_trade_id
            assert pnl == approx(float(want.realized_pnl))
            assert (status, exit_price, exit_time) == ("CLOSED", trade[4], trade[5])
        else:
            # when written, a BUY is an open lot with no link and no P&L
            assert opening_row_values(outcome) == (None, None, "OPEN", None, None)
            lots[trade[1]] = outcome
    for trade_id, lot in lots.items():
        status, exit_price, exit_time = lot_row_values(lot)
        want = ref.lots[trade_id]
        assert (status, exit_time) == (want.status, want.exit_time)
        if want.exit_price is None:
            assert exit_price is None
        else:
            assert math.isclose(exit_price, float(want.exit_price), rel_tol=1e-12, abs_tol=1e-9)


# -- the snapshot rule says accounting.equity and accounting.money_differs in SQL ------------------

def _snapshot_verdicts(cases: list[tuple], tolerance: float) -> tuple[set[int], set[int], dict[int, object]]:
    """Run the snapshot_equity_mismatch rule's own SQL, and its guard, over ``cases``
    ``(total_equity, cash, long_value, short_value)``: (reported ids, refused ids, equity by id)."""
    import sqlite3

    from toolkit.checks.snapshots import equity_sql
    from toolkit.checks.snapshots import snapshot_equity_mismatch as rule

    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("ATTACH ':memory:' AS trading")
    # the columns the rule reads, without the schema's NOT NULL (so that NULL cases can be stored)
    conn.execute("CREATE TABLE trading.portfolio_snapshots (snapshot_id INTEGER PRIMARY KEY, snapshot_date TEXT, "
                 "total_equity REAL, cash_balance REAL, long_market_value REAL, short_market_value REAL)")
    conn.executemany("INSERT INTO trading.portfolio_snapshots VALUES (?, '2025-01-02', ?, ?, ?, ?)",
                     [(n, *case) for n, case in enumerate(cases)])
    rows = conn.execute(rule.sql, {"tolerance": tolerance}).fetchall()
    reported = {row[0] for row in rows}
    computed = {row[0]: row[2] for row in rows}         # the rule's computed column where it reports
    for snapshot_id, value in conn.execute(f"SELECT snapshot_id, {equity_sql()} FROM trading.portfolio_snapshots"):
        assert computed.setdefault(snapshot_id, value) == value
    (guard,) = rule.guards
    conn.execute("CREATE TABLE trading.attempts AS SELECT * FROM trading.portfolio_snapshots WHERE 0")
    conn.execute(f"CREATE TEMP TRIGGER guard BEFORE INSERT ON attempts FOR EACH ROW "
                 f"WHEN {guard.when.replace('{tolerance}', repr(tolerance))} BEGIN SELECT RAISE(ABORT, 'refused'); END")
    refused = set()
    for n, case in enumerate(cases):
        try:
            conn.execute("INSERT INTO trading.attempts VALUES (?, '2025-01-02', ?, ?, ?, ?)", (n, *case))
        except sqlite3.IntegrityError:
            refused.add(n)
    conn.close()
    return reported, refused, computed


def _expected_verdicts(cases: list[tuple], tolerance: float) -> tuple[set[int], dict[int, object]]:
    """The same cases through toolkit.accounting (SQL's NULL in → NULL out for the formula's inputs)."""
    flagged, computed = set(), {}
    for n, (total, cash, long_value, short_value) in enumerate(cases):
        value = None if None in (cash, long_value, short_value) else equity(cash, long_value, short_value)
        computed[n] = value
        if money_differs(total, value, tolerance):
            flagged.add(n)
    return flagged, computed


EQUITY_CASES = [
    # (total_equity, cash, long, short)
    (1400.0, 1000.0, 500.0, 100.0),          # 1000 + 500 - 100 = 1400 exactly
    (1400.009, 1000.0, 500.0, 100.0),        # within 0.01
    (1400.011, 1000.0, 500.0, 100.0),        # 0.011 off
    (1399.98, 1000.0, 500.0, 100.0),         # 0.02 under
    (1500.5, 1000.25, 500.25, 0.0),          # long-only, fractional
    (0.30000000000000004, 0.1, 0.2, 0.0),    # float noise far below the tolerance
    (-50.0, -50.0, 0.0, 0.0),                # negative cash
    (1e15 + 0.5, 1e15, 0.5, 0.0),            # large amounts
    (None, 1000.0, 500.0, 100.0),            # NULL equity stored, a number computed: differs
    (1400.0, None, 500.0, 100.0),            # a number stored, NULL computed: differs
    (1400.0, 1000.0, None, 100.0),
    (1400.0, 1000.0, 500.0, None),
    (None, None, 500.0, 100.0),              # NULL and NULL: equal
    (None, 1000.0, None, None),
    (math.inf, 1000.0, 500.0, 100.0),        # an infinity equals nothing
    (1400.0, math.inf, 500.0, 100.0),
    (math.inf, math.inf, 0.0, 0.0),
    (None, math.inf, 0.0, math.inf),         # inf - inf: NaN (NULL in SQLite), and NaN is not NULL
    (math.inf, math.inf, 0.0, math.inf),
]


@pytest.mark.parametrize("tolerance", [0.01, 1.0, 0.0])
def test_snapshot_rule_and_guard_say_accounting_equity(tolerance):
    reported, refused, computed = _snapshot_verdicts(EQUITY_CASES, tolerance)
    flagged, expected = _expected_verdicts(EQUITY_CASES, tolerance)
    assert reported == flagged
    assert refused == flagged                 # the guard refuses exactly what the rule would report
    for n, value in expected.items():         # the rule's computed column is equity(), to the bit (NaN: NULL)
        assert computed[n] == (None if value is not None and math.isnan(value) else value)
    if tolerance == 0.01:                     # hand-checked: which of the cases are mismatches
        assert flagged == {2, 3, 8, 9, 10, 11, 14, 15, 16, 17, 18}


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(*[st.one_of(st.none(), st.floats(-1e12, 1e12), st.integers(-10**9, 10**9),
                                      st.sampled_from([math.inf, -math.inf]))] * 4), min_size=1, max_size=20),
       st.sampled_from([0.0, 0.01, 0.5, 100.0]))
def test_snapshot_rule_agrees_with_accounting_on_any_rows(cases, tolerance):
    # totals near the formula's value, so the tolerance edge is exercised too
    near = [(equity(c, lv, sv) + d if None not in (c, lv, sv) and isinstance(d, float) and math.isfinite(d)
             and abs(d) < 1 else d, c, lv, sv) for d, c, lv, sv in cases]
    for rows in (cases, near):
        reported, refused, _ = _snapshot_verdicts(rows, tolerance)
        flagged, _ = _expected_verdicts(rows, tolerance)
        assert reported == flagged == refused


# -- short lots (SPEC §3: positions are long or short) ---------------------------------------------

def test_a_long_only_book_never_opens_a_short_lot():
    book = TickerBook("AMD")                     # allow_short defaults to False: today's behaviour
    assert book.allow_short is False
    nothing = book.sell(1, 2.0, 12.0, 1)         # nothing held: an orphaned sell, no lot opened
    assert isinstance(nothing, Close) and nothing.shortfall == 2.0 and nothing.opened is None
    assert nothing.side == LONG and not nothing.flip
    lot = book.buy(2, 5.0, 10.0, 2)
    assert isinstance(lot, Lot) and lot.side == LONG
    over = book.sell(3, 7.0, 12.0, 3)            # 7 wanted, 5 held: shortfall 2, nothing opened
    assert over.shortfall == 2.0 and over.opened is None and not book.short_lots
    assert book.positions() == {} and book.position(SHORT) is None


def test_short_sale_opens_a_short_lot_and_its_position():
    book = TickerBook("TSLA", allow_short=True)
    lot = book.sell(1, 2.0, 50.0, 7)             # 2 @ 50, nothing long: opens a short lot
    assert isinstance(lot, Lot) and lot.side == SHORT
    assert (lot.status, lot.remaining, lot.exit_price, lot.exit_time, lot.realized_pnl) == ("OPEN", 2.0, None, None, 0.0)
    assert opening_row_values(lot) == (None, None, "OPEN", None, None)   # an opening leg: no link, no P&L
    lot2 = book.sell(2, 2.0, 60.0, 8)            # shorting more adds a second short lot
    assert isinstance(lot2, Lot) and lot2.side == SHORT
    assert not book.lots and [x.trade_id for x in book.short_lots] == [1, 2]
    # 2 @ 50 + 2 @ 60 = 220 over 4 -> 55, opened at the first lot's time
    assert book.position(SHORT) == ("TSLA", 4.0, 55.0, 7, 2, "short")
    assert book.position() is None and book.position(LONG) is None        # position() stays the long side
    assert book.positions() == {SHORT: ("TSLA", 4.0, 55.0, 7, 2, "short")}
    assert book.open_quantity(SHORT) == 4.0 and book.open_quantity() == 0.0
    # a short position gains when the price falls: (55 - 58) * 4 = -12; (55 - 50) * 4 = 20
    position = book.position(SHORT)
    assert unrealized_pnl(position, 58.0, SHORT) == approx(-12.0)
    assert unrealized_pnl(position, 50.0, SHORT) == approx(20.0)
    assert realized_pnl(100.0, 90.0, 2.0, SHORT) == 20.0     # (100 - 90) * 2
    assert realized_pnl(100.0, 90.0, 2.0, LONG) == -20.0
    # cash: a short sale receives its notional, its cover pays
    assert cash_effect("SELL", 2.0, 50.0, 1.0) == 99.0 and cash_effect("BUY", 2.0, 45.0, 1.0) == -91.0


def test_buy_covers_short_lots_fifo_across_lots_with_the_short_pnl_sign():
    book = TickerBook("AAPL", allow_short=True)
    lot1 = book.sell(1, 10.0, 100.0, 1_000)       # short 10 @ 100
    lot2 = book.sell(2, 20.0, 110.0, 1_010)       # short 20 @ 110
    close = book.buy(3, 25.0, 90.0, 1_020)        # cover 25 @ 90: all of lot 1, then 15 of lot 2
    assert isinstance(close, Close) and close.side == SHORT and not close.flip
    # match 1: 10 of lot 1: (100 - 90) * 10 = 100 (a gain: bought back lower)
    # match 2: 15 of lot 2: (110 - 90) * 15 = 300
    assert [tuple(m) for m in close.matches] == [(3, 1, 10.0, 100.0, 90.0, 100.0, 1_020),
                                                 (3, 2, 15.0, 110.0, 90.0, 300.0, 1_020)]
    assert close.realized_pnl == 400.0 and close.entry_trade_id == 1
    assert close.shortfall == 0.0 and close.consumed == 25.0 and close.opened is None
    assert [lot.trade_id for lot in close.closed_lots] == [1]
    assert close_row_values(close) == (1, 400.0, "CLOSED", 90.0, 1_020)
    assert lot_row_values(lot1) == ("CLOSED", 90.0, 1_020) and lot1.realized_pnl == 100.0
    assert lot_row_values(lot2) == ("OPEN", None, None) and lot2.remaining == 5.0
    assert book.position(SHORT) == ("AAPL", 5.0, 110.0, 1_010, 1, "short") and book.position() is None
    # cover the rest above the entry: a loss, (110 - 120) * 5 = -50
    close2 = book.buy(4, 5.0, 120.0, 1_030)
    assert [(m.entry_trade_id, m.quantity, m.realized_pnl) for m in close2.matches] == [(2, 5.0, -50.0)]
    assert close_row_values(close2) == (2, -50.0, "CLOSED", 120.0, 1_030)
    # lot 2: exit price = (15 * 90 + 5 * 120) / 20 = (1350 + 600) / 20 = 97.5, last match at 1030
    assert lot_row_values(lot2) == ("CLOSED", 97.5, 1_030) and lot2.realized_pnl == 250.0   # 300 - 50
    assert book.positions() == {} and not book.short_lots and not book.lots
    # flat again: the next BUY opens a long lot
    lot3 = book.buy(5, 1.0, 100.0, 1_040)
    assert isinstance(lot3, Lot) and lot3.side == LONG and book.positions() == {LONG: ("AAPL", 1.0, 100.0, 1_040, 1, "long")}


def test_split_flip_cuts_a_trade_into_its_closing_and_opening_parts():
    book = TickerBook("NVDA", allow_short=True)
    assert split_flip(book, "BUY", 3.0) == (0.0, 3.0)     # flat: all opens
    assert split_flip(book, "SELL", 3.0) == (0.0, 3.0)
    book.buy(1, 5.0, 10.0, 1)
    book.buy(2, 5.0, 12.0, 2)                             # long 10
    assert split_flip(book, "BUY", 4.0) == (0.0, 4.0)     # adds to the long side
    assert split_flip(book, "SELL", 4.0) == (4.0, 0.0)    # a partial close
    assert split_flip(book, "SELL", 10.0) == (10.0, 0.0)  # exactly the position: a close, no flip
    assert split_flip(book, "SELL", 10.0 + 4e-10) == (10.0 + 4e-10, 0.0)   # beyond by less than 1e-9: a close
    assert split_flip(book, "SELL", 15.0) == (10.0, 5.0)  # a flip: close 10, open 5 short
    # the writer stores the two parts as two trades at the same time and order
    close = book.sell(3, 10.0, 11.0, 3)
    opened = book.sell(4, 5.0, 11.0, 3)
    assert isinstance(close, Close) and not close.flip and close.shortfall == 0.0
    # (11 - 10) * 5 + (11 - 12) * 5 = 0
    assert [(m.entry_trade_id, m.realized_pnl) for m in close.matches] == [(1, 5.0), (2, -5.0)]
    assert isinstance(opened, Lot) and opened.side == SHORT
    assert book.positions() == {SHORT: ("NVDA", 5.0, 11.0, 3, 1, "short")}
    assert split_flip(book, "BUY", 7.0) == (5.0, 2.0)     # short 5: a BUY of 7 covers 5, opens 2 long
    assert split_flip(book, "SELL", 7.0) == (0.0, 7.0)    # adds to the short side
    # float sums: lots of 0.1 and 0.2 hold 0.30000000000000004
    dust = TickerBook("F", allow_short=True)
    dust.buy(1, 0.1, 10.0, 1)
    dust.buy(2, 0.2, 10.0, 1)
    held, rest = split_flip(dust, "SELL", 0.5)
    assert held == approx(0.3, Q) and rest == approx(0.2, Q) and held + rest == approx(0.5, Q)
    assert split_flip(dust, "SELL", 0.3) == (0.3, 0.0)
    with pytest.raises(ValueError):
        split_flip(dust, "HOLD", 1.0)
    with pytest.raises(ValueError):
        dust.lots_of("both")


def test_a_stored_flip_closes_the_whole_position_and_opens_the_rest():
    # A SELL larger than the long position, stored as one row (the writer never writes one): with
    # shorts allowed, the book closes every long lot and opens the remainder as a short lot.
    book = TickerBook("IBM", allow_short=True)
    lot1 = book.buy(1, 10.0, 100.0, 1)
    flip = book.sell(2, 15.0, 110.0, 2)
    assert isinstance(flip, Close) and flip.flip and flip.side == LONG
    assert [tuple(m) for m in flip.matches] == [(2, 1, 10.0, 100.0, 110.0, 100.0, 2)]   # (110 - 100) * 10
    assert flip.shortfall == 5.0 and flip.consumed == 10.0 and [lot.trade_id for lot in flip.closed_lots] == [1]
    assert close_row_values(flip) == (1, 100.0, "CLOSED", 110.0, 2)
    opened = flip.opened
    assert (opened.trade_id, opened.side, opened.quantity, opened.price, opened.executed_at) == (2, SHORT, 5.0, 110.0, 2)
    assert lot1.status == "CLOSED" and book.positions() == {SHORT: ("IBM", 5.0, 110.0, 2, 1, "short")}
    # and back: a BUY of 8 covers the 5 short ((110 - 100) * 5 = 50) and opens 3 long
    back = book.buy(3, 8.0, 100.0, 3)
    assert back.flip and back.side == SHORT and back.shortfall == 3.0
    assert [(m.entry_trade_id, m.quantity, m.realized_pnl) for m in back.matches] == [(2, 5.0, 50.0)]
    assert opened.status == "CLOSED" and opened.exit_price == 100.0 and opened.exit_time == 3
    assert (back.opened.side, back.opened.quantity) == (LONG, 3.0)
    assert book.positions() == {LONG: ("IBM", 3.0, 100.0, 3, 1, "long")}
    # long-only, the same SELL reports its remainder as a shortfall and opens nothing (an orphaned sell)
    strict = TickerBook("IBM")
    strict.buy(1, 10.0, 100.0, 1)
    orphan = strict.sell(2, 15.0, 110.0, 2)
    assert orphan.shortfall == 5.0 and orphan.opened is None and strict.positions() == {}
    # covering never depends on the switch: a book that holds short lots covers them with a BUY and
    # opens the BUY's remainder long even once shorts are no longer allowed
    book = TickerBook("IBM", allow_short=True)
    book.sell(1, 2.0, 50.0, 1)
    book.allow_short = False
    cover = book.buy(2, 3.0, 40.0, 2)            # (50 - 40) * 2 = 20; 1 left opens long
    assert cover.realized_pnl == 20.0 and cover.opened is not None and cover.opened.side == LONG
    assert book.positions() == {LONG: ("IBM", 1.0, 40.0, 2, 1, "long")}
    assert isinstance(book.sell(3, 2.0, 45.0, 3), Close) and not book.short_lots   # and no new short opens


def test_replay_and_replay_book_with_shorts():
    rows = [(1, "SELL", 2.0, 10.0, 1), (2, "BUY", 1.0, 8.0, 2), (3, "SELL", 1.0, 9.0, 3)]
    book = replay_book("AAA", rows, allow_short=True)
    # short 2 @ 10; cover 1 @ 8 ((10 - 8) * 1 = 2); short 1 more @ 9 -> 1 @ 10 + 1 @ 9
    assert [(lot.trade_id, lot.remaining, lot.side) for lot in book.short_lots] == [(1, 1.0, SHORT), (3, 1.0, SHORT)]
    assert book.position(SHORT) == ("AAA", 2.0, 9.5, 1, 2, "short")
    outcomes = [outcome for *_, outcome in replay([("AAA", *r) for r in rows], allow_short=True)]
    assert [type(o).__name__ for o in outcomes] == ["Lot", "Close", "Lot"]
    assert outcomes[1].realized_pnl == 2.0
    # long-only replay of the same trades: the SELLs are orphaned, the BUY opens a lot
    strict = [outcome for *_, outcome in replay([("AAA", *r) for r in rows])]
    assert [type(o).__name__ for o in strict] == ["Close", "Lot", "Close"]
    assert replay_book("AAA", rows).position() is None


# -- shorts: properties against the independent FIFO -----------------------------------------------

def _outcomes(ordered, allow_short=True):
    lots: dict[int, Lot] = {}
    closes: dict[int, Close] = {}
    books: dict[str, TickerBook] = {}
    for ticker, book, trade, outcome in replay(ordered, allow_short=allow_short):
        books[ticker] = book
        if isinstance(outcome, Close):
            assert outcome.side == (SHORT if trade[2] == "BUY" else LONG)
            closes[trade[1]] = outcome
            if outcome.opened is not None:
                lots[trade[1]] = outcome.opened
        else:
            assert outcome.side == (LONG if trade[2] == "BUY" else SHORT)
            lots[trade[1]] = outcome
    return lots, closes, books


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(core_trades(shorts=True))
def test_core_with_shorts_equals_independent_fifo(trades):
    ref = fifo(list(reversed(trades)), allow_short=True)
    ordered = sorted(trades, key=lambda t: (t[0], t[5], t[1]))
    lots, closes, books = _outcomes(ordered)

    assert set(closes) == set(ref.sells) and set(lots) == set(ref.lots)
    for trade_id, close in closes.items():
        want = ref.sells[trade_id]
        assert close.side == want.side
        assert_matches_equal(close.matches, want.matches)
        assert close.shortfall == approx(float(want.shortfall), Q)
        # with shorts allowed every remainder opens a lot: a stored flip
        assert (close.opened is not None) == (want.shortfall > 0) == close.flip
        assert close.realized_pnl == approx(float(want.realized_pnl))
        assert close.realized_pnl == approx(math.fsum(m.realized_pnl for m in close.matches))
        assert close.entry_trade_id == want.entry_trade_id
        assert close_row_values(close) == (want.entry_trade_id, close.realized_pnl, "CLOSED", close.price,
                                           close.executed_at)
        assert [lot.trade_id for lot in close.closed_lots] == [
            m.entry_trade_id for m in want.matches if ref.lots[m.entry_trade_id].status == "CLOSED"
            and ref.lots[m.entry_trade_id].matches[-1].close_trade_id == trade_id]
        for m in close.matches:                      # the P&L sign follows the side closed
            gain = m.exit_price - m.entry_price if close.side == LONG else m.entry_price - m.exit_price
            assert m.realized_pnl == gain * m.quantity
    for trade_id, lot in lots.items():
        want = ref.lots[trade_id]
        assert (lot.side, lot.executed_at, lot.price) == (want.side, want.executed_at, float(want.price))
        assert lot.quantity == approx(float(want.quantity), Q)
        assert lot.status == want.status and lot_row_values(lot)[0] == want.status
        assert lot.remaining == approx(float(want.remaining), Q)
        assert lot.exit_time == want.exit_time
        assert lot.realized_pnl == approx(float(sum((m.realized_pnl for m in want.matches), 0)))
        if want.exit_price is None:
            assert lot.exit_price is None
        else:
            assert math.isclose(lot.exit_price, float(want.exit_price), rel_tol=1e-12, abs_tol=1e-9)
    for ticker, book in books.items():
        assert not (book.lots and book.short_lots)               # never long and short at once
        for side in (LONG, SHORT):
            assert [(lot.trade_id, round(lot.remaining, 9)) for lot in book.lots_of(side)] == [
                (lot.trade_id, round(float(lot.remaining), 9)) for lot in ref.open_lots(ticker, side)]
        wanted = {side: p for side, p in ((LONG, ref.positions.get(ticker)), (SHORT, ref.short_positions.get(ticker)))
                  if p is not None}
        positions = book.positions()
        assert set(positions) == set(wanted)
        for side, want in wanted.items():
            position = positions[side]
            assert position == book.position(side)
            assert position.quantity == approx(float(want.quantity), Q)
            assert math.isclose(position.entry_price, float(want.entry_price), rel_tol=1e-9)
            assert (position.opened_at, position.lots) == (want.opened_at, want.lots)
        # quantity conserved: Σ BUY − Σ SELL = open long − open short ...
        bought = math.fsum(t[3] for t in trades if t[0] == ticker and t[2] == "BUY")
        sold = math.fsum(t[3] for t in trades if t[0] == ticker and t[2] == "SELL")
        assert bought == approx(float(ref.bought[ticker]), Q) and sold == approx(float(ref.sold[ticker]), Q)
        assert bought - sold == approx(book.open_quantity(LONG) - book.open_quantity(SHORT), 1e-6)
        # ... and per side: what was opened = what was closed + what is open
        for side in (LONG, SHORT):
            side_lots = [lot for lot in lots.values() if lot.side == side and ref.lots[lot.trade_id].ticker == ticker]
            opened = math.fsum(lot.quantity for lot in side_lots)
            closed = math.fsum(m.quantity for c in closes.values() if c.side == side and ref.sells[c.trade_id].ticker == ticker
                               for m in c.matches)
            assert opened == approx(closed + book.open_quantity(side), 1e-6)
        # every trade's quantity is its close plus its opening
        for t in trades:
            if t[0] == ticker:
                c, lot = closes.get(t[1]), lots.get(t[1])
                assert (c.consumed if c else 0.0) + (lot.quantity if lot else 0.0) == approx(t[3], Q)


def _close_values(close: Close) -> tuple:
    return (*close[:8], [lot.trade_id for lot in close.closed_lots], close.side, close.opened)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(core_trades())
def test_long_only_sequences_replay_the_same_with_shorts_allowed(trades):
    """Where no SELL goes beyond the long position, allowing shorts changes nothing (to the bit)."""
    ordered = sorted(trades, key=lambda t: (t[0], t[5], t[1]))
    _, strict, _ = _outcomes(ordered, allow_short=False)
    # each ticker's trades up to its first oversell (from there on the two books differ)
    cut = {}
    for trade in ordered:
        close = strict.get(trade[1])
        if close is not None and close.shortfall and trade[0] not in cut:
            cut[trade[0]] = (trade[5], trade[1])
    kept = [t for t in ordered if t[0] not in cut or (t[5], t[1]) < cut[t[0]]]
    long_lots, long_closes, long_books = _outcomes(kept, allow_short=False)
    lots, closes, books = _outcomes(kept)
    assert {t: _close_values(c) for t, c in closes.items()} == {t: _close_values(c) for t, c in long_closes.items()}
    assert [(t, lot.side, lot.remaining, lot.matched_value, lot_row_values(lot)) for t, lot in lots.items()] == [
        (t, lot.side, lot.remaining, lot.matched_value, lot_row_values(lot)) for t, lot in long_lots.items()]
    assert {t: b.positions() for t, b in books.items()} == {t: b.positions() for t, b in long_books.items()}
    assert all(not b.short_lots for b in books.values())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(core_trades(shorts=True))
def test_writer_split_flips_leave_every_trade_opening_or_closing(trades):
    """Each planned trade cut by split_flip into a close and an opening (two trades, same time, in that
    order): no stored trade is a flip, and the independent FIFO agrees on the result."""
    ordered = sorted(trades, key=lambda t: (t[0], t[5], t[1]))
    books: dict[str, TickerBook] = {}
    written = []
    next_id = 1
    for ticker, _, action, quantity, price, when in ordered:
        book = books.setdefault(ticker, TickerBook(ticker, allow_short=True))
        close_qty, open_qty = split_flip(book, action, quantity)
        assert close_qty >= 0.0 and open_qty >= 0.0 and close_qty + open_qty == approx(quantity, Q)
        assert (close_qty == 0.0) == (not book.lots_of(SHORT if action == "BUY" else LONG))
        for part in (close_qty, open_qty):
            if part:
                outcome = (book.buy if action == "BUY" else book.sell)(next_id, part, price, when)
                if part is close_qty:
                    assert isinstance(outcome, Close) and not outcome.flip and outcome.shortfall == 0.0
                else:
                    assert isinstance(outcome, Lot)
                written.append((ticker, next_id, action, part, price, when))
                next_id += 1
    ref = fifo(written, allow_short=True)
    assert all(s.shortfall == 0 for s in ref.sells.values())          # the oracle sees no flip either
    for ticker, book in books.items():
        for side in (LONG, SHORT):
            assert [(lot.trade_id, round(lot.remaining, 9)) for lot in book.lots_of(side)] == [
                (lot.trade_id, round(float(lot.remaining), 9)) for lot in ref.open_lots(ticker, side)]
