"""Portfolio snapshots: equity must be cash plus long minus short market value.

The formula is ``toolkit.accounting.equity`` and the comparison ``toolkit.accounting.money_differs``
(farther apart than the tolerance; NULL equals only NULL, NaN and infinities equal nothing). The
rule and its guard run inside SQLite, so they say both in SQL, once, in :func:`equity_sql` and
:func:`equity_differs_sql`; ``tests/test_accounting.py`` holds that SQL to the Python definitions
on a table of cases.
"""
from __future__ import annotations

from toolkit.rules.model import Guard, rule

__all__ = ["RULES", "equity_sql", "equity_differs_sql"]


def equity_sql(row: str = "") -> str:
    """``toolkit.accounting.equity(cash, long_value, short_value)`` over a snapshot row, in SQL
    (``row`` prefixes the columns: ``"NEW."`` in a trigger). NULL when an input is NULL."""
    return f"({row}cash_balance + {row}long_market_value - {row}short_market_value)"


def equity_differs_sql(row: str, tolerance: str) -> str:
    """``money_differs(total_equity, equity(...), tolerance)`` over a snapshot row, in SQL.

    SQLite has no NaN: ``inf - inf`` is NULL there. So "both NULL" is spelled out as the stored
    total and an input of the formula being NULL, not as the formula's result being NULL.
    """
    no_equity = f"({row}cash_balance IS NULL OR {row}long_market_value IS NULL OR {row}short_market_value IS NULL)"
    return (f"NOT coalesce(abs({row}total_equity - {equity_sql(row)}) <= {tolerance}, "
            f"{row}total_equity IS NULL AND {no_equity})")


_EQUITY = equity_sql()
_NO_EQUITY = "(cash_balance IS NULL OR long_market_value IS NULL OR short_market_value IS NULL)"
_LARGEST = "1.7976931348623157e308"   # only an infinity is beyond it (SQLite has no NaN: inf - inf is NULL)
#: Why a snapshot is reported: an amount that is not finite (an infinity, or a formula that overflowed), or
#: the difference. (Message only: which rows are reported is equity_differs_sql, the guard's definition.)
_REASON = f"""CASE
    WHEN abs(total_equity) > {_LARGEST} THEN 'equity ' || total_equity || ' is not a finite amount'
    WHEN NOT {_NO_EQUITY} AND coalesce(abs({_EQUITY}) > {_LARGEST}, 1)
         THEN 'cash + long - short is not a finite amount (cash ' || cash_balance || ', long ' || long_market_value
              || ', short ' || short_market_value || ')'
    ELSE 'equity ' || total_equity || ' != cash + long - short' END"""


@rule("snapshot_equity_mismatch", severity="MEDIUM", databases=["trading"], reads=["trading.portfolio_snapshots"],
      key=["snapshot_id"],
      guards=[Guard("trading.portfolio_snapshots", ("INSERT", "UPDATE"), equity_differs_sql("NEW.", "{tolerance}"),
                    "total equity must be cash + long market value - short market value")],
      remedy="re-take the snapshot from the ledger; snapshots are history, so the toolkit does not rewrite them")
def snapshot_equity_mismatch():
    """Snapshots whose total equity is not cash + long market value - short market value."""
    return f"""
        SELECT snapshot_id, total_equity AS stored,
               {_EQUITY} AS computed,
               total_equity - {_EQUITY} AS difference,
               :tolerance AS tolerance,
               'snapshot ' || snapshot_date || ': ' || {_REASON} AS message
        FROM trading.portfolio_snapshots
        WHERE {equity_differs_sql("", ":tolerance")}
        ORDER BY snapshot_id
    """


RULES = (snapshot_equity_mismatch,)
