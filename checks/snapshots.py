"""Portfolio snapshots: equity must be cash plus long minus short market value."""
from __future__ import annotations

from toolkit.rules.model import Guard, rule

__all__ = ["RULES"]


@rule("snapshot_equity_mismatch", severity="MEDIUM", databases=["trading"], reads=["trading.portfolio_snapshots"],
      key=["snapshot_id"],
      guards=[Guard("trading.portfolio_snapshots", ("INSERT", "UPDATE"),
                    "NOT abs(NEW.total_equity - (NEW.cash_balance + NEW.long_market_value - NEW.short_market_value)) <= {tolerance}",
                    "total equity must be cash + long market value - short market value")],
      remedy="re-take the snapshot from the ledger; snapshots are history, so the toolkit does not rewrite them")
def snapshot_equity_mismatch():
    """Snapshots whose total equity is not cash + long market value - short market value."""
    return """
        SELECT snapshot_id, total_equity AS stored,
               cash_balance + long_market_value - short_market_value AS computed,
               total_equity - (cash_balance + long_market_value - short_market_value) AS difference,
               :tolerance AS tolerance,
               'snapshot ' || snapshot_date || ': equity ' || total_equity || ' != cash + long - short' AS message
        FROM trading.portfolio_snapshots
        WHERE NOT abs(total_equity - (cash_balance + long_market_value - short_market_value)) <= :tolerance
           OR total_equity IS NULL OR cash_balance IS NULL
        ORDER BY snapshot_id
    """


RULES = (snapshot_equity_mismatch,)
