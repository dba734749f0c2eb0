"""The bankroll: ``account.cash_balance`` against the cash formula of the ledger.

Every amount is within the domain's bound (``toolkit.domain.MAX_AMOUNT``) when the writer wrote it;
rows written past it may hold anything. The sums never raise: a sum beyond the float range is an
infinity, and a cash balance, starting capital, adjustment or ledger cash that is not an amount within
the bound is reported as such, never an error of the rule (the repair writes a computed cash only
when it is an amount).
"""
from __future__ import annotations

import math
from collections.abc import Iterator

from toolkit.accounting import cash_balance, money_differs
from toolkit.domain import amount_problem, is_amount
from toolkit.repair.model import update_row
from toolkit.rules.model import CheckContext, Rule, Violation, rule

__all__ = ["RULES", "ledger_cash"]


def _exact_sum(values: list) -> float:
    """The exact sum (``math.fsum``) of numbers; ±inf beyond the float range and NaN for a NULL (SQLite's
    ``total`` of inf and -inf) or inf − inf — never an ``OverflowError``."""
    if any(v is None for v in values):
        return math.nan
    try:
        return math.fsum(values)
    except OverflowError:   # finite partial sums whose sum is beyond the float range
        return sum(values)
    except ValueError:      # inf + -inf
        return math.nan


def _ledger_sums(ctx: CheckContext) -> tuple[float, float, float, float, list[str]]:
    """Σ adjustments, Σ BUY notional, Σ SELL notional, Σ commission; and the adjustments that are not amounts.

    SQL sums per ticker (one pass over the covering index), then exact summation of the partial sums,
    so float error stays far below the tolerance."""
    buys, sells, fees = [], [], []
    for buy, sell, fee in ctx.conn.execute(
            "SELECT total(CASE WHEN action = 'BUY' THEN quantity * price END), "
            "total(CASE WHEN action = 'SELL' THEN quantity * price END), total(commission) "
            "FROM trading.trades GROUP BY ticker"):
        buys.append(buy)
        sells.append(sell)
        fees.append(fee)
    amounts, bad = [], []
    for adjustment_id, amount in ctx.conn.execute("SELECT adjustment_id, amount FROM trading.account_adjustments"):
        if isinstance(amount, (int, float)):
            amounts.append(amount)
        problem = amount_problem(f"adjustment {adjustment_id} of", amount)
        if problem is not None and len(bad) < 3:
            bad.append(problem)
    return _exact_sum(amounts), _exact_sum(buys), _exact_sum(sells), _exact_sum(fees), bad


def ledger_cash(ctx: CheckContext, starting_capital: float) -> float:
    """The cash the ledger implies (±inf or NaN when its sums are not finite)."""
    adjustments, buys, sells, fees, _ = _ledger_sums(ctx)
    return cash_balance(starting_capital, adjustments, buys, sells, fees)


@rule("bankroll_mismatch", severity="CRITICAL", databases=["trading"],
      reads=["trading.account", "trading.trades", "trading.account_adjustments"], key=["account_id"],
      repair=update_row("trading", "account", ["account_id"], why_not="no account row or starting capital to compute the cash from; correct it by hand"))
def bankroll_mismatch(ctx: CheckContext, rule_: Rule) -> Iterator[Violation]:
    """account.cash_balance differs from the cash formula (starting capital + adjustments - buys + sells - commissions)."""
    tolerance = ctx.tolerance(rule_)
    accounts = ctx.conn.execute("SELECT account_id, starting_capital, cash_balance FROM trading.account").fetchall()
    if not accounts:
        if ctx.conn.execute("SELECT EXISTS (SELECT 1 FROM trading.trades)").fetchone()[0]:
            yield Violation(rule_.id, {"account_id": 1}, "the ledger has trades but no account row")
        return
    for account_id, starting, stored in accounts:
        key = {"account_id": account_id}
        if not isinstance(starting, (int, float)):
            yield Violation(rule_.id, key, f"starting_capital {starting!r} is not a number")
            continue
        problem = amount_problem("starting_capital", starting)
        if problem is not None:
            yield Violation(rule_.id, key, f"{problem}: the ledger's cash cannot be computed", stored=stored)
            continue
        adjustments, buys, sells, fees, bad = _ledger_sums(ctx)
        computed = cash_balance(starting, adjustments, buys, sells, fees)
        if bad or not is_amount(computed):
            # The ledger's own rows hold amounts beyond the bound (trade_row_invalid names the trades).
            parts = ", ".join(f"{name} {value!r}" for name, value in (
                ("Σ adjustments", adjustments), ("Σ BUY notional", buys), ("Σ SELL notional", sells),
                ("Σ commission", fees)) if not math.isfinite(value))
            why = amount_problem("the ledger's cash", computed)
            reasons = [f"{why} ({parts})" if parts else why] if why else []
            # The fix is the formula's value all the same: the repair writes it only if it is an amount.
            yield Violation(rule_.id, key, "; ".join([*reasons, *bad]) + "; correct the rows by hand "
                            "(trade_row_invalid names the trades)",
                            stored=stored, computed=None if math.isnan(computed) else computed, tolerance=tolerance,
                            fix={"cash_balance": computed}, was={"cash_balance": stored})
            continue
        stored_problem = amount_problem("cash_balance", stored) if isinstance(stored, (int, float)) else None
        if stored_problem is not None or money_differs(stored, computed, tolerance):   # NULL or text: never the ledger's cash
            difference = stored - computed if stored_problem is None and isinstance(stored, (int, float)) else None
            yield Violation(rule_.id, key,
                            stored_problem or f"cash_balance {stored!r} != ledger cash {computed:.2f}",
                            stored=stored, computed=computed, difference=difference, tolerance=tolerance,
                            fix={"cash_balance": computed}, was={"cash_balance": stored})


RULES = (bankroll_mismatch,)
