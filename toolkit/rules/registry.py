"""The rule registry: an ordered, validated set of rules, and the discovery of third-party rules.

The engine never imports a rule by name: the composition root (``toolkit.content``) hands it the
bundled catalogue; third-party rules come from the entry-point group ``toolkit.checks`` (an entry
point may name a rule, a module, a list of rules or a function returning them) and from every
``*.py`` file of the configured checks directories. Registration validates every rule and refuses
duplicate ids, naming both.
"""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import RuleDefinitionError, UnknownNameError
from ..domain import Guard
from .model import Rule

__all__ = ["ENTRY_POINT_GROUP", "Registry", "plugin_rules", "directory_rules", "rules_in"]

ENTRY_POINT_GROUP = "toolkit.checks"


def rules_in(obj: Any, source: str) -> list[Rule]:
    """The rules an object carries: a Rule, a module (its ``RULES`` or every Rule in it), an
    iterable of rules, or a callable returning any of these."""
    if isinstance(obj, Rule):
        return [obj]
    if isinstance(obj, ModuleType):
        if hasattr(obj, "RULES"):
            return rules_in(list(obj.RULES), source)
        return [v for v in vars(obj).values() if isinstance(v, Rule)]
    if callable(obj):
        return rules_in(obj(), source)
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes)):
        found: list[Rule] = []
        for item in obj:
            if not isinstance(item, Rule):
                raise RuleDefinitionError(f"{source}: {item!r} is not a Rule", hint="build rules with @rule(...)")
            found.append(item)
        return found
    raise RuleDefinitionError(f"{source}: {obj!r} carries no rules", hint="point it at a Rule, a module, or a list of rules")


def plugin_rules() -> list[Rule]:
    from importlib.metadata import entry_points

    found: list[Rule] = []
    for point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda p: p.name):
        source = f"entry point {point.name} = {point.value}"
        try:
            loaded = point.load()
        except Exception as exc:
            raise RuleDefinitionError(f"{source}: failed to load: {type(exc).__name__}: {exc}") from exc
        found.extend(rules_in(loaded, source))
    return found


def directory_rules(directories: Iterable[Path]) -> list[Rule]:
    found: list[Rule] = []
    for directory in directories:
        if not directory.is_dir():
            raise RuleDefinitionError(f"{directory}: checks directory does not exist", hint="fix checks-dir / --checks-dir")
        for path in sorted(directory.glob("*.py")):
            if path.name.startswith("_"):
                continue
            name = f"_toolkit_project_checks_{abs(hash(str(path)))}"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:  # pragma: no cover
                continue
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except RuleDefinitionError:
                raise
            except Exception as exc:
                raise RuleDefinitionError(f"{path}: failed to load: {type(exc).__name__}: {exc}") from exc
            found.extend(rules_in(module, str(path)))
    return found


class Registry:
    """An ordered, validated set of rules."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self._rules: dict[str, Rule] = {}
        for item in rules:
            item.validate()
            if item.id in self._rules:
                other = self._rules[item.id]
                raise RuleDefinitionError(
                    f"duplicate rule id {item.id!r}: {item.source or '?'} and {other.source or '?'}",
                    hint="rule ids are stable and unique; rename one of them")
            self._rules[item.id] = item

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules.values())

    def __len__(self) -> int:
        return len(self._rules)

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self._rules

    def __getitem__(self, rule_id: str) -> Rule:
        try:
            return self._rules[rule_id]
        except KeyError:
            raise UnknownNameError("rule", rule_id, self._rules) from None

    @property
    def ids(self) -> list[str]:
        return list(self._rules)

    @property
    def guards(self) -> tuple[Guard, ...]:
        """Every row guard the rules declare (the ledger's own among them), once each, in rule order."""
        seen: dict[Guard, None] = {}
        for item in self._rules.values():
            for guard in item.guards:
                seen.setdefault(guard, None)
        return tuple(seen)

    def select(self, ids: Iterable[str] | None) -> list[Rule]:
        """The rules with these ids (all when ``None``), in registry order; unknown ids are refused."""
        if ids is None:
            return list(self._rules.values())
        wanted = list(dict.fromkeys(ids))
        for rule_id in wanted:
            self[rule_id]
        return [r for r in self._rules.values() if r.id in wanted]
