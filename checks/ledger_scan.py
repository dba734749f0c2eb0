"""The ledger scan: one ordered pass over the trade ledger that serves every ledger rule.

The scan reads ``trading.trades`` once, in (ticker, executed_at, trade_id) order through its covering
index, feeds every trade through ``toolkit.accounting`` (the one FIFO; each ticker's book built with
the ``allow-short`` setting), and compares what the ledger stores — the close flag, links, lot
matches, realized P&L, lot status, exit price and time, positions of each side — with what the
accounting says. The stored ``lot_matches`` and ``positions`` rows are merged in the same order, so
the scan holds no more than the open lots of one ticker. Only the rules selected for a run do their
comparisons. Rules in other modules follow the scan's lots through :data:`LEDGER_MEMBERS`.

Every trade's FIFO outcome is a close (a SELL against long lots, a BUY covering short lots: a
:class:`~toolkit.accounting.Close`) or an opening (a BUY opening a long lot, a SELL opening a short
one: a :class:`~toolkit.accounting.Lot`); the rules compare a close row with ``close_row_values`` and
an opening row with its lot, the same way for both sides. The matches stream holds the rows of
trades stored as closes (``is_close = 1``: what the writer stores for every close); a close stored as
an opening (``close_flag_mismatch``) has its matches looked up by itself.

The executed facts of a trade (ticker, action, quantity, price, executed_at, trade_id) are the truth.
A row whose facts are not valid numbers — a quantity or price not in (0, ``MAX_AMOUNT``], a time not
an integer — is left out of the FIFO (``trade_row_invalid`` reports it), so the accounting only ever
sees amounts within the domain's bound (``toolkit.domain``), whose arithmetic cannot overflow.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from toolkit.accounting import (
    LONG,
    LOT_ROW_COLUMNS,
    MATCH_COLUMNS,
    SHORT,
    TRADE_ROW_COLUMNS,
    Close,
    Lot,
    Position,
    TickerBook,
    close_row_values,
    lot_row_values,
    money_differs,
    opening_row_values,
    same_quantity,
)
from toolkit.domain import MAX_AMOUNT
from toolkit.rules.model import CheckContext, Rule, Scan, Violation

__all__ = ["LEDGER_MEMBERS", "LEDGER_SCAN", "LONG_ONLY", "closes_by_fifo"]

#: The hook for rules of other modules: rule id -> ``factory(ctx, rule)``, called once per run if selected. Its member
#: gets ``closed(ticker, lots)`` (each close's consumed lots); ``finish(book)`` (a ticker's end), ``end()`` yield violations.
LEDGER_MEMBERS: dict[str, Callable[[CheckContext, Rule], object]] = {}

#: Why a short positions row is a finding when shorts are off (the repair leaves such rows alone).
LONG_ONLY = "the ledger is long-only (allow-short = false)"

_MAX = MAX_AMOUNT   # a quantity or price beyond it is not replayed (toolkit.domain)

# The executed facts, then the stored values the accounting decides, in toolkit.accounting's
# TRADE_ROW_COLUMNS order (a stored close row's tail equals close_row_values() of its FIFO close),
# then is_close: all of them in the covering index idx_trades_ledger (migration 006).
_TRADES = (
    f"SELECT ticker, trade_id, action, quantity, price, executed_at, {', '.join(TRADE_ROW_COLUMNS)}, is_close "
    "FROM trading.trades {where} ORDER BY ticker, executed_at, trade_id"
)
# The same columns, in the same order, as toolkit.accounting.Match: a stored row equals its FIFO match.
# Only trades stored as closes: a lookup per trade that has none would cost a tenth of the scan.
_MATCH_SELECT = f"SELECT {', '.join(f'm.{c}' for c in MATCH_COLUMNS)} "
_MATCHES = (_MATCH_SELECT + "FROM trading.trades AS t JOIN trading.lot_matches AS m ON m.close_trade_id = t.trade_id "
            "WHERE t.is_close = 1 {also} ORDER BY t.ticker, t.executed_at, t.trade_id")
_MATCHES_OF = _MATCH_SELECT + "FROM trading.lot_matches AS m WHERE m.close_trade_id = ?"
_POSITIONS = "SELECT ticker, side, quantity, entry_price FROM positions.positions {where} ORDER BY ticker, side"

_NO_MATCHES: list[tuple] = []   # shared, never changed
_OPENS = {"BUY": LONG, "SELL": SHORT}   # the side of the lot an opening trade opens


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


def _entry_reason(ctx: CheckContext, entry: int, close: Close, ticker: str) -> str:
    """Why a stored entry_trade_id is not the lot FIFO consumed first (looked up only for findings).
    A SELL's lots are BUYs; a covering BUY's lots are SELLs (short sales)."""
    row = ctx.conn.execute("SELECT ticker, action, executed_at FROM trading.trades WHERE trade_id = ?", (entry,)).fetchone()
    if row is None:
        return "a trade that does not exist"
    if entry == close.trade_id:
        return "the close itself"
    other_ticker, action, at = row
    opening = "SELL" if close.side == SHORT else "BUY"
    if action != opening:
        return f"a {action}, not a {opening}"
    if other_ticker != ticker:
        return f"a {opening} of {other_ticker}, not {ticker}"
    if (at, entry) > (close.executed_at, close.trade_id):
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
        self.allow_short = bool(ctx.settings.allow_short)
        self.unlinked = "unlinked_closes" in rules
        self.orphaned = "orphaned_sells" in rules
        self.flag = "close_flag_mismatch" in rules
        self.flips = "unsplit_flips" in rules
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
        next_close = next_match[0] if next_match is not None else None   # the trade the next stored match closes
        status_rule, members, allow_short = self.status_rule, self.members, self.allow_short
        row_of_close, row_of_lot, lot_class, none = close_row_values, lot_row_values, Lot, _NO_MATCHES
        book: TickerBook | None = None
        current: str | None = None       # the ticker of ``book``
        pending: dict[int, tuple] = {}   # open lot -> its stored (status, exit_price, exit_time)
        last_price = last_time = None    # of the ticker's last valid trade
        done = 0
        close_checks = (self.unlinked or self.orphaned or self.flag or self.flips or self.pnl_rule is not None
                        or status_rule is not None)
        open_checks = self.unlinked or self.flag
        for row in trades:
            ticker, trade_id, action, quantity, price, executed_at, entry, pnl, status, exit_price, exit_time, is_close = row
            if book is None or ticker != current:
                if book is not None:
                    yield from self.finish(book, pending, None if last_time is None else (last_price, last_time))
                book = TickerBook(ticker, allow_short)
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
            if valid and action == "BUY":
                outcome = buy(trade_id, quantity, price, executed_at)
            elif valid and action == "SELL":
                outcome = sell(trade_id, quantity, price, executed_at)
            else:   # trade_row_invalid reports it; the FIFO leaves it out
                while next_close == trade_id:
                    next_match = next(match_rows, None)
                    next_close = next_match[0] if next_match is not None else None
                continue
            last_price, last_time = price, executed_at
            if outcome.__class__ is lot_class:   # an opening: a long lot, or a short one
                pending[trade_id] = (status, exit_price, exit_time)
                if is_close or next_close == trade_id or entry is not None:
                    stored = []
                    while next_close == trade_id:
                        stored.append(next_match)
                        next_match = next(match_rows, None)
                        next_close = next_match[0] if next_match is not None else None
                    if open_checks:
                        yield from self.opening(ticker, row, outcome, stored)
                continue
            if next_close == trade_id:   # its stored matches (the stream holds those of rows stored as closes)
                stored = [next_match]
                next_match = next(match_rows, None)
                next_close = next_match[0] if next_match is not None else None
                while next_close == trade_id:
                    stored.append(next_match)
                    next_match = next(match_rows, None)
                    next_close = next_match[0] if next_match is not None else None
            else:
                stored = none
            close: Close = outcome
            computed = close.matches
            for member in members if close.closed_lots else ():
                member.closed(ticker, close.closed_lots)
            # the stored row as a whole is the accounting's row (to the exact bit, as the toolkit writes it)
            if not (is_close == 1 and close.shortfall == 0.0
                    and (entry, pnl, status, exit_price, exit_time) == row_of_close(close)
                    and len(stored) == len(computed) and (len(stored) == 1 and stored[0] == computed[0] or stored == list(computed))):
                if close_checks:
                    yield from self.close(ticker, row, close, stored)
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

    # -- an opening trade that differs from FIFO somewhere -------------------------------------------
    def opening(self, ticker: str, row: tuple, lot: Lot, stored: list[tuple]) -> Iterator[Violation]:
        """An opening row links to no lot, carries no P&L and is stored with ``is_close = 0`` (its lot's
        status is compared when the lot closes, or at the ticker's end)."""
        _, trade_id, action, _, _, _, entry, pnl, _, _, _, is_close = row
        fixes = self.fixes
        if self.flag and is_close != 0:
            # One update makes it an opening row: the flag, and its P&L cleared (opening_leg_with_pnl sees only
            # is_close = 0, and the opening-leg guard refuses an opening with P&L, so the two change together).
            fix, was = {"is_close": 0}, {"is_close": is_close}
            if pnl is not None:
                fix["realized_pnl"], was["realized_pnl"] = opening_row_values(lot)[1], pnl
            yield Violation("close_flag_mismatch", {"trade_id": trade_id},
                            f"a {action} that opens a {lot.side} lot is stored as a close (is_close {is_close!r}, FIFO 0)"
                            + (f", carrying realized_pnl {pnl!r}" if pnl is not None else ""),
                            stored=is_close, computed=0, scope=ticker,
                            fix=fix if fixes else None, was=was if fixes else None)
        if self.unlinked and (entry is not None or stored):
            links = ([f"entry_trade_id {entry}"] if entry is not None else []) + ([f"{len(stored)} lot_matches"] if stored else [])
            yield Violation("unlinked_closes", {"trade_id": trade_id},
                            f"an opening trade (a {action} opening a {lot.side} lot) links to lots: {', '.join(links)}",
                            stored=entry, computed=None, scope=ticker,
                            fix={"entry_trade_id": None, "matches": (), "stored": stored} if fixes else None,
                            was={"entry_trade_id": entry} if fixes else None)

    # -- a close that differs from FIFO somewhere ----------------------------------------------------
    def close(self, ticker: str, row: tuple, close: Close, stored: list[tuple]) -> Iterator[Violation]:
        """A SELL closing long lots or a BUY covering short ones: the same comparisons for both."""
        _, trade_id, action, quantity, price, executed_at, entry, pnl, status, exit_price, exit_time, is_close = row
        fixes = self.fixes
        computed = close.matches
        want = dict(zip(TRADE_ROW_COLUMNS, close_row_values(close)))   # the row the accounting writes
        if is_close != 1:
            if self.flag:
                yield Violation("close_flag_mismatch", {"trade_id": trade_id},
                                f"a {action} that closes {close.side} lots is stored as an opening (is_close {is_close!r}, FIFO 1)",
                                stored=is_close, computed=1, scope=ticker,
                                fix={"is_close": 1} if fixes else None, was={"is_close": is_close} if fixes else None)
            if self.unlinked or self.pnl_rule is not None:
                stored = self.ctx.conn.execute(_MATCHES_OF, (trade_id,)).fetchall()   # not in the stream
        if close.shortfall:
            if close.opened is not None:
                if self.flips:
                    opened = close.opened
                    yield Violation("unsplit_flips", {"trade_id": trade_id},
                                    f"a {action} of {quantity:g} {ticker} closes the whole {close.side} position "
                                    f"({close.consumed:g}) and opens a {opened.side} lot of {close.shortfall:g} in one row: "
                                    f"store it as two trades, a close of {close.consumed:g} and an opening of {close.shortfall:g}",
                                    stored=quantity, computed=close.consumed, difference=close.shortfall, scope=ticker)
            elif self.orphaned:   # a long-only ledger (allow-short = false)
                yield Violation("orphaned_sells", {"trade_id": trade_id},
                                f"sells {quantity:g} {ticker} but only {close.consumed:g} was held (shortfall {close.shortfall:g})",
                                stored=quantity, computed=close.consumed, difference=close.shortfall, scope=ticker)
        if self.unlinked:
            problems = []
            if computed:
                if entry is None:
                    problems.append("no entry_trade_id")
                elif entry != want["entry_trade_id"]:
                    problems.append(f"entry_trade_id {entry} is {_entry_reason(self.ctx, entry, close, ticker)} "
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
            yield from self.close_pnl(ticker, trade_id, pnl, want["realized_pnl"], computed, stored)
        if self.status_rule is not None:
            if (status != want["status"] or money_differs(exit_price, want["exit_price"], self.status_tol)
                    or exit_time != want["exit_time"]):
                yield Violation("lot_status_inconsistent", {"trade_id": trade_id},
                                f"a close must be CLOSED at its own price and time (stored {status}, {exit_price!r}, {exit_time!r})",
                                stored=exit_price, computed=want["exit_price"], tolerance=self.status_tol, scope=ticker,
                                fix={c: want[c] for c in LOT_ROW_COLUMNS} if fixes else None,
                                was={"status": status, "exit_price": exit_price, "exit_time": exit_time} if fixes else None)

    def close_pnl(self, ticker: str, trade_id: int, pnl, expected_pnl: float, computed: tuple, stored: list[tuple]) -> Iterator[Violation]:
        fixes, tolerance = self.fixes, self.pnl_tol
        if money_differs(pnl, expected_pnl, tolerance):
            yield Violation("realized_pnl_mismatch", {"trade_id": trade_id},
                            f"close realized_pnl {pnl!r} != FIFO {expected_pnl:.6f}",
                            stored=pnl, computed=expected_pnl,
                            difference=(pnl - expected_pnl) if isinstance(pnl, float) else None,
                            tolerance=tolerance, scope=ticker,
                            fix={"realized_pnl": expected_pnl} if fixes else None,
                            was={"realized_pnl": pnl} if fixes else None)
        if not stored:
            return
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
            yield Violation("lot_status_inconsistent", {"trade_id": lot.trade_id}, f"{lot.side} lot: " + "; ".join(problems),
                            stored=exit_price, computed=want_price,
                            difference=(exit_price - want_price) if isinstance(exit_price, float) else None,  # type: ignore[operator]
                            tolerance=self.status_tol, scope=ticker,
                            fix=dict(zip(LOT_ROW_COLUMNS, want)) if self.fixes else None,
                            was={"status": status, "exit_price": exit_price, "exit_time": exit_time} if self.fixes else None)

    def finish(self, book: TickerBook, pending: dict[int, tuple], last: tuple | None) -> Iterator[Violation]:
        """The ticker's last trade was seen: check its still-open lots (either side) and its positions."""
        ticker = book.ticker
        if self.status_rule is not None:
            for lots in (book.lots, book.short_lots):
                for lot in lots:
                    stored = pending.get(lot.trade_id)
                    if stored is not None and stored[0] != lot.status:   # OPEN while quantity remains
                        yield Violation("lot_status_inconsistent", {"trade_id": lot.trade_id},
                                        f"{lot.side} lot: {stored[0]} but {lot.remaining:g} of {lot.quantity:g} is still open",
                                        stored=stored[0], computed=lot.status, scope=ticker,
                                        fix=dict(zip(LOT_ROW_COLUMNS, lot_row_values(lot))) if self.fixes else None,
                                        was={"status": stored[0], "exit_price": stored[1], "exit_time": stored[2]} if self.fixes else None)
        if self.position_rule is not None:
            yield from self.orphans_before(ticker)
            rows = []
            while self.next_position is not None and self.next_position[0] == ticker:
                rows.append(self.next_position)
                self.next_position = next(self.position_rows, None)
            yield from self.compare_positions(ticker, book, rows, last)
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
            yield from self.compare_positions(orphan, None, rows, None)

    def compare_positions(self, ticker: str, book: TickerBook | None, rows: list[tuple], last: tuple | None) -> Iterator[Violation]:
        """One positions row per ticker and side: each side's row against ``book.position(side)``."""
        for side in (LONG, SHORT):
            computed = book.position(side) if book is not None else None
            row = next((r for r in rows if r[1] == side), None)
            if computed is not None or row is not None:
                yield from self.compare_position(ticker, side, computed, row, last)

    def compare_position(self, ticker: str, side: str, computed: Position | None, row: tuple | None,
                         last: tuple | None) -> Iterator[Violation]:
        problems = []
        if side == SHORT and row is not None and not self.allow_short:
            problems.append(f"a short position row: {LONG_ONLY}")
        elif computed is None:
            problems.append(f"orphaned: positions holds {row[2]!r} {side} but the ledger has no open {side} lots")  # type: ignore[index]
        elif row is None:
            problems.append(f"missing: the ledger holds {computed.quantity:g} {side} in {computed.lots} open lot(s)")
        else:
            stored_qty, stored_price = row[2], row[3]
            if not isinstance(stored_qty, (int, float)):
                problems.append(f"{side} quantity {stored_qty!r} is not a number")
            elif not same_quantity(stored_qty, computed.quantity):
                problems.append(f"{side} quantity {stored_qty!r} != open lots {computed.quantity!r}")
            if money_differs(stored_price, computed.entry_price, self.position_tol):
                problems.append(f"{side} entry price {stored_price!r} != weighted entry {computed.entry_price:.6g}")
        if problems:
            yield Violation("position_ledger_mismatch", {"ticker": ticker, "side": side}, "; ".join(problems),
                            stored=row[2] if row is not None else None, computed=computed.quantity if computed else None,
                            tolerance=self.position_tol if computed and row is not None else None, scope=ticker,
                            fix={"position": computed, "row": row, "last": last} if self.fixes else None)


def _same_matches(stored: list[tuple], computed: tuple) -> bool:
    """Stored lot_matches are FIFO's: the same lots, in quantities equal at 1e-9."""
    if len(stored) != len(computed):
        return False
    by_entry = {m.entry_trade_id: m.quantity for m in computed}
    return all(s[1] in by_entry and same_quantity(s[2], by_entry[s[1]]) for s in stored)


def closes_by_fifo(ctx: CheckContext, trade_ids: Iterable[int]) -> set[int]:
    """Which of ``trade_ids`` the FIFO replays as closes (for a repair that must not treat a close as an
    opening): each of their tickers is replayed once, up to its last trade asked about."""
    wanted: dict[str, set[int]] = {}
    for trade_id in trade_ids:
        found = ctx.conn.execute("SELECT ticker FROM trading.trades WHERE trade_id = ?", (trade_id,)).fetchone()
        if found is not None:
            wanted.setdefault(found[0], set()).add(trade_id)
    closes: set[int] = set()
    for ticker, ids in wanted.items():
        book, left = TickerBook(ticker, bool(ctx.settings.allow_short)), len(ids)
        for trade_id, action, quantity, price, executed_at in ctx.conn.execute(
                "SELECT trade_id, action, quantity, price, executed_at FROM trading.trades WHERE ticker = ? "
                "ORDER BY executed_at, trade_id", (ticker,)):
            try:
                valid = 0.0 < quantity <= _MAX and 0.0 < price <= _MAX and type(executed_at) is int
            except TypeError:
                valid = False
            if valid and action in ("BUY", "SELL"):
                outcome = (book.buy if action == "BUY" else book.sell)(trade_id, quantity, price, executed_at)
                if trade_id in ids and outcome.__class__ is Close:
                    closes.add(trade_id)
            if trade_id in ids:
                left -= 1
                if not left:
                    break
    return closes


#: The shared pass: every rule that names it is served by one read of the ledger.
LEDGER_SCAN = Scan("ledger", lambda ctx, rules: _Ledger(ctx, rules).run())
