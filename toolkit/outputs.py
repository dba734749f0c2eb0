"""Where the toolkit writes a report, a baseline or a plan: never over a database, never half.

An output path is refused (UsageError, exit 2, nothing written) when it is one of the data
directory's databases (or their -wal/-shm files), any SQLite file, a directory or a special file
(a FIFO, a device). Text is written to a temporary file beside the target and renamed into place.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .config import ALL_FILES, Settings
from .errors import ToolkitError, UsageError

__all__ = ["refuse_output_over_input", "write_text_atomic"]

_SQLITE_HEADER = b"SQLite format 3\x00"


def refuse_output_over_input(settings: Settings, path: Path, option: str) -> None:
    """Refuse an output path that would replace something the toolkit reads (see the module doc)."""
    target = Path(path)
    hint = "write it to a new file outside the data directory's databases"
    databases = {settings.path(name).resolve() for name in ALL_FILES}
    resolved = target.resolve()
    for database in databases:
        if resolved in (database, Path(f"{database}-wal"), Path(f"{database}-shm"), Path(f"{database}-journal")):
            raise UsageError(f"{option} {path}: is a database of {settings.data_dir}; refusing to overwrite it", hint=hint)
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot be written ({exc.strerror or exc})",
                         hint="check that its directory exists and is a directory") from exc
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{option} {path}: is a directory", hint="name a file")
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{option} {path}: is not a regular file (a FIFO or a device)", hint=hint)
    try:
        with open(target, "rb") as handle:
            head = handle.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot be read ({exc.strerror or exc})", hint=hint) from exc
    if head == _SQLITE_HEADER:
        raise UsageError(f"{option} {path}: is an SQLite database; refusing to overwrite it", hint=hint)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(target)
    except OSError as exc:
        raise ToolkitError(f"{target}: cannot be written ({exc.strerror or exc}); nothing was written there",
                           hint="check that its directory exists, is writable and has room") from exc
    finally:
        temporary.unlink(missing_ok=True)
