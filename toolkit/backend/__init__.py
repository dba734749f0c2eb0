"""The backend seam: what the engine asks of a database engine, in one small interface.

The runner, the gate, repair and the guard never open a file, take the data directory's lock, back
up, check pages or install guard triggers themselves: they ask :func:`backend_for` (settings) for
the :class:`~toolkit.backend.base.Backend` and call it. SQLite (``toolkit.backend.sqlite``) is the
one implementation today; a second engine plugs in here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Settings
    from .base import Backend

__all__ = ["backend_for"]


def backend_for(settings: Settings) -> Backend:
    """The backend that holds ``settings``' databases (the SQLite data directory)."""
    from .sqlite import SQLiteBackend

    return SQLiteBackend(settings)
