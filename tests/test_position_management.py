"""A bot manages its positions through its guarded connection: stops, targets, marks, unrealized P&L,
signal score and metadata are its own; quantity, side, entry price, ticker and times follow the ledger
and stay writer-only (SPEC §3). The gate is unaffected by the bot's own columns."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dbstate import table_hashes
from toolkit.config import load_settings
from toolkit.content import load_registry
from toolkit.errors import GuardrailViolation
from toolkit.fixtures import generate
from toolkit.guard.connection import connect_guarded
from toolkit.rules import run_checks

REGISTRY = load_registry(plugins=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    settings = load_settings(tmp_path_factory.mktemp("manage") / "data", env={})
    generate(settings, trades=500, tickers=5, seed=13)
    return settings


@pytest.fixture
def bot(data):
    conn = connect_guarded(data, guards=REGISTRY.guards)
    try:
        yield conn
    finally:
        conn.close()


def _held(conn) -> tuple[str, float, float]:
    return conn.execute("SELECT ticker, quantity, entry_price FROM positions.positions ORDER BY ticker LIMIT 1").fetchone()


@pytest.mark.parametrize("assignment, params", [
    ("stop_loss_price = ?", (1.5,)),
    ("take_profit_price = ?", (999.0,)),
    ("current_price = ?, unrealized_pnl = (? - entry_price) * quantity", (123.0, 123.0)),
    ("metadata = ?", ('{"trail_percent": 2.5, "close_reason": null}',)),
    ("signal_score = ?, updated_at = updated_at + 60", (0.7,)),
], ids=["stop", "target", "mark", "metadata", "score"])
def test_a_bot_updates_the_columns_it_owns(bot, data, assignment: str, params: tuple) -> None:
    ticker, quantity, entry = _held(bot)
    bot.execute("BEGIN IMMEDIATE")
    try:
        bot.execute(f"UPDATE positions.positions SET {assignment} WHERE ticker = ? AND side = 'long'", (*params, ticker))
        assert _held(bot) == (ticker, quantity, entry)  # what the ledger decides did not move
    finally:
        bot.execute("ROLLBACK")


@pytest.mark.parametrize("assignment", ["quantity = quantity * 2", "entry_price = 1.0", "side = 'short'",
                                        "ticker = 'OTHER'", "opened_at = 0",
                                        "stop_loss_price = 1.0, quantity = quantity + 1"],
                         ids=["quantity", "entry-price", "side", "ticker", "opened-at", "stop-and-quantity"])
def test_what_the_ledger_decides_stays_writer_only(bot, assignment: str) -> None:
    before = table_hashes(bot, "positions")
    with pytest.raises(GuardrailViolation, match=r"UPDATE of positions\.\w+ is refused: quantity, side and entry price"):
        bot.execute(f"UPDATE positions.positions SET {assignment}")
    assert table_hashes(bot, "positions") == before


def test_managed_positions_pass_the_gate(data, tmp_path: Path) -> None:
    shutil.copytree(data.data_dir, tmp_path / "data")
    settings = load_settings(tmp_path / "data", env={})
    conn = connect_guarded(settings)
    try:
        conn.execute("UPDATE positions.positions SET stop_loss_price = entry_price * 0.9, "
                     "take_profit_price = entry_price * 1.2, current_price = entry_price * 1.05, "
                     "unrealized_pnl = entry_price * 0.05 * quantity")
    finally:
        conn.close()
    report = run_checks(settings, registry=REGISTRY)
    assert report.exit_code == 0 and report.violations == 0, [(r.rule.id, r.count) for r in report.results if r.count]
