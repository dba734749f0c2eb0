"""Where the databases live and how the toolkit behaves.

Resolution order for every setting: command-line option, environment variable, ``[tool.toolkit]``
in the ``pyproject.toml`` of the working directory, default (SPEC §2).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import UnknownNameError, UsageError

__all__ = ["DATABASES", "HISTORY", "ALL_FILES", "Settings", "load_settings"]

#: Logical names of the three bot databases, in the order commands visit them.
DATABASES: tuple[str, ...] = ("positions", "trading", "ml_training")
#: Logical name of the toolkit's own file: migration ledger, check-run history, repair log.
HISTORY = "migrations"
ALL_FILES: tuple[str, ...] = DATABASES + (HISTORY,)

_ENV_DATA_DIR = "TOOLKIT_DATA_DIR"
_ENV_PREFIX = "DB_PATH_PREFIX"

_DEFAULTS: dict[str, Any] = {
    "data-dir": "./data",
    "busy-timeout": 5.0,
    "lock-timeout": 30.0,
    "backup-retention": 5,
    "migrations-dir": None,
    "checks-dir": None,
    "tolerance": 0.01,
}


@dataclass(frozen=True)
class Settings:
    """Resolved settings. ``data_dir_source`` says where the data directory came from."""

    data_dir: Path
    data_dir_source: str = "default"
    prefix: str = ""
    busy_timeout: float = 5.0
    lock_timeout: float = 30.0
    backup_retention: int = 5
    migrations_dirs: tuple[Path, ...] = ()
    checks_dirs: tuple[Path, ...] = ()
    tolerance: float = 0.01
    rule_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        """The file of a logical database name, e.g. ``trading`` -> ``data/trading.db``."""
        if name not in ALL_FILES:
            raise UnknownNameError("database", name, ALL_FILES)
        return self.data_dir / f"{self.prefix}{name}.db"

    @property
    def history_path(self) -> Path:
        return self.path(HISTORY)

    @property
    def backup_dir(self) -> Path:
        return self.data_dir / "backups"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / f".{self.prefix}toolkit.lock"

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _read_pyproject(cwd: Path) -> dict[str, Any]:
    candidate = cwd / "pyproject.toml"
    if not candidate.is_file():
        return {}
    import tomllib  # only when a pyproject.toml is present

    try:
        with candidate.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{candidate}: cannot read [tool.toolkit]: {exc}") from exc
    section = data.get("tool", {}).get("toolkit", {})
    if not isinstance(section, dict):
        raise UsageError(f"{candidate}: [tool.toolkit] must be a table")
    return {str(k).replace("_", "-"): v for k, v in section.items()}


def _number(name: str, value: Any, kind: type, source: str) -> Any:
    try:
        result = kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, got {value!r} (from {source})") from None
    if result < 0:
        raise UsageError(f"{name} must not be negative, got {value!r} (from {source})")
    return result


def load_settings(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Resolve settings from an explicit value, the environment, pyproject.toml and defaults.

    ``overrides`` take option names with underscores (``busy_timeout=1.0``); ``None`` means unset.
    """
    env = dict(os.environ) if env is None else env
    base = Path(cwd) if cwd is not None else Path.cwd()
    project = _read_pyproject(base)

    def pick(key: str) -> tuple[Any, str]:
        value = overrides.get(key.replace("-", "_"))
        if value is not None:
            return value, "option"
        if key in project:
            return project[key], "pyproject.toml"
        return _DEFAULTS[key], "default"

    if data_dir is not None:
        chosen, source = str(data_dir), "option"
    elif env.get(_ENV_DATA_DIR):
        chosen, source = env[_ENV_DATA_DIR], f"${_ENV_DATA_DIR}"
    elif "data-dir" in project:
        chosen, source = str(project["data-dir"]), "pyproject.toml"
    else:
        chosen, source = _DEFAULTS["data-dir"], "default"
    directory = Path(chosen)
    if not directory.is_absolute():
        directory = base / directory

    prefix = env.get(_ENV_PREFIX, project.get("db-path-prefix", ""))
    if prefix and (os.sep in prefix or (os.altsep and os.altsep in prefix)):
        raise UsageError(f"{_ENV_PREFIX} must be a file-name prefix, not a path: {prefix!r}")

    busy, busy_src = pick("busy-timeout")
    lock, lock_src = pick("lock-timeout")
    keep, keep_src = pick("backup-retention")
    tol, tol_src = pick("tolerance")

    def dirs(key: str) -> tuple[Path, ...]:
        value, _ = pick(key)
        if value in (None, "", ()):
            return ()
        items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        return tuple(p if p.is_absolute() else base / p for p in (Path(str(i)) for i in items))

    rule_options = project.get("rules", {})
    if not isinstance(rule_options, dict):
        raise UsageError("[tool.toolkit.rules] must be a table of rule id -> options")

    keep_n = _number("backup-retention", keep, int, keep_src)
    if keep_n < 1:
        raise UsageError(f"backup-retention must be at least 1, got {keep!r} (from {keep_src})")
    return Settings(
        data_dir=directory,
        data_dir_source=source,
        prefix=prefix,
        busy_timeout=_number("busy-timeout", busy, float, busy_src),
        lock_timeout=_number("lock-timeout", lock, float, lock_src),
        backup_retention=keep_n,
        migrations_dirs=dirs("migrations-dir"),
        checks_dirs=dirs("checks-dir"),
        tolerance=_number("tolerance", tol, float, tol_src),
        rule_options={str(k): dict(v) for k, v in rule_options.items() if isinstance(v, dict)},
    )
