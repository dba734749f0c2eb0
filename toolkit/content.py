"""The content the toolkit ships — migrations, the rule catalogue, the attack catalogue — found and
handed to the engine. Part of the composition root (with ``toolkit.cli`` and the pytest plugin).

The engine (every other module under ``toolkit/``) never imports content: its functions take the
migrations, the rules, the guards and the attacks as arguments. This module is the one place that
knows where the bundled content lives:

- installed (wheel or editable), the repository's ``migrations/``, ``checks/`` and ``fixtures/``
  are the packages ``toolkit.migrations``, ``toolkit.checks`` and ``toolkit.fixtures``;
- in a plain checkout (``python -m toolkit ...`` from the repository root, where the source tree's
  ``toolkit/`` shadows any installed copy) they are the top-level folders beside ``toolkit/``, and
  are loaded under those same ``toolkit.*`` names, so content's own imports work either way.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .config import Settings
    from .guard.harness import Attack
    from .migrate.discovery import Migration
    from .rules.registry import Registry

__all__ = [
    "CONTENT_PACKAGES",
    "content_package",
    "bundled_migrations_dir",
    "load_migrations",
    "bundled_rules",
    "load_registry",
    "bundled_attacks",
]

#: The content packages, by their name inside ``toolkit``.
CONTENT_PACKAGES = ("migrations", "checks", "fixtures")

_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def content_package(name: str) -> ModuleType:
    """``toolkit.<name>`` for a content package, installed or from the source tree beside ``toolkit/``."""
    if name not in CONTENT_PACKAGES:
        raise ValueError(f"{name!r} is not a content package ({', '.join(CONTENT_PACKAGES)})")
    qualified = f"toolkit.{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as exc:
        if exc.name != qualified:
            raise
    init = _SOURCE_ROOT / name / "__init__.py"
    if not init.is_file():
        raise ModuleNotFoundError(
            f"the toolkit's bundled {name} are missing: neither {qualified} is installed nor {init.parent} exists; "
            "reinstall the package (pip install paper-ledger-toolkit)", name=qualified)
    spec = importlib.util.spec_from_file_location(qualified, init, submodule_search_locations=[str(init.parent)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(qualified, None)
        raise
    setattr(importlib.import_module("toolkit"), name, module)
    return module


# -- migrations --------------------------------------------------------------------------------------

def bundled_migrations_dir() -> Path:
    """The folder of the migrations that ship with the toolkit (``migrations/`` in the repository)."""
    package = content_package("migrations")
    return Path(package.__file__).resolve().parent  # type: ignore[arg-type]


def load_migrations(settings: Settings) -> list[Migration]:
    """The bundled migrations, then those of the configured ``migrations-dir`` folders, validated."""
    from .migrate.discovery import discover

    return discover([bundled_migrations_dir(), *settings.migrations_dirs])


# -- rules ---------------------------------------------------------------------------------------------

def bundled_rules() -> list:
    """The catalogue that ships with the toolkit, in the order of ``checks.MODULES``."""
    from .rules.registry import rules_in

    package = content_package("checks")
    found = []
    for name in getattr(package, "MODULES", ()):
        module = importlib.import_module(f"{package.__name__}.{name}")
        found.extend(rules_in(module, module.__name__))
    return found


def load_registry(settings: Settings | None = None, *, plugins: bool = True) -> Registry:
    """The bundled catalogue, then entry-point plugins, then the project's checks directories."""
    from .rules.registry import Registry, directory_rules, plugin_rules

    rules = bundled_rules()
    if plugins:
        rules += plugin_rules()
    if settings is not None and settings.checks_dirs:
        rules += directory_rules(settings.checks_dirs)
    return Registry(rules)


# -- attacks -------------------------------------------------------------------------------------------

def bundled_attacks() -> tuple[Attack, ...]:
    """The attack catalogue of `integrity adversarial`."""
    package = content_package("fixtures")
    module = importlib.import_module(f"{package.__name__}.attacks")
    return tuple(module.ATTACKS)
