"""positions.db against the ledger (served by the shared ledger scan): one row per ticker and side.

Each ``(ticker, side)`` row is compared with ``book.position(side)`` of the ledger's open lots. With
``allow-short`` on, missing, orphaned and different rows of either side are repaired alike. With it
off the ledger is long-only: a short row is still a finding, but the repair leaves it alone (it
never deletes a short row in that mode) and says what to do instead.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from toolkit.accounting import SHORT, unrealized_pnl
from toolkit.ledger import position_row
from toolkit.repair.model import Change, Untouched, changed_columns
from toolkit.rules.model import CheckContext, Rule, Violation, rule

from .ledger_scan import LEDGER_SCAN, LONG_ONLY

_COLUMNS = ("position_id", "ticker", "side", "quantity", "entry_price", "current_price", "unrealized_pnl", "stop_loss_price",
            "take_profit_price", "opened_at", "updated_at", "strategy", "signal_score", "metadata")

#: What the repair says about a short row of a long-only ledger (it leaves the row as it is).
SHORT_ROW_REMEDY = (f"{LONG_ONLY}: repairs never delete a short row; if the bot trades short, turn allow-short on "
                    "(then the row is compared with the short lots); otherwise remove the row by hand")


def _row(ctx: CheckContext, ticker: str, side: str) -> dict:
    values = ctx.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM positions.positions WHERE ticker = ? AND side = ?",
                              (ticker, side)).fetchone()
    return dict(zip(_COLUMNS, values))


def _sync_positions(ctx: CheckContext, rule_: Rule, violations: Iterable[Violation]) -> Iterator[Change | Untouched]:
    """Make each (ticker, side) row of positions.db match the ledger's open lots of that side: insert
    missing rows, correct quantity and weighted entry price, delete orphaned rows (kept whole in the
    repair log). A short row of a long-only ledger is left untouched, with the remedy."""
    for v in violations:
        if v.fix is None:
            yield Untouched(rule_.id, v.key, v.message)
            continue
        ticker, side, position, row = v.key["ticker"], v.key["side"], v.fix["position"], v.fix["row"]
        key = {"ticker": ticker, "side": side}
        if side == SHORT and not ctx.settings.allow_short:
            yield Untouched(rule_.id, v.key, SHORT_ROW_REMEDY)
            continue
        if position is None:
            yield Change(rule_.id, "positions", "positions", "delete", key, _row(ctx, ticker, side), None, v.key, v.scope)
            continue
        last_price, last_time = v.fix["last"]
        if row is None:
            strategy = ctx.conn.execute("SELECT strategy FROM trading.trades WHERE ticker = ? ORDER BY executed_at DESC, "
                                        "trade_id DESC LIMIT 1", (ticker,)).fetchone()
            after = position_row(position, last_price, last_time, strategy[0] if strategy else None)
            yield Change(rule_.id, "positions", "positions", "insert", key, None, after, v.key, v.scope)
            continue
        current = _row(ctx, ticker, side)
        price = current["current_price"] if isinstance(current["current_price"], (int, float)) else last_price
        after = {"quantity": position.quantity, "entry_price": position.entry_price, "opened_at": position.opened_at,
                 "updated_at": max(current["updated_at"] or 0, position.opened_at, last_time),
                 "unrealized_pnl": unrealized_pnl(position, price, side)}
        before, after = changed_columns({c: current[c] for c in after}, after)
        yield Change(rule_.id, "positions", "positions", "update", key, before, after, v.key, v.scope)


__all__ = ["RULES", "SHORT_ROW_REMEDY"]


@rule("position_ledger_mismatch", severity="HIGH", databases=["trading", "positions"],
      reads=["trading.trades", "positions.positions"], key=["ticker", "side"], scan=LEDGER_SCAN, repair=_sync_positions)
def position_ledger_mismatch() -> None:
    """positions.db disagrees with the ledger's open lots of a ticker and side: missing, orphaned, quantity or entry-price differences; a short row when shorts are off."""


RULES = (position_ledger_mismatch,)
