"""The trade writer: record BUYs and SELLs, read lots, positions and stats (the TradeStore).

Writing a trade::

    BEGIN IMMEDIATE  (db.atomic)          (trading.db and positions.db; waits for other writers)
      replay the ticker's executed trades through toolkit.accounting (never trusting stored links)
      refuse an oversell, a backdated trade, a bad value, a cash balance beyond the ledger's bound
      INSERT the trade, its lot_matches; UPDATE the lots it closed; UPDATE the account's cash
    COMMIT                                <- trading.db: the ledger is the truth
    BEGIN IMMEDIATE
      if this trade is still the ticker's latest: set the ticker's positions row from the book
      INSERT closed_positions rows for the lots it closed
    COMMIT                                <- positions.db: a projection of the ledger

A crash between the two commits leaves trading.db with the trade and positions.db without its
effect. The ``position_ledger_mismatch`` integrity rule detects exactly that (missing, orphaned or
different positions rows), and ``integrity repair`` rebuilds the rows from the ledger. A second
writer that commits in between makes the first writer's projection step a no-op: the later trade's
projection already includes it.
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .accounting import (
    LOT_ROW_COLUMNS,
    MATCH_COLUMNS,
    TRADE_ROW_COLUMNS,
    Close,
    Lot,
    Match,
    Position,
    TickerBook,
    cash_effect,
    close_row_values,
    lot_row_values,
    opening_row_values,
    replay,
    replay_book,
    unrealized_pnl,
)
from .config import Settings, load_settings
from .db import atomic, translate_error
from .domain import BOUNDS, MAX_AMOUNT, amount_problem, epoch_problem, is_amount, is_finite_number, symbol_checker, trade_problems
from .errors import LedgerError, NotInitialisedError, OversellError

__all__ = [
    "TradeResult",
    "Trade",
    "OpenLot",
    "LedgerStats",
    "TradeStore",
    "position_row",
    "closed_position_row",
    "CLOSED_POSITION_COLUMNS",
    "INSERT_CLOSED_POSITION",
]


@dataclass(frozen=True)
class TradeResult:
    """What recording a trade did."""

    trade_id: int
    ticker: str
    action: str
    realized_pnl: float | None     # None for a BUY (an opening leg carries no P&L)
    closed_lots: tuple[int, ...]   # BUY trade ids fully closed by this SELL
    matches: tuple[Match, ...]
    cash_balance: float
    position: Position | None      # the ticker's position after the trade


@dataclass(frozen=True)
class Trade:
    trade_id: int
    run_id: str | None
    ticker: str
    action: str
    quantity: float
    price: float
    commission: float
    executed_at: int
    is_close: int
    entry_trade_id: int | None
    realized_pnl: float | None
    status: str
    exit_price: float | None
    exit_time: int | None
    order_id: str | None
    strategy: str | None


@dataclass(frozen=True)
class OpenLot:
    trade_id: int
    ticker: str
    quantity: float
    remaining: float
    price: float
    executed_at: int


@dataclass(frozen=True)
class LedgerStats:
    trades: int
    buys: int
    sells: int
    open_lots: int
    open_tickers: int
    realized_pnl: float
    wins: int
    losses: int
    win_rate: float | None
    commissions: float
    cash_balance: float | None


_TRADE_COLUMNS = ("trade_id, run_id, ticker, action, quantity, price, commission, executed_at, is_close, "
                  f"{', '.join(TRADE_ROW_COLUMNS)}, order_id, strategy")
# How the accounting's values are written (toolkit.accounting: close_row_values, opening_row_values,
# lot_row_values; a Match is a lot_matches row).
_INSERT_TRADE = f"INSERT INTO trading.trades ({_TRADE_COLUMNS}) VALUES ({', '.join('?' * (_TRADE_COLUMNS.count(',') + 1))})"
_INSERT_MATCH = (f"INSERT INTO trading.lot_matches ({', '.join(MATCH_COLUMNS)}) "
                 f"VALUES ({', '.join('?' * len(MATCH_COLUMNS))})")
_UPDATE_LOT = f"UPDATE trading.trades SET {', '.join(f'{c} = ?' for c in LOT_ROW_COLUMNS)} WHERE trade_id = ?"


def position_row(position: Position, last_price: float, updated_at: int, strategy: str | None) -> dict:
    """The ``positions`` row that projects the open lots of a ticker and side (one row per ticker and side)."""
    return {
        "ticker": position.ticker,
        "side": position.side,
        "quantity": position.quantity,
        "entry_price": position.entry_price,
        "current_price": last_price,
        "unrealized_pnl": unrealized_pnl(position, last_price, position.side),
        "opened_at": position.opened_at,
        "updated_at": max(updated_at, position.opened_at),
        "strategy": strategy,
    }


#: Columns of a ``closed_positions`` row, in the order :func:`closed_position_row` returns them.
CLOSED_POSITION_COLUMNS = ("entry_trade_id", "ticker", "side", "quantity", "entry_price", "opened_at", "updated_at",
                           "closed_at", "exit_price", "realized_pnl", "holding_period_hours", "commission", "strategy")


def closed_position_row(lot: Lot, ticker: str, commission: float, strategy: str | None) -> tuple:
    """The ``closed_positions`` row of a fully closed lot of either side (values in :data:`CLOSED_POSITION_COLUMNS` order)."""
    closed_at = lot.last_exit_time if lot.last_exit_time is not None else lot.executed_at
    return (lot.trade_id, ticker, lot.side, lot.quantity, lot.price, lot.executed_at, closed_at, closed_at,
            lot.exit_price, lot.realized_pnl, (closed_at - lot.executed_at) / 3600.0, commission, strategy)


INSERT_CLOSED_POSITION = (
    f"INSERT OR IGNORE INTO positions.closed_positions ({', '.join(CLOSED_POSITION_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(CLOSED_POSITION_COLUMNS))})"
)


_UPSERT_POSITION = """
INSERT INTO positions.positions (ticker, side, quantity, entry_price, current_price, unrealized_pnl,
                                 opened_at, updated_at, strategy)
VALUES (:ticker, :side, :quantity, :entry_price, :current_price, :unrealized_pnl, :opened_at, :updated_at, :strategy)
ON CONFLICT (ticker, side) DO UPDATE SET
    quantity = excluded.quantity, entry_price = excluded.entry_price, current_price = excluded.current_price,
    unrealized_pnl = excluded.unrealized_pnl, opened_at = excluded.opened_at, updated_at = excluded.updated_at,
    strategy = COALESCE(excluded.strategy, positions.strategy)
"""


def _moment(at: object) -> int:
    """The time of an account write: now, or ``at`` if it is an epoch the ledger accepts."""
    problem = None if at is None else epoch_problem("at", at)
    if problem is not None:
        raise LedgerError(problem, hint=BOUNDS)
    return int(time.time()) if at is None else at  # type: ignore[return-value]


#: The first trade of a ticker the accounting cannot replay: not a BUY/SELL with a quantity and a price
#: in (0, MAX_AMOUNT] and an integer time (the rows the ledger scan leaves out of the FIFO).
_UNREPLAYABLE = """
SELECT trade_id, quantity, price, executed_at FROM trading.trades
WHERE ticker = ? AND NOT (action IN ('BUY', 'SELL')
      AND typeof(quantity) IN ('real', 'integer') AND quantity > 0 AND quantity <= ?
      AND typeof(price) IN ('real', 'integer') AND price > 0 AND price <= ? AND typeof(executed_at) = 'integer')
ORDER BY executed_at, trade_id LIMIT 1
"""


def _writes(method):
    """Run a TradeStore write as the trade writer: the guarded connection lets it write the ledger."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._conn.trusted("trade writer"):
            return method(self, *args, **kwargs)

    return wrapper


class TradeStore:
    """Record trades and read the ledger of a data directory (``positions`` and ``trading``).

    Safe for several writers: every write is a ``BEGIN IMMEDIATE`` transaction and waits up to the
    busy timeout for another writer. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, where: Settings | str | Path, *, busy_timeout: float | None = None) -> None:
        from .guard.connection import connect_guarded

        settings = where if isinstance(where, Settings) else load_settings(where)
        self.settings = settings
        paths = {"trading": settings.path("trading"), "positions": settings.path("positions")}
        missing = [p for p in paths.values() if not p.exists()]
        if missing:
            raise NotInitialisedError(f"{missing[0]}: does not exist", hint="run `migrate upgrade` first")
        # The writer uses the same guarded connection a bot gets; its own writes run "trusted".
        self._conn = connect_guarded(settings, names=("trading", "positions"),
                                     busy_timeout=busy_timeout if busy_timeout is not None else settings.busy_timeout)
        tables = {r[0] for r in self._conn.execute("SELECT name FROM trading.sqlite_master WHERE type = 'table'")}
        if not {"trades", "lot_matches", "account"} <= tables:
            self._conn.close()
            raise NotInitialisedError(f"{paths['trading']}: has no trade ledger tables", hint="run `migrate upgrade` first")

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> TradeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        return self._conn

    @contextmanager
    def _transaction(self, what: str, database: str = "trading") -> Iterator[None]:
        """One write transaction (``db.atomic``); an SQLite error names the file and what was being done."""
        path = self.settings.path(database)
        try:
            with atomic(self._conn, path=path, action=what):
                yield
        except sqlite3.Error as exc:
            raise translate_error(exc, path, action=what) from exc

    # -- the account -------------------------------------------------------------------------------

    @_writes
    def open_account(self, starting_capital: float, *, at: int | None = None, currency: str = "USD") -> float:
        """Create the account with its starting capital (idempotent for the same capital)."""
        if not is_finite_number(starting_capital) or starting_capital < 0:
            raise LedgerError(f"starting capital must be a finite number >= 0, got {starting_capital!r}", hint=BOUNDS)
        if starting_capital > MAX_AMOUNT:
            raise LedgerError(f"starting capital {starting_capital!r} is beyond the ledger's bound of {MAX_AMOUNT:g}", hint=BOUNDS)
        now = _moment(at)
        with self._transaction("opening the account"):
            row = self._conn.execute("SELECT starting_capital, cash_balance FROM trading.account WHERE account_id = 1").fetchone()
            if row is None:
                self._conn.execute(
                    "INSERT INTO trading.account (account_id, starting_capital, cash_balance, currency, created_at, updated_at) "
                    "VALUES (1, ?, ?, ?, ?, ?)", (starting_capital, starting_capital, currency, now, now))
        if row is None:
            return float(starting_capital)
        if row[0] != starting_capital:
            raise LedgerError(f"the account already exists with starting capital {row[0]:g}, not {starting_capital:g}")
        return row[1]

    @_writes
    def adjust_cash(self, amount: float, reason: str, *, at: int | None = None) -> float:
        """Record a deposit (+), withdrawal (−) or labelled correction; returns the new cash balance."""
        if not is_finite_number(amount) or amount == 0:
            raise LedgerError(f"an adjustment must be a finite, non-zero amount, got {amount!r}", hint=BOUNDS)
        if not is_amount(amount):
            raise LedgerError(f"an adjustment of {amount!r} is beyond the ledger's bound of ±{MAX_AMOUNT:g}", hint=BOUNDS)
        if not isinstance(reason, str) or not reason.strip():
            raise LedgerError("an adjustment needs a reason (deposit, withdrawal, correction: ...)")
        now = _moment(at)
        with self._transaction("adjusting cash"):
            cash = self._cash_after(amount, f"an adjustment of {amount!r}")
            self._conn.execute("INSERT INTO trading.account_adjustments (amount, reason, created_at) VALUES (?, ?, ?)",
                               (amount, reason.strip(), now))
            self._set_cash(cash, now)
        return cash

    def _cash_after(self, delta: float, what: str) -> float:
        """The account's cash balance after ``delta``; refused unless both it and the stored one are amounts."""
        row = self._conn.execute("SELECT cash_balance FROM trading.account WHERE account_id = 1").fetchone()
        if row is None:
            raise LedgerError("the ledger has no account yet", hint="call open_account(starting_capital) first")
        problem = amount_problem("the account's cash_balance", row[0])
        if problem is not None:
            raise LedgerError(f"{what} refused: {problem}",
                              hint="run `integrity check` (bankroll_mismatch); `integrity repair` recomputes it from the ledger")
        cash = row[0] + delta
        if not is_amount(cash):
            raise LedgerError(f"{what} refused: the cash balance would become {cash!r}, beyond the ledger's bound of "
                              f"±{MAX_AMOUNT:g}", hint="deposit or withdraw cash first, or trade a smaller amount")
        return float(cash)

    def _set_cash(self, cash: float, now: int) -> None:
        self._conn.execute("UPDATE trading.account SET cash_balance = ?, updated_at = MAX(updated_at, ?) "
                           "WHERE account_id = 1", (cash, now))

    # -- writing trades ----------------------------------------------------------------------------

    def _book(self, ticker: str) -> TickerBook:
        return replay_book(ticker, self._conn.execute(
            "SELECT trade_id, action, quantity, price, executed_at FROM trading.trades "
            "WHERE ticker = ? ORDER BY executed_at, trade_id", (ticker,)))

    @_writes
    def record(
        self,
        ticker: str,
        action: str,
        quantity: float,
        price: float,
        *,
        run_id: str,
        commission: float = 0.0,
        executed_at: int | None = None,
        order_id: str | None = None,
        strategy: str | None = None,
    ) -> TradeResult:
        """Record one execution; a SELL closes lots FIFO and returns its realized P&L.

        Refuses (``LedgerError``, nothing written) a SELL beyond the open quantity, a trade earlier
        than the ticker's last one, values outside their domain (``toolkit.domain``: amounts, notional
        and the resulting cash balance within its bound, the time an epoch integer), and a ticker
        whose stored trades hold a value the accounting cannot replay.
        """
        action = action.upper() if isinstance(action, str) else action
        when = int(time.time()) if executed_at is None else executed_at
        if isinstance(quantity, int) and is_amount(quantity):   # not a bool; float() of a huge int overflows
            quantity = float(quantity)
        if isinstance(price, int) and is_amount(price):
            price = float(price)
        problems = trade_problems(ticker, action, quantity, price, commission, when, run_id,
                                  symbols=symbol_checker(self.settings))
        if problems:   # a value's problem says what the bounds are (not needed for a ticker, action or run id)
            values = any(not p.startswith(("ticker ", "action ", "run_id ")) for p in problems)
            raise LedgerError(f"trade refused: {'; '.join(problems)}", hint=BOUNDS if values else None)
        with self._transaction(f"recording a {action} of {ticker}"):
            last = self._conn.execute(
                "SELECT executed_at FROM trading.trades WHERE ticker = ? ORDER BY executed_at DESC, trade_id DESC LIMIT 1",
                (ticker,)).fetchone()
            if last is not None and when < last[0]:
                raise LedgerError(
                    f"{action} of {ticker} at {when} refused: earlier than the ticker's last trade at {last[0]}",
                    hint="the ledger is append-only in time; record trades in the order they executed")
            unreplayable = self._conn.execute(_UNREPLAYABLE, (ticker, MAX_AMOUNT, MAX_AMOUNT)).fetchone()
            if unreplayable is not None:
                trade, q, p, t = unreplayable
                raise LedgerError(
                    f"{action} of {ticker} refused: the ledger's trade {trade} of {ticker} (quantity {q!r}, price {p!r}, "
                    f"executed_at {t!r}) is outside its domain, so the ticker's lots cannot be replayed",
                    hint="run `integrity check` (trade_row_invalid names the row) and correct that row first")
            book = self._book(ticker)
            trade_id = self._conn.execute("SELECT COALESCE(MAX(trade_id), 0) + 1 FROM trading.trades").fetchone()[0]
            if action == "SELL":
                held = book.open_quantity()
                if book.shortfall_of(quantity) > 0.0:
                    raise OversellError(ticker, quantity, held)
                outcome: Close | Lot = book.sell(trade_id, quantity, price, when)
            else:
                outcome = book.buy(trade_id, quantity, price, when)
            cash = self._cash_after(cash_effect(action, quantity, price, commission), f"{action} of {quantity!r} {ticker}")
            self._insert_trade(trade_id, ticker, action, quantity, price, commission, when, run_id, order_id, strategy, outcome)
            self._set_cash(cash, when)
        closed = outcome.closed_lots if isinstance(outcome, Close) else ()
        self._project(book, trade_id, price, when, strategy, closed)
        return TradeResult(
            trade_id=trade_id,
            ticker=ticker,
            action=action,
            realized_pnl=outcome.realized_pnl if isinstance(outcome, Close) else None,
            closed_lots=tuple(lot.trade_id for lot in closed),
            matches=outcome.matches if isinstance(outcome, Close) else (),
            cash_balance=cash,
            position=book.position(),
        )

    def buy(self, ticker: str, quantity: float, price: float, **kwargs: object) -> TradeResult:
        return self.record(ticker, "BUY", quantity, price, **kwargs)  # type: ignore[arg-type]

    def sell(self, ticker: str, quantity: float, price: float, **kwargs: object) -> TradeResult:
        return self.record(ticker, "SELL", quantity, price, **kwargs)  # type: ignore[arg-type]

    def _insert_trade(self, trade_id: int, ticker: str, action: str, quantity: float, price: float,
                      commission: float, when: int, run_id: str, order_id: str | None, strategy: str | None,
                      outcome: Close | Lot) -> None:
        conn = self._conn
        if isinstance(outcome, Close):
            conn.execute(_INSERT_TRADE, (trade_id, run_id, ticker, "SELL", quantity, price, commission, when, 1,
                                         *close_row_values(outcome), order_id, strategy))
            conn.executemany(_INSERT_MATCH, outcome.matches)
            conn.executemany(_UPDATE_LOT, [(*lot_row_values(lot), lot.trade_id) for lot in outcome.closed_lots])
        else:
            conn.execute(_INSERT_TRADE, (trade_id, run_id, ticker, "BUY", quantity, price, commission, when, 0,
                                         *opening_row_values(outcome), order_id, strategy))

    def _project(self, book: TickerBook, trade_id: int, price: float, when: int,
                 strategy: str | None, closed: tuple[Lot, ...]) -> None:
        """Bring positions.db in line with the ticker's book (second transaction; see module doc)."""
        ticker = book.ticker
        with self._transaction(f"updating the {ticker} position", "positions"):
            latest = self._conn.execute(
                "SELECT trade_id FROM trading.trades WHERE ticker = ? ORDER BY executed_at DESC, trade_id DESC LIMIT 1",
                (ticker,)).fetchone()
            if latest is not None and latest[0] == trade_id:
                position = book.position()
                if position is None:
                    self._conn.execute("DELETE FROM positions.positions WHERE ticker = ? AND side = 'long'", (ticker,))
                else:
                    self._conn.execute(_UPSERT_POSITION, position_row(position, price, when, strategy))
            if closed:
                facts = {
                    r[0]: (r[1], r[2]) for r in self._conn.execute(
                        f"SELECT trade_id, commission, strategy FROM trading.trades WHERE trade_id IN ({','.join('?' * len(closed))})",
                        [lot.trade_id for lot in closed])
                }
                self._conn.executemany(INSERT_CLOSED_POSITION, [
                    closed_position_row(lot, ticker, facts[lot.trade_id][0], facts[lot.trade_id][1]) for lot in closed
                ])

    # -- reading -----------------------------------------------------------------------------------

    def get_trade(self, trade_id: int) -> Trade | None:
        row = self._conn.execute(f"SELECT {_TRADE_COLUMNS} FROM trading.trades WHERE trade_id = ?", (trade_id,)).fetchone()
        return Trade(*row) if row else None

    def _replay(self, ticker: str | None) -> Iterator[tuple[str, TickerBook, tuple, Close | Lot]]:
        where, params = ("WHERE ticker = ?", (ticker,)) if ticker is not None else ("", ())
        cursor = self._conn.execute(
            f"SELECT ticker, trade_id, action, quantity, price, executed_at FROM trading.trades {where} "
            "ORDER BY ticker, executed_at, trade_id", params)
        return replay(cursor)

    def _books(self, ticker: str | None) -> Iterator[TickerBook]:
        """Each ticker's book after its last trade."""
        current: TickerBook | None = None
        for _, book, _, _ in self._replay(ticker):
            if current is not None and book is not current:
                yield current
            current = book
        if current is not None:
            yield current

    def open_lots(self, ticker: str | None = None) -> list[OpenLot]:
        """Lots with quantity remaining, FIFO order within each ticker (recovery after a restart)."""
        return [
            OpenLot(lot.trade_id, book.ticker, lot.quantity, lot.remaining, lot.price, lot.executed_at)
            for book in self._books(ticker) for lot in book.lots
        ]

    def open_positions(self) -> list[Position]:
        """One position per ticker with open lots, from the ledger (not from positions.db)."""
        return [p for p in (book.position() for book in self._books(None)) if p is not None]

    def stats(self) -> LedgerStats:
        """Trade counts, open lots, realized P&L, win rate and commissions, from the ledger."""
        trades = buys = sells = wins = losses = open_lots = open_tickers = 0
        realized = 0.0
        current: TickerBook | None = None
        for _, book, trade, outcome in self._replay(None):
            if book is not current:
                if current is not None and current.lots:
                    open_tickers += 1
                    open_lots += len(current.lots)
                current = book
            trades += 1
            if isinstance(outcome, Close):
                sells += 1
                realized += outcome.realized_pnl
                wins += outcome.realized_pnl > 0
                losses += outcome.realized_pnl < 0
            else:
                buys += 1
        if current is not None and current.lots:
            open_tickers += 1
            open_lots += len(current.lots)
        commissions, cash = self._conn.execute(
            "SELECT (SELECT COALESCE(SUM(commission), 0) FROM trading.trades), "
            "(SELECT cash_balance FROM trading.account WHERE account_id = 1)").fetchone()
        return LedgerStats(trades, buys, sells, open_lots, open_tickers, realized, wins, losses,
                           wins / sells if sells else None, commissions, cash)
