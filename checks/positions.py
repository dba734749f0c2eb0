"""positions.db against the ledger (served by the shared ledger scan)."""
from __future__ import annotations

from toolkit.rules.model import rule

from .ledger import LEDGER_SCAN

__all__ = ["RULES"]


@rule("position_ledger_mismatch", severity="HIGH", databases=["trading", "positions"],
      reads=["trading.trades", "positions.positions"], key=["ticker"], scan=LEDGER_SCAN)
def position_ledger_mismatch() -> None:
    """positions.db disagrees with the ledger's open lots: missing, orphaned, quantity or entry-price differences."""


RULES = (position_ledger_mismatch,)
