"""Output that cannot be spoofed: a stored value with a newline, a terminal escape or a Markdown pipe
cannot forge a line or break a table in any format, and a huge value cannot flood a report."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from toolkit.config import load_settings
from toolkit.fixtures import generate

FORGED = "A\ngate passed\x1b[2J|x|"  # fits the 32-character ticker check


@pytest.fixture(scope="module")
def spoofed(tmp_path_factory) -> Path:
    settings = load_settings(tmp_path_factory.mktemp("spoof") / "data", env={})
    generate(settings, trades=300, tickers=5, seed=9)
    conn = sqlite3.connect(settings.path("trading"), isolation_level=None)
    try:  # an opening leg with P&L whose ticker carries a forged summary line (raw SQL: no guard)
        conn.execute("INSERT INTO trades (trade_id, run_id, ticker, action, quantity, price, commission, executed_at, "
                     "is_close, status, realized_pnl) VALUES (999999, 'r', ?, 'BUY', 1, 1, 0, 1, 0, 'OPEN', 5)", (FORGED,))
    finally:
        conn.close()
    ml = sqlite3.connect(settings.path("ml_training"), isolation_level=None)
    try:  # nine huge unsafe Q-table keys
        row = ml.execute("SELECT model_id, q_table FROM rl_model_states LIMIT 1").fetchone()
        table = json.loads(row[1])
        table.update({f"__import__('os')#{'x' * 400_000}{n}": 1.0 for n in range(9)})
        ml.execute("UPDATE rl_model_states SET q_table = ? WHERE model_id = ?", (json.dumps(table), row[0]))
    finally:
        ml.close()
    return settings.data_dir


@pytest.mark.parametrize("fmt", ["table", "markdown", "junit", "sarif", "json"])
def test_a_forged_value_cannot_forge_a_line_or_flood_the_report(cli, spoofed: Path, fmt: str) -> None:
    result = cli("integrity", "--data-dir", str(spoofed), "check", "--format", fmt)
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert len(out) < 200_000, len(out)  # 3.6 MB of keys, shown bounded
    assert "\x1b" not in out
    assert not any(line.startswith("gate passed") for line in out.splitlines())
    if fmt == "table":
        assert "A\\x0agate passed" in out and "characters)" in out
    if fmt == "markdown":
        rows = [line for line in out.splitlines() if line.startswith("|")]
        assert all(line.count("|") - line.count("\\|") == rows[0].count("|") - rows[0].count("\\|")
                   for line in rows[:19])  # every row of the summary table has its columns
    if fmt == "junit":
        ET.fromstring(out.encode())  # still well-formed XML
    if fmt in ("json", "sarif"):
        json.loads(out)
