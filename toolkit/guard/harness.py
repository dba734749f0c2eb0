"""`integrity adversarial`: run the attack catalogue inside one rollback-only session.

For each attack: ``SAVEPOINT``, count the violations of the rules it targets (on the tickers it
touches), run it, count again, ``ROLLBACK TO``. With guardrails on, an attack must be refused; with
them off, it must go through and every rule it targets must find more than before. Escape attempts
must be refused by the session in both modes. At the end the session rolls back and proves every
database unchanged; a difference is an isolation breach (exit code 4).
"""
from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from ..config import DATABASES, Settings
from ..errors import GuardrailViolation, IsolationBreach, UnknownNameError, UsageError
from ..rules.model import CheckContext
from ..rules.registry import Registry
from ..rules.runner import execute_rules
from .attack import Attack, AttackContext
from .connection import connect_guarded, rollback_only

__all__ = ["AttackVerdict", "AttackOutcome", "HarnessReport", "run_attacks", "select_attacks"]


class AttackVerdict(StrEnum):
    """What became of one attack. Members equal their strings and print as them (JSON, tables)."""

    BLOCKED = "blocked"     # guardrails on: refused before it changed anything
    DETECTED = "detected"   # guardrails off: it went through and every rule it targets found it
    REFUSED = "refused"     # an escape from the session, refused by the session (either mode)
    GAP = "gap"             # none of the above: let through, undetected, or out of the session


@dataclass
class AttackOutcome:
    id: str
    description: str
    kind: str
    targets: tuple[str, ...]
    outcome: AttackVerdict
    detail: str = ""
    detected_by: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.outcome = AttackVerdict(self.outcome)


@dataclass
class HarnessReport:
    data_dir: str
    guardrails: bool
    outcomes: list[AttackOutcome] = field(default_factory=list)
    breach: str | None = None
    seconds: float = 0.0

    @property
    def gaps(self) -> list[AttackOutcome]:
        return [o for o in self.outcomes if o.outcome == AttackVerdict.GAP]

    @property
    def exit_code(self) -> int:
        if self.breach:
            return 4
        return 1 if self.gaps else 0


def select_attacks(attacks: Sequence[Attack], attack_ids: Sequence[str] | None = None) -> list[Attack]:
    """The attacks to run, in catalogue order: all, or those named (unknown or duplicate ids refused)."""
    known: dict[str, Attack] = {}
    for item in attacks:
        if item.id in known:
            raise UsageError(f"duplicate attack id {item.id!r} in the catalogue", hint="attack ids are unique; rename one")
        known[item.id] = item
    if not attack_ids:
        return list(known.values())
    for attack_id in attack_ids:
        if attack_id not in known:
            raise UnknownNameError("attack", attack_id, known)
    return [a for a in known.values() if a.id in set(attack_ids)]


def _findings(conn: sqlite3.Connection, settings: Settings, rules: list, tickers: set[str] | None) -> dict[str, frozenset | None]:
    """Per rule, what it finds on the attacked scope: each violation's identity with the values it
    reports (so a row that was already wrong and is now wrong differently counts as a new finding);
    None when the rule could not run."""
    if not rules:
        return {}
    found: dict[str, set] = {r.id: set() for r in rules}

    def observe(violation) -> None:
        found[violation.rule_id].add((violation.fingerprint, repr(violation.stored), repr(violation.computed),
                                      violation.message))

    ctx = CheckContext(conn, settings, tickers=frozenset(tickers) if tickers else None)
    results = execute_rules(ctx, rules, sample=0, precheck=False, observe=observe)
    return {r.rule.id: None if r.status in ("error", "skipped") else frozenset(found[r.rule.id]) for r in results}


def run_attacks(
    settings: Settings,
    *,
    registry: Registry,
    attacks: Sequence[Attack],
    guardrails: bool = True,
    attack_ids: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> HarnessReport:
    """Run ``attacks`` (those named by ``attack_ids``, or all); the report says, per attack, blocked /
    detected by which rules of ``registry`` / gap. With guardrails, the connection carries every row
    guard the registry's rules declare."""
    say = progress or (lambda _: None)
    chosen = [a for a in select_attacks(attacks, attack_ids) if a.applies is None or a.applies(settings)]
    report = HarnessReport(str(settings.data_dir), guardrails)
    clock = time.perf_counter()
    conn = connect_guarded(settings, guardrails=guardrails, guards=registry.guards)
    try:
        try:
            with rollback_only(conn, schemas=DATABASES):
                for n, attack in enumerate(chosen, 1):
                    say(f"[{n}/{len(chosen)}] {attack.id}")
                    report.outcomes.append(_one(conn, settings, registry, attack, guardrails))
                    if report.outcomes[-1].outcome == AttackVerdict.GAP and not conn.in_transaction:
                        report.breach = f"{attack.id} ended the session's transaction"
                        break
        except IsolationBreach as exc:
            report.breach = exc.message
    finally:
        conn.close()
    report.seconds = time.perf_counter() - clock
    return report


def _one(conn, settings: Settings, registry: Registry, attack: Attack, guardrails: bool) -> AttackOutcome:
    """Run one attack in its own savepoint. Counts: after the attack (on the tickers it touched),
    then, rolled back to the savepoint, the same counts before it."""
    started = time.perf_counter()
    outcome = AttackOutcome(attack.id, attack.description, attack.kind, attack.targets, AttackVerdict.GAP)
    rules = [registry[r] for r in attack.targets if r in registry]
    missing = [r for r in attack.targets if r not in registry]
    savepoint = f"attack_{attack.id}"
    conn.execute(f'SAVEPOINT "{savepoint}"')
    try:
        ctx = AttackContext(conn)
        reason = ""
        try:
            attack.run(ctx)
            applied = True
        except GuardrailViolation as exc:
            applied, reason = False, exc.reason
        except sqlite3.Error as exc:
            applied, reason = False, f"SQLite refused it: {exc}"
        except LookupError as exc:
            outcome.detail = f"could not run: {exc}"
            return outcome
        if not conn.in_transaction:
            # It got out of the session (committed or ended it): a gap whatever else it did; its
            # savepoint is gone, and the caller stops the run and proves the data.
            outcome.detail = "it ended the session's transaction" + (f" ({reason})" if reason else "")
            return outcome
        if attack.kind == "escape":
            if applied:
                outcome.detail = "the session did not refuse it"
            else:
                outcome.outcome, outcome.detail = AttackVerdict.REFUSED, reason
            return outcome
        if not applied:
            if guardrails:
                outcome.outcome, outcome.detail = AttackVerdict.BLOCKED, reason
            else:
                outcome.detail = f"not applied without guardrails ({reason})"
            return outcome
        if guardrails:
            outcome.detail = "the guardrails let it through"
            return outcome
        after = _findings(conn, settings, rules, ctx.tickers)
        sqlite3.Connection.execute(conn, f'ROLLBACK TO "{savepoint}"')
        before = _findings(conn, settings, rules, ctx.tickers)
        # Detected: the rule finds something after the attack that it did not find before — a new
        # violation, or one already there that now reports other values (the rows were already wrong).
        outcome.detected_by = [r.id for r in rules
                               if after.get(r.id) is not None and before.get(r.id) is not None
                               and after[r.id] - before[r.id]]
        undetected = [r for r in attack.targets if r not in outcome.detected_by]
        if missing:
            outcome.detail = f"targets unknown rules: {', '.join(missing)}"
        elif undetected:
            outcome.detail = f"applied, not detected by {', '.join(undetected)}"
        else:
            outcome.outcome = AttackVerdict.DETECTED
            outcome.detail = "detected by " + ", ".join(outcome.detected_by)
        return outcome
    finally:
        outcome.seconds = time.perf_counter() - started
        if conn.in_transaction:
            sqlite3.Connection.execute(conn, f'ROLLBACK TO "{savepoint}"')
            sqlite3.Connection.execute(conn, f'RELEASE "{savepoint}"')
