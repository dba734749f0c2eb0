"""Integrity rules: the model, the registry, the runner, baselines and run history.

The bundled catalogue is content: ``toolkit.content.load_registry(settings)`` builds the registry.
"""
from __future__ import annotations

from .model import CheckContext, Rule, Scan, Severity, Violation, fingerprint, rule
from .registry import ENTRY_POINT_GROUP, Registry
from .runner import CheckReport, RuleResult, execute_rules, run_checks, sql_violations

__all__ = [
    "CheckContext", "Rule", "Scan", "Severity", "Violation", "fingerprint", "rule",
    "ENTRY_POINT_GROUP", "Registry",
    "CheckReport", "RuleResult", "execute_rules", "run_checks", "sql_violations",
]
