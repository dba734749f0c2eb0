"""Plans are values: `integrity repair --save-plan FILE` writes the plan one census made, and
`integrity repair --apply FILE` writes exactly that plan — or refuses, changing nothing, when the data
moved since (stale), when it was made for another directory, or when the file is not a plan.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from dbstate import content_hashes, query, tables
from toolkit.config import Settings, load_settings
from toolkit.content import load_registry
from toolkit.fixtures import generate
from toolkit.repair.apply import apply_repairs
from toolkit.repair.plan import RepairPlan, plan_repairs
from toolkit.repair.undo import undo_repair
from toolkit.repair.writer import StalePlanError
from toolkit.rules import Registry, run_checks, rule

REGISTRY = load_registry(plugins=False)
DEFECTS = {"unlinked_closes": 3, "realized_pnl_mismatch": 2, "position_ledger_mismatch": 3, "bankroll_mismatch": 1,
           "opening_leg_with_pnl": 2, "rl_state_missing_avg_reward": 1}


def _settings(data_dir: Path) -> Settings:
    return load_settings(data_dir, cwd=data_dir.parent, env={}, busy_timeout=2.0, lock_timeout=5.0)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    settings = _settings(tmp_path_factory.mktemp("plan-template") / "data")
    generate(settings, trades=1_500, tickers=20, seed=5, defects=DEFECTS)
    return settings


@pytest.fixture
def session(template, tmp_path: Path) -> Settings:
    target = _settings(tmp_path / "data")
    shutil.copytree(template.data_dir, target.data_dir)
    return target


def integrity(cli, settings: Settings, *args: str) -> subprocess.CompletedProcess:
    return cli("integrity", "--data-dir", str(settings.data_dir), *args)


def one_error(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def log_rows(settings: Settings, run_id: str) -> list[tuple]:
    return query(settings, "migrations", "SELECT database_name, table_name, op, row_key, before, after FROM repair_log "
                                         "WHERE run_id = ? ORDER BY database_name, seq", (run_id,))


def test_a_saved_plan_is_applied_exactly(cli, session: Settings, tmp_path: Path) -> None:
    path = tmp_path / "plan.jsonl"
    saved = integrity(cli, session, "repair", "--save-plan", str(path))
    assert saved.returncode == 0, saved.stderr
    assert f"saved to {path}" in saved.stderr
    before = content_hashes(session)  # saving a plan changes nothing
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "paper-ledger-toolkit repair plan" and header["data_dir"] == str(session.data_dir.resolve())
    planned = [json.loads(line)["change"] for line in lines[1:] if "change" in json.loads(line)]
    assert len(planned) == sum(sum(r["changes"].values()) for r in header["rules"]) > 0
    assert content_hashes(session) == before

    applied = integrity(cli, session, "repair", "--apply", str(path), "--yes", "--format", "json")
    assert applied.returncode == 0, applied.stderr
    result = json.loads(applied.stdout)
    logged = log_rows(session, result["run_id"])
    # the log holds exactly the plan's changes: same rows, same before and after values
    assert sorted((c[1], c[2], c[3], json.dumps(c[4], sort_keys=True), json.dumps(c[5], sort_keys=True),
                   json.dumps(c[6], sort_keys=True)) for c in planned) == sorted(
        (d, t, op, json.dumps(json.loads(k), sort_keys=True), json.dumps(json.loads(b) if b else None, sort_keys=True),
         json.dumps(json.loads(a) if a else None, sort_keys=True)) for d, t, op, k, b, a in logged)
    report = run_checks(session, registry=REGISTRY)
    assert {r.rule.id: r.count for r in report.results if r.rule.id in DEFECTS} == dict.fromkeys(DEFECTS, 0)


def test_a_stale_saved_plan_is_refused_and_changes_nothing(cli, session: Settings, tmp_path: Path) -> None:
    path = tmp_path / "plan.jsonl"
    assert integrity(cli, session, "repair", "--save-plan", str(path)).returncode == 0
    change = next(json.loads(line)["change"] for line in path.read_text().splitlines()[1:]
                  if "change" in json.loads(line) and json.loads(line)["change"][3] == "update"
                  and json.loads(line)["change"][1] == "trading")
    _, database, table, _, key, before, after, *_ = change
    column = next(iter(after))
    # the bot (or a person) moves one of the rows the plan changes
    conn = sqlite3.connect(session.path(database), isolation_level=None)
    try:
        where = " AND ".join(f"{k} = ?" for k in key)
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", ["moved", *key.values()])
    finally:
        conn.close()
    before_apply = content_hashes(session)
    result = integrity(cli, session, "repair", "--apply", str(path), "--yes")
    assert result.returncode == 1, result.stdout + result.stderr
    message = one_error(result)
    assert "is stale" in message and f"{database}.{table}" in message and "'moved'" in message
    assert "nothing was changed" in message and "integrity repair" in message
    assert content_hashes(session) == before_apply


def test_a_plan_for_another_directory_or_not_a_plan_is_refused(cli, session: Settings, template: Settings,
                                                               tmp_path: Path) -> None:
    path = tmp_path / "plan.jsonl"
    assert integrity(cli, template, "repair", "--save-plan", str(path)).returncode == 0
    before = content_hashes(session)
    other = integrity(cli, session, "repair", "--apply", str(path), "--yes")
    assert other.returncode == 2
    assert "was made for" in one_error(other)
    garbage = tmp_path / "garbage.jsonl"
    for text in ("", "not json\n", json.dumps({"format": "something else"}) + "\n"):
        garbage.write_text(text)
        refused = integrity(cli, session, "repair", "--apply", str(garbage), "--yes")
        assert refused.returncode == 2, refused.stderr
        assert f"{garbage}:1: not a repair plan" in one_error(refused)
    # a hand-edited plan that deletes a ledger row is not a plan this toolkit applies
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["data_dir"] = str(session.data_dir.resolve())
    rule_id = next(r["id"] for r in header["rules"] if r["status"] == "planned")
    evil = [json.dumps(header), json.dumps({"change": [rule_id, "trading", "trades", "delete", {"trade_id": 1},
                                                       {"trade_id": 1}, None, {}, True, {}]})]
    garbage.write_text("\n".join(evil) + "\n")
    refused = integrity(cli, session, "repair", "--apply", str(garbage), "--yes")
    assert refused.returncode == 2
    assert "deleting a ledger row" in one_error(refused)
    assert content_hashes(session) == before


def test_save_plan_refuses_to_overwrite_a_database(cli, session: Settings) -> None:
    before = content_hashes(session)
    result = integrity(cli, session, "repair", "--save-plan", str(session.path("trading")))
    assert result.returncode == 2
    assert "is a database of" in one_error(result)
    assert content_hashes(session) == before


def test_apply_without_a_file_plans_once(session: Settings) -> None:
    said: list[str] = []
    result = apply_repairs(session, registry=REGISTRY, progress=said.append)
    assert result.applied_changes and not result.rolled_back
    assert said.count("checking before repair") == 1  # one census, then the writes


def test_a_plan_round_trips_through_its_file(session: Settings, tmp_path: Path) -> None:
    plan = plan_repairs(session, registry=REGISTRY, sample=5)
    path = tmp_path / "p.jsonl"
    plan.save(path)
    loaded = RepairPlan.load(path, REGISTRY, sample=5)
    try:
        assert loaded.plan_id == plan.plan_id and loaded.total_changes == plan.total_changes > 0
        assert [(r.rule.id, r.status, dict(r.changes), r.untouched) for r in loaded.rules] == \
               [(r.rule.id, r.status, dict(r.changes), r.untouched) for r in plan.rules]
        assert list(loaded.store.changes()) == list(plan.store.changes())
        assert loaded.census == plan.census
    finally:
        plan.close()
        loaded.close()


# -- one row, two rules --------------------------------------------------------------------------------

def _method_rule(rule_id: str, sql_where: str, value: str):
    from toolkit.repair.model import update_row

    @rule(rule_id, severity="LOW", databases=["ml_training"], reads=["ml_training.ensemble_weights"], key=["weight_id"],
          repair=update_row("ml_training", "ensemble_weights", ["weight_id"]))
    def method() -> str:
        """Test rule: stamps the weighting method."""
        return (f"SELECT weight_id, '{value}' AS fix_weighting_method, weighting_method AS was_weighting_method "
                f"FROM ml_training.ensemble_weights WHERE {sql_where} ORDER BY weight_id")

    return method


def test_two_rules_changing_one_column_of_one_row_apply_and_undo(session: Settings) -> None:
    first = _method_rule("stamp_first", "coalesce(weighting_method, '') NOT IN ('first', 'second')", "first")
    second = _method_rule("stamp_second", "coalesce(weighting_method, '') <> 'second'", "second")
    registry = Registry([first, second, *REGISTRY])
    before = tables(session)
    plan = plan_repairs(session, registry=registry, rule_ids=["stamp_first", "stamp_second"])
    try:
        rows = query(session, "ml_training", "SELECT count(*) FROM ensemble_weights")[0][0]
        assert plan.rule_plan("stamp_first").total_changes == rows > 0
        chained = [c for c in plan.store.changes("stamp_second")]
        assert all(c.before == {"weighting_method": "first"} for c in chained)  # planned after the first rule
        result = apply_repairs(session, registry=registry, plan=plan)
    finally:
        plan.close()
    assert not result.rolled_back and result.applied_changes == 2 * rows
    assert query(session, "ml_training", "SELECT DISTINCT weighting_method FROM ensemble_weights") == [("second",)]
    undone = undo_repair(session, result.run_id)  # no false conflict: the first rule's value was overwritten by the second
    assert undone.rows == 2 * rows
    assert tables(session) == before


def test_a_stale_plan_from_the_library_raises_and_changes_nothing(session: Settings) -> None:
    plan = plan_repairs(session, registry=REGISTRY)
    try:
        conn = sqlite3.connect(session.path("trading"), isolation_level=None)
        try:
            conn.execute("UPDATE account SET cash_balance = cash_balance + 1")
        finally:
            conn.close()
        before = content_hashes(session)
        with pytest.raises(StalePlanError, match="cash_balance"):
            apply_repairs(session, registry=REGISTRY, plan=plan)
        assert content_hashes(session) == before
    finally:
        plan.close()
