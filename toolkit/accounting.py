"""The ledger's numbers, defined once (SPEC §3 "Ledger semantics"). Pure: no I/O, no SQL.

Positions are long-only. A BUY opens a lot; a SELL closes quantity from the open lots of its ticker,
first in, first out by (``executed_at``, ``trade_id``), possibly across several lots and partially.
Each consumed piece is a :class:`Match` whose realized P&L is ``(exit − entry) × quantity``, gross of
commissions. A SELL's realized P&L is the sum of its matches; its entry trade is the first lot it
consumed. A lot is CLOSED once fully consumed; its exit price is then the quantity-weighted average
exit price of its matches and its exit time the time of the last one. An opening leg never carries
realized P&L. Cash is ``starting capital + Σ adjustments − Σ BUY notional + Σ SELL notional − Σ
commission``. The open position of a ticker is the sum of its remaining lot quantity, at the
quantity-weighted entry price of the remaining lots.

Everything in the toolkit that needs these numbers — the trade writer, the session fixtures, the
integrity rules and the repairs — calls this module:

- replaying: :func:`replay_book` feeds one ticker's trades into a :class:`TickerBook`;
  :func:`replay` streams many tickers' trades in (ticker, time) order, holding only the open lots
  of the current ticker; a caller that needs each trade's outcome as it comes (the ledger scan, the
  session generator) calls :meth:`TickerBook.buy` / :meth:`TickerBook.sell` itself;
- the stored values: :func:`close_row_values` (a SELL's own ``trades`` row), :func:`opening_row_values`
  (a BUY's), :func:`lot_row_values` (a lot's status and exit), and :class:`Match`, which is a
  ``lot_matches`` row;
- comparing: :func:`money_differs` and :func:`same_quantity`, with one rule for NULL and NaN;
- formulas: :func:`cash_balance`, :func:`cash_effect`, :func:`realized_pnl`,
  :func:`unrealized_pnl`, :func:`equity`.

Quantities compare exactly after rounding to 1e-9 (:data:`QTY_DECIMALS`); money compares within a
tolerance (:data:`MONEY_TOLERANCE`, configurable per rule). In both, NULL (``None``) equals only
NULL, and a value that is not a finite number (NaN, an infinity, text) equals nothing, itself
included.
"""
from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from typing import NamedTuple

__all__ = [
    "QTY_DECIMALS",
    "QTY_EPSILON",
    "MONEY_TOLERANCE",
    "Match",
    "Lot",
    "Close",
    "Position",
    "TickerBook",
    "replay",
    "replay_book",
    "OPEN",
    "CLOSED",
    "TRADE_ROW_COLUMNS",
    "LOT_ROW_COLUMNS",
    "MATCH_COLUMNS",
    "close_row_values",
    "opening_row_values",
    "lot_row_values",
    "realized_pnl",
    "unrealized_pnl",
    "cash_balance",
    "cash_effect",
    "equity",
    "same_quantity",
    "round_quantity",
    "money_differs",
    "OutOfOrderError",
]

#: Quantities are compared after rounding to this many decimals.
QTY_DECIMALS = 9
#: Anything smaller in magnitude than this rounds to a zero quantity.
QTY_EPSILON = 0.5 * 10.0 ** -QTY_DECIMALS
#: Default tolerance for money comparisons (cash, P&L, prices).
MONEY_TOLERANCE = 0.01
#: A lot's status while quantity remains / once fully consumed; a close is always CLOSED.
OPEN = "OPEN"
CLOSED = "CLOSED"


def round_quantity(value: float) -> float:
    """A quantity at the ledger's precision (1e-9)."""
    return round(value, QTY_DECIMALS)


# The comparison rule, the same for quantities and money (and so for every stored value a rule
# compares with a computed one): NULL (None) equals only NULL; a value that is not a finite number
# — NaN, an infinity, text or a blob stored in a REAL column — equals nothing, itself included.

def same_quantity(a: object, b: object) -> bool:
    """Quantities are equal when they agree after rounding to 1e-9.

    ``None`` equals only ``None``; NaN, an infinity or a value that is not a number equals nothing.
    """
    if a is None or b is None:
        return a is b
    try:
        ra, rb = round(a, QTY_DECIMALS), round(b, QTY_DECIMALS)  # type: ignore[call-overload]
    except TypeError:
        return False
    return ra == rb and ra - rb == 0.0   # inf - inf is NaN: infinities are never the same quantity


def money_differs(a: object, b: object, tolerance: float = MONEY_TOLERANCE) -> bool:
    """True when two money amounts are not the same amount within ``tolerance`` (symmetric).

    ``None`` equals only ``None``; NaN, an infinity or a value that is not a number equals nothing.
    """
    if a is None or b is None:
        return a is not b
    try:
        return not abs(a - b) <= tolerance  # type: ignore[operator]  # NaN (also inf - inf) is never <=
    except TypeError:
        return True


def realized_pnl(entry_price: float, exit_price: float, quantity: float) -> float:
    """P&L of closing ``quantity`` bought at ``entry_price`` and sold at ``exit_price`` (gross)."""
    return (exit_price - entry_price) * quantity


def unrealized_pnl(position: Position, price: float) -> float:
    """P&L of an open position marked at ``price`` (gross)."""
    return (price - position.entry_price) * position.quantity


def equity(cash: float, long_value: float, short_value: float) -> float:
    """A portfolio snapshot's total equity: cash plus long minus short market value."""
    return cash + long_value - short_value


def cash_effect(action: str, quantity: float, price: float, commission: float) -> float:
    """How one trade changes cash: a BUY pays its notional, a SELL receives it; both pay commission."""
    notional = quantity * price
    return (notional if action == "SELL" else -notional) - commission


def cash_balance(
    starting_capital: float,
    adjustments: float,
    buy_notional: float,
    sell_notional: float,
    commissions: float,
) -> float:
    """The cash formula of SPEC §3, from the ledger's sums."""
    return starting_capital + adjustments - buy_notional + sell_notional - commissions


class Match(NamedTuple):
    """One piece of a lot consumed by a SELL (a ``lot_matches`` row)."""

    close_trade_id: int
    entry_trade_id: int
    quantity: float
    entry_price: float
    exit_price: float
    realized_pnl: float
    matched_at: int


class Lot:
    """An opening BUY and how much of it remains. Mutable while open; final once closed."""

    __slots__ = ("trade_id", "executed_at", "quantity", "price", "remaining",
                 "matched_quantity", "matched_value", "realized_pnl", "last_exit_time")

    def __init__(self, trade_id: int, executed_at: int, quantity: float, price: float) -> None:
        self.trade_id = trade_id
        self.executed_at = executed_at
        self.quantity = quantity
        self.price = price
        self.remaining = quantity
        self.matched_quantity = 0.0
        self.matched_value = 0.0   # Σ exit price × quantity over its matches
        self.realized_pnl = 0.0    # Σ P&L of its matches (for closed-position records)
        self.last_exit_time: int | None = None

    @property
    def closed(self) -> bool:
        return self.remaining == 0.0

    # status, exit price and exit time are defined once, by lot_row_values (what the ledger stores)

    @property
    def status(self) -> str:
        """OPEN while quantity remains, CLOSED once fully consumed."""
        return lot_row_values(self)[0]

    @property
    def exit_price(self) -> float | None:
        """Quantity-weighted average exit price once CLOSED; ``None`` while OPEN."""
        return lot_row_values(self)[1]

    @property
    def exit_time(self) -> int | None:
        """The time of the last match once CLOSED; ``None`` while OPEN."""
        return lot_row_values(self)[2]

    def __repr__(self) -> str:
        return (f"Lot(trade_id={self.trade_id}, executed_at={self.executed_at}, quantity={self.quantity!r}, "
                f"price={self.price!r}, remaining={self.remaining!r}, status={self.status})")


class Close(NamedTuple):
    """The result of one SELL."""

    trade_id: int
    quantity: float
    price: float
    executed_at: int
    matches: tuple[Match, ...]
    realized_pnl: float
    entry_trade_id: int | None
    shortfall: float
    closed_lots: tuple[Lot, ...]

    @property
    def consumed(self) -> float:
        return self.quantity - self.shortfall


class Position(NamedTuple):
    """The open position of one ticker: what ``positions.db`` must hold."""

    ticker: str
    quantity: float
    entry_price: float
    opened_at: int
    lots: int


_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ (a hot path)


def _exact_sum(values: list[float]) -> float:
    """``math.fsum``, total: a sum beyond the float range is ±inf instead of an ``OverflowError``.

    Values within the ledger's bounds (``toolkit.domain.MAX_AMOUNT``) never overflow; the callers that
    read stored rows leave rows beyond them out, and this keeps the core from raising if one slips in.
    """
    try:
        return math.fsum(values)
    except OverflowError:
        return sum(values)   # overflows to ±inf


class OutOfOrderError(ValueError):
    """A trade fed to a book before one it follows in (executed_at, trade_id) order."""


class TickerBook:
    """The open lots of one ticker, consumed first in, first out.

    Feed it that ticker's trades in (``executed_at``, ``trade_id``) order through :meth:`buy` and
    :meth:`sell`. It holds only the lots that are still open.
    """

    __slots__ = ("ticker", "lots", "_last")

    def __init__(self, ticker: str) -> None:
        self.ticker = ticker
        self.lots: deque[Lot] = deque()
        self._last: tuple[int, int] | None = None

    def _out_of_order(self, executed_at: int, trade_id: int) -> None:
        assert self._last is not None
        raise OutOfOrderError(
            f"{self.ticker}: trade {trade_id} at {executed_at} does not follow trade "
            f"{self._last[1]} at {self._last[0]} in (executed_at, trade_id) order"
        )

    # buy() and sell() run once per trade for every ledger check, so they avoid method calls and
    # build their tuples directly; the arithmetic is the same in every path (stored values written
    # by an earlier version compare equal to the exact bit).

    def buy(self, trade_id: int, quantity: float, price: float, executed_at: int) -> Lot:
        """Open a lot."""
        key = (executed_at, trade_id)
        last = self._last
        if last is not None and key <= last:
            self._out_of_order(executed_at, trade_id)
        self._last = key
        lot = Lot(trade_id, executed_at, quantity, price)
        self.lots.append(lot)
        return lot

    def open_quantity(self) -> float:
        return _exact_sum([lot.remaining for lot in self.lots])

    def shortfall_of(self, quantity: float) -> float:
        """How much of a SELL of ``quantity`` the open lots could not cover (0 when covered)."""
        short = quantity - self.open_quantity()
        return short if short >= QTY_EPSILON else 0.0

    def sell(self, trade_id: int, quantity: float, price: float, executed_at: int) -> Close:
        """Close ``quantity`` FIFO. What the open lots cannot cover is reported as ``shortfall``."""
        key = (executed_at, trade_id)
        last = self._last
        if last is not None and key <= last:
            self._out_of_order(executed_at, trade_id)
        self._last = key
        lots = self.lots
        if lots and quantity >= QTY_EPSILON and lots[0].remaining > quantity:
            # The common case: the first open lot covers the whole SELL (one match).
            lot = lots[0]
            piece = (price - lot.price) * quantity
            match = _new(Match, (trade_id, lot.trade_id, quantity, lot.price, price, piece, executed_at))
            lot.matched_quantity += quantity
            lot.matched_value += price * quantity
            lot.realized_pnl += piece
            lot.last_exit_time = executed_at
            rest = lot.remaining - quantity
            if rest < QTY_EPSILON:
                lot.remaining = 0.0
                lots.popleft()
                closed: tuple[Lot, ...] = (lot,)
            else:
                lot.remaining = rest
                closed = ()
            return _new(Close, (trade_id, quantity, price, executed_at, (match,), 0.0 + piece, lot.trade_id, 0.0, closed))
        want = quantity
        matches: list[Match] = []
        consumed: list[Lot] = []
        pnl = 0.0
        while want >= QTY_EPSILON and lots:
            lot = lots[0]
            take = lot.remaining if lot.remaining <= want else want
            piece = (price - lot.price) * take
            matches.append(_new(Match, (trade_id, lot.trade_id, take, lot.price, price, piece, executed_at)))
            pnl += piece
            lot.matched_quantity += take
            lot.matched_value += price * take
            lot.realized_pnl += piece
            lot.last_exit_time = executed_at
            rest = lot.remaining - take
            want -= take
            if rest < QTY_EPSILON:
                lot.remaining = 0.0
                lots.popleft()
                consumed.append(lot)
            else:
                lot.remaining = rest
        shortfall = want if want >= QTY_EPSILON else 0.0
        return _new(Close, (trade_id, quantity, price, executed_at, tuple(matches), pnl,
                            matches[0].entry_trade_id if matches else None, shortfall, tuple(consumed)))

    def position(self) -> Position | None:
        """The open position (``None`` when flat)."""
        if not self.lots:
            return None
        quantity = _exact_sum([lot.remaining for lot in self.lots])
        cost = _exact_sum([lot.remaining * lot.price for lot in self.lots])
        return Position(self.ticker, quantity, cost / quantity, self.lots[0].executed_at, len(self.lots))


#: A trade as the accounting needs it: the executed facts only.
#: (ticker, trade_id, action, quantity, price, executed_at)
TradeFacts = tuple[str, int, str, float, float, int]


def replay(trades: Iterable[TradeFacts]) -> Iterator[tuple[str, TickerBook, TradeFacts, Close | Lot]]:
    """Stream trades sorted by (ticker, executed_at, trade_id) through one book per ticker.

    Yields ``(ticker, book, trade, outcome)`` for every trade: the :class:`Lot` a BUY opened or the
    :class:`Close` a SELL produced. Only the current ticker's open lots are held; a new book starts
    whenever the ticker changes. After the last trade of a ticker, ``book.position()`` is its position.
    """
    book: TickerBook | None = None
    for trade in trades:
        ticker, trade_id, action, quantity, price, executed_at = trade
        if book is None or ticker != book.ticker:
            book = TickerBook(ticker)
        if action == "BUY":
            yield ticker, book, trade, book.buy(trade_id, quantity, price, executed_at)
        else:
            yield ticker, book, trade, book.sell(trade_id, quantity, price, executed_at)


def replay_book(ticker: str, rows: Iterable[tuple[int, str, float, float, int]]) -> TickerBook:
    """The book of one ticker after its trades ``(trade_id, action, quantity, price, executed_at)``.

    ``rows`` come in (``executed_at``, ``trade_id``) order (:class:`OutOfOrderError` otherwise); a
    BUY opens a lot and any other row closes FIFO, as in :func:`replay`. The returned book holds the
    lots still open: its :meth:`~TickerBook.position`, :meth:`~TickerBook.open_quantity`, and the
    state to record the ticker's next trade on.
    """
    book = TickerBook(ticker)
    buy, sell = book.buy, book.sell
    for trade_id, action, quantity, price, executed_at in rows:
        if action == "BUY":
            buy(trade_id, quantity, price, executed_at)
        else:
            sell(trade_id, quantity, price, executed_at)
    return book


# -- the stored values ---------------------------------------------------------------------------
# How an outcome of the FIFO is written to the ledger. The trade writer, the session fixtures and
# the integrity rules and repairs all take the values from here.

#: The columns of a ``trades`` row that the accounting decides (the executed facts and the bot's
#: labels are the rest), in the order :func:`close_row_values` and :func:`opening_row_values` return them.
TRADE_ROW_COLUMNS = ("entry_trade_id", "realized_pnl", "status", "exit_price", "exit_time")

#: The columns of a lot's ``trades`` row that change as the lot is consumed (:func:`lot_row_values`).
LOT_ROW_COLUMNS = ("status", "exit_price", "exit_time")

#: The columns of a ``lot_matches`` row: a :class:`Match` is that row, in this order.
MATCH_COLUMNS = Match._fields


def close_row_values(close: Close) -> tuple[int | None, float, str, float, int]:
    """A SELL's own ``trades`` values (:data:`TRADE_ROW_COLUMNS`): linked to the first lot it
    consumed, carrying the sum of its matches' P&L, CLOSED at its own price and time."""
    return (close.entry_trade_id, close.realized_pnl, CLOSED, close.price, close.executed_at)


def opening_row_values(lot: Lot) -> tuple[None, None, str, float | None, int | None]:
    """A BUY's own ``trades`` values (:data:`TRADE_ROW_COLUMNS`): an opening leg links to no lot and
    never carries realized P&L; its status and exit are the lot's (:func:`lot_row_values`)."""
    return (None, None, *lot_row_values(lot))


_OPEN_LOT_ROW = (OPEN, None, None)


def lot_row_values(lot: Lot) -> tuple[str, float | None, int | None]:
    """A lot's ``status, exit_price, exit_time`` (:data:`LOT_ROW_COLUMNS`): OPEN with no exit while
    quantity remains; CLOSED at the quantity-weighted average exit price of its matches and the
    time of the last one once fully consumed. (:attr:`Lot.status`, :attr:`Lot.exit_price` and
    :attr:`Lot.exit_time` are these values; the ledger scan calls this once per closed lot.)"""
    if lot.remaining != 0.0:
        return _OPEN_LOT_ROW
    matched = lot.matched_quantity
    return (CLOSED, lot.matched_value / matched if matched > 0.0 else None, lot.last_exit_time)
