"""The trade writer: record executions of either side, manage positions, read lots, positions and stats.

Writing a trade (the TradeStore)::

    BEGIN IMMEDIATE  (db.atomic)          (trading.db and positions.db; waits for other writers)
      replay the ticker's executed trades through toolkit.accounting (never trusting stored links)
      refuse a SELL beyond the open lots when shorts are off, a backdated trade, a bad value, a
      cash balance beyond the ledger's bound
      split a flip in two (accounting.split_flip): the close of the whole open position, then the
      opening of the remainder, at the same time and order
      INSERT the trade(s), their lot_matches; UPDATE the lots closed; UPDATE the account's cash
    COMMIT                                <- trading.db: the ledger is the truth
    BEGIN IMMEDIATE
      if this trade is still the ticker's latest: set the ticker's positions rows (one per side)
      INSERT closed_positions rows for the lots it closed (with the close reason)
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
from pathlib import Path

from .accounting import (
    LONG,
    SHORT,
    Close,
    Lot,
    Position,
    TickerBook,
    cash_effect,
    close_row_values,
    lot_row_values,
    opening_row_values,
    replay,
    replay_book,
    split_flip,
    unrealized_pnl,
)
from .config import Settings, load_settings
from .db import atomic, translate_error
from .domain import BOUNDS, MAX_AMOUNT, amount_problem, epoch_problem, is_amount, is_finite_number, symbol_checker, trade_problems
from .errors import LedgerError, NotInitialisedError, OversellError
from .ledger_model import (
    CLOSE_REASONS,
    CLOSED_POSITION_COLUMNS,
    COST_KINDS,
    INSERT_CLOSED_POSITION,
    INSERT_MATCH,
    INSERT_TRADE,
    SET_EXIT_REASON,
    SIDES,
    TRADE_COLUMNS,
    UNREPLAYABLE,
    UPDATE_LOT,
    UPSERT_POSITION,
    LedgerStats,
    OpenLot,
    Trade,
    TradeResult,
    closed_position_row,
    position_management_problems,
    position_row,
)

__all__ = [
    "TradeResult",
    "Trade",
    "OpenLot",
    "LedgerStats",
    "TradeStore",
    "CLOSE_REASONS",
    "COST_KINDS",
    "position_row",
    "closed_position_row",
    "CLOSED_POSITION_COLUMNS",
    "INSERT_CLOSED_POSITION",
]

_UNSET = object()


def _moment(at: object) -> int:
    """The time of an account write: now, or ``at`` if it is an epoch the ledger accepts."""
    problem = None if at is None else epoch_problem("at", at)
    if problem is not None:
        raise LedgerError(problem, hint=BOUNDS)
    return int(time.time()) if at is None else at  # type: ignore[return-value]


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
            "WHERE ticker = ? ORDER BY executed_at, trade_id", (ticker,)), allow_short=self.settings.allow_short)

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
        close_reason: str | None = None,
    ) -> TradeResult:
        """Record one execution: a BUY covers open short lots or opens a long lot, a SELL closes open
        long lots or opens a short lot, FIFO (SPEC §3); returns the realized P&L of what it closed.

        An execution larger than the open position on the other side (a flip) is stored as two
        trades, the close of the whole position and the opening of the remainder, at the same time,
        with the commission split pro rata. ``close_reason`` (one of :data:`CLOSE_REASONS`) labels the
        ``closed_positions`` rows of the lots it closes.

        Refuses (``LedgerError``, nothing written) a SELL beyond the open long lots when shorts are
        off (``allow-short = false``), a trade earlier than the ticker's last one, values outside
        their domain (``toolkit.domain``: amounts, notional and the resulting cash balance within its
        bound, the time an epoch integer), a close reason on an execution that closes nothing, and a
        ticker whose stored trades hold a value the accounting cannot replay.
        """
        action = action.upper() if isinstance(action, str) else action
        when = int(time.time()) if executed_at is None else executed_at
        if isinstance(quantity, int) and is_amount(quantity):   # not a bool; float() of a huge int overflows
            quantity = float(quantity)
        if isinstance(price, int) and is_amount(price):
            price = float(price)
        problems = trade_problems(ticker, action, quantity, price, commission, when, run_id,
                                  symbols=symbol_checker(self.settings))
        if close_reason is not None and close_reason not in CLOSE_REASONS:
            problems.append(f"close_reason {close_reason!r} is not one of {', '.join(CLOSE_REASONS)}")
        if problems:   # a value's problem says what the bounds are (not needed for a ticker, action or run id)
            values = any(not p.startswith(("ticker ", "action ", "run_id ", "close_reason ")) for p in problems)
            raise LedgerError(f"trade refused: {'; '.join(problems)}", hint=BOUNDS if values else None)
        with self._transaction(f"recording a {action} of {ticker}"):
            last = self._conn.execute(
                "SELECT executed_at FROM trading.trades WHERE ticker = ? ORDER BY executed_at DESC, trade_id DESC LIMIT 1",
                (ticker,)).fetchone()
            if last is not None and when < last[0]:
                raise LedgerError(
                    f"{action} of {ticker} at {when} refused: earlier than the ticker's last trade at {last[0]}",
                    hint="the ledger is append-only in time; record trades in the order they executed")
            unreplayable = self._conn.execute(UNREPLAYABLE, (ticker, MAX_AMOUNT, MAX_AMOUNT)).fetchone()
            if unreplayable is not None:
                trade, q, p, t = unreplayable
                raise LedgerError(
                    f"{action} of {ticker} refused: the ledger's trade {trade} of {ticker} (quantity {q!r}, price {p!r}, "
                    f"executed_at {t!r}) is outside its domain, so the ticker's lots cannot be replayed",
                    hint="run `integrity check` (trade_row_invalid names the row) and correct that row first")
            book = self._book(ticker)
            closing, opening = split_flip(book, action, quantity)
            if action == "SELL" and opening and not self.settings.allow_short:
                raise OversellError(ticker, quantity, book.open_quantity(LONG))
            if close_reason is not None and not closing:
                raise LedgerError(f"{action} of {quantity:g} {ticker} refused: close_reason {close_reason!r} given but "
                                  f"the trade closes nothing (there is no open {'short' if action == 'BUY' else 'long'} position)",
                                  hint="pass close_reason only on a trade that closes a position")
            legs = [(closing, commission)] if not opening else [(opening, commission)] if not closing else \
                [(closing, commission * closing / quantity), (opening, commission - commission * closing / quantity)]
            cash = self._cash_after(sum(cash_effect(action, q, price, c) for q, c in legs), f"{action} of {quantity!r} {ticker}")
            trade_id = self._conn.execute("SELECT COALESCE(MAX(trade_id), 0) + 1 FROM trading.trades").fetchone()[0]
            feed = book.buy if action == "BUY" else book.sell
            outcomes = []
            for i, (leg_quantity, leg_commission) in enumerate(legs):
                outcome = feed(trade_id + i, leg_quantity, price, when)
                self._insert_trade(trade_id + i, ticker, action, leg_quantity, price, leg_commission, when, run_id,
                                   order_id, strategy, outcome)
                outcomes.append(outcome)
            self._set_cash(cash, when)
        close = next((o for o in outcomes if isinstance(o, Close)), None)
        closed = close.closed_lots if close is not None else ()
        ids = tuple(trade_id + i for i in range(len(legs)))
        self._project(book, ids[-1], price, when, strategy, closed, close_reason)
        return TradeResult(
            trade_id=trade_id,
            ticker=ticker,
            action=action,
            realized_pnl=close.realized_pnl if close is not None else None,
            closed_lots=tuple(lot.trade_id for lot in closed),
            matches=close.matches if close is not None else (),
            cash_balance=cash,
            position=book.position(LONG) or book.position(SHORT),
            trade_ids=ids,
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
            conn.execute(INSERT_TRADE, (trade_id, run_id, ticker, action, quantity, price, commission, when, 1,
                                        *close_row_values(outcome), order_id, strategy))
            conn.executemany(INSERT_MATCH, outcome.matches)
            conn.executemany(UPDATE_LOT, [(*lot_row_values(lot), lot.trade_id) for lot in outcome.closed_lots])
        else:
            conn.execute(INSERT_TRADE, (trade_id, run_id, ticker, action, quantity, price, commission, when, 0,
                                        *opening_row_values(outcome), order_id, strategy))

    def _project(self, book: TickerBook, trade_id: int, price: float, when: int,
                 strategy: str | None, closed: tuple[Lot, ...], close_reason: str | None = None) -> None:
        """Bring positions.db in line with the ticker's book (second transaction; see module doc)."""
        ticker = book.ticker
        with self._transaction(f"updating the {ticker} position", "positions"):
            latest = self._conn.execute(
                "SELECT trade_id FROM trading.trades WHERE ticker = ? ORDER BY executed_at DESC, trade_id DESC LIMIT 1",
                (ticker,)).fetchone()
            if latest is not None and latest[0] == trade_id:
                for side in SIDES:
                    position = book.position(side)
                    if position is None:
                        self._conn.execute("DELETE FROM positions.positions WHERE ticker = ? AND side = ?", (ticker, side))
                    else:
                        self._conn.execute(UPSERT_POSITION, position_row(position, price, when, strategy))
            if closed:
                facts = {
                    r[0]: (r[1], r[2]) for r in self._conn.execute(
                        f"SELECT trade_id, commission, strategy FROM trading.trades WHERE trade_id IN ({','.join('?' * len(closed))})",
                        [lot.trade_id for lot in closed])
                }
                self._conn.executemany(INSERT_CLOSED_POSITION, [
                    closed_position_row(lot, ticker, facts[lot.trade_id][0], facts[lot.trade_id][1]) for lot in closed
                ])
                if close_reason is not None:
                    self._conn.executemany(SET_EXIT_REASON, [(close_reason, lot.trade_id) for lot in closed])

    # -- the bot's own position management ---------------------------------------------------------

    @_writes
    def update_position(self, ticker: str, side: str = LONG, *, at: int | None = None,
                        stop_loss_price: object = _UNSET, take_profit_price: object = _UNSET,
                        trail_percent: object = _UNSET, current_price: object = _UNSET,
                        signal_score: object = _UNSET, metadata: object = _UNSET) -> dict:
        """Set the position-management values of an open position (``None`` clears one): stops,
        targets, trailing stop, the mark (``current_price``, which sets ``unrealized_pnl`` by
        :func:`toolkit.accounting.unrealized_pnl`), signal score and metadata (a dict, list or JSON
        text). Quantity, side and entry price follow the ledger and are not settable. Returns the row."""
        given = {name: value for name, value in (
            ("stop_loss_price", stop_loss_price), ("take_profit_price", take_profit_price),
            ("trail_percent", trail_percent), ("current_price", current_price),
            ("signal_score", signal_score), ("metadata", metadata)) if value is not _UNSET}
        if side not in SIDES:
            raise LedgerError(f"position update of {ticker!r} refused: side must be {' or '.join(map(repr, SIDES))}, "
                              f"not {side!r}")
        if not given:
            raise LedgerError(f"position update of {ticker!r} refused: nothing to set",
                              hint="pass stop_loss_price, take_profit_price, trail_percent, current_price, signal_score "
                                   "or metadata")
        problems, values = position_management_problems(given)
        if problems:
            raise LedgerError(f"position update of {ticker} ({side}) refused: {'; '.join(problems)}", hint=BOUNDS)
        now = _moment(at)
        with self._transaction(f"updating the {ticker} {side} position", "positions"):
            row = self._conn.execute("SELECT quantity, entry_price, opened_at, updated_at FROM positions.positions "
                                     "WHERE ticker = ? AND side = ?", (ticker, side)).fetchone()
            if row is None:
                raise LedgerError(f"position update refused: there is no open {side} position of {ticker!r}",
                                  hint="positions are opened by trades (TradeStore.record); list them with open_positions()")
            quantity, entry_price, opened_at, updated_at = row
            if values.get("current_price") is not None:
                if amount_problem("the position's quantity", quantity) or amount_problem("its entry_price", entry_price):
                    raise LedgerError(f"position update of {ticker} ({side}) refused: its stored quantity {quantity!r} or "
                                      f"entry price {entry_price!r} is not a number",
                                      hint="run `integrity check` (position_ledger_mismatch); `integrity repair` rebuilds it")
                values["unrealized_pnl"] = unrealized_pnl(Position(ticker, quantity, entry_price, opened_at, 0, side),
                                                          values["current_price"], side)
            elif "current_price" in values:
                values["unrealized_pnl"] = None
            values["updated_at"] = max(now, updated_at if isinstance(updated_at, int) else now, opened_at)
            self._conn.execute(f"UPDATE positions.positions SET {', '.join(f'{c} = ?' for c in values)} "
                               "WHERE ticker = ? AND side = ?", (*values.values(), ticker, side))
            names = ("ticker", "side", "quantity", "entry_price", "current_price", "unrealized_pnl", "stop_loss_price",
                     "take_profit_price", "trail_percent", "opened_at", "updated_at", "strategy", "signal_score", "metadata")
            stored = self._conn.execute(f"SELECT {', '.join(names)} FROM positions.positions WHERE ticker = ? AND side = ?",
                                        (ticker, side)).fetchone()
        return dict(zip(names, stored))

    @_writes
    def record_cost(self, amount: float, kind: str, *, ticker: str | None = None, note: str | None = None,
                    at: int | None = None) -> float:
        """Record a cost outside a trade's commission — ``funding`` or ``borrow`` — as a labelled account
        adjustment (``"funding: BTCUSDT ..."``); ``amount`` > 0 is paid, < 0 received. Returns the cash
        balance. ``stats()`` reports P&L gross and net of these costs and of commissions."""
        if kind not in COST_KINDS:
            raise LedgerError(f"cost refused: kind must be one of {', '.join(COST_KINDS)}, not {kind!r}")
        if ticker is not None and not symbol_checker(self.settings).accepts(ticker):
            raise LedgerError(f"{kind} cost refused: ticker {ticker!r} is not a plausible symbol",
                              hint="see the symbol-pattern setting")
        if note is not None and (not isinstance(note, str) or not note.isprintable() or len(note) > 200):
            raise LedgerError(f"{kind} cost refused: note must be printable text of at most 200 characters")
        reason = " ".join(part for part in (f"{kind}:", ticker, note) if part)
        if not is_finite_number(amount) or amount == 0:
            raise LedgerError(f"a {kind} cost must be a finite, non-zero amount, got {amount!r}", hint=BOUNDS)
        return self.adjust_cash(-amount, reason, at=at)

    # -- reading -----------------------------------------------------------------------------------

    def get_trade(self, trade_id: int) -> Trade | None:
        row = self._conn.execute(f"SELECT {TRADE_COLUMNS} FROM trading.trades WHERE trade_id = ?", (trade_id,)).fetchone()
        return Trade(*row) if row else None

    def _replay(self, ticker: str | None) -> Iterator[tuple[str, TickerBook, tuple, Close | Lot]]:
        where, params = ("WHERE ticker = ?", (ticker,)) if ticker is not None else ("", ())
        cursor = self._conn.execute(
            f"SELECT ticker, trade_id, action, quantity, price, executed_at FROM trading.trades {where} "
            "ORDER BY ticker, executed_at, trade_id", params)
        return replay(cursor, allow_short=self.settings.allow_short)

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
        """Lots with quantity remaining, long then short, FIFO order within each ticker (recovery after a restart)."""
        return [
            OpenLot(lot.trade_id, book.ticker, lot.quantity, lot.remaining, lot.price, lot.executed_at, lot.side)
            for book in self._books(ticker) for lots in (book.lots, book.short_lots) for lot in lots
        ]

    def open_positions(self) -> list[Position]:
        """One position per ticker and side with open lots, from the ledger (not from positions.db)."""
        return [p for book in self._books(None) for p in book.positions().values()]

    def stats(self) -> LedgerStats:
        """Trade counts, open lots, realized P&L gross and net of costs, win rate, from the ledger."""
        trades = buys = closes = wins = losses = open_lots = short_lots = open_tickers = 0
        realized = 0.0
        current: TickerBook | None = None
        for _, book, trade, outcome in self._replay(None):
            if book is not current:
                if current is not None and (current.lots or current.short_lots):
                    open_tickers += 1
                    open_lots += len(current.lots) + len(current.short_lots)
                    short_lots += len(current.short_lots)
                current = book
            trades += 1
            buys += trade[2] == "BUY"
            if isinstance(outcome, Close):
                closes += 1
                realized += outcome.realized_pnl
                wins += outcome.realized_pnl > 0
                losses += outcome.realized_pnl < 0
        if current is not None and (current.lots or current.short_lots):
            open_tickers += 1
            open_lots += len(current.lots) + len(current.short_lots)
            short_lots += len(current.short_lots)
        commissions, cash, costs = self._conn.execute(
            "SELECT (SELECT total(commission) FROM trading.trades), "
            "(SELECT cash_balance FROM trading.account WHERE account_id = 1), "
            "(SELECT -total(amount) FROM trading.account_adjustments WHERE "
            + " OR ".join(f"reason LIKE '{kind}:%'" for kind in COST_KINDS) + ")").fetchone()
        return LedgerStats(trades, buys, trades - buys, open_lots, open_tickers, realized, wins, losses,
                           wins / closes if closes else None, commissions, cash, closes=closes, costs=costs,
                           net_pnl=realized - commissions - costs, short_lots=short_lots)
