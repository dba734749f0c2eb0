"""The lifecycle end to end through the library: upgrade, status, verify, downgrade to zero, upgrade."""
from __future__ import annotations

from toolkit.migrate.runner import downgrade, upgrade
from toolkit.migrate.status import status
from toolkit.migrate.verify import live_schema, verify
from toolkit.db import connect
from toolkit.content import load_migrations

from bundled import BUNDLED, ids_of


def _schemas(settings):
    result = {}
    for name in ("positions", "trading", "ml_training"):
        conn = connect(settings.path(name), readonly=True)
        try:
            result[name] = live_schema(conn)
        finally:
            conn.close()
    return result


def test_upgrade_downgrade_upgrade_gives_the_same_schema(settings):
    first = upgrade(settings, migrations=load_migrations(settings))
    assert [s.migration for s in first.steps] == [m.label for m in BUNDLED]
    assert [s.migration for s in first.steps][:5] == [
        "001_create_positions_tables", "002_create_trading_tables", "003_create_ml_training_tables",
        "004_create_ledger_tables", "005_create_rl_model_states",
    ]
    before = _schemas(settings)
    assert ("table", "trades") in before["trading"] and ("view", "v_equity_curve") in before["trading"]
    report = status(settings, migrations=load_migrations(settings))
    assert report.up_to_date and [d.version for d in report.databases] == [
        ids_of(name)[-1] for name in ("positions", "trading", "ml_training")]
    assert verify(settings, migrations=load_migrations(settings)).ok
    down = downgrade(settings, migrations=load_migrations(settings))
    assert [s.migration for s in down.steps] == [m.label for m in reversed(BUNDLED)]
    assert all(not objects for objects in _schemas(settings).values())
    upgrade(settings, migrations=load_migrations(settings))
    assert _schemas(settings) == before
    assert verify(settings, migrations=load_migrations(settings)).ok
