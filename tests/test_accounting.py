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

from fifo_reference import UNIT, fifo, quantities_for, steps
from toolkit.accounting import (
    QTY_EPSILON,
    Close,
    Lot,
    OutOfOrderError,
    TickerBook,
    cash_balance,
    cash_effect,
    money_differs,
    realized_pnl,
    replay,
    replay_ticker,
    round_quantity,
    same_quantity,
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
    assert book.position() == (("KO", 3.0, 60.0, 7, 1))


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


def test_replay_starts_a_new_book_per_ticker_and_replay_ticker_agrees():
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
    bbb = replay_ticker("BBB", [(2, "BUY", 4.0, 5.0, 2), (4, "SELL", 4.0, 4.0, 4)])
    # (4 - 5) * 4 = -4
    assert bbb.ticker == "BBB" and bbb.position is None
    assert [c.realized_pnl for c in bbb.closes] == [-4.0]
    assert [(lot.trade_id, lot.status, lot.exit_price) for lot in bbb.lots] == [(2, "CLOSED", 4.0)]


# -- properties against the independent FIFO -------------------------------------------------------

@st.composite
def core_trades(draw):
    """Trades in FIFO order with many same-second ties; trade ids are not monotone in time
    (only within one second), so the (executed_at, trade_id) order is really exercised."""
    planned = quantities_for(draw(steps), oversell="consume")
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


@settings(max_examples=60, deadline=None)
@given(core_trades())
def test_replay_ticker_equals_replay(trades):
    ordered = sorted(trades, key=lambda t: (t[0], t[5], t[1]))
    streamed: dict[str, list] = defaultdict(list)
    for ticker, _, _, outcome in replay(ordered):
        if isinstance(outcome, Close):
            streamed[ticker].append((outcome.trade_id, outcome.matches, outcome.shortfall))
    for ticker in {t[0] for t in trades}:
        result = replay_ticker(ticker, [t[1:] for t in ordered if t[0] == ticker])
        assert [(c.trade_id, c.matches, c.shortfall) for c in result.closes] == streamed[ticker]
        assert [lot.trade_id for lot in result.lots] == [t[1] for t in ordered if t[0] == ticker and t[2] == "BUY"]
