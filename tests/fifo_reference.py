"""An independent FIFO and ledger audit, written from SPEC §3 — not from ``toolkit.accounting``.

Nothing here imports the toolkit's accounting, writer or fixtures: the tests compare the toolkit
against this module.

Structure (deliberately unlike the core's deque of mutable lots): per ticker, BUY lots are laid
end to end on a *cumulative bought* axis — lot k covers ``[start_k, end_k)`` — and the SELLs of that
ticker consume a growing prefix of the same axis. A SELL of ``q`` covers ``[consumed, consumed + q)``
and its lot matches are exactly the intersections of that interval with the lot intervals, in axis
(= FIFO) order. Quantities are exact integers in units of 1e-9 (the spec compares quantities after
rounding to 1e-9); prices are exact fractions of their decimal representation, so P&L and cash are
exact rational numbers.

With shorts allowed (``fifo(..., allow_short=True)``) a second, plainer structure is used instead:
per ticker a list of open long lots and a list of open short lots, remaining quantities in nano
units; each trade eats the front of the other side's list and whatever is left opens a lot on its
own side (SPEC §3: a SELL on a flat or short ticker opens a short lot, a BUY on a short ticker
covers short lots FIFO with P&L ``(entry − exit) × quantity``).
"""
from __future__ import annotations

import ast
import json
import math
import re
import sqlite3
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from pathlib import Path

NANO = 10**9
#: Quantities agree when they agree at 1e-9 (float noise of the core is far below this).
QTY_TOL = 1e-9


def to_nano(quantity: float) -> int:
    """A quantity in exact units of 1e-9 (rounded half-even at the 9th decimal)."""
    return int((Decimal(repr(float(quantity))) * NANO).to_integral_value(rounding=ROUND_HALF_EVEN))


def exact(value: float) -> Fraction:
    """The decimal a float was written as (``0.1`` -> 1/10), as an exact fraction."""
    return Fraction(repr(float(value)))


def qty(nano: int) -> Fraction:
    return Fraction(nano, NANO)


def close_to(a: float | Fraction | None, b: float | Fraction | None, tol: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(float(a) - float(b)) <= tol


@dataclass(frozen=True)
class RefMatch:
    close_trade_id: int
    entry_trade_id: int
    quantity: Fraction
    entry_price: Fraction
    exit_price: Fraction
    realized_pnl: Fraction
    matched_at: int


@dataclass(frozen=True)
class RefSell:
    trade_id: int
    ticker: str
    quantity: Fraction
    price: Fraction
    executed_at: int
    matches: tuple[RefMatch, ...]
    shortfall: Fraction            # quantity the open lots could not cover
    rejected: bool                 # refused as an oversell (mode "reject"): changes nothing
    side: str = "long"             # the side of the lots it closed: "long" (a SELL) or "short" (a BUY)

    @property
    def realized_pnl(self) -> Fraction:
        return sum((m.realized_pnl for m in self.matches), Fraction(0))

    @property
    def entry_trade_id(self) -> int | None:
        return self.matches[0].entry_trade_id if self.matches else None


@dataclass
class RefLot:
    trade_id: int
    ticker: str
    executed_at: int
    quantity: Fraction
    price: Fraction
    start: int                      # on the ticker's cumulative bought axis, nano units
    end: int
    matches: list[RefMatch] = field(default_factory=list)
    remaining_nano: int = 0
    side: str = "long"              # "long" (opened by a BUY) or "short" (opened by a SELL)

    @property
    def remaining(self) -> Fraction:
        return qty(self.remaining_nano)

    @property
    def status(self) -> str:
        return "CLOSED" if self.remaining_nano == 0 else "OPEN"

    @property
    def exit_price(self) -> Fraction | None:
        if self.status == "OPEN":
            return None
        total = sum((m.quantity for m in self.matches), Fraction(0))
        return sum((m.quantity * m.exit_price for m in self.matches), Fraction(0)) / total

    @property
    def exit_time(self) -> int | None:
        return None if self.status == "OPEN" else max(m.matched_at for m in self.matches)


@dataclass(frozen=True)
class RefPosition:
    ticker: str
    quantity: Fraction
    entry_price: Fraction
    opened_at: int
    lots: int


@dataclass
class RefLedger:
    sells: dict[int, RefSell] = field(default_factory=dict)
    lots: dict[int, RefLot] = field(default_factory=dict)
    bought: dict[str, Fraction] = field(default_factory=dict)
    sold: dict[str, Fraction] = field(default_factory=dict)     # quantity actually consumed
    positions: dict[str, RefPosition] = field(default_factory=dict)            # long positions
    short_positions: dict[str, RefPosition] = field(default_factory=dict)

    def open_lots(self, ticker: str | None = None, side: str | None = None) -> list[RefLot]:
        return [lot for lot in self.lots.values()
                if lot.remaining_nano > 0 and (ticker is None or lot.ticker == ticker)
                and (side is None or lot.side == side)]

    @property
    def rejected(self) -> set[int]:
        return {s.trade_id for s in self.sells.values() if s.rejected}


def fifo(trades: Iterable[tuple[str, int, str, float, float, int]], *, oversell: str = "consume",
         allow_short: bool = False) -> RefLedger:
    """Replay ``(ticker, trade_id, action, quantity, price, executed_at)`` trades, in any input order.

    Long-only (the default): ``oversell="consume"``: a SELL beyond the open quantity consumes what is
    there and reports the shortfall (what the core does). ``oversell="reject"``: such a SELL is
    refused and changes nothing (what the writer does).

    ``allow_short=True``: positions are long or short (:func:`_two_sided`); nothing is refused.
    """
    assert oversell in ("consume", "reject")
    by_ticker: dict[str, list[tuple]] = defaultdict(list)
    for trade in trades:
        by_ticker[trade[0]].append(trade)
    ledger = RefLedger()
    for ticker, rows in by_ticker.items():
        rows.sort(key=lambda r: (r[5], r[1]))            # FIFO order: (executed_at, trade_id)
        if allow_short:
            _two_sided(ledger, ticker, rows)
            continue
        lots: list[RefLot] = []
        ends: list[int] = []
        bought = consumed = 0
        for _, trade_id, action, quantity, price, executed_at in rows:
            q, p = to_nano(quantity), exact(price)
            if action == "BUY":
                lot = RefLot(trade_id, ticker, executed_at, qty(q), p, bought, bought + q)
                lots.append(lot)
                ends.append(lot.end)
                ledger.lots[trade_id] = lot
                bought += q
                continue
            available = bought - consumed
            short = max(q - available, 0)
            if short and oversell == "reject":
                ledger.sells[trade_id] = RefSell(trade_id, ticker, qty(q), p, executed_at, (), qty(short), True)
                continue
            lo, hi = consumed, consumed + min(q, available)
            matches = []
            k = bisect_right(ends, lo)                   # first lot whose interval ends after lo
            while k < len(lots) and lots[k].start < hi:
                lot = lots[k]
                piece = min(hi, lot.end) - max(lo, lot.start)
                if piece > 0:
                    pq = qty(piece)
                    m = RefMatch(trade_id, lot.trade_id, pq, lot.price, p, (p - lot.price) * pq, executed_at)
                    matches.append(m)
                    lot.matches.append(m)
                k += 1
            consumed = hi
            ledger.sells[trade_id] = RefSell(trade_id, ticker, qty(q), p, executed_at, tuple(matches), qty(short), False)
        for lot in lots:
            lot.remaining_nano = lot.end - max(lot.start, min(consumed, lot.end))
        ledger.bought[ticker] = qty(bought)
        ledger.sold[ticker] = qty(consumed)
        open_ = [lot for lot in lots if lot.remaining_nano > 0]
        if open_:
            total = sum((lot.remaining for lot in open_), Fraction(0))
            cost = sum((lot.remaining * lot.price for lot in open_), Fraction(0))
            ledger.positions[ticker] = RefPosition(ticker, total, cost / total, open_[0].executed_at, len(open_))
    return ledger


def _position(ticker: str, open_: list[RefLot]) -> RefPosition:
    total = sum((lot.remaining for lot in open_), Fraction(0))
    cost = sum((lot.remaining * lot.price for lot in open_), Fraction(0))
    return RefPosition(ticker, total, cost / total, open_[0].executed_at, len(open_))


def _two_sided(ledger: RefLedger, ticker: str, rows: list[tuple]) -> None:
    """One ticker's trades, in FIFO order, with shorts: a list of open lots per side.

    A trade closes from the front of the other side's list; what is left of it (all of it when that
    side is flat) opens a lot on its own side under its own trade id. A trade that does both (a
    flip stored as one row) is in ``ledger.sells`` (its matches, ``shortfall`` = the remainder) and
    in ``ledger.lots`` (the remainder's lot). ``bought`` / ``sold``: Σ BUY / Σ SELL quantity.
    """
    open_: dict[str, list[RefLot]] = {"long": [], "short": []}
    bought = sold = 0
    for _, trade_id, action, quantity, price, executed_at in rows:
        q, p = to_nano(quantity), exact(price)
        if action == "BUY":
            bought += q
            closes, opens = "short", "long"
        else:
            sold += q
            closes, opens = "long", "short"
        queue = open_[closes]
        if queue:
            left = q
            matches = []
            while left > 0 and queue:
                lot = queue[0]
                piece = min(left, lot.remaining_nano)
                pq = qty(piece)
                gain = (p - lot.price) if closes == "long" else (lot.price - p)
                m = RefMatch(trade_id, lot.trade_id, pq, lot.price, p, gain * pq, executed_at)
                matches.append(m)
                lot.matches.append(m)
                lot.remaining_nano -= piece
                left -= piece
                if lot.remaining_nano == 0:
                    queue.pop(0)
            ledger.sells[trade_id] = RefSell(trade_id, ticker, qty(q), p, executed_at, tuple(matches), qty(left),
                                             False, closes)
            q = left
        if q > 0:
            lot = RefLot(trade_id, ticker, executed_at, qty(q), p, 0, q, remaining_nano=q, side=opens)
            open_[opens].append(lot)
            ledger.lots[trade_id] = lot
    assert not (open_["long"] and open_["short"])
    ledger.bought[ticker] = qty(bought)
    ledger.sold[ticker] = qty(sold)
    if open_["long"]:
        ledger.positions[ticker] = _position(ticker, open_["long"])
    if open_["short"]:
        ledger.short_positions[ticker] = _position(ticker, open_["short"])


def cash_formula(starting_capital: float, adjustments: Iterable[float],
                 trades: Iterable[tuple[str, float, float, float]]) -> Fraction:
    """SPEC §3: starting + Σ adjustments − Σ BUY q·p + Σ SELL q·p − Σ commission, exactly.
    ``trades``: (action, quantity, price, commission)."""
    cash = exact(starting_capital) + sum((exact(a) for a in adjustments), Fraction(0))
    for action, quantity, price, commission in trades:
        notional = exact(quantity) * exact(price)
        cash += notional if action == "SELL" else -notional
        cash -= exact(commission)
    return cash


# -- reading a data directory ---------------------------------------------------------------------

def connect_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)


def read_trades(conn: sqlite3.Connection) -> list[tuple]:
    return conn.execute("SELECT ticker, trade_id, action, quantity, price, executed_at FROM trades").fetchall()


def stored_matches(conn: sqlite3.Connection) -> dict[int, list[tuple]]:
    """close_trade_id -> [(entry_trade_id, quantity, entry_price, exit_price, realized_pnl, matched_at)]."""
    result: dict[int, list[tuple]] = defaultdict(list)
    for row in conn.execute("SELECT close_trade_id, entry_trade_id, quantity, entry_price, exit_price, realized_pnl, "
                            "matched_at FROM lot_matches"):
        result[row[0]].append(row[1:])
    return result


def key(d: dict) -> str:
    """A natural key as the fixtures' manifest fingerprints it."""
    return json.dumps(d, sort_keys=True, separators=(",", ":"))


_PLAUSIBLE = re.compile(r"[A-Z]{1,5}([.-][A-Z]{1,2})?")


def _is_state_literal(text: str) -> bool:
    try:
        value = ast.literal_eval(text)        # parses literals only; never runs code
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return isinstance(value, tuple)


def _same_matches(stored: list[tuple], expected: tuple[RefMatch, ...]) -> bool:
    got = {(r[0], to_nano(r[1])) for r in stored}
    want = {(m.entry_trade_id, int(m.quantity * NANO)) for m in expected}
    return len(stored) == len(expected) and got == want


def audit(data_dir: str | Path, *, tolerance: float = 0.01, prefix: str = "", allow_short: bool = False) -> dict[str, set[str]]:
    """Every SPEC §3/§5 violation this module can see, by rule id -> natural keys (JSON strings).

    Independent of the toolkit: the FIFO truth comes from :func:`fifo` over the executed facts.
    ``allow_short`` is the ledger's setting: off (the default here), a SELL beyond the open long lots
    is an orphaned sell and a short positions row is a finding; on, every trade is a close (it eats
    the other side's open lots) or an opening (a lot of its own side), and a stored trade that does
    both — a flip in one row — is an unsplit flip. Per trade (SPEC §3 as issue 12 revised it):

    - a close (a SELL of long lots, a BUY covering short ones) is stored with ``is_close = 1``, links
      to the first lot it consumed, has FIFO's lot matches and their P&L, and is CLOSED at its own
      price and time;
    - an opening is stored with ``is_close = 0``, links to nothing and carries no P&L (with a wrong
      flag, its P&L is part of that row's ``close_flag_mismatch``); its lot's status is the lot's;
    - ``opening_leg_with_pnl`` is a row check: ``is_close = 0`` with P&L, a close stored so included;
    - the matches of a trade stored as an opening are not looked at (the scan reads those of the
      rows stored as closes, and of every trade the FIFO says closes).
    """
    data_dir = Path(data_dir)
    found: dict[str, set[str]] = defaultdict(set)
    trading = connect_ro(data_dir / f"{prefix}trading.db")
    positions = connect_ro(data_dir / f"{prefix}positions.db")
    ml = connect_ro(data_dir / f"{prefix}ml_training.db")
    try:
        ref = fifo(read_trades(trading), allow_short=allow_short)
        matches = stored_matches(trading)
        rows = trading.execute(
            "SELECT trade_id, run_id, ticker, action, quantity, price, commission, executed_at, is_close, "
            "entry_trade_id, realized_pnl, status, exit_price, exit_time FROM trades").fetchall()
        for (trade_id, run_id, ticker, action, quantity, price, commission, executed_at, is_close, entry, pnl,
             status, exit_price, exit_time) in rows:
            this = key({"trade_id": trade_id})
            if (not isinstance(run_id, str) or not run_id.strip() or not isinstance(ticker, str)
                    or not _PLAUSIBLE.fullmatch(ticker) or not quantity > 0 or not price > 0
                    or not math.isfinite(quantity) or not math.isfinite(price) or not commission >= 0):
                found["trade_row_invalid"].add(this)
            if is_close == 0 and pnl is not None:   # the row says "opening leg": whatever the FIFO says
                found["opening_leg_with_pnl"].add(this)
            sell = ref.sells.get(trade_id)     # the trade's close, if it closes (a SELL or a covering BUY)
            if sell is None:                   # an opening: the lot it opened
                lot = ref.lots[trade_id]
                if is_close != 0:
                    found["close_flag_mismatch"].add(this)
                if entry is not None or (is_close == 1 and matches.get(trade_id)):
                    found["unlinked_closes"].add(this)
                if (status != lot.status or (status == "CLOSED" and (
                        exit_price is None or exit_time is None or exit_time != lot.exit_time
                        or not close_to(exit_price, lot.exit_price, tolerance)))
                        or (status == "OPEN" and (exit_price is not None or exit_time is not None))):
                    found["lot_status_inconsistent"].add(this)
                continue
            if is_close != 1:
                found["close_flag_mismatch"].add(this)
            if sell.shortfall > 0:   # with shorts, the rest opened a lot in the same row
                found["unsplit_flips" if allow_short else "orphaned_sells"].add(this)
            if entry != sell.entry_trade_id or not _same_matches(matches.get(trade_id, []), sell.matches):
                found["unlinked_closes"].add(this)
            if pnl is None or not close_to(pnl, sell.realized_pnl, tolerance):
                found["realized_pnl_mismatch"].add(this)
            if (status, exit_time) != ("CLOSED", executed_at) or not close_to(exit_price, price, tolerance):
                found["lot_status_inconsistent"].add(this)
            expected = {m.entry_trade_id: m for m in sell.matches}
            for entry_id, _, _, _, match_pnl, _ in matches.get(trade_id, []):
                m = expected.get(entry_id)
                if m is not None and not close_to(match_pnl, m.realized_pnl, tolerance):
                    found["realized_pnl_mismatch"].add(key({"close_trade_id": trade_id, "entry_trade_id": entry_id}))

        # closed_positions vs the ledger's closed lots: one row per CLOSED lot, recording it
        commissions = {r[0]: r[6] for r in rows}
        stored_closed = {r[0]: r for r in positions.execute(
            "SELECT entry_trade_id, ticker, side, quantity, entry_price, opened_at, closed_at, exit_price, realized_pnl, "
            "commission, position_id FROM closed_positions")}
        for trade_id, lot in ref.lots.items():
            if lot.status != "CLOSED":
                continue
            got = stored_closed.pop(trade_id, None)
            lot_pnl = sum((m.realized_pnl for m in lot.matches), Fraction(0))
            if got is None or got[1:3] != (lot.ticker, lot.side) or not close_to(got[3], lot.quantity, QTY_TOL) \
                    or (got[5], got[6]) != (lot.executed_at, lot.exit_time) or not all(
                        close_to(a, b, tolerance) for a, b in zip((got[4], got[7], got[8], got[9]),
                                                                  (lot.price, lot.exit_price, lot_pnl, commissions[trade_id]))):
                found["closed_position_mismatch"].add(key({"entry_trade_id": trade_id}))
        for entry, *_, position_id in stored_closed.values():
            found["closed_position_mismatch"].add(
                key({"entry_trade_id": entry} if entry is not None else {"position_id": position_id}))

        # the bankroll
        account = trading.execute("SELECT starting_capital, cash_balance FROM account").fetchall()
        if account:
            adjustments = [r[0] for r in trading.execute("SELECT amount FROM account_adjustments")]
            expected_cash = cash_formula(account[0][0], adjustments, trading.execute(
                "SELECT action, quantity, price, commission FROM trades"))
            if not close_to(account[0][1], expected_cash, tolerance):
                found["bankroll_mismatch"].add(key({"account_id": 1}))

        # positions.db vs the ledger's open lots: one row per ticker and side
        stored_positions = {(r[0], r[1]): r[2:] for r in positions.execute(
            "SELECT ticker, side, quantity, entry_price FROM positions")}
        open_positions = {**{(t, "long"): p for t, p in ref.positions.items()},
                          **{(t, "short"): p for t, p in ref.short_positions.items()}}
        for ticker, side in set(stored_positions) | set(open_positions):
            got, want = stored_positions.get((ticker, side)), open_positions.get((ticker, side))
            if (side == "short" and not allow_short) or got is None or want is None \
                    or not close_to(got[0], want.quantity, QTY_TOL) or not close_to(got[1], want.entry_price, tolerance):
                found["position_ledger_mismatch"].add(key({"ticker": ticker, "side": side}))

        # orders vs fills
        for order_id, quantity, status, filled_qty, filled_avg, fills_qty, fills_avg in trading.execute(
                "SELECT order_id, quantity, status, filled_quantity, filled_avg_price, fills_quantity, fills_avg_price "
                "FROM v_order_fill_stats"):
            complete = fills_qty is not None and abs(fills_qty - quantity) <= QTY_TOL
            if (abs(filled_qty - fills_qty) > QTY_TOL or not close_to(filled_avg, fills_avg, tolerance)
                    or (status == "filled") != complete):
                found["order_fill_mismatch"].add(key({"order_id": order_id}))
        for (order_id,) in trading.execute(
                "SELECT DISTINCT order_id FROM fills WHERE order_id NOT IN (SELECT order_id FROM orders)"):
            found["order_fill_mismatch"].add(key({"order_id": order_id}))

        # snapshots
        for snapshot_id, equity, cash, long_value, short_value in trading.execute(
                "SELECT snapshot_id, total_equity, cash_balance, long_market_value, short_market_value "
                "FROM portfolio_snapshots"):
            if abs(equity - (cash + long_value - short_value)) > tolerance:
                found["snapshot_equity_mismatch"].add(key({"snapshot_id": snapshot_id}))

        # ml_training.db
        runs = {r[0] for r in ml.execute("SELECT run_id FROM training_runs")}
        for table in ("agent_performance", "hyperparameters", "training_episodes", "ensemble_weights"):
            for rowid, run_id in ml.execute(f"SELECT rowid, run_id FROM {table}"):
                if run_id not in runs:
                    found["ml_orphan_rows"].add(key({"table": table, "id": rowid}))
        sums: dict[str, float] = defaultdict(float)
        for ensemble_id, weight in ml.execute("SELECT ensemble_id, weight FROM ensemble_weights WHERE is_active = 1"):
            sums[ensemble_id] += weight
        for ensemble_id, total in sums.items():
            if abs(total - 1.0) > 1e-6:
                found["ensemble_weights_sum"].add(key({"ensemble_id": ensemble_id}))
        for model_id, hyper, q_table in ml.execute("SELECT model_id, hyperparameters, q_table FROM rl_model_states"):
            h = json.loads(hyper)
            episodes, rewards = h.get("total_episodes"), h.get("total_rewards")
            want = None if episodes is None or rewards is None else round(rewards / max(episodes, 1), 4)
            if want is None or h.get("avg_reward") is None or abs(h["avg_reward"] - want) > 1e-9:
                found["rl_state_missing_avg_reward"].add(key({"model_id": model_id}))
            for state in json.loads(q_table):
                if not _is_state_literal(state):
                    found["qtable_unsafe_keys"].add(key({"model_id": model_id, "state": state}))

        # foreign keys, per file
        for name, conn in (("positions", positions), ("trading", trading), ("ml_training", ml)):
            for table, rowid, parent, _ in conn.execute("PRAGMA foreign_key_check"):
                found["foreign_key_violations"].add(
                    key({"database": name, "table": table, "rowid": rowid, "parent": parent}))
    finally:
        for conn in (trading, positions, ml):
            conn.close()
    return dict(found)


# -- drawing trade sequences (hypothesis) ----------------------------------------------------------

from hypothesis import strategies as st  # noqa: E402

TICKERS = ("AAA", "BBB", "CCC")
UNIT = 10_000     # quantities are drawn in units of 1e-4: 0.0001 .. 500


def quantities_for(raw, *, oversell: str):
    """Turn drawn steps into planned trades ``(ticker, action, units, cents, dt)``, in execution order.

    SELL sizes are chosen against the open quantity at that point: part of it, all of it, more than
    it (an oversell), or an unrelated size. ``oversell`` says how an oversell changes what is open.
    """
    held: dict[str, int] = defaultdict(int)
    out = []
    for ticker, is_sell, units, cents, dt, mode, fraction in raw:
        if not is_sell:
            held[ticker] += units
            out.append((ticker, "BUY", units, cents, dt))
            continue
        open_ = held[ticker]
        if mode == "all" and open_:
            size = open_
        elif mode == "part" and open_ > 1:
            size = max(1, open_ * fraction // 100)
        elif mode == "over":
            size = open_ + 1 + units % 5_000
        else:
            size = units
        if size <= open_:
            held[ticker] -= size
        elif oversell == "consume":
            held[ticker] = 0
        out.append((ticker, "SELL", size, cents, dt))
    return out


def signed_quantities_for(raw):
    """Like :func:`quantities_for`, with shorts: planned trades ``(ticker, action, units, cents, dt)``.

    A trade's size is chosen against the open position it would close — a SELL against a long one, a
    BUY against a short one: part of it, all of it, more than it (a flip: it closes everything and
    opens the rest on the other side), or an unrelated size. Against a flat ticker or one on its
    own side, the drawn size opens (or adds to) a position.
    """
    held: dict[str, int] = defaultdict(int)     # > 0 long, < 0 short
    out = []
    for ticker, is_sell, units, cents, dt, mode, fraction in raw:
        against = held[ticker] if is_sell else -held[ticker]
        if against <= 0:
            size = units
        elif mode == "all":
            size = against
        elif mode == "part" and against > 1:
            size = max(1, against * fraction // 100)
        elif mode == "over":
            size = against + 1 + units % 5_000
        else:
            size = units
        held[ticker] += -size if is_sell else size
        out.append((ticker, "SELL" if is_sell else "BUY", size, cents, dt))
    return out


steps = st.lists(
    st.tuples(
        st.sampled_from(TICKERS),
        st.booleans(),
        st.one_of(st.integers(1, 500 * UNIT), st.sampled_from([1_000, 2_000, 3_000, UNIT, 7 * UNIT])),
        st.one_of(st.integers(1, 50_000), st.sampled_from([1_000, 1_010, 990])),
        st.sampled_from([0, 0, 0, 1, 60]),
        st.sampled_from(["part", "all", "over", "any"]),
        st.integers(1, 99),
    ),
    min_size=1, max_size=45,
)
