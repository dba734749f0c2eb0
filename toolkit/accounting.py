"""The ledger's numbers, defined once (SPEC §3 "Ledger semantics"). Pure: no I/O, no SQL.

Positions are long or short. A BUY on a flat or long ticker opens a long lot; a SELL on a long ticker
closes quantity from its open long lots, first in, first out by (``executed_at``, ``trade_id``),
possibly across several lots and partially. Symmetrically a SELL on a flat or short ticker opens a
short lot (when shorts are allowed: otherwise it is an orphaned sell) and a BUY on a short ticker
covers short lots FIFO. Each consumed piece is a :class:`Match` whose realized P&L is ``(exit −
entry) × quantity`` for a long lot and ``(entry − exit) × quantity`` for a short one, gross of
commissions. A closing trade's realized P&L is the sum of its matches; its entry trade is the first
lot it consumed. A lot of either side is CLOSED once fully consumed; its exit price is then the
quantity-weighted average exit price of its matches and its exit time the time of the last one. An
opening leg never carries realized P&L. Every stored trade either opens or closes: a trade larger
than the open position on the other side (a flip) is written as two trades, split by
:func:`split_flip`. Cash is ``starting capital + Σ adjustments − Σ BUY notional + Σ SELL notional −
Σ commission`` (a short sale receives its notional, its cover pays). The open position of a ticker
and side is the sum of its remaining lot quantity, at the quantity-weighted entry price of those lots.

Everything in the toolkit that needs these numbers — the trade writer, the session fixtures, the
integrity rules and the repairs — calls this module (the book itself lives in :mod:`toolkit.lots`,
re-exported here):

- replaying: :func:`replay_book` feeds one ticker's trades into a :class:`TickerBook`;
  :func:`replay` streams many tickers' trades in (ticker, time) order, holding only the open lots
  of the current ticker; a caller that needs each trade's outcome as it comes (the ledger scan, the
  session generator) calls :meth:`TickerBook.buy` / :meth:`TickerBook.sell` itself. A book is
  long-only unless made with ``allow_short=True``: then a SELL with no long lot open returns the
  short :class:`Lot` it opened, a BUY on short lots the :class:`Close` that covered them, and a
  stored flip a :class:`Close` whose ``opened`` is the lot its remainder opened;
- the stored values: :func:`close_row_values` (a closing trade's own ``trades`` row),
  :func:`opening_row_values` (an opening trade's), :func:`lot_row_values` (a lot's status and exit),
  and :class:`Match`, which is a ``lot_matches`` row;
- comparing: :func:`money_differs` and :func:`same_quantity`, with one rule for NULL and NaN;
- formulas: :func:`cash_balance`, :func:`cash_effect`, :func:`realized_pnl`,
  :func:`unrealized_pnl`, :func:`equity`.

Quantities compare exactly after rounding to 1e-9 (:data:`QTY_DECIMALS`); money compares within a
tolerance (:data:`MONEY_TOLERANCE`, configurable per rule). In both, NULL (``None``) equals only
NULL, and a value that is not a finite number (NaN, an infinity, text) equals nothing, itself
included.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from .lots import (
    CLOSED,
    LONG,
    OPEN,
    QTY_DECIMALS,
    QTY_EPSILON,
    SHORT,
    Close,
    Lot,
    Match,
    OutOfOrderError,
    Position,
    TickerBook,
    lot_row_values,
    split_flip,
)

__all__ = [
    "QTY_DECIMALS",
    "QTY_EPSILON",
    "MONEY_TOLERANCE",
    "LONG",
    "SHORT",
    "Match",
    "Lot",
    "Close",
    "Position",
    "TickerBook",
    "split_flip",
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

#: Default tolerance for money comparisons (cash, P&L, prices).
MONEY_TOLERANCE = 0.01


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


def realized_pnl(entry_price: float, exit_price: float, quantity: float, side: str = LONG) -> float:
    """P&L of closing ``quantity`` of a lot opened at ``entry_price`` at ``exit_price`` (gross):
    ``(exit − entry) × quantity`` for a long lot, ``(entry − exit) × quantity`` for a short one."""
    if side == SHORT:
        return (entry_price - exit_price) * quantity
    return (exit_price - entry_price) * quantity


def unrealized_pnl(position: Position, price: float, side: str = LONG) -> float:
    """P&L of an open position of ``side`` (long by default) marked at ``price`` (gross)."""
    if side == SHORT:
        return (position.entry_price - price) * position.quantity
    return (price - position.entry_price) * position.quantity


def equity(cash: float, long_value: float, short_value: float) -> float:
    """A portfolio snapshot's total equity: cash plus long minus short market value."""
    return cash + long_value - short_value


def cash_effect(action: str, quantity: float, price: float, commission: float) -> float:
    """How one trade changes cash: a BUY pays its notional, a SELL receives it (a short sale too; its
    covering BUY pays), both pay commission."""
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


#: A trade as the accounting needs it: the executed facts only.
#: (ticker, trade_id, action, quantity, price, executed_at)
TradeFacts = tuple[str, int, str, float, float, int]


def replay(trades: Iterable[TradeFacts], *, allow_short: bool = False,
           ) -> Iterator[tuple[str, TickerBook, TradeFacts, Close | Lot]]:
    """Stream trades sorted by (ticker, executed_at, trade_id) through one book per ticker.

    Yields ``(ticker, book, trade, outcome)`` for every trade: the :class:`Lot` it opened or the
    :class:`Close` it produced (long-only, the default: a BUY opens, a SELL closes; with
    ``allow_short`` either may do either, see :class:`TickerBook`). Only the current ticker's open
    lots are held; a new book starts whenever the ticker changes. After the last trade of a ticker,
    ``book.position()`` is its long position and ``book.positions()`` its position of each side.
    """
    book: TickerBook | None = None
    for trade in trades:
        ticker, trade_id, action, quantity, price, executed_at = trade
        if book is None or ticker != book.ticker:
            book = TickerBook(ticker, allow_short)
        if action == "BUY":
            yield ticker, book, trade, book.buy(trade_id, quantity, price, executed_at)
        else:
            yield ticker, book, trade, book.sell(trade_id, quantity, price, executed_at)


def replay_book(ticker: str, rows: Iterable[tuple[int, str, float, float, int]], *,
                allow_short: bool = False) -> TickerBook:
    """The book of one ticker after its trades ``(trade_id, action, quantity, price, executed_at)``.

    ``rows`` come in (``executed_at``, ``trade_id``) order (:class:`OutOfOrderError` otherwise); a
    BUY is fed to :meth:`~TickerBook.buy` and any other row to :meth:`~TickerBook.sell`, as in
    :func:`replay`. The returned book holds the lots still open: its :meth:`~TickerBook.position`
    (:meth:`~TickerBook.positions`), :meth:`~TickerBook.open_quantity`, and the state to record the
    ticker's next trade on (:func:`split_flip` says how that trade splits).
    """
    book = TickerBook(ticker, allow_short)
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
    """A closing trade's own ``trades`` values (:data:`TRADE_ROW_COLUMNS`) — a SELL of long lots or a
    BUY covering short ones: linked to the first lot it consumed, carrying the sum of its matches'
    P&L, CLOSED at its own price and time. (A stored flip's :attr:`Close.opened` part has no row of its
    own: the writer never stores one; the rules report it.)"""
    return (close.entry_trade_id, close.realized_pnl, CLOSED, close.price, close.executed_at)


def opening_row_values(lot: Lot) -> tuple[None, None, str, float | None, int | None]:
    """An opening trade's own ``trades`` values (:data:`TRADE_ROW_COLUMNS`), long or short: an opening
    leg links to no lot and never carries realized P&L; its status and exit are the lot's
    (:func:`lot_row_values`)."""
    return (None, None, *lot_row_values(lot))
