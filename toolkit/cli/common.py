"""What every command shares: global options, settings resolved lazily, confirmation, output helpers,
and `run`, which turns results and errors into exit codes (never a traceback)."""
from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from ..errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, ConfirmationRequired, ToolkitError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


# -- shared plumbing -------------------------------------------------------------------------------

def _echo_err(message: str) -> None:
    click.echo(message, err=True)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    from tabulate import tabulate

    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str)


def _when(ts: float | int | None) -> str:
    if ts is None:
        return "-"
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


class _Settings:
    """Resolved lazily so `--help` never touches the disk."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self._value = None

    def get(self):
        if self._value is None:
            from ..config import load_settings

            opts = dict(self.options)
            data_dir = opts.pop("data_dir", None)
            opts["migrations_dir"] = list(opts.get("migrations_dir") or []) or None
            opts["checks_dir"] = list(opts.get("checks_dir") or []) or None
            self._value = load_settings(data_dir, **opts)
        return self._value


def _settings(ctx: click.Context):
    return ctx.find_object(_Settings).get()


def _confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; refuse without one unless --yes (scripts must say so explicitly)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfirmationRequired(f"refusing to continue without confirmation: {question}", hint="stdin is not a terminal; pass --yes")
    if not click.confirm(question, default=False, err=True):
        raise ConfirmationRequired("cancelled; nothing was changed")


def _late_global_option(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the command name (`migrate upgrade --data-dir D`) overrides the
    same option given before it; extra migration directories add up."""
    if value is None or value == ():
        return
    holder = ctx.find_object(_Settings)
    if holder is None:  # pragma: no cover - every command runs under a group that sets it
        return
    if param.name == "migrations_dir":
        value = tuple(holder.options.get("migrations_dir") or ()) + tuple(value)
    holder.options[str(param.name)] = value
    holder._value = None


def _global_options(func: Callable | None = None, *, late: bool = False) -> Callable:
    """The options every command takes: on the group, and (``late``) again on each command."""
    extra: dict[str, Any] = {"callback": _late_global_option, "expose_value": False} if late else {}

    def decorate(func: Callable) -> Callable:
        options = [
            click.option("--data-dir", type=click.Path(path_type=Path), default=None, **extra,
                         help="Directory holding the databases [env TOOLKIT_DATA_DIR, pyproject [tool.toolkit] data-dir; default ./data]."),
            click.option("--busy-timeout", type=click.FloatRange(min=0), default=None, **extra,
                         help="Seconds to wait for another connection's write lock on a database [default 5]."),
            click.option("--lock-timeout", type=click.FloatRange(min=0), default=None, **extra,
                         help="Seconds to wait for another toolkit process holding the data directory [default 30]."),
            click.option("--symbol-pattern", default=None, **extra,
                         help="Instrument grammar: a preset (default, equity, crypto, fx, futures, any) or a regular "
                              "expression [env TOOLKIT_SYMBOL_PATTERN, pyproject [tool.toolkit] symbol-pattern; default default]."),
            click.option("--allow-short/--no-allow-short", default=None, **extra,
                         help="A SELL beyond the open long lots opens a short lot (default), or is refused and reported "
                              "as an orphaned sell [env TOOLKIT_ALLOW_SHORT, pyproject [tool.toolkit] allow-short; default true]."),
            click.option("--migrations-dir", multiple=True, type=click.Path(path_type=Path, file_okay=False), **extra,
                         help="Extra directory of migrations, after the bundled ones (repeatable)."),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate(func) if func is not None else decorate


def run(group: click.Group, args: Sequence[str] | None = None, prog_name: str | None = None) -> int:
    """Invoke a click group and turn results and errors into exit codes (never a traceback for a
    ToolkitError or an SQLite error)."""
    try:
        result = group.main(args=list(args) if args is not None else None, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort as exc:
        # click turns a Ctrl-C anywhere in a command into Abort (raised *from* the KeyboardInterrupt);
        # only an Abort at a prompt (raised from None) is a refused confirmation.
        if isinstance(exc.__cause__, KeyboardInterrupt):
            _echo_err(_interrupted(exc.__cause__))
            return 130
        _echo_err("aborted; nothing more was changed")
        return EXIT_USAGE
    except ToolkitError as exc:
        _echo_err(f"error: {exc}")
        return exc.exit_code
    except sqlite3.Error as exc:
        _echo_err(f"error: SQLite: {exc}")
        return EXIT_RUNTIME
    except OSError as exc:  # a path the library did not foresee: still one line naming it, never a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        what = exc.strerror or str(exc)
        _echo_err(f"error: {where}{what[:1].lower()}{what[1:]}; check that the path exists and is writable, "
                  "and that the disk has room")
        return EXIT_RUNTIME
    except KeyboardInterrupt as exc:
        _echo_err(_interrupted(exc))
        return 130
    return result if isinstance(result, int) else EXIT_OK


def _interrupted(exc: KeyboardInterrupt) -> str:
    """The line for an interrupt: the library's own (naming the migration it rolled back), or the general one."""
    message = getattr(exc, "message", None)
    return f"interrupted: {message}" if message else "interrupted; every database is left at its last committed state"


def _print_reconciled(notes: Sequence[str]) -> None:
    for note in notes:
        _echo_err(f"reconciled: {note}")


def _progress() -> Callable[[str], None] | None:
    return _echo_err if sys.stderr.isatty() else None
