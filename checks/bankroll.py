"""The bankroll: ``account.cash_balance`` against the cash formula of the ledger."""
from __future__ import annotations

import math
from collections.abc import Iterator

from toolkit.accounting import cash_balance, money_differs
from toolkit.repair.model import update_row
from toolkit.rules.model import CheckContext, Rule, Violation, rule

__all__ = ["RULES", "ledger_cash"]


def ledger_cash(ctx: CheckContext, starting_capital: float) -> float:
    """The cash the ledger implies. SQL sums per ticker (one pass over the covering index), then
    exact summation of the partial sums, so float error stays far below the tolerance."""
    buys, sells, fees = [], [], []
    for buy, sell, fee in ctx.conn.execute(
            "SELECT total(CASE WHEN action = 'BUY' THEN quantity * price END), "
            "total(CASE WHEN action = 'SELL' THEN quantity * price END), total(commission) "
            "FROM trading.trades GROUP BY ticker"):
        buys.append(buy)
        sells.append(sell)
        fees.append(fee)
    adjustments = math.fsum(a for (a,) in ctx.conn.execute("SELECT amount FROM trading.account_adjustments")
                            if isinstance(a, (int, float)))
    return cash_balance(starting_capital, adjustments, math.fsum(buys), math.fsum(sells), math.fsum(fees))


@rule("bankroll_mismatch", severity="CRITICAL", databases=["trading"],
      reads=["trading.account", "trading.trades", "trading.account_adjustments"], key=["account_id"],
      repair=update_row("trading", "account", ["account_id"], why_not="no account row to correct"))
def bankroll_mismatch(ctx: CheckContext, rule_: Rule) -> Iterator[Violation]:
    """account.cash_balance differs from the cash formula (starting capital + adjustments - buys + sells - commissions)."""
    tolerance = ctx.tolerance(rule_)
    accounts = ctx.conn.execute("SELECT account_id, starting_capital, cash_balance FROM trading.account").fetchall()
    if not accounts:
        if ctx.conn.execute("SELECT EXISTS (SELECT 1 FROM trading.trades)").fetchone()[0]:
            yield Violation(rule_.id, {"account_id": 1}, "the ledger has trades but no account row")
        return
    for account_id, starting, stored in accounts:
        if not isinstance(starting, (int, float)):
            yield Violation(rule_.id, {"account_id": account_id}, f"starting_capital {starting!r} is not a number")
            continue
        computed = ledger_cash(ctx, starting)
        if money_differs(stored, computed, tolerance):   # NULL or text: never the ledger's cash
            difference = stored - computed if isinstance(stored, (int, float)) else None
            yield Violation(rule_.id, {"account_id": account_id},
                            f"cash_balance {stored!r} != ledger cash {computed:.2f}",
                            stored=stored, computed=computed, difference=difference, tolerance=tolerance,
                            fix={"cash_balance": computed}, was={"cash_balance": stored})


RULES = (bankroll_mismatch,)
