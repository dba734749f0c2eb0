"""The toolkit's exception tree. Every class carries the exit code the CLI turns it into.

Exit codes (SPEC §5): 0 ok · 1 check/verify found problems · 2 usage error · 3 runtime error ·
4 isolation breach. Library code raises these; only the CLI edge prints them and exits.
"""
from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "EXIT_OK",
    "EXIT_FINDINGS",
    "EXIT_USAGE",
    "EXIT_RUNTIME",
    "EXIT_ISOLATION",
    "ToolkitError",
    "UsageError",
    "UnknownNameError",
    "ConfirmationRequired",
    "DatabaseFileError",
    "NotInitialisedError",
    "DatabaseBusyError",
    "LockTimeoutError",
    "MigrationDefinitionError",
    "MigrationFailedError",
    "DriftError",
    "LostDatabaseError",
    "LedgerError",
    "OversellError",
    "RuleDefinitionError",
    "GuardrailViolation",
    "IsolationBreach",
    "suggest",
]

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_RUNTIME = 3
EXIT_ISOLATION = 4


class ToolkitError(Exception):
    """Base class. ``message`` says what went wrong and names the thing; ``hint`` the next step."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(ToolkitError):
    """The command was asked for something that cannot be done as asked."""

    exit_code = EXIT_USAGE


class UnknownNameError(UsageError):
    """An unknown migration, rule, database or attack name, with close matches."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        known = list(known)
        close = suggest(name, known)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else None
        if hint is None and known:
            shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
            hint = f"known: {shown}"
        super().__init__(f"unknown {kind} {name!r}", hint=hint)
        self.kind = kind
        self.name = name
        self.suggestions = close


class ConfirmationRequired(UsageError):
    """A destructive command needs a terminal to confirm, or --yes."""


class DatabaseFileError(ToolkitError):
    """A database file is missing, a directory, not SQLite, corrupt, read-only or unreadable."""

    def __init__(self, path: object, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"{path}: {problem}", hint=hint)
        self.path = path
        self.problem = problem


class NotInitialisedError(ToolkitError):
    """The data directory has not been set up by `migrate upgrade`."""


class DatabaseBusyError(ToolkitError):
    """Another connection held a database's write lock past the busy timeout."""


class LockTimeoutError(ToolkitError):
    """Another toolkit process held the data directory's lock past the lock timeout."""


class MigrationDefinitionError(ToolkitError):
    """A migration file is malformed, duplicated or out of order; nothing has run."""


class MigrationFailedError(ToolkitError):
    """A migration failed; its database was left exactly as before."""

    def __init__(
        self,
        message: str,
        *,
        migration_id: str,
        database: str,
        path: object,
        statement: str | None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.migration_id = migration_id
        self.database = database
        self.path = path
        self.statement = statement


class DriftError(ToolkitError):
    """An applied migration's file changed since it was applied."""


class LostDatabaseError(ToolkitError):
    """A database the migration ledger says was created and migrated is missing, empty or another file.

    Never a reason to recreate it or to bring other files in line with it: every writing command
    refuses, and `migrate restore` is the way back."""

    def __init__(self, problems: dict[str, str]) -> None:
        first = next(iter(problems))
        more = f" (and {', '.join(list(problems)[1:])})" if len(problems) > 1 else ""
        super().__init__(
            f"{problems[first]}{more}; nothing was changed",
            hint=f"put it back with `migrate restore --database {first}` (`migrate restore --list` shows the backups)")
        self.problems = problems


class LedgerError(ToolkitError):
    """A trade the writer refuses (bad values, out-of-order time)."""

    exit_code = EXIT_USAGE


class OversellError(LedgerError):
    """A SELL for more than the open quantity of its ticker."""

    def __init__(self, ticker: str, requested: float, held: float) -> None:
        super().__init__(
            f"SELL of {requested:g} {ticker} refused: only {held:g} held in open lots "
            f"(shortfall {requested - held:g})",
            hint="the ledger is long-only (allow-short = false): sell at most the open quantity, or set "
                 "allow-short = true to let a SELL beyond it open a short lot",
        )
        self.ticker = ticker
        self.requested = requested
        self.held = held
        self.shortfall = requested - held


class RuleDefinitionError(ToolkitError):
    """A rule is malformed or its id is already registered."""


class GuardrailViolation(ToolkitError):
    """A guarded connection refused a statement."""

    def __init__(self, reason: str, statement: str | None = None) -> None:
        shown = " ".join(statement.split()) if statement else None
        if shown and len(shown) > 160:
            shown = shown[:157] + "..."
        super().__init__(f"guardrail: {reason}" + (f" [statement: {shown}]" if shown else ""))
        self.reason = reason
        self.statement = statement


class IsolationBreach(ToolkitError):
    """A rollback-only session ended with the database content changed."""

    exit_code = EXIT_ISOLATION


def suggest(name: str, known: Iterable[str], n: int = 2) -> list[str]:
    """Close matches for a mistyped name (difflib, as sqlglot and click do)."""
    import difflib  # only when a name is wrong: keeps start-up lean

    return difflib.get_close_matches(str(name), list(known), n=n, cutoff=0.5)
