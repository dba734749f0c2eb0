"""positions.db against the ledger (served by the shared ledger scan)."""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from toolkit.accounting import unrealized_pnl
from toolkit.ledger import position_row
from toolkit.repair.model import Change, Untouched, changed_columns
from toolkit.rules.model import CheckContext, Rule, Violation, rule

from .ledger import LEDGER_SCAN

_COLUMNS = ("position_id", "ticker", "side", "quantity", "entry_price", "current_price", "unrealized_pnl", "stop_loss_price",
            "take_profit_price", "opened_at", "updated_at", "strategy", "signal_score", "metadata")


def _row(ctx: CheckContext, ticker: str, side: str) -> dict:
    values = ctx.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM positions.positions WHERE ticker = ? AND side = ?",
                              (ticker, side)).fetchone()
    return dict(zip(_COLUMNS, values))


def _sync_positions(ctx: CheckContext, rule_: Rule, violations: Iterable[Violation]) -> Iterator[Change | Untouched]:
    """Make positions.db match the ledger's open lots: insert missing rows, correct quantity and
    weighted entry price, delete orphaned and short rows (kept whole in the repair log)."""
    for v in violations:
        if v.fix is None:
            yield Untouched(rule_.id, v.key, v.message)
            continue
        ticker, position, rows = v.key["ticker"], v.fix["position"], v.fix["rows"]
        for _, side, _, _ in rows:
            if side != "long" or position is None:
                yield Change(rule_.id, "positions", "positions", "delete", {"ticker": ticker, "side": side},
                             _row(ctx, ticker, side), None, v.key, v.scope)
        if position is None:
            continue
        last_price, last_time = v.fix["last"]
        if not any(side == "long" for _, side, _, _ in rows):
            strategy = ctx.conn.execute("SELECT strategy FROM trading.trades WHERE ticker = ? ORDER BY executed_at DESC, "
                                        "trade_id DESC LIMIT 1", (ticker,)).fetchone()
            after = position_row(position, last_price, last_time, strategy[0] if strategy else None)
            yield Change(rule_.id, "positions", "positions", "insert", {"ticker": ticker, "side": "long"}, None, after, v.key, v.scope)
            continue
        current = _row(ctx, ticker, "long")
        price = current["current_price"] if isinstance(current["current_price"], (int, float)) else last_price
        after = {"quantity": position.quantity, "entry_price": position.entry_price, "opened_at": position.opened_at,
                 "updated_at": max(current["updated_at"] or 0, position.opened_at, last_time),
                 "unrealized_pnl": unrealized_pnl(position, price)}
        before, after = changed_columns({c: current[c] for c in after}, after)
        yield Change(rule_.id, "positions", "positions", "update", {"ticker": ticker, "side": "long"},
                     before, after, v.key, v.scope)


__all__ = ["RULES"]


@rule("position_ledger_mismatch", severity="HIGH", databases=["trading", "positions"],
      reads=["trading.trades", "positions.positions"], key=["ticker"], scan=LEDGER_SCAN, repair=_sync_positions)
def position_ledger_mismatch() -> None:
    """positions.db disagrees with the ledger's open lots: missing, orphaned, quantity or entry-price differences."""


RULES = (position_ledger_mismatch,)
