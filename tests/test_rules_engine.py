"""The rule engine: registration (validation, duplicates, plugins, checks directories), execution
(errors, samples, money fields, per-rule tolerance)."""
from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import textwrap
import types
from pathlib import Path

import pytest

from toolkit.config import Settings, load_settings
from toolkit.errors import RuleDefinitionError, UnknownNameError
from toolkit.fixtures import generate
from toolkit.rules import Registry, Rule, Scan, Severity, Violation, rule, run_checks
from toolkit.rules.registry import directory_rules, rules_in
from toolkit.content import load_registry

BUNDLED = load_registry(plugins=False)


def _settings(directory: Path, **kw) -> Settings:
    return load_settings(directory / "data", cwd=directory, env={}, **kw)


def _sql_rule(rule_id: str, source: str, **changes) -> Rule:
    fields = dict(id=rule_id, severity=Severity.LOW, description="A rule built by a test.", databases=("trading",),
                  reads=("trading.trades",), key=("trade_id",), sql="SELECT trade_id FROM trading.trades WHERE 0",
                  source=source)
    fields.update(changes)
    return Rule(**fields)


# -- registration ---------------------------------------------------------------------------------

def test_duplicate_ids_are_refused_naming_both_sources() -> None:
    first, second = _sql_rule("dup_rule", "plugin_a.rules"), _sql_rule("dup_rule", "project/checks/b.py")
    with pytest.raises(RuleDefinitionError) as err:
        Registry([first, second])
    message = str(err.value)
    assert "dup_rule" in message and "plugin_a.rules" in message and "project/checks/b.py" in message
    assert err.value.exit_code == 3


def test_duplicate_of_a_bundled_id_via_the_decorator_is_refused() -> None:
    @rule("bankroll_mismatch", severity="LOW", databases=["trading"], key=["account_id"])
    def impostor():
        """Pretends to be the bankroll rule."""
        return "SELECT account_id FROM trading.account WHERE 0"

    with pytest.raises(RuleDefinitionError) as err:
        Registry([*BUNDLED, impostor])
    message = str(err.value)
    assert "bankroll_mismatch" in message
    assert "impostor" in message and "toolkit.checks.bankroll" in message


def test_missing_description_is_refused() -> None:
    with pytest.raises(RuleDefinitionError, match="no description"):
        @rule("undocumented_rule", severity="LOW", databases=["trading"], key=["trade_id"])
        def undocumented():
            return "SELECT trade_id FROM trading.trades"

    with pytest.raises(RuleDefinitionError, match="no description"):
        Registry([_sql_rule("blank_description", "x", description="   ")])


@pytest.mark.parametrize("severity", ["URGENT", "", "warning"])
def test_bad_severity_is_refused(severity: str) -> None:
    with pytest.raises(RuleDefinitionError, match="severity"):
        @rule("bad_severity_rule", severity=severity, databases=["trading"], key=["trade_id"])
        def bad():
            """Has a severity nobody knows."""
            return "SELECT trade_id FROM trading.trades"


def test_severity_must_be_a_severity_when_built_directly() -> None:
    with pytest.raises(RuleDefinitionError, match="severity"):
        Registry([_sql_rule("string_severity", "x", severity="HIGH")])


@pytest.mark.parametrize("changes, match", [
    ({"id": "Bad-Id"}, "lower_snake_case"),
    ({"databases": ()}, "databases"),
    ({"databases": ("orders",)}, "databases"),
    ({"sql": None}, "exactly one of"),
    ({"key": ()}, "key columns"),
])
def test_malformed_rules_are_refused_at_registration(changes: dict, match: str) -> None:
    with pytest.raises(RuleDefinitionError, match=match):
        Registry([_sql_rule("malformed_rule", "x", **changes)])


def test_select_unknown_id_suggests_the_close_one() -> None:
    with pytest.raises(UnknownNameError) as err:
        BUNDLED.select(["unlinked_closes", "bankrol_mismatch"])
    assert "bankrol_mismatch" in str(err.value)
    assert "did you mean 'bankroll_mismatch'" in str(err.value)
    assert err.value.exit_code == 2


def test_select_keeps_registry_order_and_all_by_default() -> None:
    chosen = BUNDLED.select(["schema_drift", "unlinked_closes", "schema_drift"])
    assert [r.id for r in chosen] == ["unlinked_closes", "schema_drift"]
    assert [r.id for r in BUNDLED.select(None)] == BUNDLED.ids


def test_rules_in_accepts_modules_lists_and_callables_and_refuses_junk() -> None:
    one, two = _sql_rule("rule_one", "m"), _sql_rule("rule_two", "m")
    module = types.ModuleType("some_plugin")
    module.RULES = (one, two)
    assert rules_in(module, "m") == [one, two]
    assert rules_in(lambda: [two], "m") == [two]
    with pytest.raises(RuleDefinitionError, match="is not a Rule"):
        rules_in([one, "not a rule"], "entry point x")
    with pytest.raises(RuleDefinitionError, match="carries no rules"):
        rules_in(42, "entry point y")


_PROJECT_RULE = '''
from toolkit.rules import rule


@rule("{rule_id}", severity="LOW", databases=["trading"], reads=["trading.trades"], key=["trade_id"])
def big_trades():
    """Trades of more than a million shares."""
    return "SELECT trade_id FROM trading.trades WHERE quantity > 1e6 ORDER BY trade_id"
'''


def test_checks_directory_adds_rules(tmp_path: Path) -> None:
    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "big.py").write_text(_PROJECT_RULE.format(rule_id="big_trades"), encoding="utf-8")
    (checks / "_helper.py").write_text("raise RuntimeError('private modules are not loaded')\n", encoding="utf-8")
    registry = load_registry(_settings(tmp_path, checks_dir=[checks]), plugins=False)
    assert registry.ids[:-1] == BUNDLED.ids and registry.ids[-1] == "big_trades"
    assert registry["big_trades"].description == "Trades of more than a million shares."


def test_checks_directory_reusing_an_id_is_refused_naming_the_file(tmp_path: Path) -> None:
    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "dupe.py").write_text(_PROJECT_RULE.format(rule_id="orphaned_sells"), encoding="utf-8")
    with pytest.raises(RuleDefinitionError) as err:
        load_registry(_settings(tmp_path, checks_dir=[checks]), plugins=False)
    assert "orphaned_sells" in str(err.value) and "toolkit.checks.ledger" in str(err.value)


def test_checks_directory_with_a_broken_module_names_it(tmp_path: Path) -> None:
    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "broken.py").write_text("import definitely_not_a_module_xyz\n", encoding="utf-8")
    with pytest.raises(RuleDefinitionError) as err:
        directory_rules([checks])
    assert "broken.py" in str(err.value) and "ModuleNotFoundError" in str(err.value)


# -- plugins, checks directories and pyproject through the CLI --------------------------------------

def _plugin_dist(where: Path, rule_id: str) -> Path:
    """A fake installed distribution declaring ``[toolkit.checks] extra = extra_rules_mod``."""
    where.mkdir(parents=True, exist_ok=True)
    info = where / "extra_rules-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: extra-rules\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[toolkit.checks]\nextra = extra_rules_mod\n", encoding="utf-8")
    (where / "extra_rules_mod.py").write_text(_PROJECT_RULE.format(rule_id=rule_id), encoding="utf-8")
    return where


def _listed(result) -> list[dict]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def test_entry_point_plugin_is_listed(tmp_path: Path, cli) -> None:
    site = _plugin_dist(tmp_path / "site", "plugin_big_trades")
    listed = _listed(cli("integrity", "list", "--json", cwd=tmp_path, env={"PYTHONPATH": str(site)}))
    ids = [r["id"] for r in listed]
    assert ids[:len(BUNDLED.ids)] == BUNDLED.ids and ids[-1] == "plugin_big_trades"
    entry = listed[-1]
    assert entry["severity"] == "LOW" and entry["databases"] == ["trading"] and entry["kind"] == "sql"
    assert entry["description"] == "Trades of more than a million shares."
    assert entry["source"].startswith("extra_rules_mod")
    # without the distribution on the path, the rule is not there
    assert "plugin_big_trades" not in [r["id"] for r in _listed(cli("integrity", "list", "--json", cwd=tmp_path))]


def test_plugin_reusing_a_bundled_id_fails_clearly(tmp_path: Path, cli) -> None:
    site = _plugin_dist(tmp_path / "site", "bankroll_mismatch")
    result = cli("integrity", "list", "--json", cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "duplicate rule id 'bankroll_mismatch'" in result.stderr
    assert "extra_rules_mod" in result.stderr and "toolkit.checks.bankroll" in result.stderr
    assert result.stdout == ""


def test_checks_dir_option_and_pyproject_add_rules(tmp_path: Path, cli) -> None:
    checks = tmp_path / "project_checks"
    checks.mkdir()
    (checks / "big.py").write_text(_PROJECT_RULE.format(rule_id="project_big_trades"), encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    by_option = _listed(cli("integrity", "--checks-dir", str(checks), "list", "--json", cwd=elsewhere))
    assert by_option[-1]["id"] == "project_big_trades"
    assert "project_big_trades" not in [r["id"] for r in _listed(cli("integrity", "list", "--json", cwd=elsewhere))]
    (tmp_path / "pyproject.toml").write_text('[tool.toolkit]\nchecks-dir = "project_checks"\n', encoding="utf-8")
    by_pyproject = _listed(cli("integrity", "list", "--json", cwd=tmp_path))
    assert by_pyproject[-1]["id"] == "project_big_trades"
    assert [r["id"] for r in by_pyproject[:-1]] == BUNDLED.ids


# -- execution -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def defective(tmp_path_factory: pytest.TempPathFactory):
    """A session with known defects (read only by the tests below)."""
    root = tmp_path_factory.mktemp("engine")
    settings = _settings(root)
    manifest = generate(settings, trades=3_000, tickers=40, seed=4242,
                        defects={"opening_leg_with_pnl": 7, "bankroll_mismatch": 1, "snapshot_equity_mismatch": 3,
                                 "realized_pnl_mismatch": 4})
    return settings, manifest


def _boom(ctx, rule_):
    yield Violation(rule_.id, {"n": 1}, "one before the crash")
    raise ZeroDivisionError("the rule divided by zero")


def test_a_rule_that_raises_is_an_error_and_blocks_any_gate(defective) -> None:
    settings, manifest = defective
    crashing = Rule(id="crashing_rule", severity=Severity.LOW, description="Raises.", databases=("trading",),
                    check=_boom, source="test")
    registry = Registry([*BUNDLED, crashing])
    report = run_checks(settings, registry=registry, rule_ids=["crashing_rule", "snapshot_equity_mismatch"],
                        fail_on=Severity.CRITICAL)
    result = report.result("crashing_rule")
    assert result.status == "error"
    assert "ZeroDivisionError" in result.error and "divided by zero" in result.error
    assert result.blocks(Severity.CRITICAL) and result.blocking_severity is Severity.CRITICAL
    # the other rule still ran; at fail-on CRITICAL its MEDIUM findings alone would not block
    other = report.result("snapshot_equity_mismatch")
    assert other.status == "failed" and other.count == 3 and not other.blocks(Severity.CRITICAL)
    assert [r.rule.id for r in report.blocking] == ["crashing_rule"]
    assert report.exit_code == 1


def test_a_scan_that_raises_errors_every_member(defective) -> None:
    settings, _ = defective

    def explode(ctx, members):
        raise RuntimeError("scan broke")
        yield  # pragma: no cover

    scan = Scan("exploding", explode)
    members = [Rule(id=f"scan_member_{n}", severity=Severity.MEDIUM, description="Member.", databases=("trading",),
                    scan=scan, source="test") for n in (1, 2)]
    report = run_checks(settings, registry=Registry([*BUNDLED, *members]),
                        rule_ids=["scan_member_1", "scan_member_2", "opening_leg_with_pnl"])
    assert [(r.rule.id, r.status) for r in report.results] == [
        ("opening_leg_with_pnl", "failed"), ("scan_member_1", "error"), ("scan_member_2", "error")]
    assert all("RuntimeError: scan broke" == report.result(f"scan_member_{n}").error for n in (1, 2))


def test_an_sql_rule_without_its_key_columns_is_an_error(defective) -> None:
    settings, _ = defective
    wrong = _sql_rule("wrong_columns", "test", sql="SELECT ticker FROM trading.trades LIMIT 1")
    report = run_checks(settings, registry=Registry([wrong]))
    assert report.result("wrong_columns").status == "error"
    assert "trade_id" in report.result("wrong_columns").error
    assert report.exit_code == 1


@pytest.mark.parametrize("sample", [0, 1, 2])
def test_samples_are_bounded_while_counts_stay_exact(defective, sample: int) -> None:
    settings, manifest = defective
    report = run_checks(settings, registry=BUNDLED, sample=sample, collect=True)
    assert report.sample == sample
    for rule_id in ("opening_leg_with_pnl", "realized_pnl_mismatch", "snapshot_equity_mismatch"):
        result = report.result(rule_id)
        assert result.count == len(manifest.defects[rule_id]) > sample
        assert len(result.samples) == sample
        assert {v.fingerprint for v in result.samples} <= manifest.expected(rule_id)
    assert report.result("bankroll_mismatch").count == 1
    assert len(report.result("bankroll_mismatch").samples) == min(sample, 1)


def test_money_samples_carry_stored_computed_difference_tolerance(defective) -> None:
    settings, _ = defective
    report = run_checks(settings, registry=BUNDLED)
    checked = 0
    for rule_id in ("bankroll_mismatch", "snapshot_equity_mismatch", "realized_pnl_mismatch"):
        for violation in report.result(rule_id).samples:
            data = violation.to_dict()
            assert {"stored", "computed", "difference", "tolerance"} <= set(data), (rule_id, data)
            assert violation.tolerance == pytest.approx(0.01)
            assert violation.difference == pytest.approx(violation.stored - violation.computed, abs=1e-6)
            assert abs(violation.difference) > violation.tolerance
            checked += 1
    assert checked >= 1 + 3 + 2
    bankroll = report.result("bankroll_mismatch").samples[0]
    assert 250 <= bankroll.difference <= 1000  # the injected offset
    # money is never part of a violation's identity
    assert "stored" not in bankroll.fingerprint and str(round(bankroll.stored)) not in bankroll.fingerprint


def _off_by(settings: Settings, amount: float) -> None:
    conn = sqlite3.connect(settings.path("trading"), isolation_level=None)
    try:
        conn.execute("UPDATE account SET cash_balance = cash_balance + ?", (amount,))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def clean_copy_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean-engine")
    generate(_settings(root), trades=2_000, tickers=30, seed=99)
    return root / "data"


def test_per_rule_tolerance_from_pyproject(tmp_path: Path, clean_copy_source: Path) -> None:
    shutil.copytree(clean_copy_source, tmp_path / "data")
    default = _settings(tmp_path)
    assert run_checks(default, registry=BUNDLED).exit_code == 0
    _off_by(default, 0.5)
    failing = run_checks(default, registry=BUNDLED).result("bankroll_mismatch")
    assert failing.status == "failed" and failing.count == 1
    assert failing.samples[0].tolerance == pytest.approx(0.01)
    assert failing.samples[0].difference == pytest.approx(0.5, abs=1e-6)

    (tmp_path / "pyproject.toml").write_text(
        "[tool.toolkit.rules.bankroll_mismatch]\ntolerance = 1.0\n", encoding="utf-8")
    tolerant = _settings(tmp_path)
    assert tolerant.rule_options == {"bankroll_mismatch": {"tolerance": 1.0}}
    report = run_checks(tolerant, registry=BUNDLED)
    assert report.result("bankroll_mismatch").status == "passed" and report.exit_code == 0

    _off_by(default, 1.0)  # now 1.5 off: beyond the configured tolerance too
    beyond = run_checks(tolerant, registry=BUNDLED).result("bankroll_mismatch")
    assert beyond.status == "failed" and beyond.samples[0].tolerance == pytest.approx(1.0)


def test_per_rule_tolerance_applies_to_that_rule_only(tmp_path: Path, clean_copy_source: Path) -> None:
    shutil.copytree(clean_copy_source, tmp_path / "data")
    conn = sqlite3.connect(tmp_path / "data" / "trading.db", isolation_level=None)
    try:
        conn.execute("UPDATE portfolio_snapshots SET total_equity = total_equity + 0.5 WHERE snapshot_id = 2")
    finally:
        conn.close()
    _off_by(_settings(tmp_path), 0.5)
    (tmp_path / "pyproject.toml").write_text(
        "[tool.toolkit.rules.snapshot_equity_mismatch]\ntolerance = 1.0\n", encoding="utf-8")
    report = run_checks(_settings(tmp_path), registry=BUNDLED)
    assert report.result("snapshot_equity_mismatch").status == "passed"
    assert report.result("bankroll_mismatch").status == "failed"


def test_run_checks_refuses_a_missing_data_directory(tmp_path: Path) -> None:
    from toolkit.errors import NotInitialisedError

    with pytest.raises(NotInitialisedError, match="does not exist"):
        run_checks(_settings(tmp_path), registry=BUNDLED)


def test_rule_context_sees_every_database_attached(defective) -> None:
    """Cross-database rules are plain joins: every file is attached under its logical name."""
    settings, _ = defective

    @rule("cross_db_probe", severity="LOW", databases=["trading", "positions", "ml_training"], key=["name"])
    def probe(ctx, rule_):
        """Counts rows across every database."""
        trades, positions, runs = ctx.conn.execute(
            "SELECT (SELECT count(*) FROM trading.trades), (SELECT count(*) FROM positions.positions), "
            "(SELECT count(*) FROM ml_training.training_runs)").fetchone()
        yield Violation(rule_.id, {"name": "counts"}, f"{trades} {positions} {runs}")
        # read-only: a write is refused and reported as the rule's error
        ctx.conn.execute("DELETE FROM trading.trades")

    report = run_checks(settings, registry=Registry([probe]))
    result = report.result("cross_db_probe")
    trades, positions, runs = map(int, result.samples[0].message.split())
    assert trades >= 3_000 and positions > 0 and runs > 0
    assert result.status == "error" and "readonly" in result.error.replace("-", "").lower()


def _fills_of_unknown_orders(settings: Settings, count: int) -> set[str]:
    conn = sqlite3.connect(settings.path("trading"), isolation_level=None)  # foreign keys off: a bot's bug
    try:
        ids = {f"stray-{n}" for n in range(count)}
        conn.executemany("INSERT INTO fills (fill_id, order_id, ticker, side, quantity, price, filled_at) "
                         "VALUES (?, ?, 'AAPL', 'buy', 1, 100, 1735828200)", [(i, f"no-such-order-{i}") for i in ids])
        return ids
    finally:
        conn.close()


def test_fills_of_unknown_orders_are_found_by_both_rules_from_one_foreign_key_pass(
        tmp_path: Path, clean_copy_source: Path) -> None:
    shutil.copytree(clean_copy_source, tmp_path / "data")
    settings = _settings(tmp_path)
    stray = _fills_of_unknown_orders(settings, 3)
    report = run_checks(settings, registry=BUNDLED, collect=True, sample=10)
    orders = report.result("order_fill_mismatch")
    assert orders.count == 3 and {v.key["fill_id"] for v in orders.samples} == stray
    assert all("unknown order 'no-such-order-" in v.message and v.fix is None for v in orders.samples)
    foreign = report.result("foreign_key_violations")
    assert foreign.count == 3
    assert {(v.key["database"], v.key["table"], v.key["parent"]) for v in foreign.samples} == {("trading", "fills", "orders")}
    assert report.exit_code == 1


def test_fills_of_unknown_orders_are_found_without_the_foreign_key_too(tmp_path: Path, clean_copy_source: Path) -> None:
    """A file whose fills table lost its REFERENCES clause still has its stray fills reported."""
    shutil.copytree(clean_copy_source, tmp_path / "data")
    settings = _settings(tmp_path)
    stray = _fills_of_unknown_orders(settings, 2)
    conn = sqlite3.connect(settings.path("trading"), isolation_level=None)
    try:
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute("UPDATE sqlite_master SET sql = replace(sql, 'REFERENCES orders (order_id)', '') "
                     "WHERE type = 'table' AND name = 'fills'")
    finally:
        conn.close()
    report = run_checks(settings, registry=BUNDLED, rule_ids=["order_fill_mismatch", "foreign_key_violations"],
                        sample=10)
    assert report.result("foreign_key_violations").count == 0
    orders = report.result("order_fill_mismatch")
    assert orders.count == 2 and {v.key["fill_id"] for v in orders.samples} == stray
