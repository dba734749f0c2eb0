"""The rule model: severity, violations, rules, shared scans, and the ``@rule`` decorator.

A rule has a stable id, a severity, a one-line description (its docstring), the databases it reads
and its logic — an SQL query returning one row per violation wherever SQL can say it, Python
yielding :class:`Violation` objects where it cannot, or membership in a shared :class:`Scan` (one
ordered pass that serves several rules). A rule may also declare a repair.
"""
from __future__ import annotations

import enum
import json
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..config import DATABASES, Settings
from ..backend import backend_for
from ..backend.base import Backend
from ..errors import RuleDefinitionError
from ..domain import Guard

#: A rule's repair: ``plan(ctx, rule, violations)`` yields ``toolkit.repair.model.Change`` or
#: ``Untouched`` items (see there); the repair engine writes, verifies and journals them.
RepairPlanner = Callable[["CheckContext", "Rule", Iterable["Violation"]], Iterator[Any]]

__all__ = ["Severity", "Violation", "Rule", "Scan", "Guard", "CheckContext", "RepairPlanner", "rule", "fingerprint"]

_ID = re.compile(r"^[a-z][a-z0-9_]{2,63}$")

#: At most this many foreign-key problems per database are kept for the next rule that asks.
FOREIGN_KEY_CACHE = 10_000


class Severity(enum.IntEnum):
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, value: str | Severity) -> Severity:
        if isinstance(value, Severity):
            return value
        try:
            return cls[str(value).upper()]
        except KeyError:
            raise RuleDefinitionError(
                f"unknown severity {value!r}", hint="use CRITICAL, HIGH, MEDIUM or LOW") from None


#: A natural key longer than this (in its canonical JSON) is fingerprinted by its SHA-256 instead.
FINGERPRINT_KEY_LIMIT = 512


def fingerprint(rule_id: str, key: Mapping[str, Any]) -> str:
    """A violation's identity: the rule id and its natural key — never amounts. A huge key (a stored
    Q-table state, say) is identified by its SHA-256, so no report or baseline carries it whole."""
    text = json.dumps(dict(key), sort_keys=True, separators=(",", ":"), default=str)
    if len(text) > FINGERPRINT_KEY_LIMIT:
        import hashlib

        text = "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return rule_id + ":" + text


@dataclass(frozen=True)
class Violation:
    """One thing a rule found. Money rules fill ``stored``/``computed``/``difference``/``tolerance``.

    Rules that can be repaired also say how: ``fix`` (the correct values), ``was`` (the stored
    ones) and ``scope`` (e.g. the ticker, so a repair can re-verify just that part). None of these
    are part of the violation's identity.
    """

    rule_id: str
    key: dict[str, Any]
    message: str = ""
    stored: Any = None
    computed: Any = None
    difference: float | None = None
    tolerance: float | None = None
    fix: Any = field(default=None, compare=False, repr=False)
    was: Any = field(default=None, compare=False, repr=False)
    scope: Any = field(default=None, compare=False, repr=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule_id, self.key)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"key": self.key, "message": self.message}
        for name in ("stored", "computed", "difference", "tolerance"):
            value = getattr(self, name)
            if value is not None:
                # JSON has no NaN/Infinity (SQLite does store Inf): reports and history get text instead.
                if isinstance(value, float) and (value != value or abs(value) == float("inf")):
                    value = "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
                data[name] = value
        return data


@dataclass
class CheckContext:
    """What a rule gets: one connection with every database attached (``trading.trades``), the
    settings, per-rule options, and optionally a restriction to some tickers (repair verification)."""

    conn: sqlite3.Connection
    settings: Settings
    tickers: frozenset[str] | None = None
    progress: Callable[[str], None] | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    #: Repair mode: rules also compute ``Violation.fix``/``was`` (costlier, so only when asked).
    want_fixes: bool = False
    _backend: Backend | None = field(default=None, repr=False)

    @property
    def backend(self) -> Backend:
        """The backend the databases live on (from the settings)."""
        if self._backend is None:
            self._backend = backend_for(self.settings)
        return self._backend

    def option(self, rule: Rule, name: str, default: Any = None) -> Any:
        configured = self.settings.rule_options.get(rule.id, {})
        if name in configured:
            return configured[name]
        return rule.options.get(name, default)

    def tolerance(self, rule: Rule) -> float:
        return float(self.option(rule, "tolerance", self.settings.tolerance))

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)

    def foreign_key_check(self, database: str) -> Iterator[tuple[str, int | None, str, int]]:
        """Rows whose foreign key points at a missing row (table, rowid, parent, fkid), streamed.

        Rules that need it share one pass: a complete result of at most ``FOREIGN_KEY_CACHE`` rows
        is kept for the next rule on this context (a clean file costs one pass, not one per rule).
        """
        cache = self.cache.setdefault("foreign_key_check", {})
        if database in cache:
            yield from cache[database]
            return
        kept: list[tuple[str, int | None, str, int]] | None = []
        for row in self.backend.foreign_key_problems(self.conn, database):
            if kept is not None:
                kept.append(row)
                if len(kept) > FOREIGN_KEY_CACHE:
                    kept = None
            yield row
        if kept is not None:
            cache[database] = kept


@dataclass(frozen=True)
class Scan:
    """A pass several rules share: ``run(ctx, rules)`` yields violations for the selected rules."""

    name: str
    run: Callable[[CheckContext, Mapping[str, Rule]], Iterator[Violation]]


@dataclass(frozen=True, eq=False)
class Rule:
    """An integrity rule. Build it with :func:`rule`, or directly in a test. Rules compare by identity."""

    id: str
    severity: Severity
    description: str
    databases: tuple[str, ...]
    reads: tuple[str, ...] = ()
    key: tuple[str, ...] = ()
    sql: str | None = None
    check: Callable[[CheckContext, Rule], Iterable[Violation]] | None = None
    scan: Scan | None = None
    repair: RepairPlanner | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    #: False for rules that examine damage themselves (quick_check): they run on damaged files too.
    sound_files_only: bool = True
    #: For rules without an automatic repair: what a person should do instead.
    remedy: str = ""
    #: Row-level invariants a guarded connection enforces so the fault cannot be written at all.
    guards: tuple[Guard, ...] = ()

    @property
    def repairable(self) -> bool:
        return self.repair is not None

    @property
    def kind(self) -> str:
        return "sql" if self.sql is not None else ("scan" if self.scan is not None else "python")

    def validate(self) -> Rule:
        """Refuse a malformed rule when it is registered, not when it first runs."""
        where = f" ({self.source})" if self.source else ""
        if not isinstance(self.id, str) or not _ID.match(self.id):
            raise RuleDefinitionError(f"rule id {self.id!r}{where} must be lower_snake_case, 3-64 characters")
        if not isinstance(self.severity, Severity):
            raise RuleDefinitionError(f"rule {self.id}{where}: severity must be a Severity")
        if not isinstance(self.description, str) or not self.description.strip():
            raise RuleDefinitionError(f"rule {self.id}{where} has no description", hint="give it a docstring; its first line is shown by `integrity list`")
        if not self.databases or any(d not in DATABASES for d in self.databases):
            raise RuleDefinitionError(f"rule {self.id}{where}: databases must be a non-empty subset of {', '.join(DATABASES)}")
        logic = sum(x is not None for x in (self.sql, self.check, self.scan))
        if logic != 1:
            raise RuleDefinitionError(f"rule {self.id}{where} needs exactly one of sql, check or scan")
        if self.sql is not None and not self.key:
            raise RuleDefinitionError(f"SQL rule {self.id}{where} must name its key columns")
        return self


def _doc_line(func: Callable) -> str:
    doc = (func.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def rule(
    id: str,
    *,
    severity: str | Severity,
    databases: Iterable[str],
    reads: Iterable[str] = (),
    key: Iterable[str] = (),
    scan: Scan | None = None,
    repair: RepairPlanner | None = None,
    sound_files_only: bool = True,
    remedy: str = "",
    guards: Iterable[Guard] = (),
    **options: Any,
) -> Callable[[Callable], Rule]:
    """Build a :class:`Rule` from a function; its docstring's first line is the description.

    - A function with **no parameters** returns the rule's SQL: one row per violation, with the
      ``key`` columns (NULL key columns are left out of the key) and optionally ``message``,
      ``stored``, ``computed``, ``difference``, ``tolerance``; the parameter ``:tolerance`` is bound.
    - A function of ``(ctx, rule)`` yields :class:`Violation` objects.
    - With ``scan=``, the function is only the declaration: the shared scan produces the violations.
    """

    def build(func: Callable) -> Rule:
        source = f"{func.__module__}.{func.__qualname__}"
        tolerance = options.get("tolerance")
        # A guard belongs to the rule that reports its breach: it takes that rule's id and tolerance.
        owned = tuple(g if g.rule_id else replace(g, rule_id=id, default_tolerance=tolerance) for g in guards)
        common = dict(id=id, severity=Severity.parse(severity), description=_doc_line(func),
                      databases=tuple(databases), reads=tuple(reads), key=tuple(key), repair=repair,
                      options=dict(options), source=source, sound_files_only=sound_files_only, remedy=remedy,
                      guards=owned)
        if scan is not None:
            return Rule(scan=scan, **common).validate()
        if func.__code__.co_argcount == 0:
            sql = func()
            if not isinstance(sql, str):
                raise RuleDefinitionError(f"rule {id} ({source}): a parameterless rule function must return its SQL")
            return Rule(sql=sql, **common).validate()
        return Rule(check=func, **common).validate()

    return build
