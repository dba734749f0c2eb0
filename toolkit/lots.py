"""The FIFO book of one ticker: lots of either side, consumed first in, first out. Pure: no I/O.

This is the matching half of :mod:`toolkit.accounting` (which re-exports everything here and is the
toolkit's one entry point; import from there). SPEC §3 "Ledger semantics":

- a BUY on a flat or long ticker opens a long lot; a SELL on a long ticker closes long lots FIFO by
  (``executed_at``, ``trade_id``), possibly across several lots and partially, each consumed piece a
  :class:`Match` with realized P&L ``(exit − entry) × quantity``;
- symmetrically a SELL on a flat or short ticker opens a short lot (when the book allows shorts) and
  a BUY on a short ticker covers short lots FIFO, each piece's P&L ``(entry − exit) × quantity``;
- a lot is OPEN while quantity remains and CLOSED once fully consumed, its exit price then the
  quantity-weighted average exit price of its matches and its exit time the last one's, on either side.

A book is never long and short at once: a trade first closes the other side's open lots, and only
what they cannot cover (its ``shortfall``) can open a lot. The writer stores every trade as either
a close or an opening (:func:`split_flip` cuts a trade that would cross zero in two); a *stored*
trade that crosses zero (a flip written as one row) is replayed as the close of the whole other side
and, when the book may open that side, the opening of the remainder (:attr:`Close.opened`).
"""
from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple

#: Quantities are compared after rounding to this many decimals.
QTY_DECIMALS = 9
#: Anything smaller in magnitude than this rounds to a zero quantity.
QTY_EPSILON = 0.5 * 10.0 ** -QTY_DECIMALS
#: A lot's status while quantity remains / once fully consumed; a close is always CLOSED.
OPEN = "OPEN"
CLOSED = "CLOSED"
#: The side of a lot (and of a ``positions.db`` row): a BUY opens a long lot, a SELL a short one.
LONG = "long"
SHORT = "short"


class Match(NamedTuple):
    """One piece of a lot consumed by a closing trade (a ``lot_matches`` row)."""

    close_trade_id: int
    entry_trade_id: int
    quantity: float
    entry_price: float
    exit_price: float
    realized_pnl: float
    matched_at: int


class Lot:
    """An opening trade and how much of it remains. Mutable while open; final once closed.

    ``side`` is :data:`LONG` (an opening BUY) or :data:`SHORT` (an opening SELL).
    """

    __slots__ = ("trade_id", "executed_at", "quantity", "price", "remaining",
                 "matched_quantity", "matched_value", "realized_pnl", "last_exit_time", "side")

    def __init__(self, trade_id: int, executed_at: int, quantity: float, price: float, side: str = LONG) -> None:
        self.trade_id = trade_id
        self.executed_at = executed_at
        self.quantity = quantity
        self.price = price
        self.remaining = quantity
        self.matched_quantity = 0.0
        self.matched_value = 0.0   # Σ exit price × quantity over its matches
        self.realized_pnl = 0.0    # Σ P&L of its matches (for closed-position records)
        self.last_exit_time: int | None = None
        self.side = side

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
        side = "" if self.side == LONG else f", side={self.side!r}"
        return (f"Lot(trade_id={self.trade_id}, executed_at={self.executed_at}, quantity={self.quantity!r}, "
                f"price={self.price!r}, remaining={self.remaining!r}, status={self.status}{side})")


class Close(NamedTuple):
    """The result of a closing trade: a SELL against long lots or a BUY covering short lots.

    ``shortfall`` is what the open lots of ``side`` could not cover (0 when covered). When the book
    opened that remainder as a lot of the other side — a stored trade that crosses zero — it is
    ``opened``; otherwise (a long-only book's oversell, an orphaned sell) the remainder is in no lot.
    """

    trade_id: int
    quantity: float
    price: float
    executed_at: int
    matches: tuple[Match, ...]
    realized_pnl: float
    entry_trade_id: int | None
    shortfall: float
    closed_lots: tuple[Lot, ...]
    side: str = LONG               # the side of the lots it closed: LONG for a SELL, SHORT for a BUY
    opened: Lot | None = None      # the lot its shortfall opened (a stored flip), else None

    @property
    def consumed(self) -> float:
        return self.quantity - self.shortfall

    @property
    def flip(self) -> bool:
        """The trade both closes and opens: SPEC wants it stored as two trades (:func:`split_flip`)."""
        return self.opened is not None


class Position(NamedTuple):
    """The open position of one ticker and side: what its ``positions.db`` row must hold."""

    ticker: str
    quantity: float
    entry_price: float
    opened_at: int
    lots: int
    side: str = LONG


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
    :meth:`sell`. It holds only the lots that are still open: :attr:`lots` the long ones,
    :attr:`short_lots` the short ones (at most one of the two is non-empty).

    ``allow_short`` says whether a SELL beyond the open long lots opens a short lot (SPEC's
    ``allow-short`` setting, which the toolkit's callers pass; the setting defaults to true). When it is
    false — the book's own default — the book is long-only: such a SELL
    consumes what is held and reports the rest as :attr:`Close.shortfall` (an orphaned sell), and no
    short lot ever opens. Covering never depends on it: a BUY always covers open short lots first.
    """

    __slots__ = ("ticker", "lots", "short_lots", "allow_short", "_last")

    def __init__(self, ticker: str, allow_short: bool = False) -> None:
        self.ticker = ticker
        self.lots: deque[Lot] = deque()         # open long lots, FIFO order
        self.short_lots: deque[Lot] = deque()   # open short lots, FIFO order
        self.allow_short = allow_short
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

    def buy(self, trade_id: int, quantity: float, price: float, executed_at: int) -> Lot | Close:
        """Cover open short lots FIFO (a :class:`Close` of side SHORT), or, with none open, open a long lot.

        A BUY larger than the open short quantity (a stored flip) covers them all and opens the rest
        as a long lot (:attr:`Close.opened`, its ``shortfall``).
        """
        key = (executed_at, trade_id)
        last = self._last
        if last is not None and key <= last:
            self._out_of_order(executed_at, trade_id)
        self._last = key
        if self.short_lots:
            return self._consume(self.short_lots, SHORT, trade_id, quantity, price, executed_at)
        lot = Lot(trade_id, executed_at, quantity, price)
        self.lots.append(lot)
        return lot

    def sell(self, trade_id: int, quantity: float, price: float, executed_at: int) -> Close | Lot:
        """Close ``quantity`` of the long lots FIFO; what they cannot cover is reported as ``shortfall``.

        With ``allow_short``: a SELL with no long lot open opens a short lot (returned), and a SELL
        larger than the open long quantity (a stored flip) closes them all and opens the rest as a
        short lot (:attr:`Close.opened`). A long-only book always returns a :class:`Close`.
        """
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
            return _new(Close, (trade_id, quantity, price, executed_at, (match,), 0.0 + piece, lot.trade_id, 0.0,
                                closed, LONG, None))
        if not lots and self.allow_short:
            lot = Lot(trade_id, executed_at, quantity, price, SHORT)
            self.short_lots.append(lot)
            return lot
        # Several lots, or not enough: the loop of _consume, inlined for the long side (a hot path).
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
        opened = None
        if shortfall and self.allow_short:
            opened = Lot(trade_id, executed_at, shortfall, price, SHORT)
            self.short_lots.append(opened)
        return _new(Close, (trade_id, quantity, price, executed_at, tuple(matches), pnl,
                            matches[0].entry_trade_id if matches else None, shortfall, tuple(consumed), LONG, opened))

    def _consume(self, lots: deque[Lot], side: str, trade_id: int, quantity: float, price: float,
                 executed_at: int) -> Close:
        """Close ``quantity`` from ``lots`` (all of ``side``) FIFO; open the remainder on the other side
        when the book may (a BUY's always; a SELL's with ``allow_short``). :meth:`sell` inlines the
        long side of this loop: the two must stay the same arithmetic."""
        short = side == SHORT
        want = quantity
        matches: list[Match] = []
        consumed: list[Lot] = []
        pnl = 0.0
        while want >= QTY_EPSILON and lots:
            lot = lots[0]
            take = lot.remaining if lot.remaining <= want else want
            piece = (lot.price - price) * take if short else (price - lot.price) * take
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
        opened = None
        if shortfall and (short or self.allow_short):
            opened = Lot(trade_id, executed_at, shortfall, price, LONG if short else SHORT)
            (self.lots if short else self.short_lots).append(opened)
        return _new(Close, (trade_id, quantity, price, executed_at, tuple(matches), pnl,
                            matches[0].entry_trade_id if matches else None, shortfall, tuple(consumed), side, opened))

    def lots_of(self, side: str) -> deque[Lot]:
        """The open lots of ``side`` (:data:`LONG` or :data:`SHORT`), FIFO order."""
        if side == LONG:
            return self.lots
        if side == SHORT:
            return self.short_lots
        raise ValueError(f"side must be {LONG!r} or {SHORT!r}, not {side!r}")

    def open_quantity(self, side: str = LONG) -> float:
        """The open quantity of ``side`` (long by default): Σ remaining of its lots."""
        return _exact_sum([lot.remaining for lot in self.lots_of(side)])

    def shortfall_of(self, quantity: float, side: str = LONG) -> float:
        """How much of a close of ``quantity`` against the open lots of ``side`` (long by default: a
        SELL) those lots could not cover (0 when covered)."""
        short = quantity - self.open_quantity(side)
        return short if short >= QTY_EPSILON else 0.0

    def position(self, side: str = LONG) -> Position | None:
        """The open position of ``side`` (long by default; ``None`` when that side is flat)."""
        lots = self.lots_of(side)
        if not lots:
            return None
        quantity = _exact_sum([lot.remaining for lot in lots])
        cost = _exact_sum([lot.remaining * lot.price for lot in lots])
        return Position(self.ticker, quantity, cost / quantity, lots[0].executed_at, len(lots), side)

    def positions(self) -> dict[str, Position]:
        """The open position of each side that has one, keyed by side (empty when flat).

        The ``positions.db`` rows of the ticker: one per side, quantity-weighted entry price.
        """
        found = {}
        for side in (LONG, SHORT):
            position = self.position(side)
            if position is not None:
                found[side] = position
        return found


def split_flip(book: TickerBook, action: str, quantity: float) -> tuple[float, float]:
    """How a trade of ``action`` (BUY or SELL) and ``quantity`` splits on ``book`` as it stands:
    ``(close_quantity, open_quantity)``.

    A BUY closes open short lots and a SELL open long lots; what they cannot cover opens a lot of
    the other side. A trade that only closes is ``(quantity, 0.0)``, one that only opens
    ``(0.0, quantity)``; a flip — larger than the open position on the other side — is ``(held,
    rest)``: the whole open quantity of that side, then the remainder rounded to 1e-9 (both ≥ 1e-9,
    summing to ``quantity`` at the ledger's precision). The writer stores a flip as two trades with these quantities,
    at the same time and in the same order. Whether the opening part is allowed (a SELL's with
    ``allow-short`` off) is the caller's decision; this only splits.
    """
    if action not in ("BUY", "SELL"):
        raise ValueError(f"action must be 'BUY' or 'SELL', not {action!r}")
    side = SHORT if action == "BUY" else LONG
    if not book.lots_of(side):
        return (0.0, quantity)
    held = book.open_quantity(side)
    rest = quantity - held
    if rest < QTY_EPSILON:
        return (quantity, 0.0)
    # the remainder at the ledger's precision (0.0005 - 0.0001344 is 0.000485600000000049 in floats);
    # the close keeps the exact open quantity, so the lots it consumes close without dust
    return (held, round(rest, QTY_DECIMALS))


_OPEN_LOT_ROW = (OPEN, None, None)


def lot_row_values(lot: Lot) -> tuple[str, float | None, int | None]:
    """A lot's ``status, exit_price, exit_time`` (``LOT_ROW_COLUMNS``), long or short: OPEN with no
    exit while quantity remains; CLOSED at the quantity-weighted average exit price of its matches
    and the time of the last one once fully consumed. (:attr:`Lot.status`, :attr:`Lot.exit_price`
    and :attr:`Lot.exit_time` are these values; the ledger scan calls this once per closed lot.)"""
    if lot.remaining != 0.0:
        return _OPEN_LOT_ROW
    matched = lot.matched_quantity
    return (CLOSED, lot.matched_value / matched if matched > 0.0 else None, lot.last_exit_time)
