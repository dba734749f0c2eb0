"""Verifying written repairs before they are kept: the repaired rules and every rule reading a table
they changed are run again on the scope the writes touched (one ledger scan for all of them).

A repair holds when each repaired rule finds nothing there but what it chose to leave untouched, and
no other rule finds more than the census did before.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..rules.model import CheckContext, Rule, Violation
from ..rules.registry import Registry
from ..rules.runner import RuleResult, execute_rules
from .plan import RulePlan, tables_read
from .writer import Writer, canonical_json

__all__ = ["Written", "verify_repairs"]


@dataclass
class Written:
    """One rule's repair, written (in its savepoint) and waiting to be verified."""

    rule: Rule
    outcome: RulePlan
    writer: Writer
    untouched: set[str]


def verify_repairs(ctx: CheckContext, registry: Registry, written: list[Written], scope_counts: dict[str, Counter]) -> str | None:
    """None if the repairs hold: re-run, on the touched scope, the repaired rules and every rule
    reading a changed table. Each repaired rule must find nothing there but what it left untouched;
    no other rule may find more than before."""
    repaired = {w.rule.id: w.untouched for w in written}
    touched = set().union(*(w.writer.touched for w in written))
    related = [r for r in registry if r.reads and tables_read(r) & touched]
    related += [w.rule for w in written if w.rule not in related]
    scopes = set().union(*(w.writer.scopes for w in written))
    tickers = frozenset(s for s in scopes if isinstance(s, str)) or None
    scoped = [r for r in related if r.scan is not None]
    whole = [r for r in related if r.scan is None]
    left: list[Violation] = []

    def census(rules: list[Rule], limit: frozenset[str] | None) -> tuple[dict[str, RuleResult], dict[str, Counter]]:
        by_scope: dict[str, Counter] = {r.id: Counter() for r in rules}

        def observe(violation: Violation) -> None:
            by_scope[violation.rule_id][violation.scope] += 1
            untouched = repaired.get(violation.rule_id)
            if untouched is not None and canonical_json(violation.key) not in untouched:
                left.append(violation)

        ctx.tickers = limit
        try:
            return {r.rule.id: r for r in execute_rules(ctx, rules, sample=0, observe=observe)}, by_scope
        finally:
            ctx.tickers = None

    results: dict[str, RuleResult] = {}
    after_scope: dict[str, Counter] = {}
    for group, limit in ((scoped, tickers), (whole, None)):
        if group:
            found, counts = census(group, limit)
            results.update(found)
            after_scope.update(counts)
    for other in related:
        if results[other.id].status in ("error", "skipped"):
            return f"re-checking {other.id} failed: {results[other.id].error or results[other.id].reason}"
    if left:
        more = f" (and {len(left) - 1} more)" if len(left) > 1 else ""
        return f"{left[0].rule_id} still finds {left[0].key}: {left[0].message}{more}"
    for other in related:
        before = scope_counts.get(other.id, Counter())
        after = after_scope.get(other.id, Counter())
        in_scope = other.scan is not None and tickers is not None
        was = sum(before[t] for t in tickers) if in_scope else sum(before.values())  # type: ignore[union-attr]
        now = sum(after.values())
        if other.id not in repaired and now > was:
            return f"{other.id} got worse ({was} -> {now} violations)"
    for other in related:  # the next repair compares against the state after this one
        counts = scope_counts.setdefault(other.id, Counter())
        if other.scan is not None and tickers is not None:
            for t in tickers:
                counts.pop(t, None)
        else:
            counts.clear()
        counts.update(after_scope.get(other.id, Counter()))
    return None
