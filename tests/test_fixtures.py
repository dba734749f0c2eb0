"""Session fixtures (toolkit.fixtures): determinism, a clean session that satisfies every SPEC §3
invariant (checked independently), exact defect injection, and the `python -m fixtures` CLI."""
from __future__ import annotations

import ast
import json
import math
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from fifo_reference import QTY_TOL, audit, cash_formula, connect_ro, fifo, key, read_trades, stored_matches
from toolkit.config import load_settings
from toolkit.db import content_hash
from toolkit.domain import average_reward
from toolkit.errors import UnknownNameError, UsageError
from toolkit.fixtures import DEFECT_KINDS, Manifest, generate, inject_defects
from toolkit.migrate.verify import verify
from toolkit.content import load_migrations

REPO = Path(__file__).resolve().parents[1]
DATABASES = ("positions", "trading", "ml_training")


def settings_for(directory: Path):
    return load_settings(directory, cwd=directory.parent, env={}, busy_timeout=2.0)


def hashes(settings) -> dict[str, str]:
    result = {}
    for name in DATABASES:
        conn = connect_ro(settings.path(name))
        try:
            result[name] = content_hash(conn)
        finally:
            conn.close()
    return result


def query(settings, database: str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = connect_ro(settings.path(database))
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def db_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.db")) if directory.exists() else []


# -- determinism -----------------------------------------------------------------------------------

def test_same_seed_same_content_different_seed_different_content(tmp_path):
    first, second, other = (settings_for(tmp_path / n / "data") for n in ("a", "b", "c"))
    m1 = generate(first, trades=500, tickers=10, seed=7)
    m2 = generate(second, trades=500, tickers=10, seed=7)
    m3 = generate(other, trades=500, tickers=10, seed=8)
    h1, h2, h3 = hashes(first), hashes(second), hashes(other)
    assert h1 == h2
    assert all(h1[name] != h3[name] for name in DATABASES)
    assert m1.summary == m2.summary and m1.summary != m3.summary
    assert (m1.trades, m1.tickers, m1.seed, m1.defects) == (500, 10, 7, {})


def test_generating_into_a_used_data_dir_is_refused(tmp_path):
    settings = settings_for(tmp_path / "data")
    generate(settings, trades=50, tickers=3, seed=1)
    before = hashes(settings)
    with pytest.raises(ValueError, match="already holds a session"):
        generate(settings, trades=50, tickers=3, seed=1)
    assert hashes(settings) == before


# -- a clean session satisfies every invariant -----------------------------------------------------

@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    settings = settings_for(tmp_path_factory.mktemp("clean") / "data")
    manifest = generate(settings, trades=3_000, tickers=40, seed=5)
    return settings, manifest


@pytest.fixture(scope="module")
def ledger(clean):
    settings, _ = clean
    conn = connect_ro(settings.path("trading"))
    try:
        trades = read_trades(conn)
        rows = {r[0]: r for r in conn.execute(
            "SELECT trade_id, ticker, action, quantity, price, commission, executed_at, is_close, entry_trade_id, "
            "realized_pnl, status, exit_price, exit_time, run_id, order_id FROM trades")}
        matches = stored_matches(conn)
    finally:
        conn.close()
    return fifo(trades), rows, matches


def test_clean_session_size_and_summary(clean, ledger):
    settings, manifest = clean
    ref, rows, matches = ledger
    s = manifest.summary
    assert len(rows) == s["trades"] == 3_000
    assert s["buys"] == sum(1 for r in rows.values() if r[2] == "BUY") and s["buys"] + s["sells"] == 3_000
    assert len({r[1] for r in rows.values()}) == 40
    assert s["lot_matches"] == sum(len(m) for m in matches.values())
    assert s["open_positions"] == len(ref.positions)
    # a realistic session: several lots per ticker, SELLs across lots, partial and exact closes,
    # same-second trades, fractional quantities
    assert any(len(m) > 1 for m in matches.values())
    assert any(lot.status == "OPEN" and lot.remaining < lot.quantity for lot in ref.lots.values())
    assert len({r[6] for r in rows.values()}) < len(rows)
    assert any(r[3] != int(r[3]) for r in rows.values())
    assert {r[13] for r in rows.values()} == {"session-5"}


def test_clean_session_every_sell_is_fifo(ledger):
    ref, rows, matches = ledger
    sells = [r for r in rows.values() if r[2] == "SELL"]
    assert sells
    for trade_id, ticker, _, quantity, price, _, executed_at, is_close, entry, pnl, status, exit_price, exit_time, *_ \
            in sells:
        want = ref.sells[trade_id]
        assert want.shortfall == 0                                  # nothing oversold
        # stored lot_matches, in FIFO order of their entry lots, equal the independent FIFO's
        got = sorted(matches[trade_id], key=lambda m: (rows[m[0]][6], m[0]))
        assert [m[0] for m in got] == [m.entry_trade_id for m in want.matches]
        for g, w in zip(got, want.matches):
            assert abs(g[1] - float(w.quantity)) <= QTY_TOL
            assert (g[2], g[3], g[5]) == (float(w.entry_price), float(w.exit_price), w.matched_at)
            assert g[4] == pytest.approx(float(w.realized_pnl), abs=1e-9, rel=0)
            assert rows[g[0]][1] == ticker and rows[g[0]][2] == "BUY"
        assert pnl == pytest.approx(math.fsum(m[4] for m in got), abs=1e-9, rel=0)     # Σ matches
        assert pnl == pytest.approx(float(want.realized_pnl), abs=1e-9, rel=0)
        assert entry == want.entry_trade_id == got[0][0]                                 # the first lot
        assert abs(math.fsum(m[1] for m in got) - quantity) <= QTY_TOL
        assert (is_close, status, exit_price, exit_time) == (1, "CLOSED", price, executed_at)


def test_clean_session_every_lot_is_consistent(clean, ledger):
    settings, _ = clean
    ref, rows, _ = ledger
    buys = [r for r in rows.values() if r[2] == "BUY"]
    for trade_id, _, _, _, _, _, _, is_close, entry, pnl, status, exit_price, exit_time, *_ in buys:
        lot = ref.lots[trade_id]
        assert (is_close, entry, pnl) == (0, None, None)            # an opening leg carries no P&L
        assert status == lot.status and exit_time == lot.exit_time
        if lot.status == "OPEN":
            assert exit_price is None
        else:
            assert math.isclose(exit_price, float(lot.exit_price), rel_tol=1e-9)
    # one closed_positions row per CLOSED lot, with its weighted exit price and its P&L
    closed = {r[0]: r[1:] for r in query(settings, "positions",
                                         "SELECT entry_trade_id, quantity, exit_price, realized_pnl, closed_at FROM closed_positions")}
    assert set(closed) == {t for t, lot in ref.lots.items() if lot.status == "CLOSED"}
    for trade_id, (quantity, exit_price, pnl, closed_at) in closed.items():
        lot = ref.lots[trade_id]
        assert abs(quantity - float(lot.quantity)) <= QTY_TOL and closed_at == lot.exit_time
        assert math.isclose(exit_price, float(lot.exit_price), rel_tol=1e-9)
        assert pnl == pytest.approx(float(sum(m.realized_pnl for m in lot.matches)), abs=1e-9, rel=0)


def test_clean_session_cash_and_positions(clean, ledger):
    settings, manifest = clean
    ref, _, _ = ledger
    conn = connect_ro(settings.path("trading"))
    try:
        start, cash = conn.execute("SELECT starting_capital, cash_balance FROM account").fetchone()
        adjustments = [r[0] for r in conn.execute("SELECT amount FROM account_adjustments")]
        expected = cash_formula(start, adjustments, conn.execute("SELECT action, quantity, price, commission FROM trades"))
    finally:
        conn.close()
    assert len(adjustments) == 2                                   # a deposit and a withdrawal
    assert cash == pytest.approx(float(expected), abs=1e-6, rel=0)
    assert manifest.summary["cash_balance"] == cash
    stored = {r[0]: r[1:] for r in query(settings, "positions",
                                         "SELECT ticker, side, quantity, entry_price, opened_at FROM positions")}
    assert set(stored) == set(ref.positions)
    for ticker, position in ref.positions.items():
        side, quantity, entry_price, opened_at = stored[ticker]
        assert side == "long" and abs(quantity - float(position.quantity)) <= QTY_TOL
        assert math.isclose(entry_price, float(position.entry_price), rel_tol=1e-9)
        assert opened_at == position.opened_at
    for ticker in ref.bought:                                      # quantity conserved per ticker
        open_ = ref.positions[ticker].quantity if ticker in ref.positions else 0
        assert ref.bought[ticker] == ref.sold[ticker] + open_


def test_clean_session_orders_fills_snapshots(clean, ledger):
    settings, _ = clean
    _, rows, _ = ledger
    stats = query(settings, "trading", "SELECT order_id, ticker, side, quantity, status, filled_quantity, "
                  "filled_avg_price, fill_count, fills_quantity, fills_avg_price FROM v_order_fill_stats")
    assert len(stats) == len(rows)
    by_order = {r[14]: r for r in rows.values()}
    assert any(s[7] > 1 for s in stats)                             # some orders filled in pieces
    for order_id, ticker, side, quantity, status, filled_qty, filled_avg, count, fills_qty, fills_avg in stats:
        trade = by_order[order_id]
        assert (ticker, side, quantity, status) == (trade[1], trade[2].lower(), trade[3], "filled")
        assert count >= 1
        assert abs(fills_qty - quantity) <= QTY_TOL and abs(filled_qty - quantity) <= QTY_TOL
        assert math.isclose(fills_avg, trade[4], rel_tol=1e-9) and math.isclose(filled_avg, trade[4], rel_tol=1e-9)
    snapshots = query(settings, "trading", "SELECT total_equity, cash_balance, long_market_value, short_market_value "
                      "FROM portfolio_snapshots")
    assert snapshots
    for equity, cash, long_value, short_value in snapshots:
        assert equity == pytest.approx(cash + long_value - short_value, abs=1e-6, rel=0)


def test_clean_session_ml_training(clean):
    settings, _ = clean
    sums = defaultdict(float)
    for ensemble_id, weight in query(settings, "ml_training",
                                     "SELECT ensemble_id, weight FROM ensemble_weights WHERE is_active = 1"):
        sums[ensemble_id] += weight
    assert sums and all(abs(total - 1.0) <= 1e-9 for total in sums.values())
    models = query(settings, "ml_training", "SELECT model_id, hyperparameters, q_table FROM rl_model_states")
    assert models
    for _, hyper, q_table in models:
        h = json.loads(hyper)
        assert h["avg_reward"] == average_reward(h["total_rewards"], h["total_episodes"])
        assert h["avg_reward"] == round(h["total_rewards"] / h["total_episodes"], 4)
        for state in json.loads(q_table):
            assert isinstance(ast.literal_eval(state), tuple)       # keys are state-tuple literals
    runs = {r[0] for r in query(settings, "ml_training", "SELECT run_id FROM training_runs")}
    for table in ("agent_performance", "hyperparameters", "training_episodes", "ensemble_weights"):
        assert {r[0] for r in query(settings, "ml_training", f"SELECT run_id FROM {table}")} <= runs


def test_clean_session_files_are_sound_and_verify_clean(clean, cli):
    settings, _ = clean
    for name in DATABASES:
        conn = connect_ro(settings.path(name))
        try:
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()
    report = verify(settings, migrations=load_migrations(settings))
    assert report.ok, report.findings
    result = cli("migrate", "--data-dir", str(settings.data_dir), "verify", cwd=settings.data_dir.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_clean_session_passes_the_independent_audit(clean):
    settings, _ = clean
    assert audit(settings.data_dir, tolerance=1e-6) == {}


# -- defect injection ------------------------------------------------------------------------------

SEED = 11
#: rule -> (count, trades): small sessions; snapshots need a few days of trading
COUNTS = {rule: (3, 600) for rule in DEFECT_KINDS if rule != "sqlite_quick_check"}
COUNTS["bankroll_mismatch"] = (1, 600)
COUNTS["position_ledger_mismatch"] = (4, 600)      # 3 changed rows + 1 orphaned row
COUNTS["snapshot_equity_mismatch"] = (3, 7_000)
#: rules whose corruption must also be reported by another rule
ALSO = {"ml_orphan_rows": {"foreign_key_violations"}}


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Clean sessions by size, generated once: the twin of every defective session of that size."""
    made = {}

    def twin(trades: int):
        if trades not in made:
            settings = settings_for(tmp_path_factory.mktemp(f"twin{trades}") / "data")
            generate(settings, trades=trades, tickers=12, seed=SEED)
            made[trades] = settings
        return made[trades]

    return twin


def _trade(settings, trade_id, columns="*"):
    found = query(settings, "trading", f"SELECT {columns} FROM trades WHERE trade_id = ?", (trade_id,))
    return found[0] if found else None


def _check_orphaned_sells(clean, bad, keys):
    ref = fifo(query(bad, "trading", "SELECT ticker, trade_id, action, quantity, price, executed_at FROM trades"))
    for k in keys:
        assert _trade(clean, k["trade_id"]) is None                 # appended
        assert _trade(bad, k["trade_id"], "action")[0] == "SELL"
        assert ref.sells[k["trade_id"]].shortfall > 0               # more than was held


def _check_unlinked_closes(clean, bad, keys):
    for k in keys:
        tid = k["trade_id"]
        before = _trade(clean, tid, "entry_trade_id")[0]
        after = _trade(bad, tid, "entry_trade_id, ticker, executed_at")
        links = query(bad, "trading", "SELECT count(*) FROM lot_matches WHERE close_trade_id = ?", (tid,))[0][0]
        assert before is not None
        entry = _trade(bad, after[0], "action, ticker, executed_at, trade_id") if after[0] is not None else None
        assert (after[0] is None or links == 0 or entry[0] != "BUY" or entry[1] != after[1]
                or (entry[2], entry[3]) > (after[2], tid)), (k, after, entry, links)


def _check_bankroll_mismatch(clean, bad, keys):
    assert keys == [{"account_id": 1}]
    (c,), (b,) = (query(s, "trading", "SELECT cash_balance FROM account")[0] for s in (clean, bad))
    assert 250 <= b - c <= 1_000


def _check_opening_leg_with_pnl(clean, bad, keys):
    for k in keys:
        assert _trade(clean, k["trade_id"], "action, realized_pnl") == ("BUY", None)
        assert _trade(bad, k["trade_id"], "realized_pnl")[0] is not None


def _check_realized_pnl_mismatch(clean, bad, keys):
    assert sum("trade_id" in k for k in keys) == 2 and sum("close_trade_id" in k for k in keys) == 1
    for k in keys:
        if "trade_id" in k:
            sql, params = "SELECT realized_pnl FROM trades WHERE trade_id = ?", (k["trade_id"],)
        else:
            sql = "SELECT realized_pnl FROM lot_matches WHERE close_trade_id = ? AND entry_trade_id = ?"
            params = (k["close_trade_id"], k["entry_trade_id"])
        (c,), (b,) = (query(s, "trading", sql, params)[0] for s in (clean, bad))
        assert abs(c) > 0.05 and b == -c                            # the sign bug


def _check_lot_status_inconsistent(clean, bad, keys):
    for k in keys:
        cols = "status, exit_price, exit_time"
        assert _trade(clean, k["trade_id"], "action")[0] == "BUY"
        assert _trade(clean, k["trade_id"], cols) != _trade(bad, k["trade_id"], cols)


def _check_position_ledger_mismatch(clean, bad, keys):
    changed = orphaned = 0
    for k in keys:
        sql = "SELECT quantity, entry_price FROM positions WHERE ticker = ?"
        c, b = (query(s, "positions", sql, (k["ticker"],)) for s in (clean, bad))
        assert c != b
        if not c:
            orphaned += 1
            assert not query(bad, "trading", "SELECT 1 FROM trades WHERE ticker = ? AND action = 'BUY' "
                             "AND status = 'OPEN'", (k["ticker"],))
        else:
            changed += 1
    assert (changed, orphaned) == (3, 1)


def _check_closed_position_mismatch(clean, bad, keys):
    kinds = []
    for k in keys:
        sql = "SELECT quantity, exit_price, realized_pnl FROM closed_positions WHERE entry_trade_id = ?"
        c, b = (query(s, "positions", sql, (k["entry_trade_id"],)) for s in (clean, bad))
        assert c != b
        kinds.append("orphaned" if not c else "deleted" if not b else "changed")
        if not c:   # an open lot recorded as closed
            assert _trade(bad, k["entry_trade_id"], "action, status") == ("BUY", "OPEN")
    assert sorted(kinds) == ["changed", "deleted", "orphaned"]


def _check_trade_row_invalid(clean, bad, keys):
    for k in keys:
        assert _trade(clean, k["trade_id"], "run_id")[0] == f"session-{SEED}"
        run_id = _trade(bad, k["trade_id"], "run_id")[0]
        assert run_id is None or not run_id.strip()


def _check_order_fill_mismatch(clean, bad, keys):
    for k in keys:
        sql = "SELECT status, filled_quantity, filled_avg_price FROM orders WHERE order_id = ?"
        assert query(clean, "trading", sql, (k["order_id"],)) != query(bad, "trading", sql, (k["order_id"],))


def _check_snapshot_equity_mismatch(clean, bad, keys):
    for k in keys:
        sql = "SELECT total_equity FROM portfolio_snapshots WHERE snapshot_id = ?"
        (c,), (b,) = (query(s, "trading", sql, (k["snapshot_id"],))[0] for s in (clean, bad))
        assert 500 <= b - c <= 1_000


def _check_ml_orphan_rows(clean, bad, keys):
    runs = {r[0] for r in query(bad, "ml_training", "SELECT run_id FROM training_runs")}
    for k in keys:
        sql = f"SELECT run_id FROM {k['table']} WHERE rowid = ?"
        assert query(clean, "ml_training", sql, (k["id"],)) == []
        (run_id,), = query(bad, "ml_training", sql, (k["id"],))
        assert run_id not in runs


def _check_ensemble_weights_sum(clean, bad, keys):
    sql = "SELECT sum(weight) FROM ensemble_weights WHERE is_active = 1 AND ensemble_id = ?"
    for k in keys:
        (c,), (b,) = (query(s, "ml_training", sql, (k["ensemble_id"],))[0] for s in (clean, bad))
        assert abs(c - 1.0) <= 1e-9 and abs(abs(b - 1.0) - 0.15) <= 1e-9


def _check_rl_state_missing_avg_reward(clean, bad, keys):
    sql = "SELECT hyperparameters FROM rl_model_states WHERE model_id = ?"
    for k in keys:
        (c,), (b,) = (query(s, "ml_training", sql, (k["model_id"],))[0] for s in (clean, bad))
        c, b = json.loads(c), json.loads(b)
        assert c["avg_reward"] == average_reward(c["total_rewards"], c["total_episodes"])
        assert b.get("avg_reward") != average_reward(b["total_rewards"], b["total_episodes"])


def _check_qtable_unsafe_keys(clean, bad, keys):
    sql = "SELECT q_table FROM rl_model_states WHERE model_id = ?"
    for k in keys:
        (c,), (b,) = (query(s, "ml_training", sql, (k["model_id"],))[0] for s in (clean, bad))
        assert k["state"] not in json.loads(c) and k["state"] in json.loads(b)
        with pytest.raises((ValueError, SyntaxError)):
            ast.literal_eval(k["state"])                            # not a literal (never evaluated)


def _check_foreign_key_violations(clean, bad, keys):
    conn = connect_ro(bad.path("trading"))
    try:
        violations = {(r[0], r[1], r[2]) for r in conn.execute("PRAGMA foreign_key_check")}
    finally:
        conn.close()
    for k in keys:
        assert k["database"] == "trading" and (k["table"], k["rowid"], k["parent"]) in violations
        assert _trade(clean, k["rowid"], "order_id") != _trade(bad, k["rowid"], "order_id")


def _check_schema_drift(clean, bad, keys):
    for k in keys:
        kind, name = k["object"].split(" ", 1)
        sql = "SELECT type FROM sqlite_master WHERE name = ?"
        assert query(clean, k["database"], sql, (name,)) == []
        assert query(bad, k["database"], sql, (name,)) == [(kind,)]
    assert {k["database"] for k in keys} == set(DATABASES)


CHECKS = {name[len("_check_"):]: fn for name, fn in globals().items() if name.startswith("_check_")}


def test_every_injectable_rule_has_a_check():
    assert set(CHECKS) == set(DEFECT_KINDS) - {"sqlite_quick_check"} == set(COUNTS)


@pytest.mark.parametrize("rule", sorted(COUNTS))
def test_injected_defects_are_exact_distinct_and_real(rule, twins, tmp_path):
    count, trades = COUNTS[rule]
    clean = twins(trades)
    bad = settings_for(tmp_path / "data")
    manifest = generate(bad, trades=trades, tickers=12, seed=SEED, defects={rule: count})
    assert manifest.requested == {rule: count}
    assert set(manifest.defects) == {rule} | ALSO.get(rule, set())
    keys = manifest.defects[rule]
    assert len(keys) == count
    assert len({key(k) for k in keys}) == count == len(manifest.expected(rule))
    for other in ALSO.get(rule, ()):
        assert len(manifest.defects[other]) == count
    CHECKS[rule](clean, bad, keys)
    # the corruption is exactly what the manifest says: an independent audit sees these keys and
    # nothing else (schema drift is outside what the audit reads)
    if rule != "schema_drift":
        assert audit(bad.data_dir) == {r: {key(k) for k in ks} for r, ks in manifest.defects.items()}
    else:
        assert audit(bad.data_dir) == {}
    # nothing outside the victims changed in the files the rule does not touch
    touched = {"ml_orphan_rows": {"ml_training"}, "ensemble_weights_sum": {"ml_training"},
               "rl_state_missing_avg_reward": {"ml_training"}, "qtable_unsafe_keys": {"ml_training"},
               "schema_drift": set(DATABASES), "position_ledger_mismatch": {"positions"},
               "closed_position_mismatch": {"positions"},
               "orphaned_sells": {"trading", "positions"}}.get(rule, {"trading"})
    clean_hashes, bad_hashes = hashes(clean), hashes(bad)
    for name in DATABASES:
        assert (clean_hashes[name] == bad_hashes[name]) == (name not in touched), name


def test_all_defects_at_once_match_an_independent_audit(tmp_path):
    settings = settings_for(tmp_path / "data")
    wanted = {rule: count for rule, (count, _) in COUNTS.items()}
    manifest = generate(settings, trades=7_000, tickers=25, seed=3, defects=wanted)
    expected = {r: {key(k) for k in ks} for r, ks in manifest.defects.items() if r != "schema_drift"}
    assert audit(settings.data_dir) == expected
    for rule, count in wanted.items():
        if rule != "foreign_key_violations":
            assert len(manifest.defects[rule]) == count
    # no victim was used twice: ml_orphan_rows' extra foreign-key keys are the only overlap
    assert len(manifest.defects["foreign_key_violations"]) == wanted["foreign_key_violations"] + wanted["ml_orphan_rows"]
    trade_victims = [k.get("trade_id", k.get("close_trade_id", k.get("rowid")))
                     for rule in ("orphaned_sells", "unlinked_closes", "opening_leg_with_pnl", "realized_pnl_mismatch",
                                  "lot_status_inconsistent", "trade_row_invalid")
                     for k in manifest.defects[rule]]
    trade_victims += [k["rowid"] for k in manifest.defects["foreign_key_violations"] if k["table"] == "trades"]
    assert len(trade_victims) == len(set(trade_victims))


@pytest.mark.parametrize("rule", sorted(COUNTS))
def test_a_single_defect_is_a_single_row(rule, tmp_path):
    settings = settings_for(tmp_path / "data")
    manifest = generate(settings, trades=600, tickers=12, seed=SEED + 1, defects={rule: 1})
    assert len(manifest.defects[rule]) == 1
    if rule != "schema_drift":
        assert audit(settings.data_dir) == {r: {key(k) for k in ks} for r, ks in manifest.defects.items()}


def test_sqlite_quick_check_damages_ml_training_only(tmp_path, twins):
    bad = settings_for(tmp_path / "data")
    manifest = generate(bad, trades=600, tickers=12, seed=SEED, defects={"sqlite_quick_check": 1})
    assert manifest.defects == {"sqlite_quick_check": [{"database": "ml_training"}]}

    def quick_check(settings, name):
        conn = sqlite3.connect(settings.path(name))
        try:
            return [r[0] for r in conn.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            return [f"error: {exc}"]
        finally:
            conn.close()

    assert quick_check(bad, "ml_training") != ["ok"]
    assert quick_check(bad, "trading") == ["ok"] and quick_check(bad, "positions") == ["ok"]
    assert quick_check(twins(600), "ml_training") == ["ok"]


def test_injection_is_deterministic(tmp_path):
    wanted = {"unlinked_closes": 3, "opening_leg_with_pnl": 2, "realized_pnl_mismatch": 3, "ml_orphan_rows": 2}
    runs = []
    for name, seed in (("a", 4), ("b", 4), ("c", 9)):
        settings = settings_for(tmp_path / name / "data")
        runs.append((generate(settings, trades=600, tickers=12, seed=seed, defects=wanted), hashes(settings)))
    (m1, h1), (m2, h2), (m3, _) = runs
    assert m1.defects == m2.defects and h1 == h2
    assert m1.defects != m3.defects


def test_unknown_rule_is_refused_with_a_suggestion_before_anything_is_written(tmp_path):
    settings = settings_for(tmp_path / "data")
    with pytest.raises(UnknownNameError) as info:
        generate(settings, trades=50, tickers=3, seed=1, defects={"unlinked_close": 1})
    assert info.value.suggestions and info.value.suggestions[0] == "unlinked_closes"
    assert "unknown defect rule 'unlinked_close'; did you mean 'unlinked_closes'" in str(info.value)
    assert db_files(settings.data_dir) == []


@pytest.mark.parametrize("defects, message", [
    ({"bankroll_mismatch": 2}, "the ledger has one account row"),
    ({"sqlite_quick_check": 4}, "there are 3 database files"),
    ({"unlinked_closes": -1}, "must be a whole number >= 0"),
    ({"unlinked_closes": 1.5}, "must be a whole number >= 0"),
])
def test_impossible_requests_are_usage_errors_and_write_nothing(tmp_path, defects, message):
    settings = settings_for(tmp_path / "data")
    with pytest.raises(UsageError, match=message):
        generate(settings, trades=50, tickers=3, seed=1, defects=defects)
    assert db_files(settings.data_dir) == []


def test_inject_defects_refuses_unknown_rules_and_a_shortage(tmp_path):
    settings = settings_for(tmp_path / "data")
    generate(settings, trades=60, tickers=3, seed=2)
    before = hashes(settings)
    with pytest.raises(UnknownNameError):
        inject_defects(settings, {"bogus": 1})
    with pytest.raises(UsageError, match="cannot inject 50 snapshot_equity_mismatch defect"):
        inject_defects(settings, {"opening_leg_with_pnl": 1, "snapshot_equity_mismatch": 50})
    assert hashes(settings) == before                              # all or nothing
    assert inject_defects(settings, {"unlinked_closes": 0}) == {}
    assert hashes(settings) == before


def test_manifest_round_trip_and_fingerprints(tmp_path):
    settings = settings_for(tmp_path / "data")
    manifest = generate(settings, trades=300, tickers=5, seed=2, defects={"opening_leg_with_pnl": 2})
    path = tmp_path / "manifest.json"
    manifest.save(path)
    loaded = Manifest.load(path)
    assert loaded == manifest
    assert loaded.expected("opening_leg_with_pnl") == {
        "opening_leg_with_pnl:" + key(k) for k in manifest.defects["opening_leg_with_pnl"]}
    assert loaded.expected("bankroll_mismatch") == set()


# -- the CLI ---------------------------------------------------------------------------------------

def run_fixtures(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fixtures", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_cli_generates_with_defects_as_json(tmp_path):
    directory = tmp_path / "data"
    result = run_fixtures("generate", "--data-dir", str(directory), "--trades", "500", "--tickers", "10",
                          "--seed", "1", "--defect", "unlinked_closes=2", "--json")
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert (manifest["trades"], manifest["tickers"], manifest["seed"]) == (500, 10, 1)
    assert manifest["requested"] == {"unlinked_closes": 2}
    assert list(manifest["defects"]) == ["unlinked_closes"] and len(manifest["defects"]["unlinked_closes"]) == 2
    assert manifest["summary"]["trades"] == 500
    assert db_files(directory) == ["migrations.db", "ml_training.db", "positions.db", "trading.db"]
    assert audit(directory) == {"unlinked_closes": {key(k) for k in manifest["defects"]["unlinked_closes"]}}
    # the CLI and the library give the same session
    library = settings_for(tmp_path / "lib" / "data")
    same = generate(library, trades=500, tickers=10, seed=1, defects={"unlinked_closes": 2})
    assert same.defects == manifest["defects"] and hashes(library) == hashes(settings_for(directory))


def test_cli_unknown_defect_exits_2_with_one_line(tmp_path):
    directory = tmp_path / "data"
    result = run_fixtures("generate", "--data-dir", str(directory), "--trades", "50", "--defect", "bogus=1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "bogus" in lines[0] and lines[0].startswith("error:")
    assert result.stdout == ""
    assert db_files(directory) == []


def test_cli_lists_defect_kinds():
    result = run_fixtures("defects")
    assert result.returncode == 0
    assert tuple(result.stdout.split()) == DEFECT_KINDS
