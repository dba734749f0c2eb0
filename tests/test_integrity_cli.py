"""The gate as CI runs it: `python -m toolkit integrity ...` in a real subprocess — exit codes,
bad input (missing, empty, corrupt files; bad values in rows), baselines and run history."""
from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bundled import ids_of
from dbstate import damage_root_page

from toolkit.config import Settings, load_settings
from toolkit.fixtures import generate, inject_defects
from toolkit.rules import Severity, run_checks
from toolkit.rules.model import fingerprint
from toolkit.content import load_migrations, load_registry

REGISTRY = load_registry(plugins=False)


def _settings(root: Path) -> Settings:
    return load_settings(root / "data", cwd=root, env={})


def _session(root: Path, seed: int, defects: dict[str, int] | None = None, trades: int = 3_000, tickers: int = 40):
    settings = _settings(root)
    return settings, generate(settings, trades=trades, tickers=tickers, seed=seed, defects=defects or {})


def _clean(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """No traceback ever reaches the user."""
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout
    return result


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean migrated session to copy (cheaper than generating one per test)."""
    root = tmp_path_factory.mktemp("template")
    _session(root, seed=31)
    return root / "data"


@pytest.fixture
def clone(tmp_path: Path, template: Path) -> Path:
    shutil.copytree(template, tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def check(cli, tmp_path: Path):
    """``integrity --data-dir DIR check ARGS`` from a neutral working directory."""
    def run(data: Path, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
        return _clean(cli("integrity", "--data-dir", str(data), "check", *args, cwd=cwd or tmp_path, env=env))
    return run


def _strict_json(text: str):
    """RFC 8259 JSON: NaN and Infinity are not JSON."""
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def _json_report(result: subprocess.CompletedProcess) -> dict:
    data = _strict_json(result.stdout)
    assert data["exit_code"] == result.returncode
    return data


def _by_id(data: dict) -> dict[str, dict]:
    return {r["id"]: r for r in data["rules"]}


# -- the gate's exit codes ---------------------------------------------------------------------------

def test_clean_session_exits_0(clone: Path, check) -> None:
    result = check(clone)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "gate passed (fail-on HIGH)" in result.stdout
    for rule_id in REGISTRY.ids:
        assert rule_id in result.stdout


def test_console_script_reaches_the_gate(clone: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "integrity"
    if not script.exists():
        pytest.skip(f"no `integrity` console script next to {sys.executable}")
    result = _clean(subprocess.run([str(script), "--data-dir", str(clone), "check", "--format", "json"],
                                   cwd=tmp_path, capture_output=True, text=True, timeout=120))
    assert result.returncode == 0
    assert _json_report(result)["summary"]["passed"] == len(REGISTRY.ids)


@pytest.fixture(scope="module")
def medium_high(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HIGH (unsplit_flips) and MEDIUM (snapshot_equity_mismatch) violations, nothing CRITICAL."""
    root = tmp_path_factory.mktemp("medium-high")
    _session(root, seed=32, defects={"unsplit_flips": 2, "snapshot_equity_mismatch": 2})
    return root / "data"


def test_high_violation_fails_the_default_gate(medium_high: Path, check) -> None:
    result = check(medium_high, "--format", "json")
    assert result.returncode == 1
    data = _json_report(result)
    assert data["fail_on"] == "HIGH"
    assert data["summary"]["blocking_rules"] == ["unsplit_flips"]
    rules = _by_id(data)
    assert rules["unsplit_flips"]["count"] == 2 and rules["unsplit_flips"]["blocking"]
    assert rules["snapshot_equity_mismatch"]["count"] == 2 and not rules["snapshot_equity_mismatch"]["blocking"]


@pytest.mark.parametrize("fail_on, code", [("CRITICAL", 0), ("critical", 0), ("HIGH", 1), ("MEDIUM", 1), ("LOW", 1)])
def test_fail_on_threshold(medium_high: Path, check, fail_on: str, code: int) -> None:
    result = check(medium_high, "--fail-on", fail_on)
    assert result.returncode == code, result.stdout + result.stderr
    assert ("gate passed" if code == 0 else "gate FAILED") in result.stdout


def test_low_violation_blocks_only_at_fail_on_low(tmp_path: Path, check) -> None:
    _session(tmp_path, seed=33, defects={"rl_state_missing_avg_reward": 2})
    assert check(tmp_path / "data").returncode == 0
    assert check(tmp_path / "data", "--fail-on", "MEDIUM").returncode == 0
    result = check(tmp_path / "data", "--fail-on", "LOW", "--format", "json")
    assert result.returncode == 1
    assert _json_report(result)["summary"]["blocking_rules"] == ["rl_state_missing_avg_reward"]


# -- runtime errors (exit 3) -------------------------------------------------------------------------

def test_missing_data_directory_exits_3(tmp_path: Path, check) -> None:
    result = check(tmp_path / "nowhere")
    assert result.returncode == 3
    assert result.stdout == ""
    assert "nowhere" in result.stderr and "does not exist" in result.stderr and "migrate upgrade" in result.stderr


def test_missing_database_file_exits_3(clone: Path, check) -> None:
    (clone / "positions.db").unlink()
    result = check(clone)
    assert result.returncode == 3
    assert result.stdout == ""
    # the ledger knows the file was created and migrated: it is lost, and restoring it is the way back
    assert "positions.db" in result.stderr and "is missing" in result.stderr
    assert "migrate restore --database positions" in result.stderr and "migrate upgrade" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_garbage_header_exits_3_not_an_sqlite_database(clone: Path, check) -> None:
    for suffix in ("-wal", "-shm"):
        (clone / f"trading.db{suffix}").unlink(missing_ok=True)
    (clone / "trading.db").write_bytes(b"this is not a database, just text. " * 200)
    result = check(clone)
    assert result.returncode == 3
    assert result.stdout == ""
    assert "trading.db" in result.stderr and "not an SQLite database" in result.stderr


# -- usage errors (exit 2) ---------------------------------------------------------------------------

def test_unknown_rule_exits_2_with_suggestion(clone: Path, check) -> None:
    result = check(clone, "--rule", "unlinked_close")
    assert result.returncode == 2
    assert "unknown rule 'unlinked_close'" in result.stderr
    assert "did you mean 'unlinked_closes'" in result.stderr


def test_unknown_fail_on_exits_2(clone: Path, check) -> None:
    result = check(clone, "--fail-on", "SEVERE")
    assert result.returncode == 2
    assert "SEVERE" in result.stderr


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    ("{not json", "not valid JSON"),
    ('{"schema_version": 2, "violations": []}', "schema_version"),
    ('{"schema_version": "1", "violations": []}', "schema_version"),
    ('[{"rule": "bankroll_mismatch", "key": {"account_id": 1}}]', "schema_version"),
    ('{"schema_version": 1, "violations": {"rule": "x"}}', '"violations" must be a list'),
    ('{"schema_version": 1, "violations": [{"rule": "bankroll_mismatch", "key": 1}]}', "entry 0"),
    ('{"schema_version": 1, "violations": [{"rule": "a", "key": {}}, ["bankroll_mismatch"]]}', "entry 1"),
    ('{"schema_version": 1, "violations": [{"key": {"account_id": 1}}]}', "entry 0"),
], ids=["missing", "not-json", "schema-2", "schema-string", "not-object", "violations-object", "key-not-object",
        "entry-list", "no-rule"])
def test_malformed_baseline_exits_2(clone: Path, tmp_path: Path, check, cli, content: str | None, expected: str) -> None:
    baseline = tmp_path / "baseline.json"
    if content is not None:
        baseline.write_text(content, encoding="utf-8")
    result = check(clone, "--baseline", str(baseline))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert str(baseline) in result.stderr and expected in result.stderr
    if content is not None:
        pruned = _clean(cli("integrity", "--data-dir", str(clone), "baseline", "prune", str(baseline), cwd=tmp_path))
        assert pruned.returncode == 2 and expected in pruned.stderr
        assert baseline.read_text(encoding="utf-8") == content  # a refused file is left alone


# -- files that are not what the rules expect --------------------------------------------------------

def test_empty_trading_file_skips_its_rules_and_reports_pending_migrations(tmp_path: Path, check) -> None:
    from toolkit.migrate.runner import upgrade

    settings = _settings(tmp_path)
    upgrade(settings, migrations=load_migrations(settings), database="positions")
    upgrade(settings, migrations=load_migrations(settings), database="ml_training")
    assert not settings.path("trading").exists()
    sqlite3.connect(settings.path("trading")).close()  # an empty SQLite file
    assert settings.path("trading").stat().st_size == 0
    result = check(settings.data_dir, "--format", "json")
    assert result.returncode == 1
    rules = _by_id(_json_report(result))
    reads_trading = [r.id for r in REGISTRY if any(t.startswith("trading.") for t in r.reads)]
    assert len(reads_trading) >= 10
    for rule in REGISTRY:
        entry = rules[rule.id]
        if rule.id in reads_trading:
            assert entry["status"] == "skipped", rule.id
            assert "trading.db" in entry["skipped_reason"] and "migrate upgrade" in entry["skipped_reason"]
            assert entry["blocking"]
        elif rule.id == "schema_drift":
            assert entry["status"] == "failed" and entry["count"] == len(ids_of("trading"))
            assert sorted(s["key"]["migration"] for s in entry["samples"]) == ids_of("trading")
            assert {s["key"]["database"] for s in entry["samples"]} == {"trading"}
            assert all("migrate upgrade" in s["message"] for s in entry["samples"])
        else:
            assert entry["status"] == "passed", (rule.id, entry)


def test_corrupt_index_page_is_a_quick_check_violation_and_skips_that_files_rules(clone: Path, check) -> None:
    damage_root_page(clone / "positions.db", "idx_positions_strategy")
    result = check(clone, "--format", "json")
    assert result.returncode == 1
    rules = _by_id(_json_report(result))
    quick = rules["sqlite_quick_check"]
    assert quick["status"] == "failed" and quick["count"] == 1
    assert quick["samples"][0]["key"] == {"database": "positions"}
    for rule in REGISTRY:
        entry = rules[rule.id]
        if rule.id == "sqlite_quick_check":
            continue
        if "positions" in rule.databases:
            assert entry["status"] == "skipped", rule.id
            assert "positions.db fails quick_check" in entry["skipped_reason"]
        else:
            assert entry["status"] == "passed", (rule.id, entry)


# -- bad values in the rows the rules read -----------------------------------------------------------

@pytest.fixture(scope="module")
def bad_rows(tmp_path_factory: pytest.TempPathFactory):
    """Rows written around the CHECK constraints: negative quantity, text and 'NaN' prices, a NULL
    run id, malformed JSON. Victims are each ticker's last trade, an open lot (nothing after it)."""
    root = tmp_path_factory.mktemp("bad-rows")
    settings, _ = _session(root, seed=34)
    trading = sqlite3.connect(settings.path("trading"), isolation_level=None)
    try:
        trading.execute("PRAGMA ignore_check_constraints = ON")
        victims = trading.execute(
            "SELECT trade_id, ticker FROM trades AS t WHERE action = 'BUY' AND status = 'OPEN' AND trade_id = "
            "(SELECT max(trade_id) FROM trades AS x WHERE x.ticker = t.ticker) ORDER BY trade_id LIMIT 5").fetchall()
        assert len(victims) == 5
        (negative, t1), (text, t2), (nan, t3), (null_run, _), (infinite, t5) = victims
        trading.execute("UPDATE trades SET quantity = -5 WHERE trade_id = ?", (negative,))
        trading.execute("UPDATE trades SET price = 'abc' WHERE trade_id = ?", (text,))
        trading.execute("UPDATE trades SET price = 'NaN' WHERE trade_id = ?", (nan,))
        trading.execute("UPDATE trades SET run_id = NULL WHERE trade_id = ?", (null_run,))
        trading.execute("UPDATE trades SET price = 9e999 WHERE trade_id = ?", (infinite,))
        snapshot = trading.execute("SELECT min(snapshot_id) FROM portfolio_snapshots").fetchone()[0]
        trading.execute("UPDATE portfolio_snapshots SET total_equity = 'NaN' WHERE snapshot_id = ?", (snapshot,))
    finally:
        trading.close()
    ml = sqlite3.connect(settings.path("ml_training"), isolation_level=None)
    try:
        ml.execute("PRAGMA ignore_check_constraints = ON")
        models = [r[0] for r in ml.execute("SELECT model_id FROM rl_model_states ORDER BY model_id")]
        ml.execute("UPDATE rl_model_states SET q_table = '{\"(1, 0)\": ' WHERE model_id = ?", (models[0],))
        ml.execute("UPDATE rl_model_states SET hyperparameters = '[1, 2' WHERE model_id = ?", (models[1],))
        ml.execute("UPDATE rl_model_states SET hyperparameters = "
                   "json_set(hyperparameters, '$.total_rewards', 'NaN') WHERE model_id = ?", (models[2],))
        ml.execute("UPDATE rl_model_states SET hyperparameters = "
                   "'{\"total_episodes\": 4, \"total_rewards\": Infinity, \"avg_reward\": NaN}' WHERE model_id = ?",
                   (models[3],))
    finally:
        ml.close()
    expected = {
        "trade_row_invalid": {fingerprint("trade_row_invalid", {"trade_id": t}) for t, _ in victims},
        # the lots left out of the FIFO (invalid facts) no longer match positions.db
        "position_ledger_mismatch": {fingerprint("position_ledger_mismatch", {"ticker": t, "side": "long"}) for t in (t1, t2, t3, t5)},
        "bankroll_mismatch": {fingerprint("bankroll_mismatch", {"account_id": 1})},
        "snapshot_equity_mismatch": {fingerprint("snapshot_equity_mismatch", {"snapshot_id": snapshot})},
        "qtable_unsafe_keys": {fingerprint("qtable_unsafe_keys", {"model_id": models[0], "state": None})},
        "rl_state_missing_avg_reward": {fingerprint("rl_state_missing_avg_reward", {"model_id": m}) for m in models[1:4]},
    }
    return settings, expected, {"negative": negative, "text": text, "nan": nan, "null_run": null_run, "inf": infinite}


def test_bad_values_are_reported_by_the_right_rules(bad_rows) -> None:
    settings, expected, victims = bad_rows
    report = run_checks(settings, registry=REGISTRY, collect=True, sample=50)
    for result in report.results:
        assert result.status in ("passed", "failed"), (result.rule.id, result.status, result.error, result.reason)
        assert set(result.fingerprints) == expected.get(result.rule.id, set()), result.rule.id
    messages = {v.key["trade_id"]: v.message for v in report.result("trade_row_invalid").samples}
    assert "quantity -5" in messages[victims["negative"]]
    assert "'abc'" in messages[victims["text"]] and "'NaN'" in messages[victims["nan"]]
    assert "run_id is NULL" in messages[victims["null_run"]]
    assert "price" in messages[victims["inf"]], messages[victims["inf"]]
    qtable = report.result("qtable_unsafe_keys").samples[0]
    assert "not a JSON object" in qtable.message


def test_bad_values_through_the_cli_never_traceback(bad_rows, check, cli) -> None:
    settings, expected, _ = bad_rows
    for fmt in ("table", "json", "junit", "sarif", "markdown"):
        result = check(settings.data_dir, "--format", fmt, "--sample", "50")
        assert result.returncode == 1, (fmt, result.stderr)
        assert result.stderr == "" and result.stdout.strip()
    data = _strict_json(check(settings.data_dir, "--format", "json", "--sample", "50").stdout)
    assert {r["id"] for r in data["rules"] if r["count"]} == set(expected)
    _strict_json(check(settings.data_dir, "--format", "sarif", "--sample", "50").stdout)
    # an Inf amount is recorded in the run history as text, so the history stays JSON too
    shown = _clean(cli("integrity", "--data-dir", str(settings.data_dir), "history", data["run_id"], "--json",
                       cwd=settings.data_dir.parent))
    results = {r["rule"]: r for r in _strict_json(shown.stdout)["results"]}
    assert results["trade_row_invalid"]["count"] == len(expected["trade_row_invalid"])
    assert any(s.get("stored") == "Infinity" or s.get("computed") in ("Infinity", "-Infinity")
               for s in results["bankroll_mismatch"]["sample"] + results["snapshot_equity_mismatch"]["sample"])


# -- baselines ---------------------------------------------------------------------------------------

BASELINED = {"opening_leg_with_pnl": 3, "unsplit_flips": 2, "bankroll_mismatch": 1, "snapshot_equity_mismatch": 2,
             "realized_pnl_mismatch": 2}


@pytest.fixture
def baselined(tmp_path: Path, cli):
    settings, manifest = _session(tmp_path, seed=35, defects=BASELINED)
    baseline = tmp_path / "baseline.json"
    result = _clean(cli("integrity", "--data-dir", str(settings.data_dir), "baseline", "create", str(baseline),
                        cwd=tmp_path))
    assert result.returncode == 0, result.stderr
    total = sum(len(manifest.defects[r]) for r in BASELINED)
    assert f"{total} accepted violation(s)" in result.stdout
    return settings, manifest, baseline


def _sql(path: Path, statement: str, params: tuple = ()) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(statement, params)
    finally:
        conn.close()


def test_baseline_file_lists_fingerprints_without_amounts(baselined) -> None:
    settings, manifest, baseline = baselined
    data = json.loads(baseline.read_text(encoding="utf-8"))
    assert data["schema_version"] == 1
    entries = data["violations"]
    assert all(set(e) == {"rule", "key"} for e in entries)
    assert {fingerprint(e["rule"], e["key"]) for e in entries} == set().union(*(manifest.expected(r) for r in BASELINED))
    for entry in entries:  # keys are natural keys: ids, tickers, names — never money
        for name, value in entry["key"].items():
            assert name not in ("stored", "computed", "difference", "tolerance", "cash_balance", "realized_pnl")
            assert not isinstance(value, float), entry


def test_check_with_baseline_passes_and_reports_counts_as_baselined(baselined, check) -> None:
    settings, manifest, baseline = baselined
    assert check(settings.data_dir).returncode == 1
    result = check(settings.data_dir, "--baseline", str(baseline), "--format", "json")
    assert result.returncode == 0, result.stdout
    data = _json_report(result)
    assert data["baseline"] == str(baseline)
    assert data["summary"]["violations"] == 0
    assert data["summary"]["baselined"] == sum(len(manifest.defects[r]) for r in BASELINED)
    rules = _by_id(data)
    for rule_id in BASELINED:
        assert (rules[rule_id]["count"], rules[rule_id]["baselined"]) == (0, len(manifest.defects[rule_id]))
        assert rules[rule_id]["status"] == "passed" and rules[rule_id]["samples"] == []
    table = check(settings.data_dir, "--baseline", str(baseline))
    assert table.returncode == 0 and "gate passed" in table.stdout


def test_only_a_new_violation_counts_after_the_baseline(baselined, check) -> None:
    settings, manifest, baseline = baselined
    new = inject_defects(settings, {"opening_leg_with_pnl": 1}, seed=9_001)["opening_leg_with_pnl"]
    new_fp = fingerprint("opening_leg_with_pnl", new[0])
    assert new_fp not in manifest.expected("opening_leg_with_pnl")
    result = check(settings.data_dir, "--baseline", str(baseline), "--format", "json")
    assert result.returncode == 1  # opening_leg_with_pnl is CRITICAL
    rules = _by_id(_json_report(result))
    entry = rules["opening_leg_with_pnl"]
    assert (entry["count"], entry["baselined"]) == (1, 3)
    assert [s["fingerprint"] for s in entry["samples"]] == [new_fp]
    assert [r for r, e in rules.items() if e["count"]] == ["opening_leg_with_pnl"]


def test_changing_amounts_keeps_a_violation_baselined(baselined, check) -> None:
    settings, manifest, baseline = baselined
    trading = settings.path("trading")
    _sql(trading, "UPDATE account SET cash_balance = cash_balance - 123456.78")
    close = manifest.defects["realized_pnl_mismatch"]
    close_ids = [k["trade_id"] for k in close if "trade_id" in k]
    assert close_ids
    _sql(trading, f"UPDATE trades SET realized_pnl = realized_pnl * 7 - 3 WHERE trade_id IN ({','.join(map(str, close_ids))})")
    leg = manifest.defects["opening_leg_with_pnl"][0]["trade_id"]
    _sql(trading, "UPDATE trades SET realized_pnl = 99999.5 WHERE trade_id = ?", (leg,))
    result = check(settings.data_dir, "--baseline", str(baseline), "--format", "json")
    assert result.returncode == 0, result.stdout
    rules = _by_id(_json_report(result))
    for rule_id in ("bankroll_mismatch", "realized_pnl_mismatch", "opening_leg_with_pnl"):
        assert (rules[rule_id]["count"], rules[rule_id]["baselined"]) == (0, len(manifest.defects[rule_id])), rule_id


def test_prune_drops_entries_that_no_longer_occur(baselined, cli, check) -> None:
    settings, manifest, baseline = baselined
    fixed = manifest.defects["opening_leg_with_pnl"][0]
    _sql(settings.path("trading"), "UPDATE trades SET realized_pnl = NULL WHERE trade_id = ?", (fixed["trade_id"],))
    before = json.loads(baseline.read_text(encoding="utf-8"))["violations"]
    result = _clean(cli("integrity", "--data-dir", str(settings.data_dir), "baseline", "prune", str(baseline),
                        cwd=baseline.parent))
    assert result.returncode == 0, result.stderr
    assert f"1 pruned, {len(before) - 1} kept" in result.stdout
    after = json.loads(baseline.read_text(encoding="utf-8"))["violations"]
    assert {"rule": "opening_leg_with_pnl", "key": fixed} in before
    assert after == [e for e in before if e != {"rule": "opening_leg_with_pnl", "key": fixed}]
    # pruning twice changes nothing; the gate still passes with the pruned file
    again = _clean(cli("integrity", "--data-dir", str(settings.data_dir), "baseline", "prune", str(baseline),
                       cwd=baseline.parent))
    assert "0 pruned" in again.stdout
    assert check(settings.data_dir, "--baseline", str(baseline)).returncode == 0


# -- run history -------------------------------------------------------------------------------------

def test_every_check_run_is_recorded(medium_high: Path, check, cli, tmp_path: Path) -> None:
    history = medium_high / "migrations.db"

    def runs() -> list[str]:
        conn = sqlite3.connect(history)
        try:
            return [r[0] for r in conn.execute("SELECT run_id FROM check_runs")]
        finally:
            conn.close()

    known = set(runs())
    first = _json_report(check(medium_high, "--format", "json", "--sample", "1"))
    second = _json_report(check(medium_high, "--format", "json", "--fail-on", "CRITICAL"))
    assert set(runs()) - known == {first["run_id"], second["run_id"]}
    conn = sqlite3.connect(history)
    try:
        run = conn.execute("SELECT fail_on, rules, violations, blocking, exit_code FROM check_runs WHERE run_id = ?",
                           (first["run_id"],)).fetchone()
        assert run == ("HIGH", len(REGISTRY.ids), 4, 1, 1)
        assert conn.execute("SELECT fail_on, exit_code FROM check_runs WHERE run_id = ?",
                            (second["run_id"],)).fetchone() == ("CRITICAL", 0)
        results = {r[0]: r[1:] for r in conn.execute(
            "SELECT rule_id, severity, status, count, sample FROM check_results WHERE run_id = ?", (first["run_id"],))}
    finally:
        conn.close()
    assert set(results) == set(REGISTRY.ids)
    severity, status, count, sample = results["unsplit_flips"]
    assert (severity, status, count) == ("HIGH", "failed", 2)
    sample = json.loads(sample)
    orphaned = _by_id(first)["unsplit_flips"]
    assert (orphaned["count"], len(orphaned["samples"])) == (2, 1)  # --sample 1 bounds samples, not counts
    assert len(sample) == 1 and sample[0]["key"] == orphaned["samples"][0]["key"]
    assert results["unlinked_closes"][1:3] == ("passed", 0) and json.loads(results["unlinked_closes"][3]) == []

    listing = _clean(cli("integrity", "--data-dir", str(medium_high), "history", cwd=tmp_path))
    assert listing.returncode == 0
    assert first["run_id"] in listing.stdout and second["run_id"] in listing.stdout
    shown = _clean(cli("integrity", "--data-dir", str(medium_high), "history", first["run_id"], cwd=tmp_path))
    assert shown.returncode == 0 and first["run_id"] in shown.stdout
    lines = {line.split()[0]: line.split() for line in shown.stdout.splitlines()[3:] if line.strip()}
    assert set(lines) == set(REGISTRY.ids)
    assert lines["unsplit_flips"][1:4] == ["HIGH", "failed", "2"]
    as_json = json.loads(_clean(cli("integrity", "--data-dir", str(medium_high), "history", first["run_id"], "--json",
                                    cwd=tmp_path)).stdout)
    assert as_json["run_id"] == first["run_id"] and as_json["exit_code"] == 1
    assert [r["rule"] for r in as_json["results"]] == REGISTRY.ids

    typo = first["run_id"][:-1] + ("0" if first["run_id"][-1] != "0" else "1")
    unknown = _clean(cli("integrity", "--data-dir", str(medium_high), "history", typo, cwd=tmp_path))
    assert unknown.returncode == 2
    assert f"unknown check run {typo!r}" in unknown.stderr and "did you mean" in unknown.stderr
    assert first["run_id"] in unknown.stderr or second["run_id"] in unknown.stderr


def test_history_of_a_directory_without_runs(clone: Path, cli, tmp_path: Path) -> None:
    listing = _clean(cli("integrity", "--data-dir", str(clone), "history", cwd=tmp_path))
    assert listing.returncode == 0 and "no check runs recorded" in listing.stdout
    unknown = _clean(cli("integrity", "--data-dir", str(clone), "history", "chk-nope", cwd=tmp_path))
    assert unknown.returncode == 2 and "unknown check run 'chk-nope'" in unknown.stderr


# -- configuration and project rules through the CLI -------------------------------------------------

def test_pyproject_tolerance_and_data_dir_through_the_cli(clone: Path, cli) -> None:
    project = clone.parent
    _sql(clone / "trading.db", "UPDATE account SET cash_balance = cash_balance + 0.5")
    (project / "pyproject.toml").write_text('[tool.toolkit]\ndata-dir = "data"\n', encoding="utf-8")
    strict = _clean(cli("integrity", "check", "--format", "json", cwd=project))
    assert strict.returncode == 1
    assert _by_id(_json_report(strict))["bankroll_mismatch"]["samples"][0]["tolerance"] == pytest.approx(0.01)
    (project / "pyproject.toml").write_text(
        '[tool.toolkit]\ndata-dir = "data"\n\n[tool.toolkit.rules.bankroll_mismatch]\ntolerance = 1.0\n', encoding="utf-8")
    tolerant = _clean(cli("integrity", "check", "--format", "json", cwd=project))
    assert tolerant.returncode == 0, tolerant.stdout
    assert _by_id(_json_report(tolerant))["bankroll_mismatch"]["status"] == "passed"


def test_a_project_rule_that_raises_is_an_error_not_a_crash(clone: Path, tmp_path: Path, cli) -> None:
    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "fragile.py").write_text(
        'from toolkit.rules import rule\n\n\n'
        '@rule("fragile_rule", severity="LOW", databases=["trading"], reads=["trading.trades"], key=["trade_id"])\n'
        'def fragile(ctx, rule_):\n'
        '    """Always fails to run."""\n'
        '    raise KeyError("no such column in my head")\n'
        '    yield\n', encoding="utf-8")
    result = _clean(cli("integrity", "--data-dir", str(clone), "--checks-dir", str(checks), "check", "--format", "json",
                        "--fail-on", "CRITICAL", cwd=tmp_path))
    assert result.returncode == 1
    entry = _by_id(_json_report(result))["fragile_rule"]
    assert entry["status"] == "error" and entry["blocking"]
    assert "KeyError" in entry["error"] and "no such column in my head" in entry["error"]
    assert _json_report(result)["summary"]["blocking_rules"] == ["fragile_rule"]
