"""What a guarded connection refuses, as one pure decision per authorizer call.

SQLite asks the authorizer about every action while it compiles a statement (a table written, a
column updated, a PRAGMA, an ATTACH...). These functions answer with ``None`` (allow) or the reason
for a refusal; ``toolkit.guard.connection`` turns a refusal into a :class:`GuardrailViolation`.
"""
from __future__ import annotations

import sqlite3

from ..db import PRAGMA_READS_WITH_ARGUMENT
from ..domain import NO_DELETE

__all__ = [
    "LEDGER_TABLES",
    "PROJECTION_TABLES",
    "POSITION_MANAGEMENT_COLUMNS",
    "NO_DELETE",
    "LEDGER_KEY_COLUMNS",
    "EXECUTED_COLUMNS",
    "PRAGMA_WRITES",
    "PRAGMA_READS_WITH_ARGUMENT",
    "SESSION_FORBIDDEN_PRAGMAS",
    "guard_decision",
    "session_decision",
]

#: The trade ledger: written only by the trade writer and by repairs (a "trusted" context).
LEDGER_TABLES = frozenset({("trading", "trades"), ("trading", "lot_matches"), ("trading", "account"),
                           ("trading", "account_adjustments")})
#: positions.db projects the ledger: written only by the trade writer and by repairs.
PROJECTION_TABLES = frozenset({("positions", "positions"), ("positions", "closed_positions")})
#: The columns of a ``positions`` row the bot owns (SPEC §3): it may update them through its guarded
#: connection; quantity, side, entry price and the rest follow the ledger through the trade writer.
POSITION_MANAGEMENT_COLUMNS = frozenset({"current_price", "unrealized_pnl", "stop_loss_price", "take_profit_price",
                                         "trail_percent", "signal_score", "metadata", "updated_at"})
#: What a trade executed at is history: never updated, not even by trusted code.
#: (``is_close`` is not among them: whether a trade closes is the FIFO's to say, and a repair corrects it.)
EXECUTED_COLUMNS = frozenset({"trade_id", "run_id", "ticker", "action", "quantity", "price", "commission",
                              "executed_at"})

#: Key columns of ledger rows: never updated (an UPDATE OR REPLACE onto another key would delete it).
LEDGER_KEY_COLUMNS = {("trading", "lot_matches"): frozenset({"close_trade_id", "entry_trade_id"}),
                      ("trading", "account"): frozenset({"account_id"})}

#: PRAGMAs a guarded connection may set, with the values allowed (None: any value).
PRAGMA_WRITES: dict[str, frozenset[str] | None] = {
    "busy_timeout": None,
    "cache_size": None,
    "temp_store": None,
    "mmap_size": None,
    "analysis_limit": None,
    "optimize": None,
    "foreign_keys": frozenset({"1", "on", "true", "yes"}),
    "query_only": frozenset({"1", "on", "true", "yes"}),
}
#: PRAGMAs that could end, escape or outlive a rollback-only session's transaction (or write
#: outside its pages): refused in a session even without guardrails.
SESSION_FORBIDDEN_PRAGMAS = frozenset({
    "journal_mode", "locking_mode", "wal_checkpoint", "wal_autocheckpoint", "writable_schema", "incremental_vacuum",
    "auto_vacuum", "page_size", "schema_version", "user_version", "application_id", "secure_delete",
    "temp_store_directory", "data_store_directory", "max_page_count", "journal_size_limit", "synchronous",
})



_DDL = {
    sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_TRIGGER, sqlite3.SQLITE_CREATE_VIEW,
    sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_DROP_VIEW,
    sqlite3.SQLITE_ALTER_TABLE, sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE, sqlite3.SQLITE_REINDEX,
    sqlite3.SQLITE_CREATE_TEMP_INDEX, sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_CREATE_TEMP_TRIGGER,
    sqlite3.SQLITE_CREATE_TEMP_VIEW, sqlite3.SQLITE_DROP_TEMP_INDEX, sqlite3.SQLITE_DROP_TEMP_TABLE,
    sqlite3.SQLITE_DROP_TEMP_TRIGGER, sqlite3.SQLITE_DROP_TEMP_VIEW,
}
_TEMP_DDL = {sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_DROP_TEMP_TABLE, sqlite3.SQLITE_CREATE_TEMP_INDEX,
             sqlite3.SQLITE_DROP_TEMP_INDEX}


def _pragma(name: str | None, value: str | None) -> str | None:
    name = (name or "").lower()
    if value is None or name in PRAGMA_READS_WITH_ARGUMENT:
        return None
    if name in PRAGMA_WRITES:
        allowed = PRAGMA_WRITES[name]
        if allowed is None or value.strip().strip("'\"").lower() in allowed:
            return None
    return f"PRAGMA {name} = {value} is not allowed (only reads, and {', '.join(sorted(PRAGMA_WRITES))} writes)"


def guard_decision(action: int, arg1: str | None, arg2: str | None, database: str | None, trusted: str | None) -> str | None:
    """The guardrails of a bot's connection: None to allow, else why not."""
    if action == sqlite3.SQLITE_PRAGMA:
        return _pragma(arg1, arg2)
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return "ATTACH/DETACH (and VACUUM, which attaches) is not allowed on a guarded connection"
    if action in _DDL:
        if action in _TEMP_DDL and database in (None, "temp"):
            return None
        return "schema changes go through the migration runner (`migrate upgrade`), not a bot's connection"
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() == "load_extension":
        return "loading extensions is not allowed on a guarded connection"
    if action not in (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE):
        return None
    target = (database or "main", arg1 or "")
    if action == sqlite3.SQLITE_DELETE and target in NO_DELETE:
        return f"DELETE from {target[1]} is refused: ledger rows are never deleted (correct them with a repair)"
    if action == sqlite3.SQLITE_UPDATE and target == ("trading", "trades") and (arg2 or "") in EXECUTED_COLUMNS:
        return f"UPDATE of trades.{arg2} is refused: what a trade executed at is history"
    if action == sqlite3.SQLITE_UPDATE and (arg2 or "") in LEDGER_KEY_COLUMNS.get(target, ()):
        return f"UPDATE of {target[1]}.{arg2} is refused: a ledger row's key never changes"
    if action == sqlite3.SQLITE_UPDATE and target == ("trading", "account_adjustments"):
        return "UPDATE of account_adjustments is refused: record a new labelled adjustment instead"
    if trusted is None and target in LEDGER_TABLES:
        return f"the trade ledger ({target[1]}) is written only through the trade writer (toolkit.ledger.TradeStore)"
    if (trusted is None and action == sqlite3.SQLITE_UPDATE and target == ("positions", "positions")
            and (arg2 or "") in POSITION_MANAGEMENT_COLUMNS):
        return None  # the bot manages its positions: stops, targets, marks, metadata
    if trusted is None and target in PROJECTION_TABLES:
        if target == ("positions", "positions") and action == sqlite3.SQLITE_UPDATE:
            return (f"UPDATE of positions.{arg2} is refused: quantity, side and entry price follow the ledger "
                    f"(the trade writer); a bot may update {', '.join(sorted(POSITION_MANAGEMENT_COLUMNS))}")
        return f"{target[1]} is a projection of the ledger, written only by the trade writer and repairs"
    return None


def session_decision(action: int, arg1: str | None, arg2: str | None, database: str | None, outer: str) -> str | None:
    """What a rollback-only session refuses: anything that would commit or escape its transaction."""
    if action == sqlite3.SQLITE_TRANSACTION:
        verb = (arg1 or "").upper()
        if verb == "COMMIT":
            return "COMMIT/END would commit the rollback-only session"
        if verb == "ROLLBACK":
            return "ROLLBACK would end the session's transaction (use ROLLBACK TO a savepoint)"
        return "the session's transaction is already open"
    if action == sqlite3.SQLITE_SAVEPOINT and (arg1 or "").upper() == "RELEASE" and (arg2 or "").lower() == outer.lower():
        return "RELEASE of the session's outer savepoint would commit it"
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return "ATTACH/DETACH and VACUUM are not allowed in a rollback-only session"
    if action == sqlite3.SQLITE_PRAGMA and arg2 is not None and (arg1 or "").lower() in SESSION_FORBIDDEN_PRAGMAS:
        return f"PRAGMA {arg1} = {arg2} could end or outlive the rollback-only session's transaction"
    return None
