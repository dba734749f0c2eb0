"""The pytest plugin (entry point ``pytest11``) from a user's own, separate test project: its
``rolled_back_db`` fixture attacks the real databases and leaves no trace, and fails the test when the
data changed anyway."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from toolkit.config import load_settings
from toolkit.fixtures import generate

from dbstate import file_hashes as contents


USER_TESTS = textwrap.dedent('''
    import os
    from pathlib import Path

    import pytest

    from toolkit.errors import GuardrailViolation


    def test_the_fixture_reads_the_configured_data_dir(toolkit_settings):
        assert Path(toolkit_settings.data_dir).resolve() == Path(os.environ["EXPECTED_DATA_DIR"]).resolve()


    def test_attacks_are_refused(rolled_back_db):
        conn = rolled_back_db
        assert conn.guardrails and conn.in_session and conn.in_transaction
        trades = conn.execute("SELECT count(*) FROM trading.trades").fetchone()[0]
        assert trades > 0
        with pytest.raises(GuardrailViolation, match="never deleted"):
            conn.execute("DELETE FROM trading.trades")
        with pytest.raises(GuardrailViolation, match="history"):
            conn.execute("UPDATE trading.trades SET price = price * 10")
        with pytest.raises(GuardrailViolation, match="trade writer"):
            conn.execute("UPDATE trading.account SET cash_balance = cash_balance + 1000")
        with pytest.raises(GuardrailViolation):
            conn.execute("COMMIT")
        assert conn.execute("SELECT count(*) FROM trading.trades").fetchone()[0] == trades


    @pytest.mark.toolkit_guardrails(False)
    def test_without_guardrails_writes_go_through_inside_the_session(rolled_back_db):
        conn = rolled_back_db
        assert not conn.guardrails and conn.in_session
        assert conn.execute("SELECT count(*) FROM trading.trades WHERE action = 'SELL'").fetchone()[0] > 0
        conn.execute("DELETE FROM trading.trades WHERE action = 'SELL'")
        assert conn.execute("SELECT count(*) FROM trading.trades WHERE action = 'SELL'").fetchone()[0] == 0
        conn.execute("UPDATE trading.account SET cash_balance = 0")
        assert conn.execute("SELECT cash_balance FROM trading.account").fetchone()[0] == 0
        conn.execute("DELETE FROM positions.positions")
        assert conn.execute("SELECT count(*) FROM positions.positions").fetchone()[0] == 0
        with pytest.raises(GuardrailViolation):
            conn.commit()
''')

#: Two tests whose data changes anyway: one subverts the session from inside (the sqlite3 base class,
#: no authorizer, COMMIT); in the other a separate connection commits behind the session's back. A
#: second connection cannot write while the session holds its BEGIN IMMEDIATE, so it commits in the
#: only window there is: after the session's ROLLBACK, before the fixture's proof hashes the files
#: (the conftest wraps the proof's hash function to commit first).
BREACH_CONFTEST = textwrap.dedent('''
    import sqlite3

    import pytest

    from toolkit.guard import connection


    @pytest.fixture(autouse=True)
    def commit_behind_the_session(request, monkeypatch, toolkit_settings):
        if request.node.get_closest_marker("behind_the_back") is None:
            return
        real = connection._prove

        def prove(names, before, after):
            # a bot commits the moment the session ends: not the session's doing, not a breach
            other = sqlite3.connect(toolkit_settings.path("ml_training"), isolation_level=None)
            try:
                other.execute("UPDATE ensemble_weights SET weighting_method = 'behind the back'")
            finally:
                other.close()
            return real(names, before, after)

        monkeypatch.setattr(connection, "_prove", prove)


    def pytest_configure(config):
        config.addinivalue_line("markers", "behind_the_back: a second connection commits right after the session")
''')

BREACH_TESTS = textwrap.dedent('''
    import sqlite3

    import pytest


    @pytest.mark.toolkit_guardrails(False)
    def test_subverts_the_session(rolled_back_db):
        rolled_back_db.execute("UPDATE trading.orders SET strategy = 'leaked'")
        sqlite3.Connection.set_authorizer(rolled_back_db, None)
        sqlite3.Connection.execute(rolled_back_db, "COMMIT")


    @pytest.mark.behind_the_back
    def test_behind_the_back(rolled_back_db):
        assert rolled_back_db.execute("SELECT count(*) FROM ml_training.ensemble_weights").fetchone()[0] > 0
''')


#: Tests that close the fixture's connection: with nothing leaked (through close(), and through the
#: sqlite3 base class, which the session cannot see), and after subverting the session first.
CLOSING_TESTS = textwrap.dedent('''
    import sqlite3

    import pytest


    @pytest.mark.toolkit_guardrails(False)
    def test_closes_its_connection(rolled_back_db):
        rolled_back_db.execute("DELETE FROM trading.trades")
        rolled_back_db.close()


    def test_closes_it_behind_the_sessions_back(rolled_back_db):
        sqlite3.Connection.close(rolled_back_db)


    @pytest.mark.toolkit_guardrails(False)
    def test_subverts_then_closes(rolled_back_db):
        rolled_back_db.execute("UPDATE trading.orders SET strategy = 'leaked'")
        sqlite3.Connection.set_authorizer(rolled_back_db, None)
        sqlite3.Connection.execute(rolled_back_db, "COMMIT")
        rolled_back_db.close()
''')

@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin-data")
    generate(load_settings(root / "data", cwd=root, env={}), trades=1_000, tickers=12, seed=5)
    return root / "data"


@pytest.fixture
def data(tmp_path: Path, template: Path) -> Path:
    shutil.copytree(template, tmp_path / "data")
    return tmp_path / "data"


def run_pytest(project: Path, *args: str, expected_data_dir: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m pytest`` in the user's project, with the installed toolkit, nothing of this repository."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TOOLKIT_DATA_DIR", "DB_PATH_PREFIX", "PYTEST_ADDOPTS", "PYTEST_PLUGINS",
                        "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTHONPATH")}
    env["EXPECTED_DATA_DIR"] = str(expected_data_dir)
    # hypothesis (installed here for this repository's own tests) would only cost the user's run a second
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
                           "--strict-markers", "-rA", *args],
                          cwd=cwd or project, env=env, capture_output=True, text=True, timeout=120)


def make_project(root: Path, ini_data_dir: Path | str | None, tests: str, conftest: str | None = None) -> Path:
    root.mkdir()
    ini = "[pytest]\n" + (f"toolkit_data_dir = {ini_data_dir}\n" if ini_data_dir is not None else "")
    (root / "pytest.ini").write_text(ini)
    (root / "tests").mkdir()
    (root / "tests" / "test_bot.py").write_text(tests)
    if conftest is not None:
        (root / "tests" / "conftest.py").write_text(conftest)
    return root


def test_a_separate_project_uses_the_fixture_via_the_ini_option(data: Path, tmp_path: Path) -> None:
    before = contents(data)
    project = make_project(tmp_path / "user-project", data, USER_TESTS)
    result = run_pytest(project, expected_data_dir=data)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    # the tests ran in the user's project, not in this repository
    assert f"rootdir: {project}" in result.stdout
    assert contents(data) == before
    assert not list(project.rglob("*.db"))


def test_a_relative_ini_path_is_relative_to_the_ini_file(data: Path, tmp_path: Path) -> None:
    """`toolkit_data_dir = ../data` in the project's pytest.ini, and pytest run from a subdirectory."""
    before = contents(data)
    project = make_project(tmp_path / "user-project", "../data", USER_TESTS)
    result = run_pytest(project, expected_data_dir=data, cwd=project / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    assert contents(data) == before


def test_the_command_line_option_wins_over_the_ini(data: Path, tmp_path: Path) -> None:
    before = contents(data)
    project = make_project(tmp_path / "user-project", tmp_path / "no-such-data", USER_TESTS)
    result = run_pytest(project, "--toolkit-data-dir", str(data), expected_data_dir=data)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    assert contents(data) == before
    # the control: with only the ini's (missing) data directory, the fixture cannot open anything
    failing = run_pytest(project, "-k", "attacks_are_refused", expected_data_dir=data)
    assert failing.returncode == 1
    assert "1 error" in failing.stdout
    assert not (tmp_path / "no-such-data" / "trading.db").exists()


def test_the_fixture_fails_a_test_whose_data_changed_anyway(data: Path, tmp_path: Path) -> None:
    before = contents(data)
    project = make_project(tmp_path / "user-project", data, BREACH_TESTS, BREACH_CONFTEST)
    result = run_pytest(project, expected_data_dir=data)
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout
    # both test bodies ran; the subverted session is a breach at teardown, while a commit right after
    # a session (its proof is taken inside the session's write lock) is not
    assert "2 passed, 1 error" in output
    assert "ERROR at teardown of test_subverts_the_session" in output
    assert "ERROR at teardown of test_behind_the_back" not in output
    assert "changed trading.orders" in output
    assert "changed ml_training.ensemble_weights" not in output
    # the changes were real: the breach was not imagined
    after = contents(data)
    assert after["trading"][1]["orders"] != before["trading"][1]["orders"]
    assert after["ml_training"][1]["ensemble_weights"] != before["ml_training"][1]["ensemble_weights"]


def test_a_test_that_closes_the_connection_gets_a_clear_error_and_the_proof(data: Path, tmp_path: Path) -> None:
    before = contents(data)
    project = make_project(tmp_path / "user-project", data, CLOSING_TESTS)
    result = run_pytest(project, expected_data_dir=data)
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout
    assert "3 passed, 3 errors" in output, output
    assert "ProgrammingError" not in output and "closed database" not in output, output
    for test in ("test_closes_its_connection", "test_closes_it_behind_the_sessions_back", "test_subverts_then_closes"):
        assert f"ERROR at teardown of {test}" in output
    closed = [line for line in output.splitlines() if line.startswith("E ") and "SessionConnectionClosed" in line]
    assert len(closed) == 2, output
    assert all("closed inside the rollback-only session" in line and "nothing was committed" in line
               and "after the session has ended" in line for line in closed), closed
    assert "proven inside the session's write lock" in output and "proven by re-reading the files" in output
    # the subverted one is a breach, found by the proof after the close
    assert "IsolationBreach" in output and "changed trading.orders" in output
    after = contents(data)
    assert after["trading"][1]["trades"] == before["trading"][1]["trades"]
    assert after["trading"][1]["orders"] != before["trading"][1]["orders"]
