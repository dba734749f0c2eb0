"""Trade-ledger rules: the rules the ledger scan serves (:mod:`.ledger_scan`), their repairs, and the
rules SQL answers alone (an opening leg with P&L, an invalid trade row).

The scan compares every stored trade with its FIFO outcome (``toolkit.accounting``, each ticker's
book built with the ``allow-short`` setting): a close (a SELL of long lots, a BUY covering short
lots) or an opening (a BUY opening a long lot, a SELL opening a short one). The repairs take their
new values from the accounting core, through the violations' fixes, and never delete ledger rows.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from toolkit.accounting import MATCH_COLUMNS, same_quantity
from toolkit.domain import MAX_AMOUNT, MAX_EPOCH, OPENING_LEG_GUARD, RUN_ID_GUARD, TICKER_GUARD
from toolkit.domain import amount_problem_sql, symbol_checker
from toolkit.repair.model import Change, Untouched, changed_columns, update_row
from toolkit.rules.model import CheckContext, Rule, Violation, rule

from .ledger_scan import LEDGER_MEMBERS, LEDGER_SCAN, closes_by_fifo

__all__ = ["LEDGER_MEMBERS", "LEDGER_SCAN", "RULES"]


# -- repairs: the new values come from the accounting core, through the scan's fixes ----------------

def _repair_links(ctx: CheckContext, rule_: Rule, violations: Iterable[Violation]) -> Iterator[Change | Untouched]:
    """Re-match FIFO: set entry_trade_id to the first lot consumed; insert missing lot_matches and
    correct mismatched ones. Stored matches FIFO did not make are never deleted (ledger rows)."""
    for v in violations:
        if v.fix is None:
            yield Untouched(rule_.id, v.key, v.message)
            continue
        close_id = v.key["trade_id"]
        computed = {m.entry_trade_id: m for m in v.fix["matches"]}
        stored = {row[1]: row for row in v.fix["stored"]}
        surplus = sorted(set(stored) - set(computed))
        if surplus:
            yield Untouched(rule_.id, v.key, f"lot_matches rows for lots FIFO did not consume (entry {surplus[:3]}): "
                                             "ledger rows are never deleted by a repair; correct them by hand")
            continue
        if v.was["entry_trade_id"] != v.fix["entry_trade_id"]:
            yield Change(rule_.id, "trading", "trades", "update", {"trade_id": close_id},
                         {"entry_trade_id": v.was["entry_trade_id"]}, {"entry_trade_id": v.fix["entry_trade_id"]},
                         v.key, v.scope)
        for match in v.fix["matches"]:
            row = stored.get(match.entry_trade_id)
            key = {"close_trade_id": close_id, "entry_trade_id": match.entry_trade_id}
            if row is None:
                yield Change(rule_.id, "trading", "lot_matches", "insert", key, None,
                             dict(zip(MATCH_COLUMNS, match)), v.key, v.scope)
            elif not same_quantity(row[2], match.quantity):
                yield Change(rule_.id, "trading", "lot_matches", "update", key,
                             {"quantity": row[2], "entry_price": row[3], "exit_price": row[4], "realized_pnl": row[5]},
                             {"quantity": match.quantity, "entry_price": match.entry_price, "exit_price": match.exit_price,
                              "realized_pnl": match.realized_pnl}, v.key, v.scope)


def _repair_pnl(ctx: CheckContext, rule_: Rule, violations: Iterable[Violation]) -> Iterator[Change | Untouched]:
    """Recompute: a close's realized_pnl, or a lot match's P&L and prices, from FIFO."""
    for v in violations:
        if v.fix is None:
            yield Untouched(rule_.id, v.key, v.message)
            continue
        before, after = changed_columns(v.was, v.fix)
        table = "trades" if "trade_id" in v.key else "lot_matches"
        yield Change(rule_.id, "trading", table, "update", dict(v.key), before, after, v.key, v.scope)


@rule("unlinked_closes", severity="MEDIUM", databases=["trading"], reads=["trading.trades", "trading.lot_matches"],
      key=["trade_id"], scan=LEDGER_SCAN, repair=_repair_links)
def unlinked_closes() -> None:
    """Trades whose lot links are not FIFO's: a close (SELL or covering BUY) with no entry_trade_id, one that is not the first lot FIFO consumed, or lot_matches missing or different; an opening that links to lots."""


@rule("orphaned_sells", severity="HIGH", databases=["trading"], reads=["trading.trades"], key=["trade_id"], scan=LEDGER_SCAN,
      remedy="decide what happened: record the missing BUY, or reverse the SELL with a labelled account adjustment")
def orphaned_sells() -> None:
    """On a long-only ledger (allow-short = false): SELLs that sell more than the open lots held at that moment (the shortfall is shown)."""


@rule("realized_pnl_mismatch", severity="HIGH", databases=["trading"], reads=["trading.trades", "trading.lot_matches"],
      key=["trade_id"], scan=LEDGER_SCAN, repair=_repair_pnl)
def realized_pnl_mismatch() -> None:
    """A close's realized_pnl, or a lot match's P&L or prices, differ from the FIFO value (e.g. the sign bug of seed 000)."""


@rule("lot_status_inconsistent", severity="HIGH", databases=["trading"], reads=["trading.trades"], key=["trade_id"],
      scan=LEDGER_SCAN, repair=update_row("trading", "trades", ["trade_id"]))
def lot_status_inconsistent() -> None:
    """Lots fully consumed but OPEN, OPEN-marked CLOSED with quantity left, CLOSED without the right exit price/time; closes not CLOSED."""


def _clear_opening_pnl(ctx: CheckContext, rule_: Rule, violations: Iterable[Violation]) -> Iterator[Change | Untouched]:
    """Clear the P&L of opening legs; but a row the FIFO replays as a close (a covering BUY stored with
    ``is_close = 0``) keeps its P&L: its flag is wrong, and ``close_flag_mismatch`` sets it."""
    found = list(violations)
    closes = closes_by_fifo(ctx, [v.key["trade_id"] for v in found if "trade_id" in v.key])
    clear = [v for v in found if v.key.get("trade_id") not in closes]
    for v in found:
        if v.key.get("trade_id") in closes:
            yield Untouched(rule_.id, v.key, f"trade {v.key['trade_id']} closes lots by FIFO: its is_close is wrong, not its "
                                             "realized P&L (close_flag_mismatch sets the flag)")
    yield from _CLEAR(ctx, rule_, clear)


_CLEAR = update_row("trading", "trades", ["trade_id"])


@rule("opening_leg_with_pnl", severity="CRITICAL", databases=["trading"], reads=["trading.trades"], key=["trade_id"],
      repair=_clear_opening_pnl, guards=[OPENING_LEG_GUARD])
def opening_leg_with_pnl():
    """Opening legs (is_close = 0: a BUY opening a long lot, a SELL opening a short one) that carry realized P&L."""
    # Served by the partial index idx_trades_opening_leg_pnl (migration 006): empty on a sound ledger, so instant.
    return """
        SELECT trade_id, realized_pnl AS stored, NULL AS computed,
               'opening leg ' || ticker || ' carries realized_pnl ' || realized_pnl AS message,
               NULL AS fix_realized_pnl, realized_pnl AS was_realized_pnl
        FROM trading.trades
        WHERE is_close = 0 AND realized_pnl IS NOT NULL
        ORDER BY trade_id
    """


@rule("close_flag_mismatch", severity="HIGH", databases=["trading"], reads=["trading.trades"], key=["trade_id"],
      scan=LEDGER_SCAN, repair=update_row("trading", "trades", ["trade_id"]))
def close_flag_mismatch() -> None:
    """Trades whose is_close is not the FIFO's: 1 for a close (a SELL of long lots, a BUY covering short lots), 0 for an opening."""


@rule("unsplit_flips", severity="HIGH", databases=["trading"], reads=["trading.trades"],
      key=["trade_id"], scan=LEDGER_SCAN,
      remedy="split the row into two trades at the same time and order: a close of the whole open position, then an "
             "opening of the remainder (commission pro rata by quantity), as the trade writer stores a flip")
def unsplit_flips() -> None:
    """With shorts allowed: one stored trade that closes the whole position of one side and opens the other (a flip written as one row)."""


#: A trade whose row alone is invalid. The same expression is the WHERE of the partial index
#: idx_trades_invalid (migration 004): SQLite uses a partial index only for a query that repeats its
#: WHERE, and on a sound ledger that index is empty, so this rule costs next to nothing. (Its 1e300 is
#: older than the domain's bound, MAX_AMOUNT: _BEYOND_BOUNDS finds the amounts between the two.)
INVALID_TRADE = """run_id IS NULL OR trim(run_id) = ''
           OR typeof(quantity) NOT IN ('real', 'integer') OR quantity <= 0 OR abs(quantity) > 1e300
           OR typeof(price) NOT IN ('real', 'integer') OR price <= 0 OR abs(price) > 1e300
           OR typeof(commission) NOT IN ('real', 'integer') OR commission < 0 OR abs(commission) > 1e300
           OR typeof(executed_at) <> 'integer'
           OR action NOT IN ('BUY', 'SELL')"""

#: Every distinct ticker, one index seek each (a skip-scan: tickers are few, trades are many).
DISTINCT_TICKERS = """
    WITH RECURSIVE t(ticker) AS (
        SELECT min(ticker) FROM trading.trades
        UNION ALL
        SELECT (SELECT min(ticker) FROM trading.trades WHERE ticker > t.ticker) FROM t WHERE t.ticker IS NOT NULL
    )
    SELECT ticker FROM t WHERE ticker IS NOT NULL
"""

_AMOUNTS = (amount_problem_sql("quantity", "quantity"), amount_problem_sql("price", "price"),
            amount_problem_sql("commission", "commission"), amount_problem_sql("quantity * price", "notional quantity × price"))

#: Trades whose amounts are beyond the domain's bound (quantity, price, commission or notional beyond
#: MAX_AMOUNT; negative ones and non-numbers are INVALID_TRADE's), then times outside 0..MAX_EPOCH.
#: No index holds the amounts: one pass over the covering index idx_trades_ledger (about 0.15 µs a
#: trade, in the worker thread beside the ledger scan); the times are two seeks of idx_trades_executed_at.
_BEYOND_BOUNDS = (f"""
    SELECT trade_id, CASE {' '.join(_AMOUNTS)} ELSE 'an amount is not a number' END FROM trading.trades
    WHERE quantity > {MAX_AMOUNT!r} OR price > {MAX_AMOUNT!r} OR commission > {MAX_AMOUNT!r} OR quantity * price > {MAX_AMOUNT!r}
    """, f"""
    SELECT trade_id, 'executed_at ' || quote(executed_at) || ' is not an epoch second in 0..{MAX_EPOCH} (up to the year 9999)'
    FROM trading.trades WHERE executed_at < 0 OR executed_at > {MAX_EPOCH}""")   # no ORDER BY: it would scan the table


def _trade_row_invalid(ctx: CheckContext, rule_: Rule) -> Iterator[Violation]:
    """Trades with no run id, an implausible ticker, or executed values outside their domain."""
    conn = ctx.conn
    symbols = symbol_checker(ctx.settings)   # tickers are few: check each distinct one (the configured grammar)
    bad_tickers = [(t, symbols.problem(t)) for (t,) in conn.execute(DISTINCT_TICKERS) if not symbols.accepts(t)]
    reported: set[int] = set()
    for ticker, why in bad_tickers:
        for (trade_id,) in conn.execute("SELECT trade_id FROM trading.trades WHERE ticker = ? ORDER BY trade_id", (ticker,)):
            reported.add(trade_id)
            yield Violation(rule_.id, {"trade_id": trade_id}, f"ticker {ticker!r} is not a plausible symbol: {why}")
    rows = conn.execute(
        f"""
        SELECT trade_id,
               CASE WHEN run_id IS NULL THEN 'run_id is NULL'
                    WHEN trim(run_id) = '' THEN 'run_id is empty'
                    WHEN typeof(quantity) NOT IN ('real', 'integer') OR quantity <= 0 THEN 'quantity ' || quote(quantity) || ' is not a number > 0'
                    WHEN typeof(price) NOT IN ('real', 'integer') OR price <= 0 THEN 'price ' || quote(price) || ' is not a number > 0'
                    WHEN typeof(commission) NOT IN ('real', 'integer') OR commission < 0
                         THEN 'commission ' || quote(commission) || ' is not a finite number >= 0'
                    {' '.join(_AMOUNTS[:3])}
                    WHEN typeof(executed_at) <> 'integer' THEN 'executed_at ' || quote(executed_at) || ' is not an epoch integer'
                    ELSE 'action ' || quote(action) || ' is not BUY or SELL' END
        FROM trading.trades
        WHERE {INVALID_TRADE}
        ORDER BY trade_id
        """)
    for trade_id, message in rows:
        if trade_id not in reported:
            reported.add(trade_id)
            yield Violation(rule_.id, {"trade_id": trade_id}, message)
    for query in _BEYOND_BOUNDS:
        for trade_id, message in sorted(conn.execute(query)):
            if trade_id not in reported:
                reported.add(trade_id)
                yield Violation(rule_.id, {"trade_id": trade_id}, message)


trade_row_invalid = rule("trade_row_invalid", severity="HIGH", databases=["trading"], reads=["trading.trades"],
                         key=["trade_id"], guards=[RUN_ID_GUARD, TICKER_GUARD],
                         remedy="find the session that wrote the row; set its run id or correct the executed value")(_trade_row_invalid)

#: Catalogue order, which is also the order repairs apply in: close_flag_mismatch marks a close stored as an
#: opening a close before realized_pnl_mismatch gives it its P&L (the opening-leg guard refuses the other order).
RULES = (unlinked_closes, orphaned_sells, close_flag_mismatch, unsplit_flips, realized_pnl_mismatch, lot_status_inconsistent,
         opening_leg_with_pnl, trade_row_invalid)
