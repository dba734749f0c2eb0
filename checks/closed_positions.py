"""positions.closed_positions against the ledger's closed lots (a member of the shared ledger scan).

The writer records one ``closed_positions`` row per fully closed lot (``toolkit.ledger.closed_position_row``).
This rule takes the closed lots of both sides — long lots opened by BUYs, short lots opened by SELLs —
from the ledger scan's own replay (``checks.ledger_scan.LEDGER_MEMBERS``: no second FIFO), builds each
lot's row with that same function (its ``side`` is the lot's), and compares it with the stored row.
The stored rows are read in ticker order beside the scan, and so are the opening trades' commissions
(the writer copies the opening trade's), so only one ticker's rows are held at a time.

A row filed under another ticker than its lot's is found by its ``entry_trade_id`` (unique) when the
lot has no row under its own ticker, and reported once, as that lot's difference. Rows with no closed
lot (an open lot, a closing trade, an unknown trade, no entry trade) are orphaned; they are reported at the end
of the scan, once every lot has had the chance to claim them.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from toolkit.accounting import Lot, TickerBook, money_differs, same_quantity
from toolkit.ledger import CLOSED_POSITION_COLUMNS, closed_position_row
from toolkit.repair.model import Change, Untouched, changed_columns
from toolkit.rules.model import CheckContext, Rule, Violation, rule

from .ledger_scan import LEDGER_MEMBERS, LEDGER_SCAN

__all__ = ["RULES"]

RULE_ID = "closed_position_mismatch"

# The stored row in CLOSED_POSITION_COLUMNS order but its last (the bot's strategy), then its position_id.
_WRITTEN = CLOSED_POSITION_COLUMNS[:-1]
assert CLOSED_POSITION_COLUMNS[-1] == "strategy"
_SELECT = f"SELECT {', '.join(_WRITTEN)}, position_id FROM positions.closed_positions "
_STREAM = _SELECT + "{where} ORDER BY ticker"
_BY_ENTRY = _SELECT + "WHERE entry_trade_id = ?"
_N = _POSITION_ID = len(_WRITTEN)
# The lots' commissions (closed_position_row copies the opening trade's: a BUY's or a short sale's), beside the
# scan through its covering index. A lot whose row is not stored as an opening gets its commission looked up.
_OPENINGS = ("SELECT ticker, trade_id, commission FROM trading.trades WHERE is_close = 0 {also} "
             "ORDER BY ticker, executed_at, trade_id")
_C = {c: i for i, c in enumerate(CLOSED_POSITION_COLUMNS)}
_TICKER = _C["ticker"]
#: What the rule compares (SPEC §3: the row records its lot): every written column but the derived updated_at and
#: holding_period_hours (the repair rewrites those too). The fast path compares the same columns as three slices.
_MONEY = ("entry_price", "exit_price", "realized_pnl", "commission")
_COMPARED = ("ticker", "side", "quantity", "entry_price", "opened_at", "closed_at", "exit_price", "realized_pnl", "commission")
_A, _B, _D = slice(_C["ticker"], _C["updated_at"]), slice(_C["closed_at"], _C["holding_period_hours"]), _C["commission"]
assert {CLOSED_POSITION_COLUMNS[i] for s in (_A, _B) for i in range(s.start, s.stop)} | {"commission"} == set(_COMPARED)


class _Member:
    """Follows the ledger scan: the closed lots of the current ticker, the stored rows beside them."""

    def __init__(self, ctx: CheckContext, rule_: Rule) -> None:
        self.ctx, self.rule, self.tol, self.fixes = ctx, rule_, ctx.tolerance(rule_), ctx.want_fixes
        conn = ctx.conn
        if ctx.tickers is None:
            rows: Iterable = conn.execute(_STREAM.format(where=""))
            openings: Iterable = conn.execute(_OPENINGS.format(also=""))
        else:
            chosen = sorted(ctx.tickers)
            rows = (row for ticker in chosen for row in conn.execute(_STREAM.format(where="WHERE ticker = ?"), (ticker,)))
            openings = (row for ticker in chosen for row in conn.execute(_OPENINGS.format(also="AND ticker = ?"), (ticker,)))
        self.rows: Iterator[tuple] = iter(rows)
        self.next: tuple | None = next(self.rows, None)
        self.openings: Iterator[tuple] = iter(openings)
        self.next_opening: tuple | None = next(self.openings, None)
        self.lots: list[tuple[Lot, ...]] = []   # the current ticker's closed lots, per close
        self.claimed: set[int] = set()      # entry trades whose row was found under another ticker
        self.unclaimed: list[tuple] = []    # rows no lot of their ticker recorded (orphans, unless claimed)

    # -- the scan's calls ------------------------------------------------------------------------------
    def closed(self, ticker: str, lots: tuple[Lot, ...]) -> None:
        self.lots.append(lots)   # the ticker is the one finish() gets next

    def finish(self, book: TickerBook) -> Iterator[Violation]:
        ticker = book.ticker
        while self.next is not None and self.next[_TICKER] < ticker:
            self._take(self.next[_TICKER])   # rows of tickers without trades
        stored = {row[0]: row for row in self._take(ticker)}
        commission, opening, openings = {}, self.next_opening, self.openings
        while opening is not None and opening[0] <= ticker:
            if opening[0] == ticker:
                commission[opening[1]] = opening[2]
            opening = next(openings, None)
        self.next_opening = opening
        pop, row_of, a, b, d = stored.pop, closed_position_row, _A, _B, _D
        for lots in self.lots:
            for lot in lots:
                row = pop(lot.trade_id, None)
                if row is not None:
                    want = row_of(lot, ticker, commission.get(lot.trade_id), None)
                    if row[a] == want[a] and row[b] == want[b] and row[d] == want[d]:
                        continue   # as the writer wrote it, to the exact bit
                else:
                    row = self.ctx.conn.execute(_BY_ENTRY, (lot.trade_id,)).fetchone()   # missing, or under another ticker
                    if row is not None:
                        self.claimed.add(lot.trade_id)
                yield from self._compare(ticker, lot, row)
        self.lots = []
        self.unclaimed.extend(stored.values())

    def end(self) -> Iterator[Violation]:
        while self.next is not None:
            self._take(self.next[_TICKER])
        for row in self.unclaimed:
            if row[0] is None or row[0] not in self.claimed:
                yield self._orphan(row)

    # -- comparing ---------------------------------------------------------------------------------------
    def _take(self, ticker: str) -> list[tuple]:
        """The stored rows of ``ticker`` (the stream is at them); rows without an entry trade are orphans."""
        rows, unclaimed, stream, row = [], self.unclaimed, self.rows, self.next
        while row is not None and row[_TICKER] == ticker:
            (rows if row[0] is not None else unclaimed).append(row)
            row = next(stream, None)
        self.next = row
        return rows

    def _compare(self, ticker: str, lot: Lot, row: tuple | None) -> Iterator[Violation]:
        facts = self.ctx.conn.execute("SELECT commission, strategy FROM trading.trades WHERE trade_id = ?",
                                      (lot.trade_id,)).fetchone()   # the lot's opening trade (findings only)
        want = closed_position_row(lot, ticker, *facts)
        if row is None:
            yield Violation(RULE_ID, {"entry_trade_id": lot.trade_id},
                            f"missing: lot {lot.trade_id} of {ticker} closed at {want[_C['closed_at']]} has no closed_positions row",
                            computed=lot.realized_pnl, scope=ticker,
                            fix={"position_id": None, "row": dict(zip(CLOSED_POSITION_COLUMNS, want))} if self.fixes else None)
            return
        problems = []
        for column in ("ticker", "side", "opened_at", "closed_at"):
            if row[_C[column]] != want[_C[column]]:
                problems.append(f"{column} {row[_C[column]]!r} != {want[_C[column]]!r}")
        if not same_quantity(row[_C["quantity"]], want[_C["quantity"]]):
            problems.append(f"quantity {row[_C['quantity']]!r} != lot {want[_C['quantity']]!r}")
        for column in _MONEY:
            if money_differs(row[_C[column]], want[_C[column]], self.tol):
                problems.append(f"{column} {row[_C[column]]!r} != ledger {want[_C[column]]!r}")
        if not problems:
            return   # within the tolerances
        stored_pnl, want_pnl = row[_C["realized_pnl"]], want[_C["realized_pnl"]]
        yield Violation(RULE_ID, {"entry_trade_id": lot.trade_id}, f"lot {lot.trade_id}: " + "; ".join(problems),
                        stored=stored_pnl, computed=want_pnl,
                        difference=(stored_pnl - want_pnl) if isinstance(stored_pnl, float) else None,
                        tolerance=self.tol, scope=ticker,
                        fix={"position_id": row[_POSITION_ID], "row": dict(zip(CLOSED_POSITION_COLUMNS, want))} if self.fixes else None,
                        was=dict(zip(CLOSED_POSITION_COLUMNS, row[:_N])) if self.fixes else None)

    def _orphan(self, row: tuple) -> Violation:
        entry, ticker, position_id = row[0], row[_C["ticker"]], row[_POSITION_ID]
        if entry is None:
            why = "it names no entry trade"
        else:
            found = self.ctx.conn.execute("SELECT action, ticker, is_close FROM trading.trades WHERE trade_id = ?",
                                          (entry,)).fetchone()
            why = ("trade {0} does not exist" if found is None else
                   "trade {0} is a closing {1[0]}, not a lot" if found[2] == 1 else
                   "lot {0} of {1[1]} is not fully closed").format(entry, found)
        return Violation(RULE_ID, {"entry_trade_id": entry} if entry is not None else {"position_id": position_id},
                         f"orphaned: a closed_positions row of {ticker} records no closed lot ({why})",
                         stored=row[_C["realized_pnl"]], scope=ticker,
                         fix={"position_id": position_id, "row": None} if self.fixes else None)


LEDGER_MEMBERS[RULE_ID] = _Member


def _rebuild(ctx: CheckContext, rule_: Rule, violations: Iterable[Violation]) -> Iterator[Change | Untouched]:
    """Make closed_positions the ledger's closed lots: correct differing rows, insert missing ones,
    delete orphaned ones (kept whole in the repair log). The bot's own columns are left as they are."""
    for v in violations:
        if v.fix is None:
            yield Untouched(rule_.id, v.key, v.message)
            continue
        position_id, want = v.fix["position_id"], v.fix["row"]
        if want is None:
            cursor = ctx.conn.execute("SELECT * FROM positions.closed_positions WHERE position_id = ?", (position_id,))
            names = [d[0] for d in cursor.description]
            before = dict(zip(names, cursor.fetchone()))
            yield Change(rule_.id, "positions", "closed_positions", "delete", {"position_id": position_id},
                         before, None, v.key, v.scope)
        elif position_id is None:
            yield Change(rule_.id, "positions", "closed_positions", "insert", {"entry_trade_id": want["entry_trade_id"]},
                         None, want, v.key, v.scope)
        else:
            before, after = changed_columns({c: v.was[c] for c in _WRITTEN}, {c: want[c] for c in _WRITTEN})
            yield Change(rule_.id, "positions", "closed_positions", "update", {"position_id": position_id},
                         before, after, v.key, v.scope)


@rule(RULE_ID, severity="HIGH", databases=["positions", "trading"],
      reads=["positions.closed_positions", "trading.trades", "trading.lot_matches"], key=["entry_trade_id"],
      scan=LEDGER_SCAN, repair=_rebuild)
def closed_position_mismatch() -> None:
    """closed_positions disagrees with the ledger's closed lots of either side: missing, orphaned, or a different quantity, price, P&L, time, commission, ticker or side."""


RULES = (closed_position_mismatch,)
