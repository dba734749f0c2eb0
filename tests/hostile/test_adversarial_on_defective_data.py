"""`integrity adversarial --disable-guardrails` on a session whose target rows were already wrong: an
attack that makes them wrong differently is detected, not reported as a false gap."""
from __future__ import annotations

from pathlib import Path

from dbstate import content_hashes
from toolkit.config import load_settings
from toolkit.fixtures import generate

DEFECTS = {"realized_pnl_mismatch": 40, "unlinked_closes": 40, "lot_status_inconsistent": 40, "bankroll_mismatch": 1,
           "opening_leg_with_pnl": 20, "position_ledger_mismatch": 3, "order_fill_mismatch": 30}


def test_attacks_on_already_wrong_rows_are_detected(cli, tmp_path: Path) -> None:
    settings = load_settings(tmp_path / "data", env={})
    generate(settings, trades=600, tickers=3, seed=5, defects=DEFECTS)
    before = content_hashes(settings)
    result = cli("integrity", "--data-dir", str(settings.data_dir), "adversarial", "--disable-guardrails")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 gap(s)" in result.stdout and "GAP" not in result.stdout
    assert content_hashes(settings) == before
