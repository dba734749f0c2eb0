"""A repair whose commit fails part way tells the truth: positions.db on a nearly full disk (a small
tmpfs) lets trading.db commit its repair and refuses positions.db's. The command names both, exits
3, the log says partial, positions.db is untouched, and `repair undo` reverses exactly what committed.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from dbstate import content_hashes, query, tables
from toolkit.config import load_settings
from toolkit.fixtures import generate


@pytest.fixture
def positions_on_a_full_disk(tmp_path: Path):
    settings = load_settings(tmp_path / "data", env={})
    generate(settings, trades=2_000, tickers=20, seed=31, defects={"position_ledger_mismatch": 4, "realized_pnl_mismatch": 2})
    before = tables(settings)
    mount = tmp_path / "small-disk"
    mount.mkdir()
    size = settings.path("positions").stat().st_size
    # the file, its 32 KiB -shm index and two pages: too little for the repair's WAL frames
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={(size // 4096 + 8 + 2) * 4096}", "tmpfs", str(mount)],
                           capture_output=True, text=True)
    if tmpfs.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({tmpfs.stderr.strip() or tmpfs.returncode}): needs root")
    try:
        shutil.move(settings.path("positions"), mount / "positions.db")
        settings.path("positions").symlink_to(mount / "positions.db")
        yield settings, before, mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_commit_that_fails_part_way_says_what_committed_and_can_be_undone(cli, positions_on_a_full_disk) -> None:
    settings, before, mount = positions_on_a_full_disk
    positions_before = content_hashes(settings, ["positions"])
    result = cli("integrity", "--data-dir", str(settings.data_dir), "repair", "--apply", "--yes")
    assert result.returncode == 3, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "committed to trading.db, NOT to positions.db" in errors[0] and "logged as partial" in errors[0]
    run_id = errors[0].split("repair run ", 1)[1].split(":", 1)[0]
    assert f"integrity repair undo {run_id}" in errors[0]
    assert content_hashes(settings, ["positions"]) == positions_before  # the projection is untouched
    assert tables(settings)["trading"] != before["trading"]              # the ledger holds its repair

    log = json.loads(cli("integrity", "--data-dir", str(settings.data_dir), "repair", "log", "--json").stdout)
    entry = next(r for r in log if r["run_id"] == run_id)
    assert entry["status"] == "partial" and entry["changes"] > 0
    assert query(settings, "migrations", "SELECT DISTINCT database_name FROM repair_log WHERE run_id = ?", (run_id,)) == \
        [("trading",)]

    undo = cli("integrity", "--data-dir", str(settings.data_dir), "repair", "undo", run_id, "--yes")
    assert undo.returncode == 0, undo.stderr
    assert tables(settings) == before
