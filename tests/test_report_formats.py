"""The report formats of one check result: JSON (versioned), JUnit XML, SARIF 2.1.0 (validated
against the official schema), Markdown, table; and `--output FILE`."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import sqlite3
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from toolkit.config import Settings, load_settings
from toolkit.fixtures import generate
from toolkit.report import FORMATS, render
from toolkit.rules import Registry, Rule, Severity, Violation, run_checks
from toolkit.rules.model import fingerprint
from toolkit.content import load_registry
from toolkit.rules.runner import RuleResult, RuleStatus

REPO = Path(__file__).resolve().parents[1]
BUNDLED = load_registry(plugins=False)
SAMPLE = 2


def _settings(root: Path) -> Settings:
    return load_settings(root / "data", cwd=root, env={})


def _crash(ctx, rule_):
    raise LookupError("this rule cannot run | and says so")
    yield  # pragma: no cover


CRASHING = Rule(id="crashing_rule", severity=Severity.LOW, description="A rule that always raises.",
                databases=("trading",), check=_crash, source="tests")


def _strict_json(text: str):
    """Parse as RFC 8259 JSON: NaN and Infinity are not JSON."""
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Four reports: violations (blocking and not), errors and skips, clean, and non-finite amounts."""
    made = {}
    root = tmp_path_factory.mktemp("violations")
    generate(_settings(root), trades=3_000, tickers=40, seed=51,
             defects={"unsplit_flips": 2, "snapshot_equity_mismatch": 3, "bankroll_mismatch": 1,
                      "rl_state_missing_avg_reward": 3, "qtable_unsafe_keys": 1})
    made["violations"] = run_checks(_settings(root), registry=BUNDLED, sample=SAMPLE)

    clean = tmp_path_factory.mktemp("clean")
    generate(_settings(clean), trades=3_000, tickers=40, seed=52)
    made["clean"] = run_checks(_settings(clean), registry=BUNDLED, sample=SAMPLE)

    broken = tmp_path_factory.mktemp("problems")
    shutil.copytree(clean / "data", broken / "data")
    path = broken / "data" / "positions.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root_page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'idx_positions_strategy'").fetchone()[0]
    finally:
        conn.close()
    with open(path, "r+b") as fh:
        fh.seek((root_page - 1) * page_size)
        fh.write(b"\xff" * 8)
    conn = sqlite3.connect(broken / "data" / "trading.db", isolation_level=None)
    try:
        conn.execute("UPDATE portfolio_snapshots SET total_equity = total_equity + 100 WHERE snapshot_id IN (2, 3, 5)")
    finally:
        conn.close()
    made["problems"] = run_checks(_settings(broken), registry=Registry([*BUNDLED, CRASHING]), sample=SAMPLE,
                                  fail_on=Severity.CRITICAL)

    odd = tmp_path_factory.mktemp("nonfinite")
    shutil.copytree(clean / "data", odd / "data")
    conn = sqlite3.connect(odd / "data" / "trading.db", isolation_level=None)
    try:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute("UPDATE portfolio_snapshots SET total_equity = 9e999 WHERE snapshot_id = 4")
        conn.execute("UPDATE trades SET price = 9e999 WHERE trade_id = (SELECT max(trade_id) FROM trades WHERE action = 'BUY')")
    finally:
        conn.close()
    made["nonfinite"] = run_checks(_settings(odd), registry=BUNDLED, sample=SAMPLE)
    return made


def test_the_fixture_reports_are_what_the_format_tests_need(reports) -> None:
    violations, problems, clean, odd = reports["violations"], reports["problems"], reports["clean"], reports["nonfinite"]
    assert {r.status for r in violations.results} == {"passed", "failed"}
    assert violations.result("unsplit_flips").blocks(violations.fail_on)
    assert not violations.result("snapshot_equity_mismatch").blocks(violations.fail_on)
    assert violations.result("snapshot_equity_mismatch").count == 3 > SAMPLE
    assert {r.status for r in problems.results} == {"passed", "failed", "error", "skipped"}
    assert problems.result("crashing_rule").status == "error"
    assert problems.result("position_ledger_mismatch").status == "skipped"
    assert problems.result("snapshot_equity_mismatch").status == "failed"
    assert not problems.result("snapshot_equity_mismatch").blocks(problems.fail_on)
    assert {r.status for r in clean.results} == {"passed"} and clean.exit_code == 0
    assert any(isinstance(v.stored, float) and math.isinf(v.stored)
               for v in odd.result("snapshot_equity_mismatch").samples)



def test_rule_statuses_are_enum_members_that_render_as_their_plain_strings(reports, tmp_path: Path) -> None:
    problems = reports["problems"]
    assert all(type(r.status) is RuleStatus for r in problems.results)
    # members still equal the strings other code compares with, and hash like them
    assert problems.result("crashing_rule").status == "error" and RuleStatus.SKIPPED == "skipped"
    assert {"error": 1}[RuleStatus.ERROR] == 1
    assert RuleResult(BUNDLED["unsplit_flips"], status="skipped").status is RuleStatus.SKIPPED
    with pytest.raises(ValueError):
        RuleResult(BUNDLED["unsplit_flips"], status="exploded")
    # every format prints the value, never the member's name
    for fmt in FORMATS:
        text = render(problems, fmt)
        assert "RuleStatus" not in text, fmt
    data = _strict_json(render(problems, "json"))
    assert {type(r["status"]) for r in data["rules"]} == {str}
    assert {r["status"] for r in data["rules"]} == {"passed", "failed", "error", "skipped"}
    assert '"status": "skipped"' in render(problems, "json")
    # and the run history stores plain text
    from toolkit.rules.history import record_check_run

    shutil.copytree(problems.data_dir, tmp_path / "data")
    record_check_run(_settings(tmp_path), problems)
    conn = sqlite3.connect(tmp_path / "data" / "migrations.db")
    try:
        stored = set(conn.execute("SELECT typeof(status), status FROM check_results WHERE run_id = ?", (problems.run_id,)))
    finally:
        conn.close()
    assert stored == {("text", s) for s in ("passed", "failed", "error", "skipped")}

ALL = ["violations", "problems", "clean", "nonfinite"]


# -- JSON --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_json_is_versioned_with_one_entry_per_rule(reports, name: str) -> None:
    report = reports[name]
    data = _strict_json(render(report, "json"))
    assert data["schema_version"] == 1
    assert data["tool"]["name"] == "paper-ledger-toolkit" and data["tool"]["version"]
    assert data["run_id"] == report.run_id and data["fail_on"] == report.fail_on.name
    assert data["exit_code"] == report.exit_code
    assert [r["id"] for r in data["rules"]] == [r.rule.id for r in report.results]
    for entry, result in zip(data["rules"], report.results):
        assert entry["severity"] == result.rule.severity.name
        assert entry["description"] == result.rule.description
        assert entry["databases"] == list(result.rule.databases)
        assert (entry["status"], entry["count"], entry["baselined"]) == (result.status, result.count, result.baselined)
        assert entry["blocking"] == result.blocks(report.fail_on)
        assert entry["error"] == result.error and entry["skipped_reason"] == result.reason
        assert len(entry["samples"]) == min(result.count, SAMPLE)
        for sample in entry["samples"]:
            assert sample["fingerprint"] == fingerprint(entry["id"], sample["key"])
            assert isinstance(sample["message"], str)
    summary = data["summary"]
    assert summary["rules"] == len(report.results)
    assert summary["violations"] == sum(r["count"] for r in data["rules"])
    assert sum(summary[s] for s in ("passed", "failed", "error", "skipped")) == summary["rules"]
    assert summary["blocking_rules"] == [r["id"] for r in data["rules"] if r["blocking"]]


def test_json_money_fields(reports) -> None:
    data = _strict_json(render(reports["violations"], "json"))
    bankroll = next(r for r in data["rules"] if r["id"] == "bankroll_mismatch")["samples"][0]
    assert set(bankroll) >= {"key", "message", "stored", "computed", "difference", "tolerance", "fingerprint"}
    assert bankroll["difference"] == pytest.approx(bankroll["stored"] - bankroll["computed"])
    assert "stored" not in bankroll["fingerprint"]


def test_non_finite_amounts_stay_valid_json(reports) -> None:
    """A stored Inf (SQLite keeps it) must not turn the report into invalid JSON."""
    for fmt in ("json", "sarif"):
        text = render(reports["nonfinite"], fmt)
        _strict_json(text)
    data = _strict_json(render(reports["nonfinite"], "json"))
    snapshot = next(r for r in data["rules"] if r["id"] == "snapshot_equity_mismatch")["samples"][0]
    assert snapshot["key"] == {"snapshot_id": 4}
    assert isinstance(snapshot["stored"], str) and "inf" in snapshot["stored"].lower()


# -- JUnit -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_junit_has_one_testcase_per_rule_and_fails_blocking_rules(reports, name: str) -> None:
    report = reports[name]
    root = ET.fromstring(render(report, "junit").encode("utf-8"))
    assert root.tag == "testsuites" and root.get("tests") == str(len(report.results))
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [r.rule.id for r in report.results]
    assert suite.get("tests") == str(len(cases))
    for case, result in zip(cases, report.results):
        assert case.get("classname") == f"integrity.{result.rule.severity.name}"
        failures, errors, skipped = case.findall("failure"), case.findall("error"), case.findall("skipped")
        if result.blocks(report.fail_on):
            assert len(failures) + len(errors) == 1, (result.rule.id, result.status)
            assert not skipped, f"{result.rule.id} blocks the gate but a JUnit consumer would see it skipped"
        else:
            assert not failures and not errors and not skipped, result.rule.id
        if result.status == "error":
            assert errors and result.error in errors[0].get("message")
        if result.status == "skipped":
            assert result.reason in (errors or failures)[0].get("message")
        if result.status == "failed" and result.blocks(report.fail_on):
            text = failures[0].text or ""
            assert failures[0].get("type") == result.rule.severity.name
            assert str(result.count) in failures[0].get("message")
            for violation in result.samples:
                assert ", ".join(f"{k}={v}" for k, v in violation.key.items()) in text
            if result.count > len(result.samples):
                assert f"and {result.count - len(result.samples)} more" in text
        if result.status == "failed" and not result.blocks(report.fail_on):
            assert f"{result.count} violation(s) below fail-on" in case.find("system-out").text
    assert suite.get("failures") == str(len(suite.findall("testcase/failure")))
    assert suite.get("errors") == str(len(suite.findall("testcase/error")))
    assert suite.get("skipped") == str(len(suite.findall("testcase/skipped")))


# -- SARIF -------------------------------------------------------------------------------------------

#: Where the official schema lives: ``../shared/data`` relative to the checkout root (CI lays the
#: project's shared reference files beside the clone). TOOLKIT_SARIF_SCHEMA names another copy.
SARIF_SCHEMA_NAME = "sarif-schema-2.1.0.json"


def in_ci(env) -> bool:
    return env.get("CI", "").strip().lower() in ("true", "1", "yes")


def not_available(reason: str, env):
    """Outside CI a missing prerequisite skips the SARIF tests (saying why); in CI it fails them."""
    if in_ci(env):
        pytest.fail(f"{reason}; CI is set, so the SARIF tests fail instead of skipping", pytrace=False)
    pytest.skip(reason)


def find_sarif_schema(repo: Path, env) -> Path:
    candidates = [Path(env["TOOLKIT_SARIF_SCHEMA"])] if env.get("TOOLKIT_SARIF_SCHEMA") else []
    candidates.append(repo.parent / "shared" / "data" / SARIF_SCHEMA_NAME)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        not_available("the official SARIF 2.1.0 schema was not found (looked at " + ", ".join(map(str, candidates))
                      + "; put it in ../shared/data beside the checkout, or set TOOLKIT_SARIF_SCHEMA to its path)", env)
    return found


@pytest.fixture(scope="module")
def sarif_validator():
    try:
        import jsonschema
    except ImportError:
        not_available("jsonschema is not installed (it is in the test extras: pip install -e '.[test]')", os.environ)
    schema = json.loads(find_sarif_schema(REPO, os.environ).read_text(encoding="utf-8"))
    assert "2.1.0" in schema.get("title", "") + schema.get("id", schema.get("$id", ""))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_the_sarif_schema_is_found_beside_the_checkout(tmp_path: Path) -> None:
    repo = tmp_path / "clone"
    repo.mkdir()
    schema = tmp_path / "shared" / "data" / SARIF_SCHEMA_NAME
    schema.parent.mkdir(parents=True)
    schema.write_text("{}")
    assert find_sarif_schema(repo, {}) == schema
    assert find_sarif_schema(repo, {"CI": "true"}) == schema
    # this checkout's own copy is where CI puts it, relative to the checkout (skips outside CI if absent)
    env = {k: v for k, v in os.environ.items() if k != "TOOLKIT_SARIF_SCHEMA"}
    assert find_sarif_schema(REPO, env) == REPO.parent / "shared" / "data" / SARIF_SCHEMA_NAME


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_a_missing_sarif_schema_fails_in_ci(tmp_path: Path, ci: str) -> None:
    repo = tmp_path / "clone"
    repo.mkdir()
    with pytest.raises(pytest.fail.Exception, match=r"SARIF 2\.1\.0 schema was not found.*CI is set") as info:
        find_sarif_schema(repo, {"CI": ci})
    assert str(tmp_path / "shared" / "data" / SARIF_SCHEMA_NAME) in str(info.value)


@pytest.mark.parametrize("env", [{}, {"CI": "false"}, {"CI": ""}])
def test_a_missing_sarif_schema_skips_outside_ci_with_the_reason(tmp_path: Path, env: dict) -> None:
    repo = tmp_path / "clone"
    repo.mkdir()
    with pytest.raises(pytest.skip.Exception, match=r"SARIF 2\.1\.0 schema was not found") as info:
        find_sarif_schema(repo, env)
    assert str(tmp_path / "shared" / "data" / SARIF_SCHEMA_NAME) in str(info.value)
    assert "/work/" not in str(info.value).replace(str(tmp_path), "")


def test_an_explicit_schema_path_is_used_and_must_exist(tmp_path: Path) -> None:
    repo = tmp_path / "clone"
    repo.mkdir()
    elsewhere = tmp_path / "copy.json"
    elsewhere.write_text("{}")
    assert find_sarif_schema(repo, {"TOOLKIT_SARIF_SCHEMA": str(elsewhere)}) == elsewhere
    with pytest.raises(pytest.fail.Exception, match="missing.json"):
        find_sarif_schema(repo, {"TOOLKIT_SARIF_SCHEMA": str(tmp_path / "missing.json"), "CI": "true"})


def _valid_sarif(validator, text: str) -> dict:
    data = _strict_json(text)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message[:300]}" for e in errors[:10])
    return data


_LEVEL = {"CRITICAL": "error", "HIGH": "error", "MEDIUM": "warning", "LOW": "note"}


@pytest.mark.parametrize("name", ALL)
def test_sarif_validates_against_the_official_schema(reports, sarif_validator, name: str) -> None:
    report = reports[name]
    data = _valid_sarif(sarif_validator, render(report, "sarif"))
    assert data["version"] == "2.1.0"
    (run,) = data["runs"]
    driver = run["tool"]["driver"]
    rules = driver["rules"]
    assert [r["id"] for r in rules] == [r.rule.id for r in report.results]
    for descriptor, result in zip(rules, report.results):
        assert descriptor["shortDescription"]["text"] == result.rule.description
        assert descriptor["defaultConfiguration"]["level"] == _LEVEL[result.rule.severity.name]
    expected = [(r.rule.id, v.fingerprint) for r in report.results for v in r.samples]
    assert [(r["ruleId"], r["partialFingerprints"]["toolkitViolation/v1"]) for r in run["results"]] == expected
    for item in run["results"]:
        assert rules[item["ruleIndex"]]["id"] == item["ruleId"]
        assert item["level"] == rules[item["ruleIndex"]]["defaultConfiguration"]["level"]
        assert item["message"]["text"]
        uri = item["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert uri in ("positions.db", "trading.db", "ml_training.db")
    (invocation,) = run["invocations"]
    problems = [r for r in report.results if r.status in ("error", "skipped")]
    assert invocation["exitCode"] == report.exit_code
    assert invocation["executionSuccessful"] is (not problems)
    notifications = invocation["toolExecutionNotifications"]
    assert len(notifications) == len(problems)
    for note, result in zip(notifications, problems):
        assert note["level"] == "error" and result.rule.id in note["message"]["text"]
        # a notification names its rule through associatedRule; `descriptor` would index driver.notifications
        assert rules[note["associatedRule"]["index"]]["id"] == note["associatedRule"]["id"] == result.rule.id
        if "descriptor" in note:
            assert note["descriptor"]["index"] < len(driver.get("notifications", []))
    assert run["properties"]["counts"] == {r.rule.id: r.count for r in report.results}
    if name == "clean":
        assert run["results"] == [] and notifications == []


def test_sarif_carries_money_properties(reports, sarif_validator) -> None:
    data = _valid_sarif(sarif_validator, render(reports["violations"], "sarif"))
    bankroll = [r for r in data["runs"][0]["results"] if r["ruleId"] == "bankroll_mismatch"]
    assert len(bankroll) == 1
    assert set(bankroll[0]["properties"]) == {"stored", "computed", "difference", "tolerance"}


# -- Markdown and table ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_markdown_renders_a_row_per_rule_and_details_for_samples(reports, name: str) -> None:
    report = reports[name]
    text = render(report, "markdown")
    first = text.splitlines()[0]
    assert first == ("## Integrity check ❌ failed" if report.blocking else "## Integrity check ✅ passed")
    assert f"`{report.run_id}`" in text and f"fail-on **{report.fail_on.name}**" in text
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
             for line in text.splitlines() if line.startswith("|")]
    rows = {row[1]: row for row in cells if len(row) == 6 and row[1].startswith("`")}
    assert list(rows) == [f"`{r.rule.id}`" for r in report.results]
    for result in report.results:
        row = rows[f"`{result.rule.id}`"]
        assert row[2:4] == [result.rule.severity.name, str(result.count)], row
        details = f"<details><summary><code>{result.rule.id}</code>: {result.count} violation(s)</summary>"
        assert (details in text) == bool(result.samples)
    # table cells never break on a `|` inside a message
    if name == "problems":
        assert "this rule cannot run \\| and says so" in text


@pytest.mark.parametrize("name", ALL)
def test_table_lists_every_rule_and_the_verdict(reports, name: str) -> None:
    report = reports[name]
    text = render(report, "table")
    for result in report.results:
        assert result.rule.id in text
        if result.samples:
            assert f"{result.rule.id}: {result.count} violation(s)" in text
    assert text.splitlines()[-1].startswith("gate FAILED" if report.blocking else "gate passed")
    assert set(FORMATS) == {"table", "json", "junit", "sarif", "markdown"}


# -- --output FILE ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("output")
    generate(_settings(root), trades=2_000, tickers=30, seed=53, defects={"unsplit_flips": 1, "ensemble_weights_sum": 1})
    return root / "data"


@pytest.mark.parametrize("fmt", ["json", "sarif", "junit", "markdown", "table"])
def test_output_writes_the_file_and_prints_a_summary(session_dir: Path, tmp_path: Path, cli, fmt: str,
                                                      request: pytest.FixtureRequest) -> None:
    target = tmp_path / f"report.{fmt}"
    result = cli("integrity", "--data-dir", str(session_dir), "check", "--format", fmt, "--output", str(target),
                 cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"{fmt} report written to {target}; gate FAILED (fail-on HIGH)")
    assert "orphaned" not in line and "1 blocking" in line
    text = target.read_text(encoding="utf-8")
    if fmt == "json":
        data = _strict_json(text)
        assert data["summary"]["blocking_rules"] == ["unsplit_flips"]
        assert f"run {data['run_id']}," in line
    elif fmt == "sarif":
        _valid_sarif(request.getfixturevalue("sarif_validator"), text)
    elif fmt == "junit":
        assert len(ET.fromstring(text.encode()).findall(".//testcase")) == len(BUNDLED.ids)
    else:
        assert "unsplit_flips" in text


def test_output_into_a_missing_directory_is_a_runtime_error(session_dir: Path, tmp_path: Path, cli) -> None:
    target = tmp_path / "no" / "such" / "dir" / "report.json"
    result = cli("integrity", "--data-dir", str(session_dir), "check", "--format", "json", "--output", str(target),
                 cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 3
    assert str(target) in result.stderr
