"""Session fixtures with short lots, flips and other instruments (issue 12, /tmp/notes/shorts.md):
determinism, agreement with the independent two-sided FIFO (``fifo_reference.fifo(allow_short=True)``)
trade by trade, lot match by lot match, position by side and closed position by lot, flips stored
as two trades, symbol universes the default grammar accepts, the short-side defect variants and
the new defect kinds, and the ``tradestore`` scenario.

The integrity rules learn shorts elsewhere: nothing here asks ``integrity check`` for 0 violations.
"""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from fifo_reference import QTY_TOL, cash_formula, connect_ro, fifo, key, read_trades, stored_matches
from toolkit.config import load_settings
from toolkit.errors import UnknownNameError, UsageError
from toolkit.fixtures import generate, inject_defects
from toolkit.fixtures.defects import DEFECT_KINDS, SIDE_VARIANTS
from toolkit.fixtures.instruments import CRYPTO, EQUITY, FUTURES, FX, make_instruments
from toolkit.fixtures.scenarios import SCENARIOS, TRADESTORE_SYMBOLS
from toolkit.fixtures.session import EXIT_REASONS
from toolkit.symbols import compile_symbol_pattern, grammar
from dbstate import content_hashes, query

REPO = Path(__file__).resolve().parents[1]
DATABASES = ("positions", "trading", "ml_training")
SHORTS = {"short_share": 0.35, "flip_share": 0.1}


def settings_for(directory: Path, **env: str):
    return load_settings(directory, cwd=directory.parent, env=env, busy_timeout=2.0)


def hashes(settings) -> dict[str, str]:
    return content_hashes(settings, DATABASES)


_COLUMNS = ("trade_id, ticker, action, quantity, price, commission, executed_at, is_close, entry_trade_id, "
            "realized_pnl, status, exit_price, exit_time, run_id, order_id, strategy")


def trade_rows(settings) -> dict[int, tuple]:
    return {r[0]: r for r in query(settings, "trading", f"SELECT {_COLUMNS} FROM trades")}


def oracle(settings):
    conn = connect_ro(settings.path("trading"))
    try:
        return fifo(read_trades(conn), allow_short=True), stored_matches(conn)
    finally:
        conn.close()


def assert_agrees_with_the_oracle(settings):
    """Every stored value of the two-sided ledger is the independent FIFO's. Returns (ref, rows)."""
    ref, matches = oracle(settings)
    rows = trade_rows(settings)
    for trade_id, ticker, action, quantity, price, commission, executed_at, is_close, entry, pnl, status, \
            exit_price, exit_time, *_ in rows.values():
        closes, opens = trade_id in ref.sells, trade_id in ref.lots
        assert closes != opens, f"trade {trade_id} must either close or open (a flip is two trades)"
        if closes:
            want = ref.sells[trade_id]
            assert want.shortfall == 0 and is_close == 1
            assert action == ("BUY" if want.side == "short" else "SELL")        # a cover is a closing BUY
            got = sorted(matches[trade_id], key=lambda m: (rows[m[0]][6], m[0]))
            assert [m[0] for m in got] == [m.entry_trade_id for m in want.matches]
            for g, w in zip(got, want.matches):
                assert abs(g[1] - float(w.quantity)) <= QTY_TOL
                assert (g[2], g[3], g[5]) == (float(w.entry_price), float(w.exit_price), w.matched_at)
                assert g[4] == pytest.approx(float(w.realized_pnl), abs=1e-7, rel=1e-12)
                assert rows[g[0]][1] == ticker and rows[g[0]][7] == 0
            assert pnl == pytest.approx(float(want.realized_pnl), abs=1e-7, rel=1e-12)
            assert entry == want.entry_trade_id
            assert (status, exit_price, exit_time) == ("CLOSED", price, executed_at)
        else:
            lot = ref.lots[trade_id]
            assert is_close == 0 and action == ("BUY" if lot.side == "long" else "SELL")   # a short sale opens
            assert (entry, pnl) == (None, None) and (status, exit_time) == (lot.status, lot.exit_time)
            assert exit_price is None if lot.status == "OPEN" else math.isclose(exit_price, float(lot.exit_price),
                                                                                rel_tol=1e-9)
    # positions.db: one row per ticker and side, unrealized P&L by side
    stored = {(r[0], r[1]): r[2:] for r in query(settings, "positions", "SELECT ticker, side, quantity, entry_price, "
                                                 "opened_at, current_price, unrealized_pnl FROM positions")}
    want = {**{(t, "long"): p for t, p in ref.positions.items()}, **{(t, "short"): p for t, p in ref.short_positions.items()}}
    assert set(stored) == set(want)
    for (ticker, side), (quantity, entry_price, opened_at, current, unrealized) in stored.items():
        position = want[ticker, side]
        assert abs(quantity - float(position.quantity)) <= QTY_TOL and opened_at == position.opened_at
        assert math.isclose(entry_price, float(position.entry_price), rel_tol=1e-9)
        sign = 1 if side == "long" else -1
        assert unrealized == pytest.approx(sign * (current - entry_price) * quantity, abs=1e-6, rel=1e-9)
    # closed_positions: one row per closed lot, with the lot's side
    closed = {r[0]: r[1:] for r in query(settings, "positions", "SELECT entry_trade_id, side, quantity, exit_price, "
                                         "realized_pnl, closed_at, commission FROM closed_positions")}
    assert set(closed) == {t for t, lot in ref.lots.items() if lot.status == "CLOSED"}
    for trade_id, (side, quantity, exit_price, pnl, closed_at, commission) in closed.items():
        lot = ref.lots[trade_id]
        assert side == lot.side and abs(quantity - float(lot.quantity)) <= QTY_TOL and closed_at == lot.exit_time
        assert math.isclose(exit_price, float(lot.exit_price), rel_tol=1e-9)
        assert pnl == pytest.approx(float(sum(m.realized_pnl for m in lot.matches)), abs=1e-7, rel=1e-12)
        assert commission == rows[trade_id][5]
    # cash: the one formula (a short sale receives its notional); equity: cash + long - short
    (start, cash), = query(settings, "trading", "SELECT starting_capital, cash_balance FROM account")
    adjustments = [r[0] for r in query(settings, "trading", "SELECT amount FROM account_adjustments")]
    trades = query(settings, "trading", "SELECT action, quantity, price, commission FROM trades")
    assert cash == pytest.approx(float(cash_formula(start, adjustments, trades)), abs=1e-6, rel=0)
    for total, cash_, long_value, short_value in query(settings, "trading", "SELECT total_equity, cash_balance, "
                                                       "long_market_value, short_market_value FROM portfolio_snapshots"):
        assert total == pytest.approx(cash_ + long_value - short_value, abs=1e-6, rel=0)
    return ref, rows


def flip_pairs(settings) -> list[tuple[tuple, tuple]]:
    rows = trade_rows(settings)
    by_order = defaultdict(list)
    for row in rows.values():
        by_order[row[14]].append(row)
    return [tuple(sorted(group)) for group in by_order.values() if len(group) > 1]


# -- a two-sided session ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shorts(tmp_path_factory):
    settings = settings_for(tmp_path_factory.mktemp("shorts") / "data")
    manifest = generate(settings, trades=4_000, tickers=30, seed=9, universe="mixed", exit_reasons=True, funding=True,
                        **SHORTS)
    return settings, manifest


def test_a_shorts_session_agrees_with_the_independent_fifo(shorts):
    settings, manifest = shorts
    ref, rows = assert_agrees_with_the_oracle(settings)
    s = manifest.summary
    assert len(rows) == s["trades"] == 4_000 and s["buys"] + s["sells"] == 4_000
    # both sides, partial covers across several short lots, open short positions at the end
    assert s["short_sales"] > 300 and s["covers"] > 200 and s["flips"] > 50
    assert any(sell.side == "short" and len(sell.matches) > 1 for sell in ref.sells.values())
    assert ref.short_positions and ref.positions
    assert s["open_positions"] == len(ref.positions) + len(ref.short_positions)
    assert s["lot_matches"] == sum(len(sell.matches) for sell in ref.sells.values())
    assert s["short_sales"] == sum(1 for lot in ref.lots.values() if lot.side == "short")
    assert s["covers"] == sum(1 for sell in ref.sells.values() if sell.side == "short")
    assert manifest.options == {"short_share": 0.35, "flip_share": 0.1, "universe": "mixed", "exit_reasons": True,
                                "funding": True}
    # the short share is the share of new positions: about that share of the opening trades are short sales
    openings = [lot for lot in ref.lots.values()]
    assert 0.2 < sum(lot.side == "short" for lot in openings) / len(openings) < 0.5
    assert query(settings, "trading", "SELECT max(short_market_value) FROM portfolio_snapshots")[0][0] > 0


def test_a_shorts_session_has_labelled_exits_funding_and_sound_files(shorts, cli):
    settings, manifest = shorts
    reasons = {r[0] for r in query(settings, "positions", "SELECT DISTINCT exit_reason FROM closed_positions")}
    assert reasons == set(EXIT_REASONS)
    funding = query(settings, "trading", "SELECT amount, reason FROM account_adjustments WHERE reason LIKE 'funding: %'")
    assert len(funding) == manifest.summary["funding_adjustments"] > 0
    crypto = {ins.symbol for ins in make_instruments(random.Random(9), "mixed", 30) if ins.kind == CRYPTO}
    assert all(reason.split()[1] in crypto and amount != 0 for amount, reason in funding)
    for name in DATABASES:
        conn = connect_ro(settings.path(name))
        try:
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        finally:
            conn.close()
    result = cli("migrate", "--data-dir", str(settings.data_dir), "verify", cwd=settings.data_dir.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_flips_are_stored_as_two_trades(shorts):
    settings, manifest = shorts
    ref, _ = oracle(settings)
    pairs = flip_pairs(settings)
    assert len(pairs) == manifest.summary["flips"] > 0
    orders = {r[0]: r[1:] for r in query(settings, "trading", "SELECT order_id, quantity, commission, side FROM orders")}
    for close, opening in pairs:
        assert opening[0] == close[0] + 1                                              # consecutive trade ids
        for column in (1, 2, 4, 6, 13, 14, 15):   # ticker, action, price, executed_at, run_id, order_id, strategy
            assert close[column] == opening[column]
        assert (close[7], opening[7]) == (1, 0)                                        # the close first
        closed_side = ref.sells[close[0]].side
        assert ref.lots[opening[0]].side != closed_side                                # then the other side opens
        # the close took the whole open position of its side: no lot opened before it is left open after it
        at = (close[6], close[0])
        for lot in ref.lots.values():
            if lot.ticker == close[1] and lot.side == closed_side and (lot.executed_at, lot.trade_id) < at:
                done = sum((m.quantity for m in lot.matches if (m.matched_at, m.close_trade_id) <= at), 0)
                assert done == lot.quantity, (close, lot.trade_id)
        # one order of the bot's whole quantity; the commission split pro rata by quantity
        quantity, commission, side = orders[close[14]]
        assert side == close[2].lower() and abs(close[3] + opening[3] - quantity) <= QTY_TOL
        assert close[5] == pytest.approx(commission * close[3] / quantity, rel=1e-12, abs=1e-15)
        assert close[5] + opening[5] == pytest.approx(commission, rel=1e-12, abs=1e-15)
    # every order is filled by its fills (a flip's order by the fills of the two trades' quantity)
    stats = query(settings, "trading", "SELECT order_id, quantity, status, fills_quantity, fills_avg_price "
                  "FROM v_order_fill_stats")
    assert len(stats) == len(orders) == 4_000 - len(pairs)
    prices = {r[14]: r[4] for r in trade_rows(settings).values()}
    for order_id, quantity, status, fills_quantity, fills_avg in stats:
        assert status == "filled" and abs(fills_quantity - quantity) <= QTY_TOL
        assert math.isclose(fills_avg, prices[order_id], rel_tol=1e-9)


def test_a_shorts_session_is_deterministic_by_seed(tmp_path):
    made = []
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        settings = settings_for(tmp_path / name / "data")
        manifest = generate(settings, trades=800, tickers=8, seed=seed, universe="crypto", **SHORTS)
        made.append((manifest.summary, hashes(settings)))
    (s1, h1), (s2, h2), (s3, h3) = made
    assert s1 == s2 and h1 == h2
    assert s1 != s3 and all(h1[name] != h3[name] for name in ("trading", "positions"))


@pytest.mark.parametrize("universe", ["crypto", "fx", "futures", "mixed"])
def test_each_universe_gives_a_ledger_the_oracle_agrees_with(universe, tmp_path):
    settings = settings_for(tmp_path / "data")
    manifest = generate(settings, trades=700, tickers=6, seed=3, universe=universe, short_share=0.3, flip_share=0.1)
    assert manifest.summary["short_sales"] > 0 and manifest.summary["flips"] > 0
    assert_agrees_with_the_oracle(settings)
    tickers = {r[0] for r in query(settings, "trading", "SELECT DISTINCT ticker FROM trades")}
    assert tickers and all(grammar().accepts(t) for t in tickers)


# -- instruments ----------------------------------------------------------------------------------

@pytest.mark.parametrize("universe, preset", [(CRYPTO, "crypto"), (FX, "fx"), (FUTURES, "futures"), (EQUITY, "equity")])
def test_generated_symbols_pass_the_default_grammar_and_their_preset(universe, preset):
    instruments = make_instruments(random.Random(7), universe, 400)
    symbols = [ins.symbol for ins in instruments]
    assert len(set(symbols)) == 400
    default, own = grammar(), compile_symbol_pattern(preset)
    assert [s for s in symbols if not default.accepts(s)] == []
    assert [s for s in symbols if not own.accepts(s)] == []
    assert all(ins.price > 0 and ins.price_floor > 0 and ins.kind == universe for ins in instruments)


def test_crypto_symbols_and_fractional_quantities():
    instruments = {ins.symbol: ins for ins in make_instruments(random.Random(1), CRYPTO, 30)}
    assert {"BTCUSDT", "ETH-USD", "ETH/USDT", "ETHUSDT"} & set(instruments)
    btc = next(ins for s, ins in instruments.items() if s.startswith("BTC"))
    draws = random.Random(2).random
    sizes = [btc.opening_quantity(draws) for _ in range(200)]
    assert all(0 < q < 1 and q == round(q, 8) for q in sizes)                        # e.g. 0.00015343 BTC
    assert any(q < 0.001 for q in sizes)
    mixed = make_instruments(random.Random(3), "mixed", 200)
    assert {ins.kind for ins in mixed} == {EQUITY, CRYPTO, FX, FUTURES}
    assert all(grammar().accepts(ins.symbol) for ins in mixed)


# -- bad options ----------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"short_share": 1.5}, "short-share must be a number between 0 and 1"),
    ({"flip_share": -0.1}, "flip-share must be a number between 0 and 1"),
    ({"universe": "stocks"}, "universe must be one of"),
    ({"symbols": ("BTCUSDT", "BTC'USDT")}, "symbol \"BTC'USDT\" is refused"),
    ({"symbols": ("BTCUSDT", "BTCUSDT")}, "distinct tickers"),
])
def test_bad_session_options_are_refused_before_anything_is_written(tmp_path, options, message):
    settings = settings_for(tmp_path / "data")
    with pytest.raises(UsageError, match=message):
        generate(settings, trades=50, seed=1, **options)
    assert not settings.data_dir.exists() or not list(settings.data_dir.glob("*.db"))


def test_shorts_need_allow_short(tmp_path):
    settings = settings_for(tmp_path / "data", TOOLKIT_ALLOW_SHORT="0")
    assert settings.allow_short is False
    with pytest.raises(UsageError, match="needs allow-short on"):
        generate(settings, trades=50, tickers=3, seed=1, short_share=0.2)
    with pytest.raises(UsageError, match="unsplit_flips needs allow-short on"):
        generate(settings, trades=50, tickers=3, seed=1, defects={"unsplit_flips": 1})
    assert not list(settings.data_dir.glob("*.db")) if settings.data_dir.exists() else True


@pytest.mark.parametrize("name, error, message", [
    ("unlinked_closes:sideways", UsageError, "unknown side 'sideways'"),
    ("bankroll_mismatch:short", UsageError, "bankroll_mismatch has no side variant"),
    ("orphaned_sells:short", UsageError, "orphaned_sells has no side variant"),
    ("unlinked_close:short", UnknownNameError, "did you mean 'unlinked_closes'"),
])
def test_bad_side_requests_are_refused(tmp_path, name, error, message):
    settings = settings_for(tmp_path / "data")
    with pytest.raises(error, match=message):
        generate(settings, trades=50, tickers=3, seed=1, defects={name: 1})
    assert not list(settings.data_dir.glob("*.db")) if settings.data_dir.exists() else True


# -- short-side defects -----------------------------------------------------------------------------

TWIN = {"trades": 1_500, "tickers": 10, "seed": 13, "universe": "crypto", **SHORTS}
VARIANT_COUNTS = {rule: 4 if rule == "position_ledger_mismatch" else 3 for rule in SIDE_VARIANTS}


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    settings = settings_for(tmp_path_factory.mktemp("twin") / "data")
    generate(settings, **TWIN)
    return settings


def _changed_trades(clean, bad) -> set[int]:
    before, after = trade_rows(clean), trade_rows(bad)
    return {t for t in before.keys() | after.keys() if before.get(t) != after.get(t)}


def _short_side(row) -> bool:
    return (row[2], row[7]) in (("SELL", 0), ("BUY", 1))


def test_every_side_variant_is_a_defect_kind():
    assert set(SIDE_VARIANTS) <= set(DEFECT_KINDS)
    assert {"close_flag_mismatch", "unsplit_flips"} <= set(SIDE_VARIANTS)


@pytest.mark.parametrize("rule", sorted(SIDE_VARIANTS))
def test_short_side_defects_hit_short_rows_only(rule, twin, tmp_path):
    count = VARIANT_COUNTS[rule]
    bad = settings_for(tmp_path / "data")
    manifest = generate(bad, **TWIN, defects={f"{rule}:short": count})
    assert manifest.requested == {f"{rule}:short": count}
    keys = manifest.defects[rule]
    assert len(keys) == count == len({key(k) for k in keys})
    assert set(manifest.defects) == {rule} | ({"opening_leg_with_pnl"} if rule == "close_flag_mismatch" else set())
    clean_rows, changed = trade_rows(twin), _changed_trades(twin, bad)
    trade_keys = {k["trade_id"] for k in keys if "trade_id" in k}
    if rule in ("opening_leg_with_pnl", "lot_status_inconsistent"):
        assert changed == trade_keys and all(clean_rows[t][2:8:5] == ("SELL", 0) for t in trade_keys)   # short lots
    elif rule in ("unlinked_closes", "realized_pnl_mismatch", "close_flag_mismatch", "trade_row_invalid"):
        assert changed <= trade_keys and all(_short_side(clean_rows[t]) for t in trade_keys)
        if rule != "trade_row_invalid":
            assert all(clean_rows[t][2] == "BUY" for t in trade_keys)                                    # covers
        if rule == "realized_pnl_mismatch":
            pieces = [k for k in keys if "close_trade_id" in k]
            assert pieces and all(clean_rows[k["close_trade_id"]][2] == "BUY" for k in pieces)
        if rule == "close_flag_mismatch":
            assert manifest.defects["opening_leg_with_pnl"] == keys
            assert all(trade_rows(bad)[t][7] == 0 for t in trade_keys)
    elif rule == "unsplit_flips":
        # two rows of a short flip (a BUY covering, then opening long) merged back into one; what
        # referred to the opened lot refers to the merged trade
        ref, matches = oracle(bad)
        after = trade_rows(bad)
        linked = {t for t, row in clean_rows.items() if row[8] in {k + 1 for k in trade_keys}}
        assert changed == trade_keys | {t + 1 for t in trade_keys} | linked
        for t in trade_keys:
            assert (clean_rows[t][2], clean_rows[t][7], clean_rows[t + 1][7]) == ("BUY", 1, 0)
            assert t + 1 not in after and abs(after[t][3] - clean_rows[t][3] - clean_rows[t + 1][3]) <= QTY_TOL
            assert after[t][5] == pytest.approx(clean_rows[t][5] + clean_rows[t + 1][5])
            assert ref.sells[t].shortfall > 0 and ref.lots[t].side == "long"              # one row: closes and opens
            assert not [m for ms in matches.values() for m in ms if m[0] == t + 1]
            assert not query(bad, "positions", "SELECT 1 FROM closed_positions WHERE entry_trade_id = ?", (t + 1,))
        for t in linked:
            assert after[t][8] == clean_rows[t][8] - 1
        sql = "SELECT * FROM positions ORDER BY ticker, side"
        assert query(bad, "positions", sql) == query(twin, "positions", sql)               # the open positions stand
    elif rule == "position_ledger_mismatch":
        assert not changed
        sides = {r[0]: r[1] for r in query(twin, "positions", "SELECT ticker, side FROM positions")}
        for k in keys:
            inserted = query(bad, "positions", "SELECT side FROM positions WHERE ticker = ?", (k["ticker"],))
            assert sides.get(k["ticker"]) == "short" or inserted == [("short",)]
    elif rule == "closed_position_mismatch":
        assert not changed
        sides = {r[0]: r[1] for r in query(twin, "positions", "SELECT entry_trade_id, side FROM closed_positions")}
        for k in keys:
            entry = k["entry_trade_id"]
            assert sides.get(entry) == "short" or clean_rows[entry][2:11:8] == ("SELL", "OPEN")
    else:
        assert rule == "snapshot_equity_mismatch" and not changed
        for k in keys:
            sql = "SELECT total_equity, cash_balance, long_market_value, short_market_value FROM portfolio_snapshots " \
                  "WHERE snapshot_id = ?"
            (total, cash, long_value, short_value), = query(bad, "trading", sql, (k["snapshot_id"],))
            assert short_value > 0.05 and total == pytest.approx(cash + long_value + short_value)   # the sign bug


def test_all_short_side_defects_at_once_take_distinct_victims(tmp_path):
    settings = settings_for(tmp_path / "data")
    wanted = {f"{rule}:short": n for rule, n in VARIANT_COUNTS.items()}
    manifest = generate(settings, **{**TWIN, "trades": 3_000}, defects=wanted)
    flagged = manifest.defects["close_flag_mismatch"]     # also opening legs with P&L
    for rule, n in VARIANT_COUNTS.items():
        assert len(manifest.defects[rule]) == n + (len(flagged) if rule == "opening_leg_with_pnl" else 0), rule
    victims = [k.get("trade_id", k.get("close_trade_id")) for rule in
               ("unsplit_flips", "unlinked_closes", "opening_leg_with_pnl", "close_flag_mismatch", "realized_pnl_mismatch",
                "lot_status_inconsistent", "trade_row_invalid") for k in manifest.defects[rule]
               if rule != "opening_leg_with_pnl" or k not in flagged]
    assert len(victims) == len(set(victims))
    again = settings_for(tmp_path / "again" / "data")
    assert generate(again, **{**TWIN, "trades": 3_000}, defects=wanted).defects == manifest.defects
    assert hashes(again) == hashes(settings)


def test_base_kinds_on_a_shorts_session_pick_from_both_sides(tmp_path, twin):
    bad = settings_for(tmp_path / "data")
    manifest = generate(bad, **TWIN, defects={"opening_leg_with_pnl": 12, "unlinked_closes": 12, "unlinked_closes:long": 3})
    rows = trade_rows(twin)
    openings = [rows[k["trade_id"]] for k in manifest.defects["opening_leg_with_pnl"]]
    assert all(r[7] == 0 for r in openings) and {r[2] for r in openings} == {"BUY", "SELL"}
    closes = [rows[k["trade_id"]] for k in manifest.defects["unlinked_closes"]]
    assert len(closes) == 15 and all(r[7] == 1 for r in closes) and {r[2] for r in closes} == {"BUY", "SELL"}


def test_unsplit_flips_appends_one_row_flips_where_the_session_has_none(tmp_path):
    """A long-only session has no flip to merge: a one-row flip is appended through the core instead."""
    settings = settings_for(tmp_path / "data")
    manifest = generate(settings, trades=400, tickers=6, seed=2, defects={"unsplit_flips": 2})
    ref, rows = oracle(settings)[0], trade_rows(settings)
    for k in manifest.defects["unsplit_flips"]:
        assert ref.sells[k["trade_id"]].shortfall > 0 and ref.lots[k["trade_id"]].side == "short"
    # apart from being one row, the ledger is what the core says: positions per side, closed lots, cash
    stored = {(r[0], r[1]): r[2] for r in query(settings, "positions", "SELECT ticker, side, quantity FROM positions")}
    want = {**{(t, "long"): p.quantity for t, p in ref.positions.items()},
            **{(t, "short"): p.quantity for t, p in ref.short_positions.items()}}
    assert set(stored) == set(want) and all(abs(stored[k] - float(want[k])) <= QTY_TOL for k in stored)
    closed = {r[0] for r in query(settings, "positions", "SELECT entry_trade_id FROM closed_positions")}
    assert closed == {t for t, lot in ref.lots.items() if lot.status == "CLOSED"}
    (start, cash), = query(settings, "trading", "SELECT starting_capital, cash_balance FROM account")
    adjustments = [r[0] for r in query(settings, "trading", "SELECT amount FROM account_adjustments")]
    assert cash == pytest.approx(float(cash_formula(start, adjustments, [(r[2], r[3], r[4], r[5]) for r in rows.values()])),
                                 abs=1e-6)


def test_inject_defects_on_a_shorts_session_is_all_or_nothing(twin, tmp_path):
    settings = settings_for(tmp_path / "data")
    generate(settings, **TWIN)
    before = hashes(settings)
    with pytest.raises(UsageError, match="cannot inject 500 close_flag_mismatch defect"):
        inject_defects(settings, {"unlinked_closes:short": 2, "close_flag_mismatch:short": 500})
    assert hashes(settings) == before


# -- the CLI and the tradestore scenario ----------------------------------------------------------------

def run_fixtures(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fixtures", *args], cwd=REPO, capture_output=True, text=True, timeout=180)


def test_cli_generates_a_shorts_session_with_short_side_defects(tmp_path):
    directory = tmp_path / "data"
    result = run_fixtures("generate", "--data-dir", str(directory), "--trades", "600", "--tickers", "5", "--seed", "3",
                          "--short-share", "0.35", "--flip-share", "0.1", "--universe", "crypto",
                          "--defect", "unlinked_closes:short=2", "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["options"] == {"short_share": 0.35, "flip_share": 0.1, "universe": "crypto"}
    assert manifest["requested"] == {"unlinked_closes:short": 2} and len(manifest["defects"]["unlinked_closes"]) == 2
    library = settings_for(tmp_path / "lib" / "data")
    same = generate(library, trades=600, tickers=5, seed=3, universe="crypto", defects={"unlinked_closes:short": 2},
                    **SHORTS)
    assert same.defects == manifest["defects"] and hashes(library) == hashes(settings_for(directory))


def test_the_scenario_help_names_every_scenario():
    result = run_fixtures("scenario", "--help")
    assert result.returncode == 0
    for name in SCENARIOS:
        assert f"\n  {name} " in result.stdout
    assert "funding" in result.stdout and "TP/SL/trailing/manual/signal" in result.stdout


def test_the_tradestore_scenario(tmp_path):
    directory = tmp_path / "data"
    result = run_fixtures("scenario", "tradestore", "--data-dir", str(directory), "--json")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["defects"] == {} and manifest["trades"] == 2_000
    settings = settings_for(directory)
    ref, rows = assert_agrees_with_the_oracle(settings)
    counts = defaultdict(int)
    for row in rows.values():
        counts[row[1]] += 1
    assert set(counts) == set(TRADESTORE_SYMBOLS) and max(counts, key=counts.get) == "BTCUSDT"
    assert {row[13] for row in rows.values()} == {"tradestore-2"}
    # long and short, flips as two trades, fractional BTC, fees as commission
    assert {lot.side for lot in ref.lots.values() if lot.ticker == "BTCUSDT"} == {"long", "short"}
    assert len(flip_pairs(settings)) == manifest["summary"]["flips"] > 10
    btc = [row[3] for row in rows.values() if row[1] == "BTCUSDT"]
    assert all(0 < q < 1 for q in btc) and any(q < 0.001 and q != round(q, 6) for q in btc)
    assert all(row[5] > 0 for row in rows.values())
    # funding fees as labelled adjustments; the bot's exit reasons
    funding = query(settings, "trading", "SELECT reason FROM account_adjustments WHERE reason LIKE 'funding: %'")
    assert len(funding) > 100 and any(r[0].startswith("funding: BTCUSDT ") for r in funding)
    reasons = {r[0] for r in query(settings, "positions", "SELECT DISTINCT exit_reason FROM closed_positions")}
    assert reasons == {"TP", "SL", "trailing", "manual", "signal"}
    # stops and targets on the right side of each open position, a trailing stop, the bot's metadata
    for side, entry, stop, target, trail, metadata in query(settings, "positions", "SELECT side, entry_price, "
                                                            "stop_loss_price, take_profit_price, trail_percent, metadata "
                                                            "FROM positions"):
        assert (stop < entry < target) if side == "long" else (target < entry < stop)
        assert trail == 1.5 and json.loads(metadata)["leverage"] in (5, 10, 20)
    assert all(grammar(settings).accepts(s) for s in TRADESTORE_SYMBOLS)
