"""Golden cases for the short side of the ledger rules (issue 12), on small hand-built ledgers.

A clean ledger of three tickers — long lots closed across lots, a flip from long to short and one
from short to long (each written as two trades: a close of the whole position, then an opening of
the remainder, commission pro rata), a ticker that is only ever short — is written row by row with
the accounting core's values (``toolkit.accounting``: the one FIFO; the stored rows from
``close_row_values``, ``opening_row_values``, ``lot_row_values``, ``toolkit.ledger.position_row`` and
``closed_position_row``). It passes every rule. Each test then injects one defect and asserts the
exact findings of every rule of the catalogue; where the rules have a repair, ``repair --apply``
must bring back the clean ledger's content. The independent audit (``fifo_reference.audit``, its
own FIFO) must see exactly the same findings.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fifo_reference import UNIT, audit, signed_quantities_for, steps
from toolkit.accounting import (
    LOT_ROW_COLUMNS,
    TRADE_ROW_COLUMNS,
    Close,
    TickerBook,
    cash_effect,
    close_row_values,
    lot_row_values,
    opening_row_values,
    split_flip,
)
from toolkit.config import Settings, load_settings
from toolkit.content import load_migrations, load_registry
from toolkit.ledger import CLOSED_POSITION_COLUMNS, closed_position_row, position_row
from toolkit.migrate.runner import upgrade
from toolkit.repair import apply_repairs
from toolkit.rules import run_checks

REGISTRY = load_registry(plugins=False)
STARTING_CAPITAL = 100_000.0

#: The session: (ticker, action, quantity, price, executed_at). Flips are split by the writer below.
SESSION = [
    ("AAA", "BUY", 10.0, 100.0, 1),
    ("AAA", "BUY", 5.0, 110.0, 2),
    ("AAA", "SELL", 12.0, 120.0, 3),    # closes lot 1 (10) and 2 of lot 2
    ("AAA", "SELL", 8.0, 115.0, 4),     # a flip: closes the 3 left of lot 2, opens a short lot of 5
    ("AAA", "SELL", 2.0, 118.0, 5),     # a second short lot
    ("AAA", "BUY", 4.0, 105.0, 6),      # covers 4 of the first short lot
    ("AAA", "BUY", 6.0, 100.0, 7),      # a flip: covers the 1 + 2 left, opens a long lot of 3
    ("BBB", "SELL", 10.0, 50.0, 1),     # only ever short
    ("BBB", "SELL", 5.0, 52.0, 2),
    ("BBB", "BUY", 12.0, 45.0, 3),      # covers 10 + 2: short P&L (entry − exit) × quantity
    ("CCC", "BUY", 4.0, 20.0, 1),
    ("CCC", "SELL", 4.0, 25.0, 2),
]
COMMISSION = 1.0

_TRADE_COLUMNS = ("trade_id", "run_id", "ticker", "action", "quantity", "price", "commission", "executed_at", "is_close",
                  *TRADE_ROW_COLUMNS, "strategy")


def _settings(directory: Path, *, allow_short: bool = True) -> Settings:
    return load_settings(directory / "data", cwd=directory, env={}).with_(allow_short=allow_short)


def write_ledger(settings: Settings, session=SESSION, *, split_flips: bool = True) -> dict[str, object]:
    """Write ``session`` as the trade writer stores it (SPEC §3, issue 12), with the accounting core's
    values; returns what was written (trade ids by role) for the tests to aim at."""
    conn = sqlite3.connect(settings.path("trading"), isolation_level=None)
    conn.execute("ATTACH DATABASE ? AS positions", (str(settings.path("positions")),))
    conn.execute("BEGIN")
    books: dict[str, TickerBook] = {}
    commissions: dict[int, float] = {}
    flip_rows: set[int] = set()
    last: dict[str, tuple[float, int]] = {}
    cash, trade_id, written = STARTING_CAPITAL, 0, {"closes": [], "openings": [], "flips": []}

    def record(ticker: str, action: str, quantity: float, price: float, at: int, commission: float) -> int:
        nonlocal trade_id, cash
        trade_id += 1
        book = books[ticker]
        outcome = (book.buy if action == "BUY" else book.sell)(trade_id, quantity, price, at)
        if isinstance(outcome, Close):
            values, is_close = close_row_values(outcome), 1
            if outcome.opened is not None:
                flip_rows.add(trade_id)
            written["closes"].append((trade_id, ticker, action, outcome.side))
        else:
            values, is_close = opening_row_values(outcome), 0
            written["openings"].append((trade_id, ticker, action, outcome.side))
        commissions[trade_id] = commission
        conn.execute(f"INSERT INTO trades ({', '.join(_TRADE_COLUMNS)}) VALUES ({', '.join('?' * len(_TRADE_COLUMNS))})",
                     (trade_id, "run-1", ticker, action, quantity, price, commission, at, is_close, *values, "test"))
        if isinstance(outcome, Close):
            conn.executemany("INSERT INTO lot_matches VALUES (?, ?, ?, ?, ?, ?, ?)", outcome.matches)
            for lot in outcome.closed_lots:
                if lot.trade_id not in flip_rows:   # a flip stored as one row: that row is its close's, not the lot's
                    conn.execute(f"UPDATE trades SET {', '.join(c + ' = ?' for c in LOT_ROW_COLUMNS)} WHERE trade_id = ?",
                                 (*lot_row_values(lot), lot.trade_id))
                conn.execute(f"INSERT INTO positions.closed_positions ({', '.join(CLOSED_POSITION_COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(CLOSED_POSITION_COLUMNS))})",
                             closed_position_row(lot, ticker, commissions[lot.trade_id], "test"))
        cash += cash_effect(action, quantity, price, commission)
        last[ticker] = (price, at)
        return trade_id

    for ticker, action, quantity, price, at in session:
        book = books.setdefault(ticker, TickerBook(ticker, True))
        close_qty, open_qty = split_flip(book, action, quantity)
        if close_qty and open_qty and split_flips:
            first = commission_close = COMMISSION * close_qty / quantity
            a = record(ticker, action, close_qty, price, at, first)
            b = record(ticker, action, open_qty, price, at, COMMISSION - commission_close)
            written["flips"].append((a, b))
        else:
            record(ticker, action, quantity, price, at, COMMISSION)
    for ticker, book in books.items():
        for position in book.positions().values():
            row = position_row(position, *last[ticker], "test")
            conn.execute(f"INSERT INTO positions.positions ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                         tuple(row.values()))
    conn.execute("INSERT INTO account (account_id, starting_capital, cash_balance, currency, created_at, updated_at) "
                 "VALUES (1, ?, ?, 'USD', 0, 10)", (STARTING_CAPITAL, cash))
    conn.execute("COMMIT")
    conn.close()
    return written


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory) -> tuple[Path, dict]:
    directory = tmp_path_factory.mktemp("shorts-clean")
    settings = _settings(directory)
    upgrade(settings, migrations=load_migrations(settings))
    written = write_ledger(settings)
    return directory, written


@pytest.fixture
def ledger(clean_dir, tmp_path: Path):
    """A fresh copy of the clean ledger: (settings with shorts on, what was written)."""
    source, written = clean_dir
    shutil.copytree(source / "data", tmp_path / "data")
    return _settings(tmp_path), written


def execute(settings: Settings, sql: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(settings.path("trading"), isolation_level=None)
    conn.execute("ATTACH DATABASE ? AS positions", (str(settings.path("positions")),))
    try:
        conn.execute(sql, params)
    finally:
        conn.close()


def one(settings: Settings, sql: str, params: tuple = ()) -> tuple:
    conn = sqlite3.connect(settings.path("trading"), isolation_level=None)
    conn.execute("ATTACH DATABASE ? AS positions", (str(settings.path("positions")),))
    try:
        return conn.execute(sql, params).fetchone()
    finally:
        conn.close()


def findings(settings: Settings) -> dict[str, set[str]]:
    """Every rule's findings (rule id -> natural keys as canonical JSON); rules that find nothing are left out."""
    report = run_checks(settings, registry=REGISTRY, collect=True)
    found = {}
    for result in report.results:
        assert result.error is None and result.status in ("passed", "failed"), (result.rule.id, result.error, result.reason)
        if result.fingerprints:
            found[result.rule.id] = {fp.split(":", 1)[1] for fp in result.fingerprints}
    return found


def keys(*items: dict) -> set[str]:
    return {json.dumps(k, sort_keys=True, separators=(",", ":")) for k in items}


def content(settings: Settings) -> dict[str, list]:
    """The ledger and its projections, without ids a repair may renumber or times it sets."""
    conn = sqlite3.connect(settings.path("trading"), isolation_level=None)
    conn.execute("ATTACH DATABASE ? AS positions", (str(settings.path("positions")),))
    try:
        return {
            "trades": conn.execute("SELECT * FROM trades ORDER BY trade_id").fetchall(),
            "lot_matches": conn.execute("SELECT * FROM lot_matches ORDER BY close_trade_id, entry_trade_id").fetchall(),
            "account": conn.execute("SELECT starting_capital, cash_balance FROM account").fetchall(),
            "positions": conn.execute("SELECT ticker, side, quantity, entry_price, opened_at FROM positions.positions "
                                      "ORDER BY ticker, side").fetchall(),
            "closed_positions": conn.execute(
                f"SELECT {', '.join(CLOSED_POSITION_COLUMNS)} FROM positions.closed_positions ORDER BY entry_trade_id").fetchall(),
        }
    finally:
        conn.close()


def repair_restores(settings: Settings, clean: dict, *, untouched: dict[str, set[str]] | None = None) -> None:
    """``repair --apply`` rolls nothing back, and the ledger is the clean one again (but for what it leaves)."""
    result = apply_repairs(settings, registry=REGISTRY)
    assert result.rolled_back == [] and result.incomplete == [], [(r.rule.id, r.rolled_back, r.reason) for r in result.rules]
    assert findings(settings) == (untouched or {})
    if not untouched:
        assert content(settings) == clean


def _ids(written: dict, role: str, ticker: str, action: str | None = None, side: str | None = None) -> list[int]:
    return [t for t, tk, a, s in written[role] if tk == ticker and (action is None or a == action) and (side is None or s == side)]


# -- the clean ledger ------------------------------------------------------------------------------------

def test_the_clean_ledger_passes_every_rule_and_the_audit(ledger) -> None:
    settings, written = ledger
    assert len(written["flips"]) == 2
    assert {s for *_, s in written["closes"]} == {"long", "short"} and {s for *_, s in written["openings"]} == {"long", "short"}
    assert one(settings, "SELECT count(*) FROM positions.positions WHERE side = 'short'") == (1,)   # BBB
    assert one(settings, "SELECT count(*) FROM positions.closed_positions WHERE side = 'short'")[0] >= 3
    assert findings(settings) == {}
    assert audit(settings.data_dir, allow_short=True, tolerance=1e-6) == {}


def test_the_same_ledger_with_shorts_off_reports_each_short_sale_and_short_row(ledger) -> None:
    """allow-short = false: the book is long-only. A SELL beyond the long lots is an orphaned sell (the
    flip's close half is not: it closes exactly what is held), a BUY on a flat ticker opens a long lot,
    and the short positions row is a finding the repair leaves alone."""
    settings, written = ledger
    long_only = settings.with_(allow_short=False)
    found = findings(long_only)
    assert found == audit(long_only.data_dir)
    short_sales = [t for t, tk, a, s in written["openings"] if s == "short"]
    assert found["orphaned_sells"] == keys(*({"trade_id": t} for t in short_sales))
    # AAA's and BBB's covers open long lots in a long-only book; BBB's short row is a finding of its own
    assert found["position_ledger_mismatch"] == keys({"ticker": "BBB", "side": "short"}, {"ticker": "AAA", "side": "long"},
                                                     {"ticker": "BBB", "side": "long"})
    assert "unsplit_flips" not in found
    # the short positions row stays: repairs never delete a short row of a long-only ledger
    result = apply_repairs(long_only, registry=REGISTRY, rule_ids=["position_ledger_mismatch"])
    plan = {r.rule.id: r for r in result.rules}["position_ledger_mismatch"]
    assert any("repairs never delete a short row" in u.reason for u in plan.untouched_samples)
    assert one(settings, "SELECT count(*) FROM positions.positions WHERE ticker = 'BBB' AND side = 'short'") == (1,)


# -- the close flag ----------------------------------------------------------------------------------------

def test_a_cover_recorded_as_an_opening(ledger) -> None:
    settings, written = ledger
    clean = content(settings)
    cover = _ids(written, "closes", "BBB", "BUY")[0]
    execute(settings, "UPDATE trades SET is_close = 0 WHERE trade_id = ?", (cover,))
    found = findings(settings)
    # its P&L is on a row stored as an opening: the SQL rule sees that too; its repair leaves the P&L
    assert found == {"close_flag_mismatch": keys({"trade_id": cover}), "opening_leg_with_pnl": keys({"trade_id": cover})}
    assert audit(settings.data_dir, allow_short=True) == found
    repair_restores(settings, clean)


def test_a_cover_written_whole_as_an_opening_row(ledger) -> None:
    """A long-only writer's row for a covering BUY: flagged, linked, valued and stored as an opening."""
    settings, written = ledger
    clean = content(settings)
    cover = _ids(written, "closes", "BBB", "BUY")[0]
    execute(settings, "UPDATE trades SET is_close = 0, entry_trade_id = NULL, realized_pnl = NULL, status = 'OPEN', "
                      "exit_price = NULL, exit_time = NULL WHERE trade_id = ?", (cover,))
    execute(settings, "DELETE FROM lot_matches WHERE close_trade_id = ?", (cover,))
    found = findings(settings)
    this = keys({"trade_id": cover})
    assert found == {"close_flag_mismatch": this, "unlinked_closes": this, "realized_pnl_mismatch": this,
                     "lot_status_inconsistent": this}
    assert audit(settings.data_dir, allow_short=True) == found
    repair_restores(settings, clean)


def test_a_short_sale_recorded_as_a_close(ledger) -> None:
    settings, written = ledger
    clean = content(settings)
    sale = _ids(written, "openings", "BBB", "SELL")[0]
    execute(settings, "UPDATE trades SET is_close = 1, realized_pnl = 0.0 WHERE trade_id = ?", (sale,))
    found = findings(settings)
    assert found == {"close_flag_mismatch": keys({"trade_id": sale})}   # one update: the flag and the P&L
    assert audit(settings.data_dir, allow_short=True) == found
    repair_restores(settings, clean)


def test_a_long_close_recorded_as_an_opening_is_found_with_shorts_off_too(ledger) -> None:
    settings, written = ledger
    sell = _ids(written, "closes", "CCC", "SELL")[0]
    execute(settings, "UPDATE trades SET is_close = 0 WHERE trade_id = ?", (sell,))
    assert findings(settings) == {"close_flag_mismatch": keys({"trade_id": sell}), "opening_leg_with_pnl": keys({"trade_id": sell})}
    long_only = findings(settings.with_(allow_short=False))   # (where the short side's rows are findings of their own)
    assert keys({"trade_id": sell}) <= long_only["close_flag_mismatch"]
    assert long_only["opening_leg_with_pnl"] == keys({"trade_id": sell})
    assert long_only == audit(settings.data_dir)


# -- covers: links, P&L, lot status -------------------------------------------------------------------------

def test_a_wrong_cover_link(ledger) -> None:
    settings, written = ledger
    clean = content(settings)
    cover = _ids(written, "closes", "BBB", "BUY")[0]
    first, second = _ids(written, "openings", "BBB", "SELL")
    execute(settings, "UPDATE trades SET entry_trade_id = ? WHERE trade_id = ?", (second, cover))
    found = findings(settings)
    assert found == {"unlinked_closes": keys({"trade_id": cover})}
    assert audit(settings.data_dir, allow_short=True) == found
    report = run_checks(settings, registry=REGISTRY, collect=True, rule_ids=["unlinked_closes"])
    message = report.result("unlinked_closes").samples[0].message
    assert f"entry_trade_id {second} is an earlier lot of this ticker" in message and f"(FIFO: {first})" in message
    repair_restores(settings, clean)


def test_a_cover_linked_to_a_buy_is_named_as_such(ledger) -> None:
    settings, written = ledger
    cover = _ids(written, "closes", "BBB", "BUY")[0]
    buy = _ids(written, "openings", "CCC", "BUY")[0]
    execute(settings, "UPDATE trades SET entry_trade_id = ? WHERE trade_id = ?", (buy, cover))
    report = run_checks(settings, registry=REGISTRY, collect=True, rule_ids=["unlinked_closes"])
    assert f"entry_trade_id {buy} is a BUY, not a SELL" in report.result("unlinked_closes").samples[0].message


def test_missing_cover_matches(ledger) -> None:
    settings, written = ledger
    clean = content(settings)
    cover = _ids(written, "closes", "BBB", "BUY")[0]
    execute(settings, "DELETE FROM lot_matches WHERE close_trade_id = ?", (cover,))
    found = findings(settings)
    assert found == {"unlinked_closes": keys({"trade_id": cover})}
    assert audit(settings.data_dir, allow_short=True) == found
    repair_restores(settings, clean)


def test_a_short_pnl_with_the_wrong_sign(ledger) -> None:
    """The seed-000 sign bug on the short side: a cover stored with (exit − entry) × quantity."""
    settings, written = ledger
    clean = content(settings)
    cover = _ids(written, "closes", "BBB", "BUY")[0]
    first = _ids(written, "openings", "BBB", "SELL")[0]
    pnl, = one(settings, "SELECT realized_pnl FROM trades WHERE trade_id = ?", (cover,))
    assert pnl == pytest.approx((50.0 - 45.0) * 10 + (52.0 - 45.0) * 2)   # a profitable cover
    execute(settings, "UPDATE trades SET realized_pnl = -realized_pnl WHERE trade_id = ?", (cover,))
    execute(settings, "UPDATE lot_matches SET realized_pnl = -realized_pnl WHERE close_trade_id = ? AND entry_trade_id = ?",
            (cover, first))
    found = findings(settings)
    assert found == {"realized_pnl_mismatch": keys({"trade_id": cover}, {"close_trade_id": cover, "entry_trade_id": first})}
    assert audit(settings.data_dir, allow_short=True) == found
    repair_restores(settings, clean)


@pytest.mark.parametrize("variant", ["closed-marked-open", "open-marked-closed", "no-exit-price"])
def test_a_short_lot_status_wrong(ledger, variant: str) -> None:
    settings, written = ledger
    clean = content(settings)
    covered, still_open = _ids(written, "openings", "BBB", "SELL")   # lot 1 fully covered, lot 2 has 3 left
    if variant == "closed-marked-open":
        victim, sql = covered, "UPDATE trades SET status = 'OPEN', exit_price = NULL, exit_time = NULL WHERE trade_id = ?"
    elif variant == "open-marked-closed":
        victim, sql = still_open, "UPDATE trades SET status = 'CLOSED' WHERE trade_id = ?"
    else:
        victim, sql = covered, "UPDATE trades SET exit_price = NULL WHERE trade_id = ?"
    execute(settings, sql, (victim,))
    found = findings(settings)
    assert found == {"lot_status_inconsistent": keys({"trade_id": victim})}
    assert audit(settings.data_dir, allow_short=True) == found
    repair_restores(settings, clean)


# -- positions per side --------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["missing", "extra", "quantity", "entry-price"])
def test_a_short_positions_row(ledger, variant: str) -> None:
    settings, _ = ledger
    clean = content(settings)
    key = {"ticker": "BBB", "side": "short"}
    if variant == "missing":
        execute(settings, "DELETE FROM positions.positions WHERE ticker = 'BBB' AND side = 'short'")
    elif variant == "extra":   # a short row beside AAA's long one: AAA holds no short lots
        key = {"ticker": "AAA", "side": "short"}
        execute(settings, "INSERT INTO positions.positions (ticker, side, quantity, entry_price, current_price, unrealized_pnl, "
                          "opened_at, updated_at, strategy) VALUES ('AAA', 'short', 2, 118, 100, 36, 5, 7, 'test')")
    elif variant == "quantity":
        execute(settings, "UPDATE positions.positions SET quantity = quantity + 1 WHERE ticker = 'BBB' AND side = 'short'")
    else:
        execute(settings, "UPDATE positions.positions SET entry_price = entry_price * 1.1 WHERE ticker = 'BBB' AND side = 'short'")
    found = findings(settings)
    assert found == {"position_ledger_mismatch": keys(key)}
    assert audit(settings.data_dir, allow_short=True) == found
    repair_restores(settings, clean)


def test_a_repaired_short_row_marks_with_the_short_formula(ledger) -> None:
    settings, _ = ledger
    clean = content(settings)
    execute(settings, "DELETE FROM positions.positions WHERE ticker = 'BBB' AND side = 'short'")
    repair_restores(settings, clean)
    quantity, entry, current, unrealized = one(
        settings, "SELECT quantity, entry_price, current_price, unrealized_pnl FROM positions.positions "
                  "WHERE ticker = 'BBB' AND side = 'short'")
    assert (quantity, entry, current) == (3.0, 52.0, 45.0)
    assert unrealized == pytest.approx((52.0 - 45.0) * 3)   # (entry − price) × quantity


# -- closed_positions of short lots ----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["pnl", "side", "missing"])
def test_a_short_closed_positions_row(ledger, variant: str) -> None:
    settings, written = ledger
    clean = content(settings)
    lot = _ids(written, "openings", "BBB", "SELL")[0]
    if variant == "pnl":
        execute(settings, "UPDATE positions.closed_positions SET realized_pnl = -realized_pnl WHERE entry_trade_id = ?", (lot,))
    elif variant == "side":
        execute(settings, "UPDATE positions.closed_positions SET side = 'long' WHERE entry_trade_id = ?", (lot,))
    else:
        execute(settings, "DELETE FROM positions.closed_positions WHERE entry_trade_id = ?", (lot,))
    found = findings(settings)
    assert found == {"closed_position_mismatch": keys({"entry_trade_id": lot})}
    assert audit(settings.data_dir, allow_short=True) == found
    repair_restores(settings, clean)


# -- a flip stored as one row -----------------------------------------------------------------------------------

def _unsplit_dir(tmp_path: Path) -> tuple[Settings, dict]:
    settings = _settings(tmp_path)
    upgrade(settings, migrations=load_migrations(settings))
    return settings, write_ledger(settings, split_flips=False)


def test_a_flip_stored_as_one_row(tmp_path: Path) -> None:
    """Written by a writer that does not split: each flip is one row whose close has ``.opened``. The
    rest of that ledger is consistent with the FIFO (the opened lot's covers link to the flip row)."""
    settings, written = _unsplit_dir(tmp_path)
    assert written["flips"] == []
    flips = [one(settings, "SELECT trade_id FROM trades WHERE ticker = 'AAA' AND quantity = ? AND action = ?", q)[0]
             for q in ((8.0, "SELL"), (6.0, "BUY"))]
    found = findings(settings)
    assert found == {"unsplit_flips": keys(*({"trade_id": t} for t in flips))}
    assert audit(settings.data_dir, allow_short=True) == found
    report = run_checks(settings, registry=REGISTRY, collect=True, rule_ids=["unsplit_flips"])
    messages = " | ".join(v.message for v in report.result("unsplit_flips").samples)
    assert "a SELL of 8 AAA closes the whole long position (3) and opens a short lot of 5 in one row" in messages
    assert "a BUY of 6 AAA closes the whole short position (3) and opens a long lot of 3 in one row" in messages
    # no automatic repair: the plan leaves the rows as they are, with the remedy
    assert REGISTRY["unsplit_flips"].repair is None and "two trades" in REGISTRY["unsplit_flips"].remedy
    before = content(settings)
    apply_repairs(settings, registry=REGISTRY)
    assert content(settings) == before


def test_an_oversell_is_an_orphaned_sell_with_shorts_off_and_an_unsplit_flip_with_shorts_on(tmp_path: Path) -> None:
    """The documented difference: the same stored oversell, checked with allow-short off and on."""
    settings = _settings(tmp_path)
    upgrade(settings, migrations=load_migrations(settings))
    write_ledger(settings, [("CCC", "BUY", 4.0, 20.0, 1), ("CCC", "SELL", 6.0, 25.0, 2)], split_flips=False)
    oversell = one(settings, "SELECT trade_id FROM trades WHERE action = 'SELL'")[0]
    long_only = findings(settings.with_(allow_short=False))
    # the long-only book: the oversell closes the 4 held, the other 2 are in no lot; the short row is a finding
    assert long_only == {"orphaned_sells": keys({"trade_id": oversell}),
                         "position_ledger_mismatch": keys({"ticker": "CCC", "side": "short"})}
    assert audit(settings.data_dir) == long_only
    shorts = findings(settings)
    assert shorts == {"unsplit_flips": keys({"trade_id": oversell})}   # the 2 opened a short lot: its row exists
    assert audit(settings.data_dir, allow_short=True) == shorts


def test_an_opening_that_links_to_a_lot(ledger) -> None:
    """An opening row links to nothing (either side): a short sale with an entry_trade_id is unlinked_closes'."""
    settings, written = ledger
    clean = content(settings)
    first, second = _ids(written, "openings", "BBB", "SELL")
    execute(settings, "UPDATE trades SET entry_trade_id = ? WHERE trade_id = ?", (first, second))
    found = findings(settings)
    assert found == {"unlinked_closes": keys({"trade_id": second})}
    assert audit(settings.data_dir, allow_short=True) == found
    repair_restores(settings, clean)


# -- random sessions of both sides: the scan and the independent audit agree -------------------------------------

@pytest.fixture(scope="module")
def migrated_template(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("shorts-template")
    settings = _settings(directory)
    upgrade(settings, migrations=load_migrations(settings))
    return directory / "data"


def _random_session(planned) -> list[tuple]:
    at, session = 1_700_000_000, []
    for ticker, action, units, cents, dt in planned:
        at += dt
        session.append((ticker, action, units / UNIT, cents / 100, at))
    return session


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=steps, split=st.booleans())
def test_random_long_short_flip_sessions_agree_with_the_audit(migrated_template: Path, raw, split: bool) -> None:
    """Written with flips split (the writer's way) a session passes every rule; written with flips in one
    row, exactly its flips are unsplit_flips. Either way the independent audit says the same."""
    session = _random_session(signed_quantities_for(raw))
    with tempfile.TemporaryDirectory() as work:
        shutil.copytree(migrated_template, Path(work) / "data")
        ledger_settings = _settings(Path(work))
        write_ledger(ledger_settings, session, split_flips=split)
        found = findings(ledger_settings)
        assert found == audit(ledger_settings.data_dir, allow_short=True, tolerance=1e-6)
        assert set(found) <= ({"unsplit_flips"} if not split else set())
