"""What a repair is: a planner turns a rule's violations into row changes (or says why not).

A planner is ``plan(ctx, rule, violations) -> Iterator[Change | Untouched]``. It computes the new
values from the accounting core (or from the violation's ``fix``), never deletes ledger rows, and
streams: nothing is collected whole.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..rules.model import CheckContext, RepairPlanner, Rule, Violation

__all__ = ["Change", "Untouched", "RepairPlanner", "update_row", "changed_columns", "LEDGER_TABLES"]

#: Tables whose rows a repair may change but never delete.
LEDGER_TABLES = frozenset({("trading", "trades"), ("trading", "lot_matches"), ("trading", "account_adjustments")})


@dataclass(frozen=True)
class Change:
    """One row changed by a repair. ``before``/``after`` hold the changed columns of an update, the
    whole row of an insert (``after``) or of a delete (``before``)."""

    rule_id: str
    database: str
    table: str
    op: str                      # "update" | "insert" | "delete"
    key: dict[str, Any]          # the row's primary key
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    repairs: dict[str, Any] = field(default_factory=dict)   # the violation key it repairs
    scope: Any = None            # e.g. the ticker (to re-verify just that part)

    def describe(self) -> str:
        key = ", ".join(f"{k}={v}" for k, v in self.key.items())
        if self.op == "update":
            parts = [f"{c}: {_short((self.before or {}).get(c))} -> {_short(v)}" for c, v in (self.after or {}).items()]
            return f"update {self.database}.{self.table} [{key}] " + "; ".join(parts)
        if self.op == "insert":
            return f"insert {self.database}.{self.table} [{key}] " + ", ".join(f"{c}={_short(v)}" for c, v in (self.after or {}).items() if c not in self.key)
        return f"delete {self.database}.{self.table} [{key}] (kept in the repair log)"


@dataclass(frozen=True)
class Untouched:
    """A violation the repair leaves alone, and why."""

    rule_id: str
    key: dict[str, Any]
    reason: str


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def changed_columns(before: dict[str, Any] | None, after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Only the columns whose value changes: (before, after)."""
    old = before or {}
    keep = [c for c, v in after.items() if c not in old or type(old[c]) is not type(v) or old[c] != v]
    return {c: old.get(c) for c in keep}, {c: after[c] for c in keep}


def update_row(database: str, table: str, key_columns: Sequence[str], *, why_not: str = "no automatic repair") -> RepairPlanner:
    """A planner that writes each violation's ``fix`` into the row its key names (the old values,
    ``was``, come from the rule too). Violations without a fix are left untouched, ``why_not``."""
    columns = tuple(key_columns)

    def plan(ctx: CheckContext, rule: Rule, violations: Iterable[Violation]) -> Iterator[Change | Untouched]:
        for violation in violations:
            if violation.fix is None or any(c not in violation.key for c in columns):
                yield Untouched(rule.id, violation.key, violation.message + f" ({why_not})" if violation.message else why_not)
                continue
            before, after = changed_columns(violation.was, violation.fix)
            if not after:
                yield Untouched(rule.id, violation.key, "nothing to change (the values already agree)")
                continue
            yield Change(rule.id, database, table, "update", {c: violation.key[c] for c in columns},
                         before=before, after=after, repairs=violation.key, scope=violation.scope)

    return plan
