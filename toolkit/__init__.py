"""Migrations, an integrity gate and verified repairs for paper-trading SQLite databases.

The public API is imported lazily (``toolkit.load_settings`` loads ``toolkit.config`` on first use),
so importing the package — and starting the CLI — stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DATABASES": "toolkit.config",
    "Settings": "toolkit.config",
    "load_settings": "toolkit.config",
    "connect": "toolkit.db",
    "open_databases": "toolkit.db",
    "atomic": "toolkit.db",
    "transaction": "toolkit.db",
    "savepoint": "toolkit.db",
    "content_hash": "toolkit.db",
    "ToolkitError": "toolkit.errors",
    "backend_for": "toolkit.backend",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
