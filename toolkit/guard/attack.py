"""What an attack is, for `integrity adversarial`: a value the harness runs, and what it works with.

The catalogue is content (``fixtures/attacks.py``, an explicit ``ATTACKS`` tuple); the harness
(``toolkit.guard.harness``) takes the attacks it runs as an argument.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Attack", "AttackContext", "attack"]


@dataclass
class AttackContext:
    """What an attack works with: the session's connection, helpers to pick victims, and the scope
    (tickers) it touched, so the harness re-checks only those."""

    conn: sqlite3.Connection
    tickers: set[str] = field(default_factory=set)

    def one(self, sql: str, params: tuple = ()) -> tuple:
        row = self.conn.execute(sql, params).fetchone()
        if row is None:
            raise LookupError(f"the database has no row for this attack: {sql}")
        return row

    def sell(self) -> tuple[int, str]:
        """A SELL that closed lots (the one with the lowest id)."""
        trade_id, ticker = self.one(
            "SELECT t.trade_id, t.ticker FROM trading.trades AS t WHERE t.action = 'SELL' AND abs(t.realized_pnl) > 0.05 "
            "AND EXISTS (SELECT 1 FROM trading.lot_matches AS m WHERE m.close_trade_id = t.trade_id) ORDER BY t.trade_id LIMIT 1")
        self.tickers.add(ticker)
        return trade_id, ticker

    def closed_lot(self) -> tuple[int, str]:
        trade_id, ticker = self.one("SELECT trade_id, ticker FROM trading.trades WHERE action = 'BUY' AND status = 'CLOSED' "
                                    "ORDER BY trade_id LIMIT 1")
        self.tickers.add(ticker)
        return trade_id, ticker

    def held_ticker(self) -> tuple[str, float, int, float]:
        """A ticker with an open position: (ticker, quantity, last executed_at, last price)."""
        ticker, quantity = self.one("SELECT ticker, quantity FROM positions.positions WHERE side = 'long' ORDER BY ticker LIMIT 1")
        last_at, price = self.one("SELECT executed_at, price FROM trading.trades WHERE ticker = ? "
                                  "ORDER BY executed_at DESC, trade_id DESC LIMIT 1", (ticker,))
        self.tickers.add(ticker)
        return ticker, quantity, last_at, price

    def insert_trade(self, ticker: str, action: str, quantity: float, price: float, **extra: object) -> int:
        row = self.conn.execute("SELECT max(trade_id) + 1, max(executed_at) + 1 FROM trading.trades").fetchone()
        values = {"trade_id": row[0] or 1, "run_id": "adversarial", "ticker": ticker, "action": action, "quantity": quantity,
                  "price": price, "commission": 1.0, "executed_at": row[1] or 1, "is_close": int(action == "SELL"),
                  "status": "CLOSED" if action == "SELL" else "OPEN"}
        values.update(extra)
        self.tickers.add(ticker)
        self.conn.execute(f"INSERT INTO trading.trades ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
                          list(values.values()))
        return int(values["trade_id"])  # type: ignore[arg-type]


@dataclass(frozen=True)
class Attack:
    id: str
    description: str
    targets: tuple[str, ...]
    run: Callable[[AttackContext], None]
    kind: str = "data"   # "data": refused by the guard or detected by rules; "escape": refused by the session
    #: Whether the attack means something under a data directory's settings (None: always). E.g. an
    #: oversell is an orphaned sell only with allow-short off; with it on, the same row is a one-row flip.
    applies: Callable[[Any], bool] | None = None


def attack(id: str, *, targets: tuple[str, ...] = (), kind: str = "data",
           applies: Callable[[Any], bool] | None = None) -> Callable[[Callable[[AttackContext], None]], Attack]:
    """Build an :class:`Attack` from a function; its docstring's first line is the description."""
    def build(func: Callable[[AttackContext], None]) -> Attack:
        return Attack(id, (func.__doc__ or "").strip().splitlines()[0], tuple(targets), func, kind, applies)

    return build
