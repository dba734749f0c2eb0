"""pytest plugin (entry point ``pytest11``): write adversarial tests that cannot leak.

    def test_bot_cannot_delete_trades(rolled_back_db):
        with pytest.raises(GuardrailViolation):
            rolled_back_db.execute("DELETE FROM trading.trades")

``rolled_back_db`` is a guarded connection to the databases (attached as ``positions``, ``trading``,
``ml_training``) inside a rollback-only session: whatever the test does is rolled back, and the
fixture fails the test if the databases' content changed anyway (``IsolationBreach``), and if the
test closed the connection (``SessionConnectionClosed``, after the same proof). Mark a test
``@pytest.mark.toolkit_guardrails(False)`` to attack a plain connection instead (foreign keys off, no
guard triggers) — still inside the session. The data directory comes from ``--toolkit-data-dir``,
the ``toolkit_data_dir`` ini option, ``TOOLKIT_DATA_DIR``, or ``./data``.

Imports of the toolkit happen inside the fixtures, so installing the toolkit costs other test
suites nothing.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("toolkit", "paper-ledger-toolkit")
    group.addoption("--toolkit-data-dir", default=None, help="data directory for the rolled_back_db fixture")
    parser.addini("toolkit_data_dir", "data directory for the rolled_back_db fixture", default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "toolkit_guardrails(enabled): run rolled_back_db with (default) or without the guardrails")


@pytest.fixture
def toolkit_settings(request: pytest.FixtureRequest) -> Any:
    """The toolkit settings the fixtures use (data directory from option, ini, env or ./data)."""
    from toolkit.config import load_settings

    data_dir = request.config.getoption("--toolkit-data-dir")
    if not data_dir and request.config.getini("toolkit_data_dir"):
        # Like pytest's own path options, a relative ini value is relative to the ini file, not to
        # the directory pytest happens to be run from.
        data_dir = Path(request.config.getini("toolkit_data_dir"))
        if not data_dir.is_absolute() and request.config.inipath is not None:
            data_dir = request.config.inipath.parent / data_dir
    return load_settings(data_dir or None)


@pytest.fixture
def rolled_back_db(request: pytest.FixtureRequest, toolkit_settings: Any) -> Iterator[Any]:
    """A guarded connection inside a rollback-only session; proves the data unchanged afterwards.

    The fixture owns the connection: a test that closes it gets an error at teardown."""
    from toolkit.content import load_registry
    from toolkit.guard.connection import connect_guarded, rollback_only

    marker = request.node.get_closest_marker("toolkit_guardrails")
    guardrails = bool(marker.args[0]) if marker and marker.args else True
    # The whole catalogue's row guards, as `integrity adversarial` installs them.
    conn = connect_guarded(toolkit_settings, guardrails=guardrails, guards=load_registry(toolkit_settings).guards)
    try:
        with rollback_only(conn) as session:
            yield session
    finally:
        conn.close()
