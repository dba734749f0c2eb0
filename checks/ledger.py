"""Trade-ledger rules, and the ledger scan they share.

The scan reads ``trading.trades`` once, in (ticker, executed_at, trade_id) order through its covering
index, feeds every trade through ``toolkit.accounting`` (the one FIFO), and compares what the
ledger stores — links, lot matches, realized P&L, lot status, exit price and time, positions — with
what the accounting says. The stored ``lot_matches`` and ``positions`` rows are merged in the same
order, so the scan holds no more than the open lots of one ticker. Only the rules selected for a run
do their comparisons. Rules in other modules follow the scan's lots through :data:`LEDGER_MEMBERS`.

The executed facts of a trade (ticker, action, quantity, price, executed_at, trade_id) are the truth.
A row whose facts are not valid numbers — a quantity or price not in (0, ``MAX_AMOUNT``], a time not
an integer — is left out of the FIFO (``trade_row_invalid`` reports it), so the accounting only ever
sees amounts within the domain's bound (``toolkit.domain``), whose arithmetic cannot overflow.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from toolkit.accounting import (
    LOT_ROW_COLUMNS,
    MATCH_COLUMNS,
    TRADE_ROW_COLUMNS,
    Close,
    Lot,
    TickerBook,
    close_row_values,
    lot_row_values,
    money_differs,
    same_quantity,
)
from toolkit.domain import MAX_AMOUNT, MAX_EPOCH, OPENING_LEG_GUARD, RUN_ID_GUARD, TICKER_GUARD
from toolkit.domain import amount_problem_sql, symbol_checker
from toolkit.repair.model import Change, Untouched, changed_columns, update_row
from toolkit.rules.model import CheckContext, Rule, Scan, Violation, rule

__all__ = ["LEDGER_MEMBERS", "LEDGER_SCAN", "RULES"]

#: The hook for rules of other modules: rule id -> ``factory(ctx, rule)``, called once per run if selected. Its member
#: gets ``closed(ticker, lots)`` (each close's consumed lots); ``finish(book)`` (a ticker's end), ``end()`` yield violations.
LEDGER_MEMBERS: dict[str, Callable[[CheckContext, Rule], object]] = {}

_MAX = MAX_AMOUNT   # a quantity or price beyond it is not replayed (toolkit.domain)

# The executed facts, then the stored values the accounting decides, in toolkit.accounting's
# TRADE_ROW_COLUMNS order: a stored SELL row's tail equals close_row_values() of its FIFO close.
_TRADES = (
    f"SELECT ticker, trade_id, action, quantity, price, executed_at, {', '.join(TRADE_ROW_COLUMNS)} "
    "FROM trading.trades {where} ORDER BY ticker, executed_at, trade_id"
)
# The same columns, in the same order, as toolkit.accounting.Match: a stored row equals its FIFO match.
_MATCHES = (
    f"SELECT {', '.join(f'm.{c}' for c in MATCH_COLUMNS)} "
    "FROM trading.trades AS t JOIN trading.lot_matches AS m ON m.close_trade_id = t.trade_id "
    "WHERE t.action = 'SELL' {also} ORDER BY t.ticker, t.executed_at, t.trade_id"
)
_POSITIONS = "SELECT ticker, side, quantity, entry_price FROM positions.positions {where} ORDER BY ticker, side"


def _streams(ctx: CheckContext, want_matches: bool, want_positions: bool) -> tuple[Iterator, Iterator, Iterator]:
    """The three ordered streams, over every ticker or only ``ctx.tickers``."""
    conn = ctx.conn
    if ctx.tickers is None:
        trades: Iterable = conn.execute(_TRADES.format(where=""))
        matches: Iterable = conn.execute(_MATCHES.format(also="")) if want_matches else ()
        positions: Iterable = conn.execute(_POSITIONS.format(where="")) if want_positions else ()
    else:
        chosen = sorted(ctx.tickers)
        each = lambda sql: (row for ticker in chosen for row in conn.execute(sql, (ticker,)))  # noqa: E731
        trades = each(_TRADES.format(where="WHERE ticker = ?"))
        matches = each(_MATCHES.format(also="AND t.ticker = ?")) if want_matches else ()
        positions = each(_POSITIONS.format(where="WHERE ticker = ?")) if want_positions else ()
    return iter(trades), iter(matches), iter(positions)


def _entry_reason(ctx: CheckContext, entry: int, close_id: int, ticker: str, executed_at: int) -> str:
    """Why a stored entry_trade_id is not the lot FIFO consumed first (looked up only for findings)."""
    row = ctx.conn.execute("SELECT ticker, action, executed_at FROM trading.trades WHERE trade_id = ?", (entry,)).fetchone()
    if row is None:
        return "a trade that does not exist"
    other_ticker, action, at = row
    if action != "BUY":
        return f"a {action}, not a BUY" if entry != close_id else "the close itself"
    if other_ticker != ticker:
        return f"a BUY of {other_ticker}, not {ticker}"
    if (at, entry) > (executed_at, close_id):
        return "a later trade than the close"
    return "an earlier lot of this ticker, but not the first one FIFO consumed"


class _Ledger:
    """One pass over the ledger for the selected rules (see the module docstring).

    Values the toolkit wrote are the accounting core's values to the exact bit, so each trade is
    first compared as a whole tuple; only a difference goes through the per-rule comparisons,
    with their tolerances and messages.
    """

    def __init__(self, ctx: CheckContext, rules: Mapping[str, Rule]) -> None:
        self.ctx = ctx
        self.fixes = ctx.want_fixes
        self.unlinked = "unlinked_closes" in rules
        self.orphaned = "orphaned_sells" in rules
        self.pnl_rule = rules.get("realized_pnl_mismatch")
        self.status_rule = rules.get("lot_status_inconsistent")
        self.position_rule = rules.get("position_ledger_mismatch")
        self.pnl_tol = ctx.tolerance(self.pnl_rule) if self.pnl_rule else 0.0
        self.status_tol = ctx.tolerance(self.status_rule) if self.status_rule else 0.0
        self.position_tol = ctx.tolerance(self.position_rule) if self.position_rule else 0.0
        self.members = [make(ctx, rules[r]) for r, make in LEDGER_MEMBERS.items() if r in rules]

    # -- the pass ------------------------------------------------------------------------------------
    def run(self) -> Iterator[Violation]:
        trades, match_rows, self.position_rows = _streams(
            self.ctx, self.unlinked or self.pnl_rule is not None, self.position_rule is not None)
        self.next_position = next(self.position_rows, None)
        next_match = next(match_rows, None)
        status_rule, members = self.status_rule, self.members
        row_of_close, row_of_lot = close_row_values, lot_row_values
        book: TickerBook | None = None
        current: str | None = None       # the ticker of ``book``
        pending: dict[int, tuple] = {}   # open lot -> its stored (status, exit_price, exit_time)
        last_price = last_time = None    # of the ticker's last valid trade
        done = 0
        sell_checks = self.unlinked or self.orphaned or self.pnl_rule is not None or status_rule is not None
        for row in trades:
            ticker, trade_id, action, quantity, price, executed_at, entry, pnl, status, exit_price, exit_time = row
            if book is None or ticker != current:
                if book is not None:
                    yield from self.finish(book, pending, None if last_time is None else (last_price, last_time))
                book = TickerBook(ticker)
                current, buy, sell = ticker, book.buy, book.sell
                pending = {}
                last_price = last_time = None
            done += 1
            if done % 250_000 == 0:
                self.ctx.say(f"ledger scan: {done:,} trades")
            try:
                valid = 0.0 < quantity <= _MAX and 0.0 < price <= _MAX and type(executed_at) is int
            except TypeError:
                valid = False
            if valid:
                last_price, last_time = price, executed_at
            if action == "BUY":
                if valid:
                    buy(trade_id, quantity, price, executed_at)
                    pending[trade_id] = (status, exit_price, exit_time)
                continue
            stored: list[tuple] = []
            while next_match is not None and next_match[0] == trade_id:
                stored.append(next_match)
                next_match = next(match_rows, None)
            if action != "SELL" or not valid:
                continue  # trade_row_invalid reports it; the FIFO leaves it out
            close: Close = sell(trade_id, quantity, price, executed_at)
            computed = close.matches
            for member in members if close.closed_lots else ():
                member.closed(ticker, close.closed_lots)
            # the stored row as a whole is the accounting's row (to the exact bit, as the toolkit writes it)
            if not (close.shortfall == 0.0 and (entry, pnl, status, exit_price, exit_time) == row_of_close(close)
                    and len(stored) == len(computed) and (len(stored) == 1 and stored[0] == computed[0] or stored == list(computed))):
                if sell_checks:
                    yield from self.sell(ticker, row, close, stored)
            if status_rule is not None:
                for lot in close.closed_lots:
                    stored_lot = pending.pop(lot.trade_id, None)
                    if stored_lot is not None and stored_lot != row_of_lot(lot):
                        yield from self.lot_closed(ticker, lot, stored_lot)
        if book is not None:
            yield from self.finish(book, pending, None if last_time is None else (last_price, last_time))
        if self.position_rule is not None:
            yield from self.orphans_before(None)
        for member in self.members:
            yield from member.end()

    # -- a close that differs from FIFO somewhere ----------------------------------------------------
    def sell(self, ticker: str, row: tuple, close: Close, stored: list[tuple]) -> Iterator[Violation]:
        _, trade_id, _, quantity, price, executed_at, entry, pnl, status, exit_price, exit_time = row
        fixes = self.fixes
        computed = close.matches
        want = dict(zip(TRADE_ROW_COLUMNS, close_row_values(close)))   # the row the accounting writes
        if self.orphaned and close.shortfall:
            yield Violation("orphaned_sells", {"trade_id": trade_id},
                            f"sells {quantity:g} {ticker} but only {close.consumed:g} was held (shortfall {close.shortfall:g})",
                            stored=quantity, computed=close.consumed, difference=close.shortfall, scope=ticker)
        if self.unlinked:
            problems = []
            if computed:
                if entry is None:
                    problems.append("no entry_trade_id")
                elif entry != want["entry_trade_id"]:
                    problems.append(f"entry_trade_id {entry} is {_entry_reason(self.ctx, entry, trade_id, ticker, executed_at)} "
                                    f"(FIFO: {want['entry_trade_id']})")
                if not stored:
                    problems.append("no lot_matches")
                elif not _same_matches(stored, computed):
                    problems.append(f"lot_matches differ from FIFO ({len(stored)} stored, {len(computed)} by FIFO)")
            elif entry is not None or stored:
                problems.append("links to lots although nothing was held")
            if problems:
                yield Violation("unlinked_closes", {"trade_id": trade_id}, "; ".join(problems),
                                stored=entry, computed=want["entry_trade_id"], scope=ticker,
                                fix={"entry_trade_id": want["entry_trade_id"], "matches": computed, "stored": stored} if fixes else None,
                                was={"entry_trade_id": entry} if fixes else None)
        if self.pnl_rule is not None:
            tolerance = self.pnl_tol
            expected_pnl = want["realized_pnl"]
            if money_differs(pnl, expected_pnl, tolerance):
                yield Violation("realized_pnl_mismatch", {"trade_id": trade_id},
                                f"close realized_pnl {pnl!r} != FIFO {expected_pnl:.6f}",
                                stored=pnl, computed=expected_pnl,
                                difference=(pnl - expected_pnl) if isinstance(pnl, float) else None,
                                tolerance=tolerance, scope=ticker,
                                fix={"realized_pnl": expected_pnl} if fixes else None,
                                was={"realized_pnl": pnl} if fixes else None)
            if stored:
                by_entry = {m.entry_trade_id: m for m in computed}
                for _, entry_id, _, entry_price, match_exit, match_pnl, _ in stored:
                    expected = by_entry.get(entry_id)
                    if expected is None:
                        continue  # not a FIFO piece: unlinked_closes reports the link
                    if (money_differs(match_pnl, expected.realized_pnl, tolerance)
                            or money_differs(entry_price, expected.entry_price, tolerance)
                            or money_differs(match_exit, expected.exit_price, tolerance)):
                        yield Violation("realized_pnl_mismatch", {"close_trade_id": trade_id, "entry_trade_id": entry_id},
                                        f"lot match P&L {match_pnl!r} != FIFO {expected.realized_pnl:.6f} "
                                        f"(entry {entry_price!r} vs {expected.entry_price!r}, exit {match_exit!r} vs {expected.exit_price!r})",
                                        stored=match_pnl, computed=expected.realized_pnl,
                                        difference=(match_pnl - expected.realized_pnl) if isinstance(match_pnl, float) else None,
                                        tolerance=tolerance, scope=ticker,
                                        fix={"realized_pnl": expected.realized_pnl, "entry_price": expected.entry_price,
                                             "exit_price": expected.exit_price} if fixes else None,
                                        was={"realized_pnl": match_pnl, "entry_price": entry_price,
                                             "exit_price": match_exit} if fixes else None)
        if self.status_rule is not None:
            if (status != want["status"] or money_differs(exit_price, want["exit_price"], self.status_tol)
                    or exit_time != want["exit_time"]):
                yield Violation("lot_status_inconsistent", {"trade_id": trade_id},
                                f"a close must be CLOSED at its own price and time (stored {status}, {exit_price!r}, {exit_time!r})",
                                stored=exit_price, computed=want["exit_price"], tolerance=self.status_tol, scope=ticker,
                                fix={c: want[c] for c in LOT_ROW_COLUMNS} if fixes else None,
                                was={"status": status, "exit_price": exit_price, "exit_time": exit_time} if fixes else None)

    # -- lots ------------------------------------------------------------------------------------------
    def lot_closed(self, ticker: str, lot: Lot, stored: tuple) -> Iterator[Violation]:
        status, exit_price, exit_time = stored
        want_status, want_price, want_time = want = lot_row_values(lot)   # CLOSED, weighted exit, last match
        problems = []
        if status != want_status:
            problems.append(f"fully consumed but {status}")
        if exit_price is None:
            problems.append("CLOSED without an exit price")
        elif money_differs(exit_price, want_price, self.status_tol):
            problems.append(f"exit price {exit_price!r} is not the weighted exit {want_price:.6g}")
        if exit_time is None:
            problems.append("CLOSED without an exit time")
        elif exit_time != want_time:
            problems.append(f"exit time {exit_time!r} is not the last match's time {want_time}")
        if problems:
            yield Violation("lot_status_inconsistent", {"trade_id": lot.trade_id}, "; ".join(problems),
                            stored=exit_price, computed=want_price,
                            difference=(exit_price - want_price) if isinstance(exit_price, float) else None,  # type: ignore[operator]
                            tolerance=self.status_tol, scope=ticker,
                            fix=dict(zip(LOT_ROW_COLUMNS, want)) if self.fixes else None,
                            was={"status": status, "exit_price": exit_price, "exit_time": exit_time} if self.fixes else None)

    def finish(self, book: TickerBook, pending: dict[int, tuple], last: tuple | None) -> Iterator[Violation]:
        """The ticker's last trade was seen: check its still-open lots and its position."""
        ticker = book.ticker
        if self.status_rule is not None:
            for lot in book.lots:
                stored = pending.get(lot.trade_id)
                if stored is not None and stored[0] != lot.status:   # OPEN while quantity remains
                    yield Violation("lot_status_inconsistent", {"trade_id": lot.trade_id},
                                    f"{stored[0]} but {lot.remaining:g} of {lot.quantity:g} is still open",
                                    stored=stored[0], computed=lot.status, scope=ticker,
                                    fix=dict(zip(LOT_ROW_COLUMNS, lot_row_values(lot))) if self.fixes else None,
                                    was={"status": stored[0], "exit_price": stored[1], "exit_time": stored[2]} if self.fixes else None)
        if self.position_rule is not None:
            yield from self.orphans_before(ticker)
            rows = []
            while self.next_position is not None and self.next_position[0] == ticker:
                rows.append(self.next_position)
                self.next_position = next(self.position_rows, None)
            yield from self.compare_position(ticker, book.position(), rows, last)
        for member in self.members:
            yield from member.finish(book)

    # -- positions ----------------------------------------------------------------------------------------
    def orphans_before(self, ticker: str | None) -> Iterator[Violation]:
        """positions rows of tickers the ledger has no trades for (sorted before ``ticker``)."""
        while self.next_position is not None and (ticker is None or self.next_position[0] < ticker):
            orphan = self.next_position[0]
            rows = []
            while self.next_position is not None and self.next_position[0] == orphan:
                rows.append(self.next_position)
                self.next_position = next(self.position_rows, None)
            yield from self.compare_position(orphan, None, rows, None)

    def compare_position(self, ticker: str, computed, rows: list[tuple], last_trade: tuple | None) -> Iterator[Violation]:
        long_rows = [r for r in rows if r[1] == "long"]
        problems = []
        if any(r[1] != "long" for r in rows):
            problems.append("a short position row (the ledger is long-only)")
        if computed is None:
            if long_rows:
                problems.append(f"orphaned: positions holds {long_rows[0][2]!r} but the ledger has no open lots")
        elif not long_rows:
            problems.append(f"missing: the ledger holds {computed.quantity:g} in {computed.lots} open lot(s)")
        else:
            stored_qty, stored_price = long_rows[0][2], long_rows[0][3]
            if not isinstance(stored_qty, (int, float)):
                problems.append(f"quantity {stored_qty!r} is not a number")
            elif not same_quantity(stored_qty, computed.quantity):
                problems.append(f"quantity {stored_qty!r} != open lots {computed.quantity!r}")
            if money_differs(stored_price, computed.entry_price, self.position_tol):
                problems.append(f"entry price {stored_price!r} != weighted entry {computed.entry_price:.6g}")
        if problems:
            stored = long_rows[0][2] if long_rows else None
            yield Violation("position_ledger_mismatch", {"ticker": ticker}, "; ".join(problems),
                            stored=stored, computed=computed.quantity if computed else None,
                            tolerance=self.position_tol if computed and long_rows else None, scope=ticker,
                            fix={"position": computed, "rows": rows, "last": last_trade} if self.fixes else None)


def _same_matches(stored: list[tuple], computed: tuple) -> bool:
    """Stored lot_matches are FIFO's: the same lots, in quantities equal at 1e-9."""
    if len(stored) != len(computed):
        return False
    by_entry = {m.entry_trade_id: m.quantity for m in computed}
    return all(s[1] in by_entry and same_quantity(s[2], by_entry[s[1]]) for s in stored)


#: The shared pass: every rule below that names it is served by one read of the ledger.
LEDGER_SCAN = Scan("ledger", lambda ctx, rules: _Ledger(ctx, rules).run())


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
    """Closing trades without a valid lot link: no entry_trade_id, one that is not the first lot FIFO consumed, or lot_matches missing or different from FIFO."""


@rule("orphaned_sells", severity="HIGH", databases=["trading"], reads=["trading.trades"], key=["trade_id"], scan=LEDGER_SCAN,
      remedy="decide what happened: record the missing BUY, or reverse the SELL with a labelled account adjustment")
def orphaned_sells() -> None:
    """SELLs that sell more than the open lots held at that moment (the shortfall is shown)."""


@rule("realized_pnl_mismatch", severity="HIGH", databases=["trading"], reads=["trading.trades", "trading.lot_matches"],
      key=["trade_id"], scan=LEDGER_SCAN, repair=_repair_pnl)
def realized_pnl_mismatch() -> None:
    """A close's realized_pnl, or a lot match's P&L or prices, differ from the FIFO value (e.g. the sign bug of seed 000)."""


@rule("lot_status_inconsistent", severity="HIGH", databases=["trading"], reads=["trading.trades"], key=["trade_id"],
      scan=LEDGER_SCAN, repair=update_row("trading", "trades", ["trade_id"]))
def lot_status_inconsistent() -> None:
    """Lots fully consumed but OPEN, OPEN-marked CLOSED with quantity left, CLOSED without the right exit price/time; closes not CLOSED."""


@rule("opening_leg_with_pnl", severity="CRITICAL", databases=["trading"], reads=["trading.trades"], key=["trade_id"],
      repair=update_row("trading", "trades", ["trade_id"]),
      guards=[OPENING_LEG_GUARD])
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

RULES = (unlinked_closes, orphaned_sells, realized_pnl_mismatch, lot_status_inconsistent, opening_leg_with_pnl,
         trade_row_invalid)
