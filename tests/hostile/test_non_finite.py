"""Money is finite: a raw-SQL trade with an infinite price is reported, and a repair never writes a
non-finite amount (it leaves those rows alone and says why) — nor calls it applied and verified."""
from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from dbstate import query
from toolkit.config import load_settings
from toolkit.fixtures import generate


@pytest.fixture
def data(tmp_path_factory, tmp_path: Path) -> Path:
    settings = load_settings(tmp_path / "data", env={})
    generate(settings, trades=400, tickers=4, seed=12)
    conn = sqlite3.connect(settings.path("trading"), isolation_level=None)
    try:
        ticker, held, last = conn.execute(
            "SELECT ticker, sum(CASE action WHEN 'BUY' THEN quantity ELSE -quantity END), max(executed_at) "
            "FROM trades GROUP BY ticker HAVING sum(CASE action WHEN 'BUY' THEN quantity ELSE -quantity END) > 1 "
            "ORDER BY ticker LIMIT 1").fetchone()
        conn.execute("INSERT INTO trades (trade_id, run_id, ticker, action, quantity, price, commission, executed_at, "
                     "is_close, status) VALUES (900001, 'raw', ?, 'SELL', 1, ?, 0, ?, 1, 'CLOSED')",
                     (ticker, math.inf, last + 1))
    finally:
        conn.close()
    return settings.data_dir


def _non_finite(settings, name: str, table: str, columns: list[str]) -> list[tuple]:
    where = " OR ".join(f"abs({c}) > 1e308 OR ({c} IS NOT NULL AND {c} <> {c})" for c in columns)
    return query(settings, name, f"SELECT * FROM {table} WHERE {where}")


def test_an_infinite_price_is_reported_and_never_spread_by_a_repair(cli, data: Path) -> None:
    settings = load_settings(data, env={})
    check = cli("integrity", "--data-dir", str(data), "check", "--format", "json")
    assert check.returncode == 1, check.stderr
    assert "900001" in check.stdout  # trade_row_invalid names the row
    repair = cli("integrity", "--data-dir", str(data), "repair", "--apply", "--yes")
    assert "Traceback" not in repair.stderr, repair.stderr
    assert "not a finite number" in repair.stdout, repair.stdout
    assert query(settings, "trading", "SELECT cash_balance FROM account")[0][0] < 1e308
    assert _non_finite(settings, "trading", "lot_matches", ["realized_pnl", "exit_price"]) == []
    assert _non_finite(settings, "positions", "positions", ["quantity", "entry_price", "unrealized_pnl"]) == []
    assert _non_finite(settings, "trading", "trades", ["realized_pnl", "exit_price"]) == []
