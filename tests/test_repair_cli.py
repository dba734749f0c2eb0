"""`integrity repair`, `repair undo`, `repair log` and `integrity demo` as real subprocesses.

The plan output (rows before -> after, rows inserted and deleted, rows left alone and why), the
confirmation, exit codes and one-line errors for bad input (an unknown or already undone run, an undo
of rows changed since, another toolkit process holding the data directory, another connection holding
trading.db's write lock), and that every refusal changed nothing. Every test works on its own copy of
one generated session.
"""
from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dbstate import content_hashes as content
from dbstate import query, tables
from toolkit.config import Settings, load_settings
from toolkit.fixtures import generate
from toolkit.repair.apply import apply_repairs
from toolkit.rules import run_checks
from toolkit.content import load_registry

REGISTRY = load_registry(plugins=False)

#: Repairable defects of every kind, plus two without an automatic repair. Four unlinked closes and
#: four position mismatches reach every variant: a missing lot_matches row (an insert) and a position
#: of a ticker without open lots (a delete).
DEFECTS = {
    "unlinked_closes": 4, "realized_pnl_mismatch": 2, "lot_status_inconsistent": 2, "position_ledger_mismatch": 4,
    "bankroll_mismatch": 1, "opening_leg_with_pnl": 2, "order_fill_mismatch": 2, "rl_state_missing_avg_reward": 2,
    "unsplit_flips": 1, "qtable_unsafe_keys": 1,
}
NOT_REPAIRABLE = {"unsplit_flips", "qtable_unsafe_keys"}


# -- helpers -----------------------------------------------------------------------------------------

def _settings(data_dir: Path) -> Settings:
    return load_settings(data_dir, cwd=data_dir.parent, env={}, busy_timeout=2.0, lock_timeout=5.0)


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def one_error(result: subprocess.CompletedProcess) -> str:
    """A refusal is exactly one line on stderr, and no traceback."""
    found = errors(result.stderr)
    assert len(found) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return found[0]


def integrity(cli, settings: Settings, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return cli("integrity", "--data-dir", str(settings.data_dir), *args, **kwargs)


def repair_runs(settings: Settings) -> list[tuple]:
    return query(settings, "migrations", "SELECT run_id, kind, status, undone_by, undoes FROM repair_runs ORDER BY rowid")


# -- the session -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def template(tmp_path_factory):
    settings = _settings(tmp_path_factory.mktemp("template") / "data")
    manifest = generate(settings, trades=2_000, tickers=30, seed=31, defects=DEFECTS)
    return settings, manifest


@pytest.fixture
def session(template, tmp_path: Path):
    """A private copy of the generated session: (settings, manifest)."""
    source, manifest = template
    target = _settings(tmp_path / "data")
    shutil.copytree(source.data_dir, target.data_dir)
    return target, manifest


@pytest.fixture
def applied(session):
    """The session after a repair (library call): (settings, manifest, result, tables before it)."""
    settings, manifest = session
    before = tables(settings)
    result = apply_repairs(settings, registry=REGISTRY)
    assert result.applied_changes and not result.rolled_back
    return settings, manifest, result, before


# -- the plan ----------------------------------------------------------------------------------------

def _g(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else repr(value)


def test_the_plan_lists_changes_inserts_deletes_and_what_it_leaves_alone(session, cli) -> None:
    settings, manifest = session
    before = content(settings)
    result = integrity(cli, settings, "repair", "--sample", "100")
    assert result.returncode == 0, result.stderr
    out = result.stdout

    # rows changed, before -> after: an opening leg's P&L is cleared
    for key in manifest.defects["opening_leg_with_pnl"]:
        pnl = query(settings, "trading", "SELECT realized_pnl FROM trades WHERE trade_id = ?", (key["trade_id"],))[0][0]
        assert f"update trading.trades [trade_id={key['trade_id']}] realized_pnl: {_g(pnl)} -> None" in out
    # ... and the bankroll is set to the ledger's cash
    cash = query(settings, "trading", "SELECT cash_balance FROM account")[0][0]
    assert re.search(rf"update trading\.account \[account_id=1\] cash_balance: {re.escape(_g(cash))} -> [0-9.e+]+", out)
    # rows inserted: the lot matches of a close that lost them, and the position of a ticker that lost it
    unmatched = [k["trade_id"] for k in manifest.defects["unlinked_closes"]
                 if not query(settings, "trading", "SELECT 1 FROM lot_matches WHERE close_trade_id = ?", (k["trade_id"],))]
    assert unmatched
    for trade_id in unmatched:
        assert re.search(rf"insert trading\.lot_matches \[close_trade_id={trade_id}, entry_trade_id=\d+\] quantity=", out)
    held = {t for (t,) in query(settings, "positions", "SELECT ticker FROM positions")}
    position_keys = {k["ticker"] for k in manifest.defects["position_ledger_mismatch"]}
    assert position_keys - held
    for ticker in position_keys - held:
        assert f"insert positions.positions [ticker={ticker}, side=long] quantity=" in out
    # a row deleted (from the positions projection only), kept in the log
    assert re.search(r"delete positions\.positions \[ticker=\w+, side=long\] \(kept in the repair log\)", out)
    # rows it will not touch, and why
    for rule_id in NOT_REPAIRABLE:
        for key in manifest.defects[rule_id]:
            named = ", ".join(f"{k}={v}" for k, v in key.items())
            line = next((ln for ln in out.splitlines() if ln.strip().startswith(f"will not touch {named}:")), None)
            assert line is not None, f"the plan does not say it leaves {rule_id} {key} alone:\n{out}"
            assert "no automatic repair" in line and REGISTRY[rule_id].remedy[:30] in line
    assert re.search(r"plan: \d+ row change\(s\); nothing was changed", out)
    assert content(settings) == before


def test_the_json_plan_covers_exactly_the_injected_keys(session, cli) -> None:
    settings, manifest = session
    before = content(settings)
    result = integrity(cli, settings, "repair", "--format", "json", "--sample", "1000")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["schema_version"] >= 1
    rules = {r["id"]: r for r in plan["rules"]}

    def canon(key: dict) -> str:
        return json.dumps(key, sort_keys=True)

    for rule_id, keys in manifest.defects.items():
        entry = rules[rule_id]
        covered = {canon(s["repairs"]) for s in entry["samples"]} | {canon(u["key"]) for u in entry["untouched_samples"]}
        assert covered == {canon(k) for k in keys}, rule_id
        assert entry["violations"] == len(keys)
        if rule_id in NOT_REPAIRABLE:
            assert entry["status"] == "not repairable" and not entry["changes"]
            assert entry["untouched"] == len(keys)
            assert all(u["reason"].startswith("no automatic repair") for u in entry["untouched_samples"])
        else:
            assert entry["status"] == "planned" and entry["untouched"] == 0
    assert {r for r, e in rules.items() if e["status"] != "nothing"} == set(manifest.defects)
    assert content(settings) == before


# -- apply, log, undo --------------------------------------------------------------------------------

def test_apply_without_a_terminal_and_without_yes_is_refused(session, cli) -> None:
    settings, _ = session
    before = content(settings)
    result = integrity(cli, settings, "repair", "--apply", input="y\n")
    assert result.returncode == 2
    line = one_error(result)
    assert "refusing to continue without confirmation" in line and "--yes" in line
    assert "row change(s)" in line  # says what it would have done
    assert content(settings) == before
    assert repair_runs(settings) == []


def test_apply_log_and_undo_through_the_cli(session, cli) -> None:
    settings, manifest = session
    before = tables(settings)
    applied = integrity(cli, settings, "repair", "--apply", "--yes")
    assert applied.returncode == 0, applied.stderr
    assert re.search(r"repair (rep-\S+): \d+ row change\(s\) applied and verified", applied.stdout), applied.stdout
    run_id = re.search(r"undo with `integrity repair undo (rep-[^`]+)`", applied.stdout).group(1)
    assert re.search(r"backup: trading -> .*trading", applied.stderr)
    assert tables(settings) != before

    check = integrity(cli, settings, "check", "--format", "json")
    assert check.returncode == 1  # unsplit_flips and qtable_unsafe_keys need a person
    assert {r["id"] for r in json.loads(check.stdout)["rules"] if r["count"]} == NOT_REPAIRABLE

    log = integrity(cli, settings, "repair", "log")
    assert log.returncode == 0, log.stderr
    line = next(ln for ln in log.stdout.splitlines() if ln.startswith(run_id))
    assert " repair " in line and " applied" in line
    logged = json.loads(integrity(cli, settings, "repair", "log", "--json").stdout)
    assert [(r["run_id"], r["kind"], r["status"]) for r in logged] == [(run_id, "repair", "applied")]
    changes = logged[0]["changes"]
    assert changes == query(settings, "migrations", "SELECT count(*) FROM repair_log WHERE run_id = ?", (run_id,))[0][0] > 0

    undo = integrity(cli, settings, "repair", "undo", run_id, "--yes")
    assert undo.returncode == 0, undo.stderr
    assert f"undid {run_id}: {changes} row(s) restored" in undo.stdout
    assert tables(settings) == before

    log = json.loads(integrity(cli, settings, "repair", "log", "--json").stdout)
    runs = {r["run_id"]: r for r in log}
    undo_id = runs[run_id]["undone_by"]
    assert runs[run_id]["status"] == "undone" and runs[undo_id]["kind"] == "undo" and runs[undo_id]["undoes"] == run_id
    table = integrity(cli, settings, "repair", "log").stdout
    assert undo_id in table and "undone" in table


def test_undo_of_an_unknown_run_is_refused(applied, cli) -> None:
    settings, _, result, _ = applied
    before = content(settings)
    typo = result.run_id[:-1] + ("0" if result.run_id[-1] != "0" else "1")
    close = integrity(cli, settings, "repair", "undo", typo, "--yes")
    assert close.returncode == 2
    line = one_error(close)
    assert f"unknown repair run '{typo}'" in line and f"did you mean '{result.run_id}'" in line
    far = integrity(cli, settings, "repair", "undo", "nothing-like-it", "--yes")
    assert far.returncode == 2
    line = one_error(far)
    assert "unknown repair run 'nothing-like-it'" in line and "did you mean" not in line
    assert content(settings) == before


def test_undo_twice_is_refused(applied, cli) -> None:
    settings, _, result, before_apply = applied
    first = integrity(cli, settings, "repair", "undo", result.run_id, "--yes")
    assert first.returncode == 0, first.stderr
    assert tables(settings) == before_apply
    before = content(settings)
    again = integrity(cli, settings, "repair", "undo", result.run_id, "--yes")
    assert again.returncode == 2
    line = one_error(again)
    assert f"repair run {result.run_id} was already undone" in line
    # nor can the undo run itself be "undone"
    undo_id = query(settings, "migrations", "SELECT undone_by FROM repair_runs WHERE run_id = ?", (result.run_id,))[0][0]
    assert undo_id and undo_id.startswith("und-")
    of_undo = integrity(cli, settings, "repair", "undo", undo_id, "--yes")
    assert of_undo.returncode == 2
    assert f"{undo_id} is an undo, not a repair run" in one_error(of_undo)
    assert content(settings) == before


def test_undo_without_yes_and_without_a_terminal_is_refused(applied, cli) -> None:
    settings, _, result, _ = applied
    before = content(settings)
    refused = integrity(cli, settings, "repair", "undo", result.run_id, input="y\n")
    assert refused.returncode == 2
    assert "--yes" in one_error(refused)
    assert content(settings) == before


def test_undo_is_refused_naming_the_rows_that_changed_since(applied, cli) -> None:
    settings, manifest, result, before_apply = applied
    legs = [k["trade_id"] for k in manifest.defects["opening_leg_with_pnl"]]
    conn = sqlite3.connect(settings.path("trading"), isolation_level=None)
    conn.executemany("UPDATE trades SET realized_pnl = 7.25 WHERE trade_id = ?", [(t,) for t in legs])
    conn.close()
    before = content(settings)
    refused = integrity(cli, settings, "repair", "undo", result.run_id, "--yes")
    assert refused.returncode == 3
    line = one_error(refused)
    assert f"cannot undo {result.run_id}: {len(legs)} row(s) changed since it ran" in line
    for trade_id in legs:  # the message names both rows
        assert f"trading.trades {{'trade_id': {trade_id}}}" in line
    assert "nothing was changed" in line
    assert content(settings) == before
    # put the repaired values back: now the undo goes through and restores the session exactly
    conn = sqlite3.connect(settings.path("trading"), isolation_level=None)
    conn.executemany("UPDATE trades SET realized_pnl = NULL WHERE trade_id = ?", [(t,) for t in legs])
    conn.close()
    assert integrity(cli, settings, "repair", "undo", result.run_id, "--yes").returncode == 0
    assert tables(settings) == before_apply


def test_undo_is_refused_when_a_deleted_position_was_replaced(applied, cli) -> None:
    settings, _, result, _ = applied
    deleted = query(settings, "migrations", "SELECT row_key FROM repair_log WHERE run_id = ? AND op = 'delete'", (result.run_id,))
    assert deleted, "the position repair deletes the position of a ticker without open lots"
    ticker = json.loads(deleted[0][0])["ticker"]
    conn = sqlite3.connect(settings.path("positions"), isolation_level=None)
    conn.execute("INSERT INTO positions (ticker, side, quantity, entry_price, opened_at, updated_at) "
                 "VALUES (?, 'long', 1, 10.0, 0, 0)", (ticker,))
    conn.close()
    before = content(settings)
    refused = integrity(cli, settings, "repair", "undo", result.run_id, "--yes")
    assert refused.returncode == 3
    line = one_error(refused)
    assert f"positions.positions {{'side': 'long', 'ticker': '{ticker}'}}" in line or \
        f"positions.positions {{'ticker': '{ticker}', 'side': 'long'}}" in line, line
    assert "a row was inserted where the repair deleted one" in line
    assert content(settings) == before


# -- concurrency -------------------------------------------------------------------------------------

def test_repair_gives_up_on_another_toolkit_process_holding_the_data_dir(session, cli) -> None:
    settings, _ = session
    before = content(settings)
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from toolkit.lock import data_dir_lock
        with data_dir_lock(Path({str(settings.lock_path)!r}), timeout=5, command="test holder"):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        blocked = cli("integrity", "--data-dir", str(settings.data_dir), "--lock-timeout", "0.5", "repair", "--apply", "--yes")
    finally:
        holder.communicate("release\n", timeout=30)
    assert blocked.returncode == 3
    line = one_error(blocked)
    assert f"locked by pid {holder.pid} " in line and "(test holder)" in line and "gave up after 0.5 s" in line
    assert content(settings) == before
    # once the holder is gone, the same command goes through
    assert integrity(cli, settings, "repair", "--apply", "--yes").returncode == 0


@pytest.mark.parametrize("journal_ready", [False, True], ids=["first-repair", "journal-prepared"])
def test_repair_gives_up_on_a_write_lock_held_on_trading_db(session, cli, journal_ready: bool) -> None:
    settings, _ = session
    if journal_ready:  # a repair already ran once (of another rule), so the journal tables exist
        assert apply_repairs(settings, registry=REGISTRY, rule_ids=["rl_state_missing_avg_reward"]).applied_changes
    before = content(settings)
    other = sqlite3.connect(settings.path("trading"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        # the plan only reads: it still works while another connection writes
        plan = cli("integrity", "--data-dir", str(settings.data_dir), "--busy-timeout", "0.5", "repair")
        assert plan.returncode == 0, plan.stderr
        blocked = cli("integrity", "--data-dir", str(settings.data_dir), "--busy-timeout", "0.5", "repair", "--apply", "--yes")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert blocked.returncode == 3, blocked.stderr
    line = one_error(blocked)
    assert "locked by another connection" in line and "--busy-timeout" in line
    assert content(settings) == before
    assert integrity(cli, settings, "repair", "--apply", "--yes").returncode == 0


# -- a repair that does not hold ---------------------------------------------------------------------

BAD_RULE = '''
from toolkit.repair.model import Change
from toolkit.rules.model import Violation, rule


def _stamp(ctx, rule_, violations):
    for v in violations:
        yield Change(rule_.id, "trading", "account", "update", {"account_id": 1},
                     {"updated_at": v.was[0], "cash_balance": v.was[1]},
                     {"updated_at": 4000000000, "cash_balance": v.was[1] + 1000.0}, v.key)


@rule("zz_account_stamp", severity="LOW", databases=["trading"], reads=["trading.account"], key=["account_id"],
      repair=_stamp)
def zz_account_stamp(ctx, rule_):
    """Test rule: the account carries a stamp (its repair also moves the cash)."""
    for account_id, updated_at, cash in ctx.conn.execute("SELECT account_id, updated_at, cash_balance FROM trading.account"):
        if updated_at != 4000000000:
            yield Violation(rule_.id, {"account_id": account_id}, "not stamped", was=(updated_at, cash))
'''


def test_a_repair_that_does_not_hold_is_rolled_back_and_exits_1(session, cli, tmp_path: Path) -> None:
    settings, manifest = session
    checks = tmp_path / "rules"
    checks.mkdir()
    (checks / "stamp.py").write_text(BAD_RULE, encoding="utf-8")
    account = query(settings, "trading", "SELECT * FROM account")
    result = cli("integrity", "--data-dir", str(settings.data_dir), "--checks-dir", str(checks), "repair", "--apply", "--yes",
                 "--format", "json")
    assert result.returncode == 1, result.stderr
    rules = {r["id"]: r for r in json.loads(result.stdout)["rules"]}
    assert rules["zz_account_stamp"]["status"] == "rolled back"
    assert "bankroll_mismatch got worse (0 -> 1 violations)" in rules["zz_account_stamp"]["rolled_back"]
    for rule_id in set(manifest.defects) - NOT_REPAIRABLE:
        assert rules[rule_id]["status"] == "applied", rule_id
    # bankroll_mismatch was repaired first; the stamp's rollback left the account as that repair made it
    after = query(settings, "trading", "SELECT * FROM account")
    assert after[0][4] == account[0][4] and after[0][2] != account[0][2]
    report = run_checks(settings, registry=REGISTRY)
    assert {r.rule.id for r in report.results if r.count} == NOT_REPAIRABLE
    status = query(settings, "migrations", "SELECT status FROM repair_runs")
    assert status == [("partial",)]


# -- the demo ----------------------------------------------------------------------------------------

def test_the_demo_shows_gate_plan_repair_and_what_is_left(tmp_path: Path, cli) -> None:
    demo = tmp_path / "demo"
    first = cli("integrity", "demo", "--data-dir", str(demo))
    assert first.returncode == 0, first.stderr
    out = first.stdout
    sections = ["== 1. migrate", "== 2. a paper-trading session", "== 3. the gate", "== 4. the repair plan",
                "== 5. apply that plan", "== 6. the gate again"]
    positions = [out.index(s) for s in sections]
    assert positions == sorted(positions)
    gate, plan, repair, second = (out[positions[i]:positions[i + 1] if i + 1 < len(positions) else None] for i in range(2, 6))
    assert re.search(r"^FAIL\s+unlinked_closes|^warn\s+unlinked_closes", gate, re.M) and "gate FAILED" in gate
    assert re.search(r"^unlinked_closes\s+planned", plan, re.M) and "nothing was changed" in plan
    assert re.search(r"^unlinked_closes\s+applied", repair, re.M) and "applied and verified" in repair
    run_id = re.search(r"repair (rep-\S+): \d+ row change\(s\) applied", repair).group(1)
    # in the second gate only rules without an automatic repair fail, and each is explained
    failing = set(re.findall(r"^(?:FAIL|warn)\s+(\w+)", second, re.M))
    settings = _settings(demo)
    report = run_checks(settings, registry=REGISTRY)
    left = {r.rule.id for r in report.results if r.count}
    assert failing == left and left and not {r for r in left if REGISTRY[r].repairable}
    for rule_id in left:
        assert f"left: {rule_id} (" in second and f"needs a person: {REGISTRY[rule_id].remedy}" in second
    assert f"repair undo {run_id}" in second
    assert (demo / ".toolkit-demo").exists()

    # again on the same directory: the demo replaces its own databases
    again = cli("integrity", "demo", "--data-dir", str(demo))
    assert again.returncode == 0, again.stderr
    runs = query(settings, "migrations", "SELECT run_id FROM repair_runs")
    assert len(runs) == 1 and runs[0][0] != run_id and runs[0][0] in again.stdout


def test_the_demo_refuses_a_directory_it_did_not_create(session, cli) -> None:
    settings, _ = session
    before = content(settings)
    files = sorted(p.name for p in settings.data_dir.iterdir())
    refused = cli("integrity", "demo", "--data-dir", str(settings.data_dir))
    assert refused.returncode == 2
    line = one_error(refused)
    assert "already holds databases the demo did not create" in line and "trading.db" in line
    assert refused.stdout == ""
    assert content(settings) == before
    assert sorted(p.name for p in settings.data_dir.iterdir()) == files
