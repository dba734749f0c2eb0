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
_ENV_SYMBOLS = "TOOLKIT_SYMBOL_PATTERN"
_ENV_ALLOW_SHORT = "TOOLKIT_ALLOW_SHORT"

_DEFAULTS: dict[str, Any] = {
    "data-dir": "./data",
    "busy-timeout": 5.0,
    "lock-timeout": 30.0,
    "backup-retention": 5,
    "migrations-dir": None,
    "checks-dir": None,
    "tolerance": 0.01,
    # The instrument grammar (toolkit.symbols): a preset — default, equity, crypto, fx, futures, any —
    # or a custom regular expression. "default" accepts AAPL, BRK.B, BTCUSDT, BTC-USD, BTC/USDT,
    # EUR/USD, ES=F, 7203.T, 0x1a2b3c hex ids and lower-case slugs (will-x-happen-2026), 1 to 32
    # characters, case significant (brk.b is a symbol of its own).
    "symbol-pattern": "default",
    # Short lots (SPEC §3): a SELL beyond the open long lots opens a short lot. false restores a
    # long-only ledger: such a SELL is refused by the writer and reported as an orphaned sell.
    "allow-short": True,
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
    #: A preset name or a custom regular expression, validated at load (``toolkit.symbols``).
    symbol_pattern: str = "default"
    #: A SELL beyond the open long lots opens a short lot (true) or is refused / an orphaned sell (false).
    allow_short: bool = True

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


#: Allowed ranges of the numeric settings: (kind, lowest, highest). A value outside — or not finite —
#: would disable a check or wait forever, so it is an error, never a preference.
_RANGES: dict[str, tuple[type, float, float]] = {
    "busy-timeout": (float, 0.0, 86_400.0),
    "lock-timeout": (float, 0.0, 86_400.0),
    "backup-retention": (int, 1, 10_000),
    "tolerance": (float, 0.0, 1_000_000.0),
}


def _number(name: str, value: Any, kind: type, source: str, *, low: float | None = None, high: float | None = None) -> Any:
    """A finite number of the right kind within [low, high], or a UsageError naming the setting and
    where it came from."""
    import math

    if name in _RANGES:
        kind, default_low, default_high = _RANGES[name]
        low = default_low if low is None else low
        high = default_high if high is None else high
    where = f" (from {source})"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(f"{name} must be a number, got {value!r}{where}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, got {value!r}{where}") from None
    if not math.isfinite(number):
        raise UsageError(f"{name} must be a finite number, got {value!r}{where}")
    if kind is int and not number.is_integer():
        raise UsageError(f"{name} must be a whole number, got {value!r}{where}")
    if low is not None and number < low or high is not None and number > high:
        raise UsageError(f"{name} must be between {low:g} and {high:g}, got {value!r}{where}")
    return int(number) if kind is int else number


def _paths(name: str, value: Any, source: str) -> tuple[str, ...]:
    """A path or a list of paths (strings), or a UsageError naming the setting."""
    if value in (None, "", ()):
        return ()
    items = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, (str, os.PathLike)) and str(i).strip() for i in items):
        raise UsageError(f"{name} must be a path or a list of paths, got {value!r} (from {source})")
    if any("\x00" in str(i) for i in items):
        raise UsageError(f"{name} must not contain a NUL character (from {source})")
    return tuple(str(i) for i in items)


def _rule_options(value: Any, source: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise UsageError(f"[tool.toolkit.rules] must be a table of rule id -> options (from {source})")
    options: dict[str, dict[str, Any]] = {}
    for rule_id, table in value.items():
        if not isinstance(table, dict):
            raise UsageError(f"[tool.toolkit.rules.{rule_id}] must be a table of options, got {table!r} (from {source})")
        checked = dict(table)
        if "tolerance" in checked:
            checked["tolerance"] = _number(f"[tool.toolkit.rules.{rule_id}] tolerance", checked["tolerance"], float,
                                           source, low=0.0, high=_RANGES["tolerance"][2])
        options[str(rule_id)] = checked
    return options


def _symbol_pattern(value: Any, source: str) -> str:
    """A preset name or a regular expression that accepts none of the hostile strings, or a UsageError."""
    from .symbols import PRESETS, SymbolPatternError, compile_symbol_pattern

    if not isinstance(value, str) or not value:
        raise UsageError(f"symbol-pattern must be a preset ({', '.join(PRESETS)}) or a regular expression, "
                         f"got {value!r} (from {source})")
    try:
        compile_symbol_pattern(value)
    except SymbolPatternError as exc:
        why = " ".join(str(exc).split())   # one line, whatever the regular expression engine said
        raise UsageError(f"symbol-pattern {why} (from {source})",
                         hint=f"name a preset ({', '.join(PRESETS)}) or bound the expression "
                              "(at most 32 characters, no whitespace, quotes, ';' or backslash)") from None
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _flag(name: str, value: Any, source: str) -> bool:
    """A boolean setting: a TOML boolean, or one of true/false/yes/no/on/off/1/0 from the environment."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise UsageError(f"{name} must be true or false, got {value!r} (from {source})")


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

    if "data-dir" in project and not isinstance(project["data-dir"], str):
        raise UsageError(f"data-dir must be a path, got {project['data-dir']!r} (from pyproject.toml)")
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
    if not isinstance(prefix, str):
        raise UsageError(f"db-path-prefix must be a file-name prefix, got {prefix!r} (from pyproject.toml)")
    if prefix and (os.sep in prefix or (os.altsep and os.altsep in prefix)):
        raise UsageError(f"{_ENV_PREFIX} must be a file-name prefix, not a path: {prefix!r}")

    busy, busy_src = pick("busy-timeout")
    lock, lock_src = pick("lock-timeout")
    keep, keep_src = pick("backup-retention")
    tol, tol_src = pick("tolerance")

    def dirs(key: str) -> tuple[Path, ...]:
        value, source = pick(key)
        return tuple(p if p.is_absolute() else base / p for p in (Path(i) for i in _paths(key, value, source)))

    rule_options = _rule_options(project.get("rules", {}), "pyproject.toml")
    def pick_env(key: str, variable: str) -> tuple[Any, str]:
        """A setting that an environment variable may also give (option, variable, pyproject, default)."""
        if overrides.get(key.replace("-", "_")) is None and env.get(variable):
            return env[variable], f"${variable}"
        return pick(key)

    symbols, symbols_src = pick_env("symbol-pattern", _ENV_SYMBOLS)
    short, short_src = pick_env("allow-short", _ENV_ALLOW_SHORT)
    keep_n = _number("backup-retention", keep, int, keep_src)
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
        rule_options=rule_options,
        symbol_pattern=_symbol_pattern(symbols, symbols_src),
        allow_short=_flag("allow-short", short, short_src),
    )
