"""Migrations, an integrity gate and verified repairs for paper-trading SQLite databases.

The public API is imported lazily (``toolkit.load_settings`` loads ``toolkit.config`` on first use),
so importing the package — and starting the CLI — stays cheap.
"""
from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

__all__, __getattr__ = lazy_exports(__name__, {
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
})

__all__ = [*__all__, "__version__"]
