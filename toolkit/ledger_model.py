"""What the trade writer returns and the rows it stores (re-exported by :mod:`toolkit.ledger`).

The values come from :mod:`toolkit.accounting`; this module only says how they are laid out in
``trading.db`` and ``positions.db``, and which position-management values a bot may set
(:func:`position_management_problems`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from .accounting import LONG, LOT_ROW_COLUMNS, MATCH_COLUMNS, SHORT, TRADE_ROW_COLUMNS, Lot, Match, Position, unrealized_pnl
from .domain import MAX_AMOUNT

__all__ = [
    "TradeResult",
    "Trade",
    "OpenLot",
    "LedgerStats",
    "CLOSE_REASONS",
    "COST_KINDS",
    "SIDES",
    "position_row",
    "closed_position_row",
    "CLOSED_POSITION_COLUMNS",
    "INSERT_CLOSED_POSITION",
    "position_management_problems",
]

#: The sides of a position (``positions.side``), as the accounting names them.
SIDES = (LONG, SHORT)
#: Why a position was closed (``closed_positions.exit_reason``): take profit, stop loss, trailing
#: stop, by hand, on a signal, liquidated, or expired (futures, prediction markets).
CLOSE_REASONS = ("TP", "SL", "trailing", "manual", "signal", "liquidation", "expiry")
#: Costs outside a trade's commission, recorded as labelled account adjustments (``record_cost``).
COST_KINDS = ("funding", "borrow")


@dataclass(frozen=True)
class TradeResult:
    """What recording one execution did.

    A flip (an execution larger than the open position on the other side) is stored as two trades:
    ``trade_ids`` holds both, the close first; ``trade_id`` is the first.
    """

    trade_id: int
    ticker: str
    action: str
    realized_pnl: float | None     # None when the execution only opened (an opening leg carries no P&L)
    closed_lots: tuple[int, ...]   # trade ids of the lots it fully closed
    matches: tuple[Match, ...]
    cash_balance: float
    position: Position | None      # the ticker's open position after the trade (its side in .side)
    trade_ids: tuple[int, ...] = ()

    @property
    def flip(self) -> bool:
        return len(self.trade_ids) > 1


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
    side: str = LONG


@dataclass(frozen=True)
class LedgerStats:
    """Counts and P&L from the ledger. ``realized_pnl`` is gross (the FIFO matches); ``net_pnl``
    subtracts commissions and the funding and borrow costs recorded with ``record_cost``."""

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
    closes: int = 0                # closing trades (SELLs of long lots and BUYs covering short ones)
    costs: float = 0.0             # funding and borrow costs paid (received funding counts negative)
    net_pnl: float = 0.0           # realized_pnl - commissions - costs
    short_lots: int = 0            # of open_lots, the short ones


TRADE_COLUMNS = ("trade_id, run_id, ticker, action, quantity, price, commission, executed_at, is_close, "
                 f"{', '.join(TRADE_ROW_COLUMNS)}, order_id, strategy")
# How the accounting's values are written (toolkit.accounting: close_row_values, opening_row_values,
# lot_row_values; a Match is a lot_matches row).
INSERT_TRADE = f"INSERT INTO trading.trades ({TRADE_COLUMNS}) VALUES ({', '.join('?' * (TRADE_COLUMNS.count(',') + 1))})"
INSERT_MATCH = (f"INSERT INTO trading.lot_matches ({', '.join(MATCH_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(MATCH_COLUMNS))})")
UPDATE_LOT = f"UPDATE trading.trades SET {', '.join(f'{c} = ?' for c in LOT_ROW_COLUMNS)} WHERE trade_id = ?"


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
#: The bot's label on the closed_positions rows a close just wrote (the writer's own rows only).
SET_EXIT_REASON = "UPDATE positions.closed_positions SET exit_reason = ? WHERE entry_trade_id = ? AND exit_reason IS NULL"


UPSERT_POSITION = """
INSERT INTO positions.positions (ticker, side, quantity, entry_price, current_price, unrealized_pnl,
                                 opened_at, updated_at, strategy)
VALUES (:ticker, :side, :quantity, :entry_price, :current_price, :unrealized_pnl, :opened_at, :updated_at, :strategy)
ON CONFLICT (ticker, side) DO UPDATE SET
    quantity = excluded.quantity, entry_price = excluded.entry_price, current_price = excluded.current_price,
    unrealized_pnl = excluded.unrealized_pnl, opened_at = excluded.opened_at, updated_at = excluded.updated_at,
    strategy = COALESCE(excluded.strategy, positions.strategy)
"""

#: The first trade of a ticker the accounting cannot replay: not a BUY/SELL with a quantity and a price
#: in (0, MAX_AMOUNT] and an integer time (the rows the ledger scan leaves out of the FIFO).
UNREPLAYABLE = """
SELECT trade_id, quantity, price, executed_at FROM trading.trades
WHERE ticker = ? AND NOT (action IN ('BUY', 'SELL')
      AND typeof(quantity) IN ('real', 'integer') AND quantity > 0 AND quantity <= ?
      AND typeof(price) IN ('real', 'integer') AND price > 0 AND price <= ? AND typeof(executed_at) = 'integer')
ORDER BY executed_at, trade_id LIMIT 1
"""


# -- the bot's own position management ----------------------------------------------------------

def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_PRICES = ("stop_loss_price", "take_profit_price", "current_price")


def _price_problem(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"{name} must be a finite number > 0 or None, got {value!r}"
    if not 0 < value <= MAX_AMOUNT:
        return f"{name} must be in (0, {MAX_AMOUNT:g}] or None, got {value!r}"
    return None


def position_management_problems(values: dict[str, object]) -> tuple[list[str], dict[str, object]]:
    """Check the position-management values a bot sets (``None`` clears one); returns the problems
    and the values as stored (metadata as JSON text)."""
    problems: list[str] = []
    stored: dict[str, object] = {}
    for name, value in values.items():
        if name in _PRICES:
            problem = _price_problem(name, value)
        elif name == "trail_percent":
            ok = value is None or (not isinstance(value, bool) and isinstance(value, (int, float))
                                   and math.isfinite(value) and 0 < value < 100)
            problem = None if ok else f"trail_percent must be a number in (0, 100) or None, got {value!r}"
        elif name == "signal_score":
            ok = value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value))
            problem = None if ok else f"signal_score must be a finite number or None, got {value!r}"
        elif name == "metadata":
            problem = None
            if isinstance(value, str):
                try:
                    json.loads(value, parse_constant=_no_constant)
                except ValueError:
                    problem = f"metadata must be JSON (or a dict/list), got {value[:40]!r}"
            elif value is not None:
                try:
                    value = json.dumps(value, allow_nan=False, sort_keys=True)
                except (TypeError, ValueError) as exc:
                    problem = f"metadata cannot be stored as JSON: {exc}"
        else:
            problem = f"{name} is not a position-management value"
        if problem:
            problems.append(problem)
        else:
            stored[name] = float(value) if isinstance(value, int) and name != "metadata" else value
    return problems, stored
