"""A row guard: an invariant a guarded connection enforces so a fault cannot be written at all.

Guards are values. The rule that detects a breach declares the guard that prevents it (its
``rule_id``), the ledger declares its own (``toolkit.domain.LEDGER_GUARDS``), and whoever opens a
guarded connection chooses which to install: the trade writer only the ledger's, the adversarial
harness and the pytest fixture the whole catalogue's.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Guard"]


@dataclass(frozen=True)
class Guard:
    """A TEMP trigger ``BEFORE <event> ON <table> WHEN <when>`` that aborts the statement.

    ``when`` may use ``{tolerance}`` (the tolerance configured for ``rule_id``, else
    ``default_tolerance``, else the global one) and the SQL functions in ``functions`` (name ->
    Python callable, registered on the guarded connection).
    """

    table: str                       # "trading.portfolio_snapshots"
    events: tuple[str, ...]          # ("INSERT", "UPDATE OF total_equity, cash_balance")
    when: str
    reason: str
    functions: Mapping[str, Callable[..., Any]] = field(default_factory=dict, hash=False, compare=False)
    #: The rule that reports a breach of this invariant (names the trigger, the message, the tolerance).
    rule_id: str = ""
    default_tolerance: float | None = None

    @property
    def database(self) -> str:
        return self.table.split(".", 1)[0]
