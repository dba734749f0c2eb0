"""`integrity adversarial` and its library (toolkit.guard.harness.run_attacks) against a clean generated
session and the seed004 scenario, guardrails on and off: zero gaps, every attack blocked / detected by
every rule it targets, escapes refused, and the content of every database file exactly as before.
And the other side: a gap exits 1, a change behind the session's back exits 4, a mistyped attack 2."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest

from toolkit.config import Settings, load_settings
from toolkit.errors import UnknownNameError
from toolkit.fixtures import attacks as attack_catalogue
from toolkit.fixtures import generate
from toolkit.guard import connection as guard_connection
from toolkit.guard.harness import AttackOutcome, AttackVerdict, run_attacks
from toolkit.rules.registry import Registry
from toolkit.content import load_registry

from dbstate import file_hashes as contents

REGISTRY = load_registry(plugins=False)
ATTACK_IDS = [a.id for a in attack_catalogue.ATTACKS]
#: What runs on a default data directory (allow-short on): "oversell" means something only with shorts off.
RUN_IDS = [a.id for a in attack_catalogue.ATTACKS if a.applies is None or a.applies(load_settings(".", env={}))]
DATA_ATTACKS = [a for a in attack_catalogue.ATTACKS if a.kind == "data"]
ESCAPES = [a for a in attack_catalogue.ATTACKS if a.kind == "escape"]


def _settings(data: Path) -> Settings:
    return load_settings(data, cwd=data.parent, env={}, busy_timeout=2.0, lock_timeout=5.0)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("TOOLKIT_DATA_DIR", "DB_PATH_PREFIX")}


# -- sessions ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adversarial-clean")
    generate(_settings(root / "data"), trades=1_200, tickers=15, seed=23)
    return root / "data"


@pytest.fixture(scope="module")
def seed004_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed004 scenario, built the way a user builds it."""
    root = tmp_path_factory.mktemp("adversarial-seed004")
    result = subprocess.run([sys.executable, "-m", "toolkit.fixtures", "scenario", "seed004", "--data-dir", str(root / "data"),
                             "--json"], cwd=root, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert len(manifest["defects"]["unlinked_closes"]) == 3
    return root / "data"


@pytest.fixture(params=["clean", "seed004"])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A private copy of the session under attack."""
    template = request.getfixturevalue(f"{request.param}_template")
    shutil.copytree(template, tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture
def clean(tmp_path: Path, clean_template: Path) -> Path:
    shutil.copytree(clean_template, tmp_path / "data")
    return tmp_path / "data"


def adversarial(data: Path, *args: str, cwd: Path, driver: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m toolkit integrity --data-dir DATA adversarial ARGS`` (or the same through a driver
    script that first adds attacks to the catalogue), in a real subprocess."""
    head = [str(driver)] if driver else ["-m", "toolkit", "integrity"]
    result = subprocess.run([sys.executable, *head, "--data-dir", str(data), "adversarial", *args],
                            cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


# -- what every passing run looks like --------------------------------------------------------------------

def test_the_catalogue_covers_the_seed_attacks_and_targets_known_rules() -> None:
    assert len(set(ATTACK_IDS)) == len(ATTACK_IDS)
    seed_attacks = {"attack_tickers", "pragma_attack", "update_attack", "opening_leg_pnl", "orphaned_position", "null_run_id",
                    "sql_injection_ticker", "sql_injection_metadata"}
    assert seed_attacks <= set(ATTACK_IDS)
    for item in DATA_ATTACKS:
        assert item.targets, item.id
        assert all(t in REGISTRY for t in item.targets), item.id
        assert item.description
    # every rule of the catalogue that finds bad data is the target of at least one attack
    targeted = {t for a in DATA_ATTACKS for t in a.targets}
    assert {r.id for r in REGISTRY} - targeted == set()
    assert {"escape_commit", "escape_connection_commit", "escape_executescript", "escape_release_outer",
            "escape_journal_mode", "escape_attach", "escape_vacuum_into"} <= {a.id for a in ESCAPES}
    assert all(not a.targets for a in ESCAPES)


def assert_passing(outcomes: list, guardrails: bool) -> None:
    """Every attack blocked (guardrails on) or detected by every rule it targets (off); escapes refused."""
    assert [o["id"] for o in outcomes] == RUN_IDS
    kinds = {a.id: a.kind for a in attack_catalogue.ATTACKS}
    for o in outcomes:
        assert o["kind"] == kinds[o["id"]]
        if o["kind"] == "escape":
            assert o["outcome"] == "refused", o
            assert o["detail"] and o["detected_by"] == []
        elif guardrails:
            assert o["outcome"] == "blocked", o
            # blocked by the guardrails themselves, not by a failure to run
            assert o["detail"] and not o["detail"].startswith(("SQLite refused it", "could not run")), o
            assert o["detected_by"] == []
        else:
            assert o["outcome"] == "detected", o
            assert sorted(o["detected_by"]) == sorted(o["targets"]), o
            assert o["detail"].startswith("detected by ")


def no_escape_files(directory: Path) -> None:
    """The escape attacks name relative files (ATTACH 'outside.db', VACUUM INTO 'escape-copy.db')."""
    assert sorted(p.name for p in directory.iterdir() if p.suffix == ".db") == []


@pytest.mark.parametrize("guardrails", [True, False], ids=["guardrails-on", "guardrails-off"])
def test_run_attacks_library(session: Path, guardrails: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = contents(session)
    report = run_attacks(_settings(session), attacks=attack_catalogue.ATTACKS, guardrails=guardrails, registry=REGISTRY)
    assert report.breach is None
    assert report.gaps == []
    assert report.exit_code == 0
    assert report.guardrails is guardrails
    assert Path(report.data_dir) == _settings(session).data_dir
    assert all(type(o.outcome) is AttackVerdict for o in report.outcomes)
    assert_passing([vars(o) | {"targets": list(o.targets)} for o in report.outcomes], guardrails)
    assert contents(session) == before
    no_escape_files(tmp_path)


def test_attack_outcomes_are_enum_members_that_print_as_their_plain_strings() -> None:
    from dataclasses import asdict

    outcome = AttackOutcome("x", "An attack.", "data", ("orphaned_sells",), "blocked")
    assert outcome.outcome is AttackVerdict.BLOCKED and outcome.outcome == "blocked"
    assert AttackVerdict.GAP == "gap" and f"{AttackVerdict.DETECTED}" == "detected"
    assert json.loads(json.dumps(asdict(outcome)))["outcome"] == "blocked"
    assert '"outcome": "blocked"' in json.dumps(asdict(outcome))
    with pytest.raises(ValueError):
        AttackOutcome("x", "An attack.", "data", (), "exploded")


REPORT_SCHEMA = {
    "type": "object",
    "required": ["schema_version", "data_dir", "guardrails", "exit_code", "breach", "seconds", "attacks"],
    "properties": {
        "schema_version": {"const": 1},
        "data_dir": {"type": "string"},
        "guardrails": {"type": "boolean"},
        "exit_code": {"enum": [0, 1, 4]},
        "breach": {"type": ["string", "null"]},
        "seconds": {"type": "number", "minimum": 0},
        "attacks": {"type": "array", "items": {
            "type": "object",
            "required": ["id", "description", "kind", "targets", "outcome", "detail", "detected_by", "seconds"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string"}, "description": {"type": "string", "minLength": 1},
                "kind": {"enum": ["data", "escape"]},
                "targets": {"type": "array", "items": {"type": "string"}},
                "outcome": {"enum": ["blocked", "detected", "refused", "gap"]},
                "detail": {"type": "string"},
                "detected_by": {"type": "array", "items": {"type": "string"}},
                "seconds": {"type": "number", "minimum": 0},
            },
        }},
    },
}


@pytest.mark.parametrize("guardrails", [True, False], ids=["guardrails-on", "guardrails-off"])
def test_cli_json(session: Path, tmp_path: Path, guardrails: bool) -> None:
    before = contents(session)
    result = adversarial(session, "--format", "json", *([] if guardrails else ["--disable-guardrails"]), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    jsonschema.validate(data, REPORT_SCHEMA)
    assert data["exit_code"] == 0 and data["breach"] is None and data["guardrails"] is guardrails
    assert Path(data["data_dir"]).resolve() == session.resolve()
    assert_passing(data["attacks"], guardrails)
    assert contents(session) == before
    no_escape_files(tmp_path)


@pytest.mark.parametrize("guardrails", [True, False], ids=["guardrails-on", "guardrails-off"])
def test_cli_table(clean: Path, tmp_path: Path, guardrails: bool) -> None:
    before = contents(clean)
    result = adversarial(clean, *([] if guardrails else ["--disable-guardrails"]), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    mode = "guardrails on" if guardrails else "guardrails disabled"
    assert f"{len(RUN_IDS)} attacks ({mode}): 0 gap(s); data unchanged (content hash proven)" in result.stdout
    cells = [line.split() for line in result.stdout.splitlines()]
    rows = {c[1]: c[0] for c in cells if len(c) > 1 and c[1] in RUN_IDS}
    assert set(rows) == set(RUN_IDS)
    assert {rows[a.id] for a in DATA_ATTACKS if a.id in rows} == {"blocked" if guardrails else "detected"}
    assert {rows[a.id] for a in ESCAPES if a.id in rows} == {"refused"}
    assert "GAP" not in result.stdout
    assert contents(clean) == before


def test_cli_list_and_selected_attacks(clean: Path, tmp_path: Path) -> None:
    before = contents(clean)
    listed = adversarial(clean, "--list", cwd=tmp_path)
    assert listed.returncode == 0
    for attack_id in RUN_IDS:
        assert attack_id in listed.stdout
    chosen = adversarial(clean, "--attack", "opening_leg_pnl", "--attack", "escape_commit", "--format", "json",
                         "--disable-guardrails", cwd=tmp_path)
    assert chosen.returncode == 0, chosen.stderr
    outcomes = {o["id"]: o for o in json.loads(chosen.stdout)["attacks"]}
    assert set(outcomes) == {"opening_leg_pnl", "escape_commit"}
    assert outcomes["opening_leg_pnl"]["detected_by"] == ["opening_leg_with_pnl"]
    assert outcomes["escape_commit"]["outcome"] == "refused"
    assert contents(clean) == before


def test_unknown_attack_is_a_usage_error_with_a_suggestion(clean: Path, tmp_path: Path) -> None:
    before = contents(clean)
    result = adversarial(clean, "--attack", "escape_comit", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown attack 'escape_comit'" in result.stderr
    assert "did you mean 'escape_commit'" in result.stderr
    assert result.stdout == ""
    with pytest.raises(UnknownNameError) as info:
        run_attacks(_settings(clean), registry=REGISTRY, attacks=attack_catalogue.ATTACKS, attack_ids=["opening_leg_pnI"])
    assert "opening_leg_pnl" in info.value.suggestions
    assert contents(clean) == before


# -- gaps: an attack neither blocked nor detected fails the run ---------------------------------------------

def _consistent_snapshot(ctx: attack_catalogue.AttackContext) -> None:
    """A sound snapshot: the guardrails let it through and no rule can call it wrong."""
    ctx.conn.execute("INSERT INTO trading.portfolio_snapshots (snapshot_date, snapshot_time, total_equity, cash_balance, "
                     "long_market_value, short_market_value) VALUES ('2033-05-18', 2000000000, 1400, 1000, 500, 100)")


def _harmless_escape(ctx: attack_catalogue.AttackContext) -> None:
    """An "escape" that the session has no reason to refuse."""
    ctx.conn.execute("SELECT 1").fetchall()


@pytest.fixture
def extra_attacks(monkeypatch: pytest.MonkeyPatch):
    """Add attacks to the catalogue the harness loads (for this test only)."""
    def add(*attacks: attack_catalogue.Attack, first: bool = False) -> None:
        catalogue = [*attacks, *attack_catalogue.ATTACKS] if first else [*attack_catalogue.ATTACKS, *attacks]
        monkeypatch.setattr(attack_catalogue, "ATTACKS", catalogue)
    return add


@pytest.mark.parametrize("guardrails, detail", [
    (True, "the guardrails let it through"),
    (False, "applied, not detected by snapshot_equity_mismatch"),
], ids=["guardrails-on", "guardrails-off"])
def test_an_undetected_attack_is_a_gap(clean: Path, extra_attacks, guardrails: bool, detail: str) -> None:
    extra_attacks(attack_catalogue.Attack("sound_snapshot", "a sound snapshot", ("snapshot_equity_mismatch",), _consistent_snapshot),
                  attack_catalogue.Attack("harmless_escape", "a harmless escape", (), _harmless_escape, "escape"))
    before = contents(clean)
    report = run_attacks(_settings(clean), attacks=attack_catalogue.ATTACKS, guardrails=guardrails, registry=REGISTRY)
    gaps = {o.id: o for o in report.gaps}
    assert set(gaps) == {"sound_snapshot", "harmless_escape"}
    assert gaps["sound_snapshot"].detail == detail
    assert gaps["harmless_escape"].detail == "the session did not refuse it"
    assert report.breach is None
    assert report.exit_code == 1
    # the catalogue's own attacks still pass in the same run
    assert all(o.outcome in ("blocked", "detected", "refused") for o in report.outcomes if o.id not in gaps)
    assert contents(clean) == before


def test_a_registry_without_a_targeted_rule_is_a_gap(clean: Path) -> None:
    before = contents(clean)
    partial = Registry([r for r in REGISTRY if r.id != "opening_leg_with_pnl"])
    report = run_attacks(_settings(clean), attacks=attack_catalogue.ATTACKS, guardrails=False, registry=partial)
    assert [o.id for o in report.gaps] == ["opening_leg_pnl"]
    assert report.gaps[0].detail == "targets unknown rules: opening_leg_with_pnl"
    assert report.exit_code == 1 and report.breach is None
    assert contents(clean) == before


# -- breaches: the content changed behind the session's back ------------------------------------------------
#
# While the harness runs, its session holds BEGIN IMMEDIATE on all three attached files, so an attack
# that tries to commit through a second, separate connection is simply blocked ("database is locked";
# test_a_second_connection_is_locked_out below). Two legitimate ways remain to prove the breach detection:
#  1. a change committed by a separate connection in the only window it can happen — after the
#     session's ROLLBACK, before the proof hashes the files: the proof's hash function is wrapped so
#     that a second connection commits first. The data really changes on disk and the real proof has
#     to find it;
#  2. an attack that subverts the session from inside, calling the sqlite3 base class directly (which
#     no Python-level guard can stop) to drop the authorizer and COMMIT: the proof must catch it too.

def test_a_second_connection_is_locked_out(clean: Path, extra_attacks) -> None:
    def write_through_a_second_connection(ctx: attack_catalogue.AttackContext) -> None:
        """Commit through a separate connection to the same file."""
        other = sqlite3.connect(clean / "trading.db", timeout=0.1, isolation_level=None)
        try:
            other.execute("UPDATE orders SET strategy = 'second connection'")
        finally:
            other.close()

    extra_attacks(attack_catalogue.Attack("second_connection", "second connection", ("order_fill_mismatch",),
                                          write_through_a_second_connection))
    before = contents(clean)
    report = run_attacks(_settings(clean), attacks=attack_catalogue.ATTACKS, guardrails=True, attack_ids=["second_connection"], registry=REGISTRY)
    (outcome,) = report.outcomes
    assert outcome.outcome == "blocked" and "database is locked" in outcome.detail
    assert report.exit_code == 0
    assert contents(clean) == before


def test_a_commit_just_after_the_session_is_not_a_breach(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both hashes of the proof are taken inside the session's write lock, so a bot committing the
    moment the session ends (here: between the session's ROLLBACK and the comparison) is not
    mistaken for an isolation breach. (A commit from inside the session is: see the subversion tests.)"""
    real = guard_connection._prove
    calls = []

    def prove(names, before, after):
        calls.append(1)
        other = sqlite3.connect(clean / "ml_training.db", isolation_level=None)
        try:
            other.execute("UPDATE ensemble_weights SET weighting_method = 'right after the session'")
        finally:
            other.close()
        return real(names, before, after)

    monkeypatch.setattr(guard_connection, "_prove", prove)
    before = contents(clean)
    report = run_attacks(_settings(clean), attacks=attack_catalogue.ATTACKS, guardrails=True, attack_ids=["opening_leg_pnl", "escape_commit"], registry=REGISTRY)
    assert calls == [1]
    assert report.breach is None and report.gaps == [] and report.exit_code == 0
    after = contents(clean)  # the bot's write really happened, after the session
    assert after["ml_training"][1]["ensemble_weights"] != before["ml_training"][1]["ensemble_weights"]


def _subvert(ctx: attack_catalogue.AttackContext) -> None:
    """Drop the authorizer through the sqlite3 base class, write, and COMMIT."""
    sqlite3.Connection.set_authorizer(ctx.conn, None)
    sqlite3.Connection.execute(ctx.conn, "UPDATE trading.orders SET strategy = 'leaked'")
    sqlite3.Connection.execute(ctx.conn, "COMMIT")


@pytest.mark.parametrize("guardrails", [True, False], ids=["guardrails-on", "guardrails-off"])
def test_a_subverted_session_is_an_isolation_breach(clean: Path, extra_attacks, guardrails: bool) -> None:
    extra_attacks(attack_catalogue.Attack("subvert", "subvert the session", ("order_fill_mismatch",), _subvert), first=True)
    before = contents(clean)
    report = run_attacks(_settings(clean), attacks=attack_catalogue.ATTACKS, guardrails=guardrails, registry=REGISTRY)
    assert report.exit_code == 4
    assert report.breach is not None and "trading.orders" in report.breach
    # the run stops at the attack that got out of the session
    assert [(o.id, o.outcome) for o in report.outcomes] == [("subvert", "gap")]
    assert "ended the session's transaction" in report.outcomes[0].detail
    after = contents(clean)
    assert after["trading"][1]["orders"] != before["trading"][1]["orders"]  # it really leaked
    assert after["trading"][1]["trades"] == before["trading"][1]["trades"]


def test_an_attack_that_escapes_and_then_crashes_is_still_a_breach(clean: Path, extra_attacks) -> None:
    def subvert_then_crash(ctx: attack_catalogue.AttackContext) -> None:
        """Commit past the session, then fail with an error the harness does not expect."""
        _subvert(ctx)
        raise RuntimeError("the attack crashed after committing")

    extra_attacks(attack_catalogue.Attack("subvert_then_crash", "subvert, then crash", ("order_fill_mismatch",),
                                          subvert_then_crash), first=True)
    report = run_attacks(_settings(clean), attacks=attack_catalogue.ATTACKS, guardrails=False, registry=REGISTRY)
    assert report.exit_code == 4
    assert report.breach is not None and "trading.orders" in report.breach


DRIVER = textwrap.dedent('''
    """Run `integrity` with extra attacks added to the catalogue."""
    import sqlite3
    import sys

    from toolkit.cli import integrity_main
    from toolkit.fixtures import attacks
    from toolkit.fixtures.attacks import attack


    @attack("sound_snapshot", targets=("snapshot_equity_mismatch",))
    def sound_snapshot(ctx):
        """A sound snapshot: neither refused nor detected."""
        ctx.conn.execute("INSERT INTO trading.portfolio_snapshots (snapshot_date, snapshot_time, total_equity, "
                         "cash_balance, long_market_value, short_market_value) "
                         "VALUES ('2033-05-18', 2000000000, 1400, 1000, 500, 100)")


    @attack("subvert", targets=("order_fill_mismatch",))
    def subvert(ctx):
        """Drop the authorizer through the sqlite3 base class, write, and COMMIT."""
        sqlite3.Connection.set_authorizer(ctx.conn, None)
        sqlite3.Connection.execute(ctx.conn, "UPDATE trading.orders SET strategy = 'leaked'")
        sqlite3.Connection.execute(ctx.conn, "COMMIT")


    attacks.ATTACKS = (*attacks.ATTACKS, sound_snapshot, subvert)
    sys.argv[0] = "integrity"
    integrity_main()
''')


@pytest.fixture
def driver(tmp_path: Path) -> Path:
    path = tmp_path / "integrity_with_extra_attacks.py"
    path.write_text(DRIVER)
    return path


def test_cli_gap_exits_1(clean: Path, tmp_path: Path, driver: Path) -> None:
    before = contents(clean)
    result = adversarial(clean, "--attack", "sound_snapshot", "--attack", "opening_leg_pnl", "--format", "json",
                         cwd=tmp_path, driver=driver)
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)
    jsonschema.validate(data, REPORT_SCHEMA)
    assert data["exit_code"] == 1 and data["breach"] is None
    outcomes = {o["id"]: o for o in data["attacks"]}
    assert outcomes["sound_snapshot"]["outcome"] == "gap"
    assert outcomes["opening_leg_pnl"]["outcome"] == "blocked"
    table = adversarial(clean, "--attack", "sound_snapshot", "--disable-guardrails", cwd=tmp_path, driver=driver)
    assert table.returncode == 1
    assert "GAP" in table.stdout and "1 gap(s)" in table.stdout
    assert contents(clean) == before


def test_cli_breach_exits_4(clean: Path, tmp_path: Path, driver: Path) -> None:
    before = contents(clean)
    result = adversarial(clean, "--attack", "subvert", "--format", "json", cwd=tmp_path, driver=driver)
    assert result.returncode == 4, result.stdout + result.stderr
    data = json.loads(result.stdout)
    jsonschema.validate(data, REPORT_SCHEMA)
    assert data["exit_code"] == 4 and "trading.orders" in data["breach"]
    assert contents(clean)["trading"][1]["orders"] != before["trading"][1]["orders"]
    again = adversarial(clean, "--attack", "subvert", cwd=tmp_path, driver=driver)
    assert again.returncode == 4
    assert "ISOLATION BREACH" in again.stdout
