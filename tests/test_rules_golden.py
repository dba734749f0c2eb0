"""Golden cases for every rule of the catalogue: inject exactly known defects, expect exactly them.

For each rule, a small generated session gets defects for that one rule; then *every* rule's
reported fingerprints must equal the manifest's expected set (the injected rule finds exactly its
keys; every other rule finds nothing, except overlaps the manifest documents). A clean 10,000-trade
session must pass every rule, and the registry itself is checked: a rule without a description,
severity, databases or golden case (an injector in ``DEFECT_KINDS``) fails here.

The generated sessions are long-only. ``orphaned_sells`` exists only on a long-only ledger
(``allow-short = false``): with shorts allowed (the default) the same oversell opens a short lot and
is reported as ``unsplit_flips`` instead (tests/test_rules_shorts.py shows both), so the cases that
inject it run with ``allow-short`` off. The rules of the short side have their golden cases on small
hand-built ledgers in tests/test_rules_shorts.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.config import DATABASES, Settings, load_settings
from toolkit.fixtures import DEFECT_KINDS, generate
from toolkit.rules import Severity, run_checks
from toolkit.content import load_registry

#: The bundled catalogue (third-party plugins installed in the environment are not ours to golden-test).
REGISTRY = load_registry(plugins=False)

#: How many defects each golden case injects (the ledger has one account; quick_check damages one file).
COUNTS = {"bankroll_mismatch": 1, "sqlite_quick_check": 1}
DEFAULT_COUNT = 3

#: Collateral the defect injector documents in the manifest: an ML row of an unknown run is also a
#: foreign-key violation. Any other rule reporting something is a bug (in the rule or the injector).
OVERLAPS = {"ml_orphan_rows": {"foreign_key_violations"},
            # a close recorded as an opening (is_close 0) still carries its realized P&L
            "close_flag_mismatch": {"opening_leg_with_pnl"}}

#: Every rule id and every injector id: a rule without an injector, or an injector without a rule,
#: becomes a failing test case of its own.
GOLDEN_IDS = list(dict.fromkeys([*REGISTRY.ids, *DEFECT_KINDS]))

#: An injected oversell is an orphaned sell only when shorts are off.
LONG_ONLY_RULES = frozenset({"orphaned_sells"})

TRADES, TICKERS, SEED = 3_000, 40, 20_251


def _settings(directory: Path, *, allow_short: bool = True) -> Settings:
    return load_settings(directory / "data", cwd=directory, env={}).with_(allow_short=allow_short)


def _fingerprints(result) -> list[str]:
    assert result.fingerprints is not None, "run with collect=True must collect fingerprints"
    return result.fingerprints


def _assert_exact(report, manifest, *, damaged: frozenset[str] = frozenset()) -> None:
    """Every rule reports exactly the manifest's fingerprints; rules reading a damaged file are
    skipped with a reason naming that file."""
    assert [r.rule.id for r in report.results] == REGISTRY.ids
    for result in report.results:
        rule = result.rule
        expected = manifest.expected(rule.id)
        hit = [d for d in rule.databases if d in damaged]
        if rule.sound_files_only and hit:
            assert result.status == "skipped", (rule.id, result.status, result.error)
            assert any(f"{d}.db" in (result.reason or "") for d in hit), (rule.id, result.reason)
            assert "quick_check" in result.reason
            assert not expected, f"{rule.id}: the manifest expects keys from a rule that cannot run"
            assert _fingerprints(result) == [] and result.count == 0
            continue
        assert result.error is None, f"{rule.id} raised: {result.error}"
        assert result.status in ("passed", "failed"), (rule.id, result.status, result.reason)
        got = _fingerprints(result)
        assert len(got) == len(set(got)), f"{rule.id} reported a violation twice: {sorted(got)}"
        missing, extra = sorted(expected - set(got)), sorted(set(got) - expected)
        assert not missing and not extra, f"{rule.id}: missing {missing}, unexpected {extra}"
        assert result.count == len(expected), rule.id
        assert result.status == ("failed" if expected else "passed"), rule.id


@pytest.mark.parametrize("rule_id", GOLDEN_IDS)
def test_golden_case(rule_id: str, tmp_path: Path) -> None:
    assert rule_id in REGISTRY, f"defect injector {rule_id!r} has no rule in the registry"
    assert rule_id in DEFECT_KINDS, f"rule {rule_id!r} has no defect injector (golden case) in toolkit.fixtures"
    count = COUNTS.get(rule_id, DEFAULT_COUNT)
    settings = _settings(tmp_path, allow_short=rule_id not in LONG_ONLY_RULES)
    manifest = generate(settings, trades=TRADES, tickers=TICKERS, seed=SEED, defects={rule_id: count})
    assert len(manifest.defects.get(rule_id, [])) == count, manifest.defects
    assert set(manifest.defects) - {rule_id} <= OVERLAPS.get(rule_id, set()), manifest.defects
    damaged = frozenset(k["database"] for k in manifest.defects.get("sqlite_quick_check", []))
    report = run_checks(settings, registry=REGISTRY, collect=True, sample=5)
    _assert_exact(report, manifest, damaged=damaged)
    result = report.result(rule_id)
    assert result.status == "failed"
    # the default gate (fail-on HIGH): a failing rule at HIGH or above, or a skipped rule, blocks
    gate = any(r.status == "skipped" or (r.status == "failed" and r.rule.severity >= Severity.HIGH)
               for r in report.results)
    assert report.fail_on is Severity.HIGH and report.exit_code == (1 if gate else 0)
    # samples are a bounded prefix of the reported violations
    assert 0 < len(result.samples) <= 5
    assert {v.fingerprint for v in result.samples} <= manifest.expected(rule_id)
    assert all(v.rule_id == rule_id for v in result.samples)


def test_golden_quick_check_damages_only_the_named_file(tmp_path: Path) -> None:
    """Rules that read only undamaged files keep running (and stay exact) next to a damaged one."""
    settings = _settings(tmp_path, allow_short=False)   # it injects orphaned sells
    manifest = generate(settings, trades=TRADES, tickers=TICKERS, seed=SEED + 1,
                        defects={"sqlite_quick_check": 1, "orphaned_sells": 2, "snapshot_equity_mismatch": 2})
    damaged = frozenset(k["database"] for k in manifest.defects["sqlite_quick_check"])
    assert len(damaged) == 1
    report = run_checks(settings, registry=REGISTRY, collect=True)
    _assert_exact(report, manifest, damaged=damaged)
    ran = [r for r in report.results if not set(r.rule.databases) & damaged]
    assert ran and all(r.status in ("passed", "failed") for r in ran)
    assert report.result("orphaned_sells").count == 2
    assert report.exit_code == 1


def test_golden_several_rules_at_once(tmp_path: Path) -> None:
    defects = {rule_id: 2 for rule_id in DEFECT_KINDS if rule_id not in ("sqlite_quick_check", "unsplit_flips")}
    defects.update(bankroll_mismatch=1, position_ledger_mismatch=4, realized_pnl_mismatch=4, unlinked_closes=4)
    settings = _settings(tmp_path, allow_short=False)   # it injects orphaned sells
    manifest = generate(settings, trades=TRADES, tickers=TICKERS, seed=SEED + 2, defects=defects)
    for rule_id, count in defects.items():
        assert len(manifest.defects[rule_id]) >= count, rule_id
    report = run_checks(settings, registry=REGISTRY, collect=True)
    _assert_exact(report, manifest)
    assert {r.rule.id for r in report.results if r.status == "failed"} == set(defects)
    assert report.exit_code == 1


# -- a clean session ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_report(tmp_path_factory: pytest.TempPathFactory):
    settings = _settings(tmp_path_factory.mktemp("clean10k"))
    manifest = generate(settings, trades=10_000, tickers=80, seed=SEED)
    assert manifest.defects == {}
    return manifest, run_checks(settings, registry=REGISTRY, collect=True)


def test_clean_session_passes_every_rule(clean_report) -> None:
    manifest, report = clean_report
    assert manifest.summary["trades"] == 10_000
    assert [r.rule.id for r in report.results] == REGISTRY.ids
    for result in report.results:
        assert (result.rule.id, result.status, result.count, result.error, result.reason) == \
               (result.rule.id, "passed", 0, None, None)
        assert result.fingerprints == [] and result.samples == []
    assert report.violations == 0 and report.blocking == [] and report.exit_code == 0


# -- the registry itself --------------------------------------------------------------------------

def _registry_problems(registry) -> list[str]:
    problems = []
    for rule in registry:
        description = rule.description
        if not isinstance(description, str) or not description.strip():
            problems.append(f"{rule.id}: no description")
        elif "\n" in description:
            problems.append(f"{rule.id}: description is not one line")
        if not isinstance(rule.severity, Severity):
            problems.append(f"{rule.id}: severity {rule.severity!r} is not a Severity")
        if not rule.databases or not set(rule.databases) <= set(DATABASES):
            problems.append(f"{rule.id}: databases {rule.databases!r}")
        if rule.id not in DEFECT_KINDS:
            problems.append(f"{rule.id}: no golden case (no defect injector in toolkit.fixtures.DEFECT_KINDS)")
    return problems


@pytest.mark.parametrize("registry", [REGISTRY, load_registry()], ids=["bundled", "with-plugins"])
def test_every_rule_is_described_and_has_a_golden_case(registry) -> None:
    assert len(registry) >= 16  # the SPEC §5 catalogue
    problems = _registry_problems(registry)
    assert not problems, "\n".join(problems)
    # and the golden test above is parametrized over every one of them
    assert set(registry.ids) <= set(GOLDEN_IDS)


def test_the_meta_test_catches_a_rule_without_golden_case() -> None:
    """Adding a rule without an injector must fail the meta-test (and its golden case)."""
    from toolkit.rules import Registry, rule

    @rule("brand_new_rule", severity="LOW", databases=["trading"], key=["trade_id"])
    def brand_new():
        """A rule someone added without a defect injector."""
        return "SELECT trade_id FROM trading.trades WHERE 0"

    problems = _registry_problems(Registry([*REGISTRY, brand_new]))
    assert problems == ["brand_new_rule: no golden case (no defect injector in toolkit.fixtures.DEFECT_KINDS)"]


def test_spec_catalogue_severities() -> None:
    """The SPEC §5 catalogue: ids are stable, and so are their severities."""
    spec = {
        "unlinked_closes": "MEDIUM", "orphaned_sells": "HIGH", "bankroll_mismatch": "CRITICAL",
        "opening_leg_with_pnl": "CRITICAL", "realized_pnl_mismatch": "HIGH", "lot_status_inconsistent": "HIGH",
        "position_ledger_mismatch": "HIGH", "order_fill_mismatch": "MEDIUM", "snapshot_equity_mismatch": "MEDIUM",
        "ml_orphan_rows": "MEDIUM", "ensemble_weights_sum": "MEDIUM", "rl_state_missing_avg_reward": "LOW",
        "qtable_unsafe_keys": "CRITICAL", "sqlite_quick_check": "CRITICAL", "foreign_key_violations": "HIGH",
        "schema_drift": "HIGH",
    }
    assert {rule_id: REGISTRY[rule_id].severity.name for rule_id in spec} == spec
