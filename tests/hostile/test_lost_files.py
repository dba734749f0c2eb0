"""A lost file never leads the toolkit to destroy the rest. When a database the migration ledger says
was created and migrated is missing, empty or another database, writing commands refuse (exit 3,
one line naming it and `migrate restore`), no command recreates it or rewrites the ledger's history,
and every other file stays exactly as it was. `migrate restore` is the way back."""
from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from dbstate import content_hashes
from toolkit.config import load_settings
from toolkit.fixtures import generate

WRITING = [("migrate", "upgrade"), ("migrate", "downgrade", "--yes"), ("integrity", "repair", "--apply", "--yes"),
           ("integrity", "repair")]
READING = [("migrate", "status"), ("migrate", "verify"), ("integrity", "check")]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    settings = load_settings(tmp_path_factory.mktemp("lost") / "data", env={})
    generate(settings, trades=400, tickers=5, seed=21, defects={"position_ledger_mismatch": 2})
    return settings


def _lose(data: Path, how: str) -> None:
    path = data / "trading.db"
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if how == "deleted":
        path.unlink()
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "another database":
        shutil.copy(data / "ml_training.db", path)
    elif how == "unmigrated":
        path.unlink()
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE trades (x)")
        conn.close()


@pytest.fixture(params=["deleted", "emptied", "another database", "unmigrated"])
def lost(request, template, tmp_path: Path) -> tuple[Path, str]:
    data = tmp_path / "data"
    shutil.copytree(template.data_dir, data)
    _lose(data, request.param)
    return data, request.param


def _others(data: Path) -> dict[str, str]:
    return content_hashes(load_settings(data, env={}), ["positions", "ml_training", "migrations"])


def _trading_bytes(data: Path) -> bytes | None:
    path = data / "trading.db"
    return path.read_bytes() if path.exists() else None


@pytest.mark.parametrize("command", WRITING, ids=[" ".join(c) for c in WRITING])
def test_writing_commands_refuse_and_change_nothing(cli, lost, command) -> None:
    data, how = lost
    before, trading = _others(data), _trading_bytes(data)
    result = cli(command[0], "--data-dir", str(data), *command[1:])
    assert result.returncode == 3, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "trading.db" in lines[0] and "migrate restore --database trading" in lines[0]
    assert _others(data) == before and _trading_bytes(data) == trading  # nothing recreated, nothing synced


@pytest.mark.parametrize("command", READING, ids=[" ".join(c) for c in READING])
def test_reading_commands_never_rewrite_the_ledger(cli, lost, command) -> None:
    data, how = lost
    before, trading = _others(data), _trading_bytes(data)
    result = cli(command[0], "--data-dir", str(data), *command[1:])
    assert result.returncode != 0 or command == ("migrate", "status"), result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert _others(data) == before and _trading_bytes(data) == trading


def test_restore_is_the_way_back(cli, tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate(load_settings(data, env={}), trades=400, tickers=5, seed=22, defects={"realized_pnl_mismatch": 1})
    taken = cli("integrity", "--data-dir", str(data), "repair", "--apply", "--yes")  # backs trading.db up first
    assert taken.returncode == 0, taken.stderr
    _lose(data, "emptied")
    assert cli("migrate", "--data-dir", str(data), "upgrade").returncode == 3
    restored = cli("migrate", "--data-dir", str(data), "restore", "--database", "trading", "--yes")
    assert restored.returncode == 0, restored.stderr
    assert cli("migrate", "--data-dir", str(data), "verify").returncode == 0
    assert cli("migrate", "--data-dir", str(data), "upgrade").returncode == 0
